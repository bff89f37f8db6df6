"""The train and eval steps (pure, jitted once with explicit shardings) and the training loop.

Data flow of one fused call (k = config.steps_per_call steps in one `lax.scan`):
  uint8 images (on device) -> preprocess (binarization keyed by data_seed, example, epoch)
  -> eps from (seed, step) in the global view -> per-device loss and gradient (`jax.shard_map`)
  -> optax update -> non-finite guard -> momentum-tracked loss -> metric sums (stay on device).
Metrics leave the device only every log interval.
"""

import dataclasses
import functools
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from vae_jax import checkpoint as ckpt_lib
from vae_jax import data as data_lib
from vae_jax import distributions, models, objectives, optim, sharding, validation
from vae_jax import metrics as metrics_lib
from vae_jax import state as state_lib
from vae_jax.data.preprocess import gather_images, preprocess

# Named randomness streams folded into the root key (never a device or process index).
STREAM_INIT = 0        # parameter initialisation
STREAM_POSTERIOR = 1   # training posterior samples, folded with the step
STREAM_EVAL = 2        # evaluation posterior samples, folded with the example's index
STREAM_PRIOR = 3       # prior samples for the image grids

# The metrics a train record reports as means over the logged steps.
_MEAN_KEYS = ('loss', 'neg_elbo', 'recon', 'kl', 'grad_norm', 'learning_rate')


@dataclasses.dataclass
class Setup:
  """Everything built once from the config before the loop (no arrays of the run's state)."""
  config: Any
  mesh: Any
  info: Any               # data_lib.DataInfo of the dataset (None when reloaded for analysis)
  image_shape: tuple      # (H, W, C)
  model: Any
  tx: Any
  steps_per_epoch: int
  abstract_state: Any     # ShapeDtypeStructs with shardings: the init and restore target


def configure_jax(config):
  """Process-wide JAX settings every run needs (idempotent)."""
  # A random draw sharded over devices equals the unsharded one: results do not depend on the
  # device count (INTERFACES.md determinism rules).
  jax.config.update('jax_threefry_partitionable', True)
  if config.compilation_cache:
    path = os.path.expanduser(config.compilation_cache)
    try:
      os.makedirs(path, exist_ok=True)
      jax.config.update('jax_compilation_cache_dir', path)
      # Without these two the cache skips the small programs a VAE compiles (FACTS.md).
      jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
      jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
    except OSError:
      pass  # an unwritable cache folder costs only compile time


def build_setup(config, mesh=None, image_shape=None):
  """Validates against the devices and the dataset, then builds mesh, model and optimizer.

  With `image_shape` given (reloading a run for analysis) the dataset is not read at all.
  """
  mesh = mesh if mesh is not None else sharding.make_mesh(config)
  validation.validate_batch_split(config, sharding.data_axis_size(mesh))
  info, steps_per_epoch = None, 0
  if image_shape is None:
    info = data_lib.dataset_info(config.data)
    image_shape = info.image_shape
    n_train = info.num_examples[config.data.train_split]
    if n_train < config.batch_size:
      raise validation.ConfigError(
          f'config.batch_size={config.batch_size} is larger than the {n_train} training '
          f'examples of {config.data.name!r}.')
    steps_per_epoch = n_train // config.batch_size
  image_shape = tuple(image_shape)
  validation.validate_image_shape(config, image_shape)
  model = models.build_model(config.model, image_shape)
  tx = optim.make_optimizer(config)
  abstract = jax.eval_shape(functools.partial(_init_state, config, model, tx, image_shape))
  shardings = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
  abstract = ckpt_lib.abstract_with_shardings(abstract, shardings)
  return Setup(config=config, mesh=mesh, info=info, image_shape=image_shape, model=model, tx=tx,
               steps_per_epoch=steps_per_epoch, abstract_state=abstract)


def _x_dtype(config):
  """The model input's dtype: integers for discrete likelihoods, floats otherwise."""
  return jnp.int32 if config.data.preprocess == 'uint8' else jnp.float32


def _init_state(config, model, tx, image_shape):
  key = jax.random.fold_in(jax.random.key(config.seed), STREAM_INIT)
  x = jnp.zeros((1, *image_shape), _x_dtype(config))
  eps = jnp.zeros((1, config.model.latent_dim), jnp.float32)
  params = model.init(key, x, eps)['params']
  return state_lib.create_train_state(params, tx, config)


def init_state(setup):
  """A fresh state, materialised directly with its (replicated) shardings."""
  s = setup
  out = jax.tree.map(lambda a: a.sharding, s.abstract_state)
  init = jax.jit(functools.partial(_init_state, s.config, s.model, s.tx, s.image_shape),
                 out_shardings=out)
  return init()


# ----------------------------------------------------------------------------------------------
# The pure steps.


def per_example_terms(model, likelihood, params, x, eps):
  """recon, kl, neg_elbo: each [B], nats."""
  out = model.apply({'params': params}, x, eps)
  return objectives.elbo_terms(out['posterior'], out['likelihood'], x, likelihood)


def make_grad_fn(setup):
  """(params, x [B,...], eps [B,D], beta) -> (grads of the global mean loss, global metric means).

  The per-device part runs under `jax.shard_map` over the data axis. Each device sums its
  examples' losses and divides by the *global* batch size; with `check_vma` on, the gradient of
  a replicated parameter comes out already summed over the axis, so this is exactly the global
  mean's gradient. (A further pmean would multiply it by the device count: see FACTS.md.)
  """
  config, mesh, model = setup.config, setup.mesh, setup.model
  batch = config.batch_size
  likelihood = config.model.likelihood

  def local_loss(params, x, eps, beta):
    terms = per_example_terms(model, likelihood, params, x, eps)   # each [B_local]
    terms['loss'] = objectives.training_loss(terms, beta)           # [B_local]
    sums = objectives.reduce_terms(terms, None, batch)
    return sums['loss'], sums

  def grads_and_sums(params, x, eps, beta):
    (_, sums), grads = jax.value_and_grad(local_loss, has_aux=True)(params, x, eps, beta)
    return grads, sums

  if mesh.size == 1:
    # One device: the shard_map would be the identity, but it kept XLA from fusing across its
    # boundary (about 6% of the step on CPU here). Same maths, no psum needed.
    return grads_and_sums

  def per_device(params, x, eps, beta):
    grads, sums = grads_and_sums(params, x, eps, beta)
    return grads, jax.lax.psum(sums, sharding.DATA_AXIS)

  return jax.shard_map(
      per_device, mesh=mesh,
      in_specs=(P(), P(sharding.DATA_AXIS), P(sharding.DATA_AXIS), P()),
      out_specs=(P(), P()))


def posterior_noise(state, num_steps, batch, latent, mesh):
  """eps [num_steps, B, D] for the steps state.step ... state.step + num_steps - 1.

  Each step's draw comes from (seed, step) only; drawing a chunk's noise in one batched call
  is the same as drawing it step by step, and cheaper than k small threefry calls on CPU.
  With jax_threefry_partitionable the draw sharded over devices equals the unsharded one.
  """
  steps = state.step + jnp.arange(num_steps, dtype=state.step.dtype)
  draw = lambda s: jax.random.normal(state_lib.model_key(state, STREAM_POSTERIOR, s),
                                     (batch, latent))
  eps = jax.vmap(draw)(steps)
  return jax.lax.with_sharding_constraint(eps, sharding.batch_sharding(mesh, leading_axes=1))


def make_train_step(setup):
  """The pure single train step: (state, uint8 images [B,...], index [B]) -> (state, metrics)."""
  config, mesh, tx = setup.config, setup.mesh, setup.tx
  batch = config.batch_size
  latent = config.model.latent_dim
  gamma = config.loss_momentum_gamma
  sharded_grads = make_grad_fn(setup)

  def train_step(state, images, index, eps=None):
    epoch = state.step // setup.steps_per_epoch
    x = preprocess(images, index, mode=config.data.preprocess, data_seed=config.data_seed,
                   epoch=epoch)                                                   # [B, H, W, C]
    if eps is None:
      eps = posterior_noise(state, 1, batch, latent, mesh)[0]                    # [B, D]
    grads, sums = sharded_grads(state.params, x, eps, state.hparams['beta'])
    grad_norm = optax.tree.norm(grads)
    lr = optim.learning_rate(config, state.hparams['learning_rate'], state.step)
    finite = jnp.isfinite(sums['loss']) & jnp.isfinite(grad_norm)

    def apply_update(operand):
      grads, opt_state, params = operand
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, optim.apply_learning_rate(updates, lr)), opt_state

    # A non-finite step changes nothing but the counters. lax.cond skips the whole optimizer
    # update (cheaper than selecting between two copies of params and moments every step).
    params, opt_state = jax.lax.cond(
        finite, apply_update, lambda operand: (operand[2], operand[1]),
        (grads, state.opt_state, state.params))
    momentum = objectives.momentum_update(state.loss_momentum, sums['loss'], gamma,
                                          state.step == 0)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        loss_momentum=jnp.where(finite, momentum, state.loss_momentum),
        nonfinite_run=jnp.where(finite, 0, state.nonfinite_run + 1),
        nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32),
    )
    step_metrics = dict(sums, grad_norm=grad_norm, learning_rate=lr,
                        nonfinite=(~finite).astype(jnp.int32))
    return new_state, step_metrics

  return train_step


def make_train_chunk(setup, backend):
  """k fused steps in one lax.scan.

  memory: (state, data uint8 [N,...] replicated, index [k, B]) -> gathers on device.
  stream: (state, images uint8 [k, B, ...], index [k, B]).
  Returns (state, chunk metric sums): each mean metric summed over the k steps, the number of
  non-finite steps, the steps of the chunk, and the momentum-tracked loss at its end.
  """
  train_step = make_train_step(setup)

  c = setup.config

  def chunk(state, source, index):
    eps = posterior_noise(state, index.shape[0], c.batch_size, c.model.latent_dim, setup.mesh)
    if backend == 'memory':
      body = lambda s, xs: train_step(s, gather_images(source, xs[0]), xs[0], xs[1])
      state, ms = jax.lax.scan(body, state, (index, eps))
    else:
      body = lambda s, xs: train_step(s, *xs)
      state, ms = jax.lax.scan(body, state, (source, index, eps))
    out = {k: jnp.sum(ms[k]) for k in _MEAN_KEYS}
    out['nonfinite'] = jnp.sum(ms['nonfinite'])
    out['steps'] = jnp.asarray(index.shape[0], jnp.int32)
    out['loss_momentum'] = state.loss_momentum
    return state, out

  return chunk


def jit_train_chunk(setup, backend):
  """The fused chunk, jitted once with explicit shardings and the state donated."""
  mesh = setup.mesh
  state_sh = jax.tree.map(lambda a: a.sharding, setup.abstract_state)
  rep = sharding.replicated(mesh)
  source_sh = rep if backend == 'memory' else sharding.batch_sharding(mesh, leading_axes=1)
  index_sh = sharding.batch_sharding(mesh, leading_axes=1)
  return jax.jit(make_train_chunk(setup, backend),
                 in_shardings=(state_sh, source_sh, index_sh),
                 out_shardings=(state_sh, rep),
                 donate_argnums=(0,))


def make_eval_step(setup):
  """(params, uint8 images [B,...], index [B], mask [B]) -> sums of recon, kl, neg_elbo, count.

  Posterior samples are keyed by (seed, example index), so the numbers of one checkpoint do
  not depend on the batch size, the padding or the device count.
  """
  config, model = setup.config, setup.model
  latent = config.model.latent_dim
  root = jax.random.fold_in(jax.random.key(config.seed), STREAM_EVAL)

  def eval_step(params, images, index, mask):
    x = preprocess(images, index, mode=config.data.preprocess, data_seed=config.data_seed)
    eps = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(root, i), (latent,)))(index)
    terms = per_example_terms(model, config.model.likelihood, params, x, eps)  # each [B]
    weight = mask.astype(jnp.float32)
    sums = objectives.reduce_terms(terms, weight, 1.0)
    sums['count'] = jnp.sum(weight)
    return sums

  return eval_step


def jit_eval_step(setup):
  mesh = setup.mesh
  rep, bat = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  params_sh = jax.tree.map(lambda a: a.sharding, setup.abstract_state.params)
  return jax.jit(make_eval_step(setup), in_shardings=(params_sh, bat, bat, bat),
                 out_shardings=rep)


def evaluate(setup, params, eval_step=None, split=None, arrays=None):
  """Exact metrics over the whole split: every example once, padded batches masked.

  `arrays` (from data.load_arrays) avoids reading the split again. Returns nats per example:
  neg_elbo, recon, kl, plus num_examples.
  """
  config, mesh = setup.config, setup.mesh
  split = split or config.data.eval_split
  eval_step = eval_step or jit_eval_step(setup)
  totals = None
  for batch in data_lib.eval_batches(config.data, split, batch_size=config.eval_batch_size,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count(), arrays=arrays):
    g = sharding.host_to_global((batch['image'], batch['index'], batch['mask']), mesh)
    sums = eval_step(params, *g)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = sharding.to_host(totals)
  count = float(totals.pop('count'))
  result = {k: float(v) / count for k, v in totals.items()}
  result['num_examples'] = int(round(count))
  return result


def make_picture_fn(setup):
  """(params, x [n,...]) -> (reconstructions [n,H,W,C], prior samples [n,H,W,C]) in [0,1]."""
  config, model = setup.config, setup.model
  likelihood = config.model.likelihood
  key = jax.random.fold_in(jax.random.key(config.seed), STREAM_PRIOR)

  def pictures(params, x):
    post = model.apply({'params': params}, x, method=model.encode)
    recon = model.apply({'params': params}, post['mean'], method=model.decode)
    h = jax.random.normal(key, (x.shape[0], config.model.latent_dim))
    samples = model.apply({'params': params}, h, method=model.decode)
    return (distributions.likelihood_mean(likelihood, recon),
            distributions.likelihood_mean(likelihood, samples))

  return jax.jit(pictures)


# ----------------------------------------------------------------------------------------------
# Feeding the fused chunks.


class ChunkFeeder:
  """Produces the (source, index) arguments of each fused call, from any step.

  memory: the split's uint8 array lives on device once (replicated); each call gets the
  [k, B] global indices of its steps (each process builds only its own columns).
  stream: each process reads its rows of each global batch from the TFDS stream.
  """

  def __init__(self, setup, start_step):
    self.setup = setup
    c = setup.config
    self.backend = c.data.backend
    self.k = c.steps_per_call
    lo, local = data_lib.process_rows(c.batch_size, jax.process_index(), jax.process_count())
    self.rows = slice(lo, lo + local)
    if self.backend == 'memory':
      arrays = data_lib.load_arrays(c.data, c.data.train_split)
      self.n = arrays['image'].shape[0]
      self.data = jax.make_array_from_process_local_data(
          sharding.replicated(setup.mesh), arrays['image'], arrays['image'].shape)
    else:
      self.iterator = data_lib.make_train_iterator(
          c.data, batch_size=c.batch_size, data_seed=c.data_seed, start_step=start_step,
          process_index=jax.process_index(), process_count=jax.process_count())

  def __call__(self, step):
    c, mesh = self.setup.config, self.setup.mesh
    if self.backend == 'memory':
      index = data_lib.train_indices(c.data_seed, step, self.k, c.batch_size, self.n)
      return self.data, sharding.host_to_global(index[:, self.rows], mesh, leading_axes=1)
    batches = [next(self.iterator) for _ in range(self.k)]
    images = np.stack([b['image'] for b in batches])
    index = np.stack([b['index'] for b in batches])
    return sharding.host_to_global((images, index), mesh, leading_axes=1)


# ----------------------------------------------------------------------------------------------
# The loop.


def restore_or_init(setup, checkpointer, log=print):
  """Resume order: a checkpoint in the workdir > config.init_from > scratch.

  Damaged checkpoint steps are skipped with a warning (see checkpoint.py).
  """
  config = setup.config
  check = lambda meta: ckpt_lib.check_compatible(meta['config'], config, checkpointer.directory)
  state, meta = checkpointer.restore_good(setup.abstract_state, check_config=check)
  if state is not None:
    log(f'Resuming from the workdir checkpoint at step {meta["step"]}.')
    return state
  if config.init_from:
    source = ckpt_lib.Checkpointer(_run_dir(config.init_from), config, create=False)
    check = lambda meta: ckpt_lib.check_compatible(meta['config'], config, config.init_from)
    restored, meta = source.restore_good(setup.abstract_state, check_config=check)
    source.close()
    if restored is None:
      raise validation.ConfigError(f'config.init_from={config.init_from!r} holds no checkpoint.')
    log(f'Initialising parameters from {config.init_from} step {meta["step"]}; training from '
        'step 0 with a fresh optimizer.')
    return init_state(setup).replace(params=restored.params)
  log('Starting from scratch (no checkpoint in the workdir, no config.init_from).')
  return init_state(setup)


def _run_dir(path):
  """A workdir, given either it or its checkpoints/ folder."""
  path = os.path.abspath(os.path.expanduser(path.rstrip('/')))
  return os.path.dirname(path) if os.path.basename(path) == 'checkpoints' else path


def _train_record(acc, batch_size, seconds):
  steps = int(acc['steps'])
  rec = {k: float(acc[k]) / steps for k in _MEAN_KEYS}
  rec['loss_momentum'] = float(acc['loss_momentum'])
  rec['nonfinite_steps'] = int(acc['nonfinite'])
  rec['images_per_sec'] = steps * batch_size / seconds if seconds > 0 else float('nan')
  return rec


def train_and_evaluate(config, workdir, *, run_eval=True, save_checkpoints=True):
  """Trains and evaluates a VAE as the config says; resumes from the workdir's checkpoints.

  Writes DIR/config.json, DIR/metrics.jsonl, TensorBoard events, DIR/images/*.png,
  DIR/checkpoints/ and DIR/DONE (the final step). `run_eval` and `save_checkpoints` exist for
  scripts/benchmark.py, which times this same loop with both off.

  Returns:
    {'step': final step, 'compile_s': seconds to compile the fused chunk, 'eval': the last
    eval record (None if none ran), 'num_devices': devices on the data axis, 'state': the
    final TrainState, 'setup': the Setup, 'preempted': whether a signal stopped the run}.
  """
  validation.validate_config(config)
  workdir = validation.validate_workdir(workdir)
  configure_jax(config)
  setup = build_setup(config)
  is_main = jax.process_index() == 0
  log = print if is_main else (lambda *a, **k: None)

  checkpointer = ckpt_lib.Checkpointer(workdir, config) if save_checkpoints else None
  state = restore_or_init(setup, checkpointer, log) if checkpointer else init_state(setup)
  step = int(state.step)
  if step % config.steps_per_call:
    raise validation.ConfigError(
        f'The checkpoint is at step {step}, which is not a multiple of config.steps_per_call='
        f'{config.steps_per_call}: fused chunks start at multiples of k. Resume with a '
        'steps_per_call that divides it (e.g. the one the run was started with).')
  metrics_lib.write_config(workdir, config)
  writer = metrics_lib.MetricWriter(workdir)
  if step >= config.num_train_steps:
    log(f'Nothing to do: step {step} >= num_train_steps {config.num_train_steps}.')

  feeder = ChunkFeeder(setup, step)
  eval_step = jit_eval_step(setup) if run_eval else None
  pictures = make_picture_fn(setup) if run_eval else None
  # The memory back end holds the eval split once instead of re-reading it at every eval.
  eval_arrays = None
  if run_eval and config.data.backend == 'memory':
    eval_arrays = data_lib.load_arrays(config.data, config.data.eval_split)
  eval_images, last_eval = None, None
  compile_s = 0.0
  if step < config.num_train_steps:
    t0 = time.perf_counter()
    source, index = feeder(step)
    chunk_fn = jit_train_chunk(setup, config.data.backend).lower(state, source, index).compile()
    compile_s = time.perf_counter() - t0

  progress = _progress(config, step, is_main)
  acc, t_log = None, time.perf_counter()
  preempted = False
  with _PreemptionFlag() as stop_requested:
    while step < config.num_train_steps:
      state, m = chunk_fn(state, source, index)
      step += config.steps_per_call
      acc = m if acc is None else _accumulate(acc, m)
      final = step >= config.num_train_steps
      preempted = not final and stop_requested()
      if not (final or preempted):  # prepare the next call's inputs while this one runs
        source, index = feeder(step)
      if step % config.log_every_steps == 0 or final or preempted:
        acc = sharding.to_host(acc)
        now = time.perf_counter()
        rec = _train_record(acc, config.batch_size, now - t_log)
        writer.write(step, 'train', rec)
        if progress.disable:  # not a terminal: one plain line per log interval
          log(f'step {step}/{config.num_train_steps}: loss {rec["loss"]:.3f}, neg_elbo '
              f'{rec["neg_elbo"]:.3f} nats/example, {rec["images_per_sec"]:.0f} images/s')
        else:
          progress.set_postfix(loss=f'{rec["loss"]:.2f}', neg_elbo=f'{rec["neg_elbo"]:.2f}',
                               img_s=f'{rec["images_per_sec"]:.0f}')
          progress.update(step - progress.n)
        acc = None
      t_pause = time.perf_counter()
      save_now = checkpointer and (step % config.checkpoint_every_steps == 0 or final
                                   or preempted)
      if save_now or step % config.log_every_steps == 0:
        _check_nonfinite(config, state, step)  # before anything new is saved
      did_eval = run_eval and not preempted and (step % config.eval_every_steps == 0 or final)
      if did_eval:
        last_eval = evaluate(setup, state.params, eval_step, arrays=eval_arrays)
        last_eval['split'] = config.data.eval_split
        writer.write(step, 'eval', last_eval)
        eval_images = _write_pictures(setup, workdir, step, state.params, pictures, eval_images,
                                      eval_arrays)
        if is_main:
          progress.write(f'step {step}: {config.data.eval_split} neg_elbo '
                         f'{last_eval["neg_elbo"]:.3f} = recon {last_eval["recon"]:.3f} '
                         f'+ kl {last_eval["kl"]:.3f} nats/example')
      if save_now:
        checkpointer.save(step, state, config, setup.image_shape,
                          last_eval if did_eval else None)
      if preempted:
        break
      if acc is None:  # evaluation and saving are not training throughput
        t_log = time.perf_counter()
      else:
        t_log += time.perf_counter() - t_pause
  progress.close()
  if checkpointer:
    checkpointer.close()
  writer.close()
  if preempted:
    log(f'Stopped by a signal at step {step}: checkpoint saved. Run the same command again to '
        'resume exactly from here.')
  elif is_main and save_checkpoints:
    with open(os.path.join(workdir, 'DONE'), 'w') as f:
      f.write(f'{int(state.step)}\n')
  return {'step': int(state.step), 'compile_s': compile_s, 'eval': last_eval,
          'num_devices': sharding.data_axis_size(setup.mesh), 'state': state, 'setup': setup,
          'preempted': preempted}


class _PreemptionFlag:
  """SIGTERM / SIGINT ask the loop to finish its chunk, save and exit (a second one kills).

  In a multi-process job the processes agree: the flag is combined across processes after
  every chunk, so all of them stop at the same step.
  """

  def __enter__(self):
    import signal
    import threading
    self._signal = signal
    self._requested = False
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self.requested

  def _handle(self, signum, frame):
    del frame
    self._requested = True
    print(f'Received signal {signum}: finishing the current chunk, then saving and exiting.',
          file=sys.stderr, flush=True)
    self._signal.signal(signum, self._previous.get(signum, self._signal.SIG_DFL))

  def requested(self):
    if jax.process_count() == 1:
      return self._requested
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray(self._requested, np.int32))
    return bool(np.any(flags))

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      self._signal.signal(sig, handler)
    return False


def _accumulate(acc, m):
  out = jax.tree.map(jnp.add, acc, m)
  out['loss_momentum'] = m['loss_momentum']
  return out


def _check_nonfinite(config, state, step):
  run = int(state.nonfinite_run)
  if run > config.max_consecutive_nonfinite:
    raise FloatingPointError(
        f'{run} consecutive train steps (steps {step - run + 1} to {step}) had a non-finite '
        'loss or gradient '
        f'(more than config.max_consecutive_nonfinite={config.max_consecutive_nonfinite}); '
        'they were skipped and nothing new was saved. Lower the learning rate or enable '
        'clipping (config.optim.clip_norm).')


def _write_pictures(setup, workdir, step, params, pictures, x, arrays=None):
  """Reconstructions and prior samples of step `step` as PNG grids (inputs.png once).

  Returns the preprocessed input images, for the next call.
  """
  config = setup.config
  d = os.path.join(workdir, 'images')
  if x is None:
    n = min(config.images.num, setup.info.num_examples[config.data.eval_split])
    batch = next(iter(data_lib.eval_batches(config.data, config.data.eval_split, batch_size=n,
                                            arrays=arrays)))
    x = preprocess(jnp.asarray(batch['image']), jnp.asarray(batch['index']),
                   mode=config.data.preprocess, data_seed=config.data_seed)
    scale = 255.0 if jnp.issubdtype(x.dtype, jnp.integer) else 1.0
    metrics_lib.save_png(os.path.join(d, 'inputs.png'), np.asarray(x) / scale)
  recon, samples = pictures(jax.device_get(params), x)
  metrics_lib.save_png(os.path.join(d, f'reconstructions_step_{step}.png'), np.asarray(recon))
  metrics_lib.save_png(os.path.join(d, f'samples_step_{step}.png'), np.asarray(samples))
  return x


def _progress(config, start, enabled):
  """A tqdm bar on a terminal; disabled (plain log lines instead) when stderr is a file or pipe,
  where its carriage-return redraws would fill the log."""
  from tqdm import tqdm
  return tqdm(total=config.num_train_steps, initial=start,
              disable=not (enabled and sys.stderr.isatty()), unit='step', dynamic_ncols=True,
              mininterval=1.0)
