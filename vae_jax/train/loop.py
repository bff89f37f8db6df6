"""The train step (pure, jitted once with explicit shardings), the fused chunk and the loop.

Data flow of one fused call (k = config.steps_per_call steps in one `lax.scan`):
  uint8 images (on device) -> preprocess (binarization keyed by data_seed, example, epoch)
  -> model.terms(params, x, key of (seed, step)) -> mean loss and its gradient over the global
  batch -> non-finite guard and gradient-norm guard (optim's skipping rules) -> optax update at
  the schedule's learning rate, and the parameter EMA (config.ema_decay) -> momentum-tracked
  loss -> metric sums (stay on device).
The step is plain `jit` over a batch-sharded input: XLA inserts the gradient all-reduce, and the
model draws the batch's noise in the global view, so the numbers do not depend on the device
count. Metrics leave the device only every log interval.
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vae_jax import (
  analysis,
  experiment,
  objectives,
  optim,
  runinfo,
  sharding,
  validation,
  workdir_lock,
)
from vae_jax import checkpoint as ckpt_lib
from vae_jax import data as data_lib
from vae_jax import evaluate as eval_lib
from vae_jax import metrics as metrics_lib
from vae_jax import state as state_lib
from vae_jax.data.preprocess import gather_images, preprocess

# ----------------------------------------------------------------------------------------------
# The pure steps.


def make_loss_fn(model, objective):
  """(params, x [B,...], key, hparams, step) -> (training loss, batch means of the terms).

  The one reduction of the per-example terms: means over the global batch (terms with unit
  axes, [B, U], become [U]). `objective` is config.objective (its static fields).
  """

  def loss_fn(params, x, key, hparams, step):
    terms = model.terms(params, x, key)                     # each [B] (or [B, U])
    if objective.name == 'iwae':
      keys = jax.random.split(jax.random.fold_in(key, 1), x.shape[0])  # one per example
      log_w = model.log_weights(params, x, keys, objective.num_samples, 0)  # [K, B]
      terms['iwae'] = objectives.iwae_terms(log_w)          # [B]
    means = objectives.reduce_terms(terms, None, x.shape[0])
    means['loss'] = objectives.training_objective(means, hparams, step, objective.free_bits_per)
    return means['loss'], means

  return loss_fn


def make_train_step(exp):
  """The pure single train step: (state, images uint8 [B,...], index [B]) -> (state, metrics).

  A step whose loss or gradient is not finite, or whose gradient norm a skipping rule rejects,
  applies no update: it changes nothing but the step, the counters and the guard's norm
  history (parameters, optimizer moments, EMA and loss momentum stay). Everything is traced
  (lax.cond, no host callbacks), so the step vmaps over a population of states.
  """
  config, tx = exp.config, exp.tx
  gamma = config.loss_momentum_gamma
  ema_decay = config.ema_decay
  grad_fn = jax.value_and_grad(make_loss_fn(exp.model, config.objective), has_aux=True)
  batch_sharding = sharding.batch_sharding(exp.mesh)
  steps_per_epoch = exp.steps_per_epoch

  def train_step(state, images, index):
    epoch = state.step // steps_per_epoch
    x = preprocess(images, index, mode=config.data.preprocess, data_seed=config.data_seed,
                   epoch=epoch)                                                   # [B, H, W, C]
    x = jax.lax.with_sharding_constraint(x, batch_sharding)
    (_, means), grads = grad_fn(state.params, x, state.train_key(), state.hparams, state.step)
    means = {k: v for k, v in means.items() if v.ndim == 0}  # per-unit means are not logged
    grad_norm = optax.tree.norm(grads)
    lr = optim.learning_rate(config, state.hparams['learning_rate'], state.step)
    finite = jnp.isfinite(means['loss']) & jnp.isfinite(grad_norm)
    skip = state.skip
    skipped = jnp.zeros((), bool)
    if skip is not None:  # static: the guard is part of the state only when a rule is on
      skipped = finite & (grad_norm > optim.skip_limit(config, skip))
      skip = optim.update_skip_state(skip, grad_norm, finite, skipped)
    applied = finite & ~skipped

    def apply_update(operand):
      grads, opt_state, params, ema = operand
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, optim.apply_learning_rate(updates, lr))
      if ema is not None:
        ema = state_lib.update_ema(ema, params, ema_decay)
      return params, opt_state, ema

    # A step that is not applied changes nothing but the counters. lax.cond skips the whole
    # optimizer and EMA update (cheaper than selecting between two copies of params and moments
    # every step).
    params, opt_state, ema = jax.lax.cond(
        applied, apply_update, lambda operand: (operand[2], operand[1], operand[3]),
        (grads, state.opt_state, state.params, state.ema))
    momentum = objectives.momentum_update(state.loss_momentum, means['loss'], gamma,
                                          state.step == 0)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        loss_momentum=jnp.where(applied, momentum, state.loss_momentum),
        nonfinite_run=jnp.where(finite, 0, state.nonfinite_run + 1),
        nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32),
        ema=ema,
        skip=skip,
    )
    step_metrics = dict(means, grad_norm=grad_norm, learning_rate=lr,
                        nonfinite=(~finite).astype(jnp.int32),
                        skipped=skipped.astype(jnp.int32))
    return new_state, step_metrics

  return train_step


def make_train_chunk(exp, backend, step_fn=None):
  """k fused steps in one lax.scan (of step_fn; default: make_train_step(exp)).

  memory: (state, data uint8 [N,...] replicated, (positions, index) [k, B]) -> gathers on
  device. stream: (state, images uint8 [k, B, ...], index [k, B]).
  Returns (state, chunk sums): every step metric summed over the k steps (the non-finite and
  skipped counts included), the steps of the chunk, and the momentum-tracked loss and the total
  of skipped steps at its end. A population's vmapped step (vae_jax.population) gets each of
  them per member, [P].
  """
  train_step = step_fn or make_train_step(exp)

  def chunk(state, source, index):
    if backend == 'memory':
      positions, index = index
      body = lambda s, xs: train_step(s, gather_images(source, xs[0]), xs[1])
      state, ms = jax.lax.scan(body, state, (positions, index))
    else:
      body = lambda s, xs: train_step(s, *xs)
      state, ms = jax.lax.scan(body, state, (source, index))
    out = {k: jnp.sum(v, axis=0) for k, v in ms.items()}  # over the k steps
    out['steps'] = jnp.asarray(index.shape[0], jnp.int32)
    out['loss_momentum'] = state.loss_momentum
    out['skipped_total'] = (state.skip['total'] if state.skip is not None
                            else jnp.zeros_like(state.step))
    return state, out

  return chunk


def jit_train_chunk(exp, backend, step_fn=None, abstract_state=None):
  """The fused chunk, jitted once with explicit shardings and the state donated.

  abstract_state: the state's structure and shardings (default: exp.abstract_state).
  """
  mesh = exp.mesh
  abstract_state = exp.abstract_state if abstract_state is None else abstract_state
  state_sh = jax.tree.map(lambda a: a.sharding, abstract_state)
  rep = sharding.replicated(mesh)
  rows = sharding.batch_sharding(mesh, leading_axes=1)
  source_sh, index_sh = (rep, (rows, rows)) if backend == 'memory' else (rows, rows)
  return jax.jit(make_train_chunk(exp, backend, step_fn),
                 in_shardings=(state_sh, source_sh, index_sh),
                 out_shardings=(state_sh, rep),
                 donate_argnums=(0,))


# ----------------------------------------------------------------------------------------------
# Feeding the fused chunks.


class ChunkFeeder:
  """Produces the (source, index) arguments of each fused call, from any step.

  memory: the split's uint8 array lives on device once (replicated); each call gets the
  [k, B] positions of its steps' examples in that array and their indices in the base split
  (the binarization keys); each process builds only its own columns.
  stream: each process reads its rows of each global batch from the TFDS stream.
  arrays: the training split's arrays ({'image', 'index'} as data.load_arrays gives them) to
  hold instead of reading the dataset (memory back end only; the benchmark's synthetic data).
  """

  def __init__(self, exp, start_step, arrays=None):
    self.exp = exp
    c = exp.config
    self.backend = c.data.backend
    self.k = c.steps_per_call
    if arrays is not None and self.backend != 'memory':
      raise ValueError('Given arrays need data.backend=memory.')
    if self.backend == 'memory':
      if arrays is None:
        arrays = data_lib.load_arrays(c.data, c.data.train_split)
      self.base_index = arrays['index']
      self.data = jax.make_array_from_process_local_data(
          sharding.replicated(exp.mesh), arrays['image'], arrays['image'].shape)
    else:
      self.iterator = data_lib.make_train_iterator(
          c.data, batch_size=c.batch_size, data_seed=c.data_seed, start_step=start_step,
          process_index=jax.process_index(), process_count=jax.process_count())

  def __call__(self, step):
    c, mesh = self.exp.config, self.exp.mesh
    if self.backend == 'memory':
      rows = data_lib.memory_train_indices(
          self.base_index, data_seed=c.data_seed, start_step=step, num_steps=self.k,
          batch_size=c.batch_size, process_index=jax.process_index(),
          process_count=jax.process_count())
      return self.data, sharding.host_to_global(rows, mesh, leading_axes=1)
    batches = [next(self.iterator) for _ in range(self.k)]
    images = np.stack([b['image'] for b in batches])
    index = np.stack([b['index'] for b in batches])
    return sharding.host_to_global((images, index), mesh, leading_axes=1)


def compile_chunk(exp, state, feeder, step):
  """(compiled fused chunk, its first (source, index), seconds to compile)."""
  t0 = time.perf_counter()
  source, index = feeder(step)
  fn = jit_train_chunk(exp, exp.config.data.backend).lower(state, source, index).compile()
  return fn, (source, index), time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------
# Resume.


def restore_or_init(exp, checkpointer, log=print, step=None):
  """Resume order: a checkpoint in the workdir > config.init_from > scratch.

  Returns (state, meta of the restored checkpoint or None). On a resume the config's traced
  hyperparameters (learning rate, beta) take effect from the resumed step, and so do its
  stability options (state.adapt: an EMA or a skipping guard switched on starts there).

  step: the newest checkpoint step to consider (None: all); a population resumes its members
  at the step all of them hold.
  """
  config = exp.config
  check = lambda meta: ckpt_lib.check_compatible(meta['config'], config, checkpointer.directory)
  state, meta = checkpointer.restore_good(_saved_layout(exp), step=step, check_config=check)
  if state is not None:
    log(f'Resuming from the workdir checkpoint at step {meta["step"]}.')
    state = state_lib.adapt(state, config).replace(
        hparams=state_lib.hparams_from_config(config))
    return _placed(exp, state), meta
  if config.init_from:
    params, step = _init_from_params(exp)
    log(f'Initialising parameters from {config.init_from} step {step}; training from step 0 '
        'with a fresh optimizer' + (' and an EMA starting there.' if config.ema_decay else '.'))
    return _placed(exp, state_lib.with_params(experiment.init_state(exp), params)), None
  log('Starting from scratch (no checkpoint in the workdir, no config.init_from).')
  return experiment.init_state(exp), None


def _saved_layout(exp):
  """The restore target of a checkpoint of this run: its optional parts as saved."""
  return lambda meta: state_lib.restore_target(exp.abstract_state,
                                               eval_lib.saved_config(meta['config']))


def _placed(exp, state):
  """`state` on the shardings the compiled chunk expects (adapt makes new arrays)."""
  return jax.device_put(state, jax.tree.map(lambda a: a.sharding, exp.abstract_state))


def _init_from_params(exp):
  """(parameters, step) of config.init_from's newest good checkpoint.

  Only the model must match (fine-tuning may change the data, the optimizer, the batch...):
  the source is restored into its own config's abstract state, then its parameters are kept.
  """
  config = exp.config
  source = ckpt_lib.Checkpointer(_run_dir(config.init_from), config, create=False)
  try:
    steps = source.all_steps()
    if not steps:
      raise validation.ConfigError(f'config.init_from={config.init_from!r} holds no checkpoint.')
    meta = source.restore_meta(steps[-1])
    ckpt_lib.check_compatible(meta['config'], config, config.init_from, only='model')
    if tuple(meta['image_shape']) != tuple(exp.image_shape):
      raise validation.ConfigError(
          f'config.init_from={config.init_from!r} was trained on images of shape '
          f'{tuple(meta["image_shape"])}, this run has {exp.image_shape}.')
    source_config = eval_lib.saved_config(meta['config'])
    abstract = experiment.abstract_state(source_config, exp.mesh, exp.image_shape)
    target = lambda m: state_lib.restore_target(abstract, eval_lib.saved_config(m['config']))
    check = lambda m: ckpt_lib.check_compatible(m['config'], config, config.init_from,
                                                only='model')
    restored, meta = source.restore_good(target, check_config=check)
  finally:
    source.close()
  return restored.params, meta['step']


def _run_dir(path):
  """A workdir, given either it or its checkpoints/ folder."""
  path = os.path.abspath(os.path.expanduser(path.rstrip('/')))
  return os.path.dirname(path) if os.path.basename(path) == 'checkpoints' else path


def _record_config(workdir, config, meta, step, writer, log):
  """config.json, the config history, and a metrics record of every applied change."""
  changes = []
  if meta is not None:
    changes = ckpt_lib.config_changes(meta['config'], config)
    for key, old, new in changes:
      log(f'config.{key} changed from {old!r} to {new!r}: applied from step {step}.')
    if changes:
      writer.write(step, 'config_change', {k: new for k, _, new in changes})
  metrics_lib.write_config(workdir, config)
  metrics_lib.append_config_history(workdir, config, step, changes)


# ----------------------------------------------------------------------------------------------
# The loop.


def _train_record(acc, batch_size, seconds):
  steps = int(acc.pop('steps'))
  rec = {'loss_momentum': float(acc.pop('loss_momentum')),
         'nonfinite_steps': int(acc.pop('nonfinite')),
         'skipped_steps': int(acc.pop('skipped', 0)),       # updates the norm guard skipped
         'skipped_total': int(acc.pop('skipped_total', 0))}  # ... since the run began
  rec.update({k: float(v) / steps for k, v in acc.items()})
  rec['images_per_sec'] = steps * batch_size / seconds if seconds > 0 else float('nan')
  return rec


def done_record(config, step):
  """What DONE holds: the final step and the hash of the config the run finished with."""
  return {'step': int(step), 'config_sha256': metrics_lib.config_digest(config)}


def train_and_evaluate(config, workdir):
  """Trains and evaluates a VAE as the config says; resumes from the workdir's checkpoints.

  Writes DIR/config.json (and config_history.jsonl), DIR/run.json, DIR/metrics.jsonl,
  TensorBoard events, DIR/images/*.png, DIR/checkpoints/ and DIR/DONE. The workdir is locked
  for the run's life: a second run on it is refused.

  A run stopped early (a signal, or config.max_train_seconds spent) saves a checkpoint, writes
  a `stop` record saying why, and no DONE: the same command resumes it exactly. The budget
  stop also evaluates, as at the end; the signal stop does not (it must be quick).

  Returns:
    {'step': final step, 'compile_s': seconds to compile the fused chunk, 'eval': the last
    eval records by split ({} if none ran), 'num_devices': devices on the data axis,
    'state': the final TrainState, 'experiment': the Experiment, 'preempted': whether a
    signal stopped the run, 'stopped': None, 'signal' or 'max_train_seconds'}.
  """
  t_start = time.perf_counter()  # config.max_train_seconds counts from here
  validation.validate_config(config)
  workdir = validation.validate_workdir(workdir)
  experiment.configure_jax(config)
  # Locked before the dataset is read, so a second run on a busy workdir stops at once.
  with workdir_lock.hold(workdir, jax.process_index()):
    exp = experiment.build(config)
    is_main = jax.process_index() == 0
    log = print if is_main else (lambda *a, **k: None)
    return _train(exp, workdir, log, is_main, t_start)


def _train(exp, workdir, log, is_main, t_start):
  config = exp.config
  checkpointer = ckpt_lib.Checkpointer(workdir, config)
  state, meta = restore_or_init(exp, checkpointer, log)
  step = int(state.step)
  if step % config.steps_per_call:
    checkpointer.close()
    raise validation.ConfigError(
        f'The checkpoint is at step {step}, which is not a multiple of config.steps_per_call='
        f'{config.steps_per_call}: fused chunks start at multiples of k. Resume with a '
        'steps_per_call that divides it (e.g. the one the run was started with).')
  writer = metrics_lib.MetricWriter(workdir)
  _record_config(workdir, config, meta, step, writer, log)
  runinfo.write_run_info(workdir, step)
  result = {'step': step, 'compile_s': 0.0, 'eval': {}, 'state': state, 'experiment': exp,
            'num_devices': sharding.data_axis_size(exp.mesh), 'preempted': False,
            'stopped': None}
  if step >= config.num_train_steps:
    log(f'Nothing to do: step {step} >= num_train_steps {config.num_train_steps}.')
    checkpointer.close()
    writer.close()
    _write_done(workdir, config, step, is_main)
    return result

  feeder = ChunkFeeder(exp, step)
  evaluator = _PeriodicEval(exp, workdir, writer)
  chunk_fn, (source, index), result['compile_s'] = compile_chunk(exp, state, feeder, step)
  progress = _progress(config, step, is_main)
  acc, t_log = None, time.perf_counter()
  preempted = out_of_time = False
  with _PreemptionFlag() as stop_requested:
    while step < config.num_train_steps:
      state, m = chunk_fn(state, source, index)
      step += config.steps_per_call
      acc = m if acc is None else _accumulate(acc, m)
      final = step >= config.num_train_steps
      preempted = not final and stop_requested()
      out_of_time = not (final or preempted) and _budget_spent(config, t_start)
      stopping = preempted or out_of_time
      if not (final or stopping):  # prepare the next call's inputs while this one runs
        source, index = feeder(step)
      if step % config.log_every_steps == 0 or final or stopping:
        acc = sharding.to_host(acc)
        rec = _train_record(acc, config.batch_size, time.perf_counter() - t_log)
        writer.write(step, 'train', rec)
        _show_progress(progress, config, step, rec, log)
        if rec['skipped_steps']:
          log(f'step {step}: {rec["skipped_steps"]} updates skipped in this interval by the '
              f'gradient-norm guard ({rec["skipped_total"]} since the start).')
        acc = None
      # Wait for the device before pausing the clock, so evaluation and saving never hide
      # compute of the chunk.
      jax.block_until_ready(state)
      t_pause = time.perf_counter()
      save_now = step % config.checkpoint_every_steps == 0 or final or stopping
      if save_now or step % config.log_every_steps == 0:
        _check_nonfinite(config, state, step)  # before anything new is saved
        _check_skipped(config, state, step)
      did_eval = not preempted and (step % config.eval_every_steps == 0 or final or out_of_time)
      if did_eval:
        result['eval'] = evaluator(step, *state_lib.eval_params(state))
        if is_main:
          progress.write(evaluator.summary(step))
      if save_now:
        selection = result['eval'].get(config.data.valid_split) if did_eval else None
        checkpointer.save(step, state, config, exp.image_shape, selection)
      if stopping:
        break
      if acc is None:  # evaluation and saving are not training throughput
        t_log = time.perf_counter()
      else:
        t_log += time.perf_counter() - t_pause
  progress.close()
  checkpointer.close()
  stopped = 'signal' if preempted else 'max_train_seconds' if out_of_time else None
  if stopped:
    writer.write(step, 'stop', {'reason': stopped, 'seconds': time.perf_counter() - t_start,
                                'max_train_seconds': config.max_train_seconds,
                                'num_train_steps': config.num_train_steps})
  writer.close()
  result.update(step=int(state.step), state=state, preempted=preempted, stopped=stopped)
  if preempted:
    log(f'Stopped by a signal at step {step}: checkpoint saved. Run the same command again to '
        'resume exactly from here.')
  elif out_of_time:
    log(f'Stopped at step {step} of {config.num_train_steps}: config.max_train_seconds='
        f'{config.max_train_seconds:g} is spent. Evaluated and saved; no DONE. Run the same '
        'command again (each run has its own budget) to resume exactly from here.')
  else:
    _write_done(workdir, config, int(state.step), is_main)
  return result


def _budget_spent(config, t_start):
  """Whether config.max_train_seconds is spent (every process agrees: any one's clock)."""
  if config.max_train_seconds <= 0:
    return False
  return _any_process(time.perf_counter() - t_start >= config.max_train_seconds)


def _any_process(flag):
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  flags = multihost_utils.process_allgather(np.asarray(flag, np.int32))
  return bool(np.any(flags))


def _write_done(workdir, config, step, is_main):
  if is_main:
    with open(os.path.join(workdir, 'DONE'), 'w') as f:
      json.dump(done_record(config, step), f)
      f.write('\n')


class _PeriodicEval:
  """The loop's evaluations: the validation split (model selection) and the test split
  (reporting only), full and exact, plus the picture grids.

  With config.eval_num_samples = K > 0 each record also holds the K-sample nll and the
  posterior gap (eval_lib.estimate, compiled once for the run). The validation record also
  counts active units, in all and per stochastic group. Records name the parameters
  they evaluated: params='ema' (the EMA, when config.ema_decay > 0: the loop passes
  state.eval_params) or 'state' (the train state's); the pictures show the same parameters.
  An EMA record holds `ema_init_weight`, and `ema_warning` while the EMA is still dominated by
  its starting parameters (also logged).
  """

  def __init__(self, exp, workdir, writer):
    self.exp, self.workdir, self.writer = exp, workdir, writer
    c = exp.config
    d = c.data
    self.splits = list(dict.fromkeys((d.valid_split, d.eval_split)))  # each split once
    self.step_fn = eval_lib.jit_eval_step(exp)
    self.num_samples = c.eval_num_samples
    self.chunk_size = c.eval_chunk_size or eval_lib.default_chunk_size(exp, c.eval_batch_size)
    self.estimate_step = (eval_lib.EstimateStep(exp, self.num_samples, self.chunk_size)
                          if self.num_samples else None)
    self.units_fn = eval_lib.jit_unit_statistics_fn(exp)
    self.pictures = analysis.make_picture_fn(exp)
    # The memory back end holds the eval splits once instead of re-reading them every time.
    self.arrays = {s: data_lib.load_arrays(d, s) if d.backend == 'memory' else None
                   for s in self.splits}
    self.picture_inputs = None
    self.last = {}

  def __call__(self, step, params, params_kind='state', notes=None):
    self.last = {}
    notes = notes or {}
    if 'ema_warning' in notes and jax.process_index() == 0:
      print(f'WARNING: step {step}: evaluating the EMA of the parameters, but '
            f'{notes["ema_warning"]}', file=sys.stderr, flush=True)
    for split in self.splits:
      if self.num_samples:
        rec = eval_lib.estimate(self.exp, params, split, self.num_samples,
                                chunk_size=self.chunk_size, arrays=self.arrays[split],
                                step=self.estimate_step, units=False)
        rec = {k: v for k, v in rec.items() if k != 'per_example'}
      else:
        rec = eval_lib.evaluate(self.exp, params, split, eval_step=self.step_fn,
                                arrays=self.arrays[split])
      if split == self.splits[0]:
        # Active units (Var_x E_q[h_d] > 0.01) of the validation split, per stochastic group.
        units = eval_lib.unit_statistics(self.exp, params, split, arrays=self.arrays[split],
                                         mutual_info=False, fn=self.units_fn)
        rec['active_units'] = units['active_units']
        rec['active_units_per_group'] = units['active_units_per_group']
      rec['params'] = params_kind
      rec.update(notes)
      self.writer.write(step, 'eval', rec)
      self.last[split] = rec
    split = self.exp.config.data.eval_split
    self.picture_inputs = analysis.write_training_pictures(
        self.exp, self.workdir, step, params, self.pictures, self.picture_inputs,
        self.arrays[split])
    return self.last

  def summary(self, step):
    kind = next(iter(self.last.values()), {}).get('params', 'state')
    parts = [f'{s} neg_elbo {r["neg_elbo"]:.3f} +- {r["neg_elbo_stderr"]:.3f} = recon '
             f'{r["recon"]:.3f} + kl {r["kl"]:.3f}'
             + (f', nll(K={self.num_samples}) {r["nll"]:.3f} +- {r["nll_stderr"]:.3f}'
                if self.num_samples else '') for s, r in self.last.items()]
    return (f'step {step} ({"EMA" if kind == "ema" else "train state"} parameters): '
            + '; '.join(parts) + ' nats/example')


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
    return _any_process(self._requested)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      self._signal.signal(sig, handler)
    return False


def _accumulate(acc, m):
  out = jax.tree.map(jnp.add, acc, m)
  for key in ('loss_momentum', 'skipped_total'):  # values at the end, not sums
    if key in m:
      out[key] = m[key]
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


class SkippedUpdatesError(RuntimeError):
  """The gradient-norm guard skipped more consecutive updates than the config tolerates."""


def _check_skipped(config, state, step):
  if state.skip is None:
    return
  run = int(state.skip['run'])
  if run > config.max_consecutive_skipped:
    o = config.optim
    raise SkippedUpdatesError(
        f'{run} consecutive train steps (steps {step - run + 1} to {step}) had their update '
        'skipped by the gradient-norm guard (more than config.max_consecutive_skipped='
        f'{config.max_consecutive_skipped}); nothing new was saved. '
        + (f'A fixed optim.skip_threshold={o.skip_threshold:g} locks once the gradient norm '
           'stays above it (openai/vdvae#25): raise it, or use the adaptive rule '
           '(optim.skip_factor, with skip_threshold=0).' if o.skip_threshold > 0 else
           'The norm keeps growing faster than the adaptive rule follows: lower the learning '
           'rate, or raise optim.skip_factor.'))


def _show_progress(progress, config, step, rec, log):
  if progress.disable:  # not a terminal: one plain line per log interval
    log(f'step {step}/{config.num_train_steps}: loss {rec["loss"]:.3f}, neg_elbo '
        f'{rec["neg_elbo"]:.3f} nats/example, {rec["images_per_sec"]:.0f} images/s')
  else:
    progress.set_postfix(loss=f'{rec["loss"]:.2f}', neg_elbo=f'{rec["neg_elbo"]:.2f}',
                         img_s=f'{rec["images_per_sec"]:.0f}')
    progress.update(step - progress.n)


def _progress(config, start, enabled):
  """A tqdm bar on a terminal; disabled (plain log lines instead) when stderr is a file or pipe,
  where its carriage-return redraws would fill the log."""
  from tqdm import tqdm
  return tqdm(total=config.num_train_steps, initial=start,
              disable=not (enabled and sys.stderr.isatty()), unit='step', dynamic_ncols=True,
              mininterval=1.0)
