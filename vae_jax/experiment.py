"""From a config to what every consumer needs: mesh, model, optimizer, abstract state.

Training, evaluation, analysis and the benchmark all start here, so none of them depends on
another. Nothing here touches the state's arrays: `init_state` materialises a fresh state
directly with its shardings, and `abstract_state` is the Orbax restore target.
"""

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp

from vae_jax import data as data_lib
from vae_jax import models, optim, sharding
from vae_jax import state as state_lib
from vae_jax.config import validation
from vae_jax.maths import streams


@dataclasses.dataclass(frozen=True)
class Experiment:
  """The compiled-once parts of a run (no arrays of its state)."""
  config: Any
  mesh: Any
  model: Any              # a model family (vae_jax.models): the model contract
  tx: Any                 # the optax transform (the update direction; see optim)
  image_shape: tuple      # (H, W, C)
  abstract_state: Any     # ShapeDtypeStructs with shardings: the init and restore target
  data_info: Any = None   # data.DataInfo; None when rebuilt from a checkpoint for analysis

  @property
  def steps_per_epoch(self):
    n = self.data_info.split_size(self.config.data.train_split)
    return n // self.config.batch_size


def configure_jax(config):
  """Process-wide JAX settings every run needs (idempotent)."""
  # A random draw sharded over devices equals the unsharded one: results do not depend on the
  # device count.
  jax.config.update('jax_threefry_partitionable', True)
  if config.compilation_cache:
    path = os.path.expanduser(config.compilation_cache)
    try:
      os.makedirs(path, exist_ok=True)
      jax.config.update('jax_compilation_cache_dir', path)
      # Without these two the cache skips the small programs a VAE compiles (a warm start of
      # the Fashion-MNIST config compiles in 0.5 s instead of 2.2 s with them).
      jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
      jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
    except OSError:
      pass  # an unwritable cache folder costs only compile time


def x_dtype(config):
  """The model input's dtype: integers for discrete likelihoods, floats otherwise."""
  return jnp.int32 if config.data.preprocess == 'uint8' else jnp.float32


def build(config, mesh=None, image_shape=None, data_info=None):
  """Validates against the devices and the dataset, then builds mesh, model and optimizer.

  With `image_shape` given (rebuilding a saved run for analysis) the dataset is not read; with
  `data_info` given (a data.DataInfo: the benchmark's synthetic data) it stands for the
  dataset's own.
  """
  mesh = mesh if mesh is not None else sharding.make_mesh(config)
  validation.validate_batch_split(config, sharding.data_axis_size(mesh))
  info = data_info
  if image_shape is None:
    if info is None:
      info = data_lib.dataset_info(config.data)
    validation.validate_data_splits(config, info)
    image_shape = info.image_shape
  image_shape = tuple(image_shape)
  validation.validate_image_shape(config, image_shape)
  model, tx, abstract = _model_and_state(config, mesh, image_shape)
  return Experiment(config=config, mesh=mesh, model=model, tx=tx, image_shape=image_shape,
                    abstract_state=abstract, data_info=info)


def _model_and_state(config, mesh, image_shape):
  model = models.build_model(config.model, image_shape, x_dtype(config))
  tx = optim.make_optimizer(config)
  abstract = jax.eval_shape(functools.partial(_init_state, config, model, tx, image_shape))
  abstract = sharding.with_shardings(
      abstract, jax.tree.map(lambda _: sharding.replicated(mesh), abstract))
  return model, tx, abstract


def abstract_state(config, mesh, image_shape):
  """The restore target of a checkpoint written under `config` (any optimizer), on `mesh`."""
  return _model_and_state(config, mesh, tuple(image_shape))[2]


def _init_state(config, model, tx, image_shape):
  x = jnp.zeros((1, *image_shape), x_dtype(config))
  params = model.init(streams.init_key(config.seed), x)
  return state_lib.create_train_state(params, tx, config)


def init_state(exp):
  """A fresh state, materialised directly with its (replicated) shardings."""
  out = jax.tree.map(lambda a: a.sharding, exp.abstract_state)
  init = functools.partial(_init_state, exp.config, exp.model, exp.tx, exp.image_shape)
  return jax.jit(init, out_shardings=out)()
