"""Reloading finished (or running) runs for notebooks and scripts.

`load_run(workdir)` gives the run's config, model and state on one CPU-or-default device,
whatever device count or host count trained it. Figures and further analysis tools belong to
the analysis issue and will live here.
"""

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from vae_jax import checkpoint as ckpt_lib
from vae_jax import sharding


@dataclasses.dataclass
class Run:
  """A reloaded run: `model.apply({'params': state.params}, x, eps)` works directly."""
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
      warning, as when resuming).
    device: where the state lands (default: the first local device).

  Returns:
    A Run with .config (the config the checkpoint was written with), .model, .state, .step.
  """
  from vae_jax import train  # the trainer builds the model and the abstract state

  workdir = os.path.abspath(os.path.expanduser(workdir))
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.isdir(ckpt_lib.checkpoint_dir(workdir)):
    raise FileNotFoundError(f'{workdir} has no checkpoints/ folder: is it a vae_jax workdir?')
  with open(config_path) as f:
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
  train.configure_jax(config)
  device = device or jax.local_devices()[0]
  mesh = Mesh(np.asarray([device]), (sharding.DATA_AXIS,))  # one device: any batch splits
  setup = train.build_setup(config, mesh=mesh, image_shape=tuple(meta['image_shape']))
  state, meta = checkpointer.restore_good(setup.abstract_state, step=step)
  checkpointer.close()
  config = ml_collections.ConfigDict(meta['config'])
  return Run(workdir=workdir, step=int(meta['step']), config=config, model=setup.model,
             state=state, image_shape=tuple(meta['image_shape']))
