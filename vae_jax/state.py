"""The train state: one pytree holding everything a step reads and writes.

Everything that must survive a restart lives here (and so in the checkpoint): the step, the
parameters, the optimizer state, the model randomness root, the momentum-tracked loss, the
non-finite-step counters and the traced hyperparameters a sweep may vary; and, where the config
turns them on, the EMA of the parameters (`ema`) and the gradient-skipping guard (`skip`).

The two optional parts are None when off, so the state of a run that uses neither has exactly
the layout of the states saved before they existed. Their presence follows the config:
`restore_target` gives a checkpoint's layout from the config it was saved with, `adapt` turns a
restored state into the current config's (starting an EMA or a guard, or dropping one).
"""

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from vae_jax import optim
from vae_jax.maths import streams

# Evaluations of the EMA warn while its starting parameters (the initialisation, or the
# parameters of the step the EMA was switched on) still weigh more than this in it: after t
# applied updates that weight is the product of the decays, ema_decay^t.
EMA_WARN_WEIGHT = 0.1


@flax.struct.dataclass
class TrainState:
  step: jax.Array             # int32 []: steps taken (skipped non-finite steps count too)
  params: Any                 # the model's parameters
  opt_state: Any              # optax state
  key_data: jax.Array         # uint32 [2]: key data of streams.model_root(seed)
  loss_momentum: jax.Array    # float32 []: L <- gamma L + (1 - gamma) L_batch, L_0 = first loss
  nonfinite_run: jax.Array    # int32 []: consecutive skipped non-finite steps up to now
  nonfinite_total: jax.Array  # int32 []: all skipped non-finite steps
  hparams: dict               # traced scalars (see hparams_from_config): a population can vmap
  # EMA of the parameters (config.ema_decay > 0), else None: {'params': like params,
  # 'init_weight': float32 [], the weight its starting parameters still have (prod of decays)}.
  ema: Any = None
  # Gradient-skipping guard (optim.skip_enabled), else None: see optim.init_skip_state.
  skip: Any = None

  def train_key(self, step=None):
    """The key of train step `step` (default: this state's step)."""
    root = jax.random.wrap_key_data(self.key_data)
    return streams.train_key(root, self.step if step is None else step)


def hparams_from_config(config):
  """The sweepable scalars, as float32 arrays (traced inside the step, never baked in)."""
  o = config.objective
  return {
      'beta': jnp.asarray(o.beta, jnp.float32),
      'kl_warmup_steps': jnp.asarray(o.kl_warmup_steps, jnp.float32),
      'free_bits': jnp.asarray(o.free_bits, jnp.float32),
      'learning_rate': jnp.asarray(config.optim.learning_rate, jnp.float32),
  }


def create_train_state(params, tx, config):
  """A fresh state at step 0 from initialised parameters."""
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      key_data=jax.random.key_data(streams.model_root(config.seed)),
      loss_momentum=jnp.zeros((), jnp.float32),
      nonfinite_run=jnp.zeros((), jnp.int32),
      nonfinite_total=jnp.zeros((), jnp.int32),
      hparams=hparams_from_config(config),
      ema=init_ema(params) if config.ema_decay > 0 else None,
      skip=optim.init_skip_state(config) if optim.skip_enabled(config) else None,
  )


def init_ema(params):
  """An EMA that starts at `params` (copied: the state is donated, no buffer may appear twice)."""
  return {'params': jax.tree.map(lambda p: jnp.array(p, copy=True), params),
          'init_weight': jnp.ones((), jnp.float32)}


def update_ema(ema, params, decay):
  """ema <- decay ema + (1 - decay) params, after an applied update (decay a Python float)."""
  d = jnp.float32(decay)
  new = jax.tree.map(lambda e, p: (d * e + (1 - d) * p).astype(e.dtype), ema['params'], params)
  return {'params': new, 'init_weight': ema['init_weight'] * d}


def eval_params(state):
  """(parameters to evaluate, 'ema' | 'state', notes for the record).

  The EMA where the state keeps one; notes then hold its `ema_init_weight` and, while that
  exceeds EMA_WARN_WEIGHT, an `ema_warning` sentence.
  """
  if state.ema is None:
    return state.params, 'state', {}
  weight = float(state.ema['init_weight'])
  notes = {'ema_init_weight': weight}
  if weight > EMA_WARN_WEIGHT:
    notes['ema_warning'] = (
        f'the EMA is still dominated by its starting parameters (weight {weight:.3f} > '
        f'{EMA_WARN_WEIGHT}: the initialisation, or the parameters of the step the EMA was '
        'switched on); its numbers understate the trained model. Evaluate later, or lower '
        'config.ema_decay.')
  return state.ema['params'], 'ema', notes


def _like(abstract, shape, dtype):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=getattr(abstract, 'sharding', None))


def restore_target(abstract_state, saved_config):
  """The abstract state with the optional parts laid out as `saved_config` (the config a
  checkpoint was saved with, its missing fields at their defaults) had them."""
  ema = None
  if saved_config.ema_decay > 0:
    ema = {'params': abstract_state.params,
           'init_weight': _like(abstract_state.step, (), jnp.float32)}
  skip = None
  if optim.skip_enabled(saved_config):
    skip = jax.tree.map(lambda a: _like(abstract_state.step, a.shape, a.dtype),
                        jax.eval_shape(functools.partial(optim.init_skip_state, saved_config)))
  return abstract_state.replace(ema=ema, skip=skip)


def adapt(state, config):
  """A restored state with the optional parts the current config asks for.

  An EMA switched on starts at the restored parameters; one switched off is dropped; a changed
  ema_decay applies from here on (the EMA goes on from its saved value). A guard switched on
  starts empty; one whose skip_window changed keeps its counters and starts a new window.
  """
  ema = state.ema
  if config.ema_decay <= 0:
    ema = None
  elif ema is None:
    ema = init_ema(state.params)
  skip = state.skip
  if not optim.skip_enabled(config):
    skip = None
  else:
    fresh = optim.init_skip_state(config)
    if skip is None:
      skip = fresh
    elif skip['norms'].shape != fresh['norms'].shape:
      skip = dict(skip, norms=fresh['norms'], count=fresh['count'])
  return state.replace(ema=ema, skip=skip)


def with_params(state, params):
  """`state` with other parameters (config.init_from); its EMA, if any, restarts at them."""
  state = state.replace(params=params)
  return state.replace(ema=init_ema(params)) if state.ema is not None else state
