"""The pure train step, the fused chunk of k steps (one `lax.scan`) and its jit.

Data flow of one fused call (k = config.steps_per_call steps in one `lax.scan`):
  uint8 images (on device) -> preprocess (binarization keyed by data_seed, example, epoch)
  -> model.terms(params, x, key of (seed, step)) -> mean loss and its gradient over the global
  batch -> non-finite guard and gradient-norm guard (optim's skipping rules) -> optax update at
  the schedule's learning rate, and the parameter EMA (config.ema_decay) -> momentum-tracked
  loss -> metric sums (stay on device).
The step is plain `jit` over a batch-sharded input: XLA inserts the gradient all-reduce, and the
model draws the batch's noise in the global view, so the numbers do not depend on the device
count. Metrics leave the device only every log interval (vae_jax.train.loop).
"""

import time

import jax
import jax.numpy as jnp
import optax

from vae_jax import optim, sharding
from vae_jax import state as state_lib
from vae_jax.data.preprocess import gather_images, preprocess
from vae_jax.maths import objectives


def make_loss_fn(model, objective):
  """(params, x [B,...], key, hparams, step) -> (training loss, batch means of the terms).

  The one reduction of the per-example terms: means over the global batch (terms with unit
  axes, [B, U], become [U]). `objective` is config.objective (its static fields).
  """

  def loss_fn(params, x, key, hparams, step):
    terms = model.terms(params, x, key)                     # each [B] (or [B, U])
    if objective.name == 'iwae':
      keys = jax.random.split(jax.random.fold_in(key, 1), x.shape[0])  # one per example
      if objective.iwae_gradient == 'dreg':  # same value, the doubly reparameterised gradient
        log_w_theta, log_w_phi = model.dreg_log_weights(params, x, keys, objective.num_samples)
        terms['iwae'] = objectives.dreg_iwae_terms(log_w_theta, log_w_phi)  # [B]
      else:
        log_w = model.log_weights(params, x, keys, objective.num_samples, 0)  # [K, B]
        terms['iwae'] = objectives.iwae_terms(log_w)        # [B]
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
                   epoch=epoch, split=config.data.train_split)                    # [B, H, W, C]
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
    # L_0 is the loss of the first step that was applied (not of step 0, which may not be):
    # before it every step was non-finite or skipped.
    applied_before = state.step - state.nonfinite_total - (
        state.skip['total'] if state.skip is not None else 0)
    momentum = objectives.momentum_update(state.loss_momentum, means['loss'], gamma,
                                          applied_before == 0)
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
                        skipped=skipped.astype(jnp.int32),
                        # the current runs after this step (the chunk keeps their maximum)
                        nonfinite_run=new_state.nonfinite_run,
                        skipped_run=(skip['run'] if skip is not None
                                     else jnp.zeros((), jnp.int32)))
    return new_state, step_metrics

  return train_step


def make_train_chunk(exp, backend, step_fn=None):
  """k fused steps in one lax.scan (of step_fn; default: make_train_step(exp)).

  memory: (state, data uint8 [N,...] replicated, (positions, index) [k, B]) -> gathers on
  device. stream: (state, images uint8 [k, B, ...], index [k, B]).
  Returns (state, chunk sums): every step metric summed over the k steps (the non-finite and
  skipped counts included), the steps of the chunk, the momentum-tracked loss and the total
  of skipped steps at its end, and the longest runs of non-finite and of skipped steps seen
  in the chunk (`nonfinite_run_max`, `skipped_run_max`; runs carry over from earlier chunks)
  with the step that ended each (`..._max_step`: state.step after it). A population's vmapped
  step (vae_jax.train.population) gets each of them per member, [P].
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
    runs = {k: ms.pop(k) for k in ('nonfinite_run', 'skipped_run')}  # each [k]
    out = {k: jnp.sum(v, axis=0) for k, v in ms.items()}  # over the k steps
    out['steps'] = jnp.asarray(index.shape[0], jnp.int32)
    for k, run in runs.items():  # the chunk's longest run and the step that ended it
      out[f'{k}_max'] = jnp.max(run, axis=0)
      out[f'{k}_max_step'] = state.step - index.shape[0] + 1 + jnp.argmax(run, axis=0)
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


def compile_chunk(exp, state, feeder, step):
  """(compiled fused chunk, its first (source, index), seconds to compile)."""
  t0 = time.perf_counter()
  source, index = feeder(step)
  fn = jit_train_chunk(exp, exp.config.data.backend).lower(state, source, index).compile()
  return fn, (source, index), time.perf_counter() - t0
