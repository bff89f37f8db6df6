"""The optax optimizer and the ONE learning-rate schedule that the update and the logs share.

The peak learning rate is not baked into the transform: the transform stops at the direction
(clip -> Adam moments -> decoupled weight decay), and the train step multiplies it by
`learning_rate(config, peak, step)`, whose peak is the traced `hparams['learning_rate']`. So a
sweep over learning rates shares one compiled program, and the logged rate is the applied one.
For adamw this is optax.adamw's update: the weight decay is scaled by the learning rate too.
"""

import jax
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
