"""The optax optimizer and learning-rate schedule from the config.

The peak learning rate is not baked into the transform: the transform ends with the schedule's
*shape* (1 at the peak) and the step multiplies by the traced `hparams['learning_rate']`, so a
sweep over learning rates can share one compiled program (INTERFACES.md determinism rules).
"""

import jax
import optax


def unit_schedule(config):
  """Learning-rate multiplier per step (peak 1)."""
  o = config.optim
  if o.schedule == 'constant':
    return optax.constant_schedule(1.0)
  if o.schedule == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=1.0, warmup_steps=o.warmup_steps,
        decay_steps=config.num_train_steps, end_value=0.0)
  raise ValueError(f'unknown schedule {o.schedule!r}')


def make_optimizer(config):
  """Clip (optional) -> Adam moments -> decoupled weight decay (adamw) -> schedule shape.

  The caller scales the result by -learning_rate; for adamw that gives optax.adamw's update
  (weight decay multiplied by the learning rate).
  """
  o = config.optim
  parts = []
  if o.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(o.clip_norm))
  parts.append(optax.scale_by_adam())
  if o.name == 'adamw':
    parts.append(optax.add_decayed_weights(o.weight_decay))
  parts.append(optax.scale_by_schedule(unit_schedule(config)))
  return optax.chain(*parts)


def apply_learning_rate(updates, learning_rate):
  """updates * -learning_rate (a traced scalar)."""
  return jax.tree.map(lambda u: (-learning_rate * u).astype(u.dtype), updates)

