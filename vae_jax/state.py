"""The train state: one pytree holding everything a step reads and writes.

Everything that must survive a restart lives here (and so in the checkpoint): the step, the
parameters, the optimizer state, the model randomness root, the momentum-tracked loss, the
non-finite-step counters and the traced hyperparameters a sweep may vary.
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from vae_jax import streams


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
  )
