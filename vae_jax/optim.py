"""The optax optimizer and the ONE learning-rate schedule that the update and the logs share.

The peak learning rate is not baked into the transform: the transform stops at the direction
(clip -> Adam moments -> decoupled weight decay), and the train step multiplies it by
`learning_rate(config, peak, step)`, whose peak is the traced `hparams['learning_rate']`. So a
sweep over learning rates shares one compiled program, and the logged rate is the applied one.
For adamw this is optax.adamw's update: the weight decay is scaled by the learning rate too.
"""

import jax
import jax.numpy as jnp
import optax


def unit_schedule(config):
  """Learning-rate multiplier per step (peak 1), a function of the step counter."""
  o = config.optim
  if o.schedule == 'constant':
    return optax.constant_schedule(1.0)
  if o.schedule == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=1.0, warmup_steps=o.warmup_steps,
        decay_steps=config.num_train_steps, end_value=0.0)
  raise ValueError(f'unknown schedule {o.schedule!r}')


def learning_rate(config, peak, step):
  """The learning rate applied at `step` (skipped non-finite steps count, as the data moves on).

  `peak` may be traced (state.hparams['learning_rate']).
  """
  return peak * unit_schedule(config)(step)


def make_optimizer(config):
  """Clip (optional) -> Adam moments -> decoupled weight decay (adamw): the update direction.

  The caller scales the result by -learning_rate(config, peak, step) (`apply_learning_rate`).
  """
  o = config.optim
  parts = []
  if o.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(o.clip_norm))
  parts.append(optax.scale_by_adam())
  if o.name == 'adamw':
    parts.append(optax.add_decayed_weights(o.weight_decay))
  return optax.chain(*parts)


def apply_learning_rate(updates, lr):
  """updates * -lr (a traced scalar)."""
  return jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)


# ----------------------------------------------------------------------------------------------
# Gradient skipping: a step whose global gradient norm is too large applies no update.
#
# Fixed rule (optim.skip_threshold, VDVAE's): skip when norm > threshold. It can lock
# (openai/vdvae#25): once the norm stays above the threshold, every later update is skipped.
# Adaptive rule (optim.skip_factor): skip when norm > skip_factor x the lower median of the
# last skip_window finite norms, skipped steps' norms included. An isolated spike does not move
# that median; a lasting rise does: after at most skip_window - (skip_window - 1) // 2 skipped
# steps (half the window) at a new level L, the median is >= L, and norms within skip_factor of
# L pass again. So the rule cannot lock on a persistent change, only ride out short spikes. It
# starts once the window is full (early training's norms fall fast; no history, no skipping).


def skip_enabled(config):
  o = config.optim
  return o.skip_threshold > 0 or o.skip_factor > 0


def init_skip_state(config):
  """The guard's state: {'norms': float32 [skip_window] ring of recent finite gradient norms,
  'count': int32 [] finite norms recorded, 'run': int32 [] consecutive skipped steps,
  'total': int32 [] all skipped steps}."""
  return {'norms': jnp.zeros((config.optim.skip_window,), jnp.float32),
          'count': jnp.zeros((), jnp.int32),
          'run': jnp.zeros((), jnp.int32),
          'total': jnp.zeros((), jnp.int32)}


def skip_limit(config, skip_state):
  """The largest gradient norm the next step may apply (inf where no rule applies yet)."""
  o = config.optim
  limit = jnp.asarray(jnp.inf, jnp.float32)
  if o.skip_threshold > 0:
    limit = jnp.minimum(limit, jnp.float32(o.skip_threshold))
  if o.skip_factor > 0:
    norms = skip_state['norms']
    window = norms.shape[0]
    median = jnp.sort(norms)[(window - 1) // 2]
    full = skip_state['count'] >= window
    limit = jnp.minimum(limit, jnp.where(full, jnp.float32(o.skip_factor) * median, jnp.inf))
  return limit


def update_skip_state(skip_state, grad_norm, finite, skipped):
  """Records a finite norm in the ring and counts a skipped step; a non-finite step (the
  non-finite guard's) records nothing and leaves the run of skips as it is."""
  norms, count = skip_state['norms'], skip_state['count']
  slot = count % norms.shape[0]
  return {
      'norms': jnp.where(finite, norms.at[slot].set(grad_norm.astype(jnp.float32)), norms),
      'count': count + finite.astype(jnp.int32),
      'run': jnp.where(skipped, skip_state['run'] + 1, jnp.where(finite, 0, skip_state['run'])),
      'total': skip_state['total'] + skipped.astype(jnp.int32),
  }
