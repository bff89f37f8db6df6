"""Reloading runs for notebooks and scripts, and the pictures of a model.

`load_run(workdir)` gives the run's config, model and state on one CPU-or-default device,
whatever device count or host count trained it, without the trainer. The picture functions
go through the model contract, so they work for any model family.
"""

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from vae_jax import checkpoint as ckpt_lib
from vae_jax import data as data_lib
from vae_jax import experiment, sharding, streams
from vae_jax import metrics as metrics_lib
from vae_jax.data.preprocess import preprocess


@dataclasses.dataclass
class Run:
  """A reloaded run: `run.model.terms(run.state.params, x, key)` and the rest of the model
  contract work directly."""
  workdir: str
  step: int
  config: ml_collections.ConfigDict
  model: Any
  state: Any
  image_shape: tuple


def load_run(workdir, step=None, device=None):
  """Loads a run's config, model and train state from its workdir.

  Args:
    workdir: the run's --workdir.
    step: a checkpoint step; None = the newest good one (damaged steps are skipped with a
      warning, as when resuming). A step that does not exist is an error naming those that do.
    device: where the state lands (default: the first local device).

  Returns:
    A Run with .config (the config the checkpoint was written with), .model, .state, .step.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(ckpt_lib.checkpoint_dir(workdir)):
    raise FileNotFoundError(f'{workdir} has no checkpoints/ folder: is it a vae_jax workdir?')
  with open(os.path.join(workdir, 'config.json')) as f:
    config = ml_collections.ConfigDict(json.load(f))
  checkpointer = ckpt_lib.Checkpointer(workdir, config, create=False)
  steps = checkpointer.all_steps()
  if not steps:
    raise FileNotFoundError(f'{workdir}/checkpoints holds no checkpoint.')
  meta = None
  for candidate in ([step] if step is not None else reversed(steps)):
    try:  # the newest readable metadata names the config and image shape
      meta = checkpointer.restore_meta(candidate)
      break
    except Exception:  # noqa: BLE001 - a damaged step; restore_good below says which
      continue
  if meta is None:
    raise FileNotFoundError(f'No readable checkpoint metadata in {workdir}/checkpoints.')
  config = ml_collections.ConfigDict(meta['config'])
  jax.config.update('jax_threefry_partitionable', True)  # the project's draws
  device = device or jax.local_devices()[0]
  mesh = Mesh(np.asarray([device]), (sharding.DATA_AXIS,))  # one device: any batch splits
  exp = experiment.build(config, mesh=mesh, image_shape=tuple(meta['image_shape']))
  state, meta = checkpointer.restore_good(exp.abstract_state, step=step)
  checkpointer.close()
  config = ml_collections.ConfigDict(meta['config'])
  return Run(workdir=workdir, step=int(meta['step']), config=config, model=exp.model,
             state=state, image_shape=tuple(meta['image_shape']))


def make_picture_fn(exp):
  """(params, x [n,...]) -> {'reconstructions', 'prior_means', 'prior_samples'} [n,H,W,C].

  reconstructions: E[x|h] at the posterior mean of each x; prior_means: E[x|h] at prior draws
  h ~ p(h); prior_samples: x ~ p(x|h) at the same draws (a Bernoulli mean looks far smoother
  than its samples, so both are shown). All in [0, 1].
  """
  model, key = exp.model, streams.prior_key(exp.config.seed)

  def pictures(params, x):
    prior = model.sample(params, key, x.shape[0])
    return {'reconstructions': model.reconstruct(params, x), 'prior_means': prior['means'],
            'prior_samples': prior['samples']}

  return jax.jit(pictures)


def picture_inputs(exp, arrays=None, split=None):
  """The first config.images.num examples of the split, preprocessed as the model sees them."""
  config = exp.config
  split = split or config.data.eval_split
  n = min(config.images.num, exp.data_info.split_size(split))
  batch = next(iter(data_lib.eval_batches(config.data, split, batch_size=n, arrays=arrays)))
  return preprocess(jnp.asarray(batch['image']), jnp.asarray(batch['index']),
                    mode=config.data.preprocess, data_seed=config.data_seed)


def write_training_pictures(exp, workdir, step, params, pictures, x=None, arrays=None):
  """The step's PNG grids in DIR/images/ (inputs.png once). Returns the inputs, for next time."""
  d = os.path.join(workdir, 'images')
  if x is None:
    x = picture_inputs(exp, arrays)
    scale = 255.0 if jnp.issubdtype(x.dtype, jnp.integer) else 1.0
    metrics_lib.save_png(os.path.join(d, 'inputs.png'), np.asarray(x) / scale)
  for name, images in pictures(jax.device_get(params), x).items():
    metrics_lib.save_png(os.path.join(d, f'{name}_step_{step}.png'), np.asarray(images))
  return x
