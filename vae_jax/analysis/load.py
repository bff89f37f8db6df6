"""Reading a run back from its workdir: its model and state (load_run) and its records.

`load_run(workdir)` gives the config, model and state on one device, without the trainer,
whatever device count or host count trained the run. Beside a live run it reads the step it
checked (never one committed since), and a damaged DIR/config.json is warned about and passed
over: every checkpoint step holds the config it was saved with. `training_curves` and
`eval_files` read what the run recorded (metrics.jsonl, DIR/eval/).
"""

import dataclasses
import glob
import json
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from vae_jax import evaluate, experiment, sharding
from vae_jax import state as state_lib
from vae_jax.storage import checkpoint as ckpt_lib
from vae_jax.storage import writers as metrics_lib

# The file scripts/evaluate.py writes per evaluation (evaluate.eval_path):
# DIR/eval/step_S_SPLIT_kK.json, SPLIT made file-name safe (the record holds the split itself),
# and step_S_SPLIT_kK_state.json for the train state of a run whose default is its EMA.
EVAL_FILE = re.compile(r'^step_(\d+)_(.+)_k(\d+)(?:_(state|ema))?\.json$')


class RunNotFoundError(FileNotFoundError):
  """The folder holds no vae_jax run, or not the checkpoint step asked for."""


@dataclasses.dataclass
class Run:
  """A reloaded run: `run.model.terms(run.state.params, x, key)` and the rest of the model
  contract work directly; `run.experiment` is what evaluate.evaluate takes (on one device)."""
  workdir: str
  step: int
  config: ml_collections.ConfigDict
  model: Any
  state: Any
  image_shape: tuple
  experiment: Any = None
  steps: tuple = ()  # every checkpoint step the workdir holds

  @property
  def params(self):
    """The parameters analyses use: the EMA where the run keeps one, else the state's."""
    return state_lib.eval_params(self.state)[0]

  @property
  def params_kind(self):
    """'ema' or 'state': which parameters `params` are."""
    return state_lib.eval_params(self.state)[1]


def run_params(run, params=None):
  """`params` where given, else the run's own (`run.params`): what every analysis takes."""
  return run.params if params is None else params


def check_run(workdir, step=None):
  """The run's checkpoint steps, checked without reading any array (seconds, no compile).

  Returns:
    (workdir made absolute, DIR/config.json's config or None where that file is damaged (the
    checkpoints' own configs stand in for it: load_run warns), the checkpoint steps).

  Raises:
    RunNotFoundError: no run in workdir, no checkpoint, or no checkpoint step `step` (the
      message names the steps there are).
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(workdir):
    raise RunNotFoundError(f'{workdir} does not exist (or is not a folder): no run to load.')
  if not os.path.isfile(os.path.join(workdir, 'config.json')):
    raise RunNotFoundError(f'{workdir} has no config.json: is it a vae_jax workdir '
                           '(scripts/train.py --workdir=DIR)?')
  if not os.path.isdir(ckpt_lib.checkpoint_dir(workdir)):
    raise RunNotFoundError(f'{workdir} has no checkpoints/ folder: is it a vae_jax workdir?')
  config, damaged = evaluate.read_run_config(workdir)
  checkpointer = evaluate.reader_checkpointer(workdir, config)
  steps = checkpointer.all_steps()
  checkpointer.close()
  if not steps:
    raise RunNotFoundError(
        f'{workdir}/checkpoints holds no checkpoint yet'
        + (f', and {os.path.join(workdir, "config.json")} cannot be read ({damaged}).'
           if damaged else '.'))
  if step is not None and int(step) not in steps:
    raise RunNotFoundError(f'{workdir} has no checkpoint step {step}; its steps are '
                           f'{", ".join(map(str, steps))}.')
  return workdir, config, steps


def load_run(workdir, step=None, device=None):
  """Loads a run's config, model and train state from its workdir.

  Args:
    workdir: the run's --workdir.
    step: a checkpoint step; None = the newest good one (damaged steps are skipped with a
      warning, as when resuming).
    device: where the state lands (default: the first local device).

  Returns:
    A Run with .config (the config the checkpoint was written with), .model, .state, .step,
    .experiment (built on a one-device mesh) and .steps. Beside a live run the step loaded is
    the one whose metadata was read, never one committed since; if the run's checkpoint.keep
    deletes it meanwhile, the newest step is checked again once. A damaged DIR/config.json is
    warned about and passed over (each step holds its own config).

  Raises:
    RunNotFoundError: no run in workdir, or no checkpoint step `step` (naming those there
      are); checked before anything is read or built.
  """
  from vae_jax.config import validation
  requested = step
  for attempt in (1, 2):
    workdir, config, steps = check_run(workdir, requested)
    checkpointer = evaluate.reader_checkpointer(workdir, config)
    try:
      meta = None
      for candidate in ([requested] if requested is not None else reversed(steps)):
        try:  # the newest readable metadata names the config and image shape
          meta = checkpointer.restore_meta(candidate)
          break
        except Exception:  # noqa: BLE001 - a damaged step; restore_good below says which
          continue
      if meta is None:
        raise ckpt_lib.NoGoodCheckpointError(
            f'No readable checkpoint metadata in {workdir}/checkpoints (steps {steps}).')
      checked = int(meta['step'])
      saved = evaluate.saved_config(meta['config'])  # fields added since at their defaults
      jax.config.update('jax_threefry_partitionable', True)  # the project's draws
      device = device or jax.local_devices()[0]
      mesh = Mesh(np.asarray([device]), (sharding.DATA_AXIS,))  # one device: any batch splits
      exp = experiment.build(saved, mesh=mesh, image_shape=tuple(meta['image_shape']))
      state, meta = evaluate.restore_checked(checkpointer, exp, checked)
      break
    except evaluate.StepDeletedError:
      if requested is not None or attempt == 2:
        raise validation.ConfigError(
            f'Checkpoint step {checked} of {workdir} was deleted while it was being read (the '
            'run training this workdir keeps only its newest checkpoint.keep steps). Try '
            'again, or pass a step it keeps.') from None
      evaluate.warn(f'checkpoint step {checked} of {workdir} was deleted while it was being '
                     'read (checkpoint.keep of the run training it); checking the newest step '
                     'again.')
    finally:
      checkpointer.close()
  if config is None:
    _, damaged = evaluate.read_run_config(workdir)
    evaluate.warn(evaluate.damaged_config_warning(workdir, damaged, meta['step']))
  config = evaluate.saved_config(meta['config'])
  return Run(workdir=workdir, step=int(meta['step']), config=config, model=exp.model,
             state=state, image_shape=tuple(meta['image_shape']), experiment=exp,
             steps=tuple(steps))


# ---------------------------------------------------------------------------------------------
# What the run recorded.


def training_curves(workdir):
  """metrics.jsonl as series: {'train': {name: (steps, values)}, 'eval': {split: {name:
  (steps, values)}}}; a step logged twice (a resumed run) keeps its last record."""
  last = {}
  for r in metrics_lib.read_metrics(workdir):
    last[(r['kind'], r.get('split'), r['step'])] = r
  out = {'train': {}, 'eval': {}}
  for (kind, split, step), r in sorted(last.items(), key=lambda kv: kv[0][2]):
    if kind not in out:
      continue
    series = out['train'] if kind == 'train' else out['eval'].setdefault(split, {})
    for k, v in r.items():
      if k in ('step', 'kind', 'split') or isinstance(v, bool) or not isinstance(v, int | float):
        continue
      steps, values = series.setdefault(k, ([], []))
      steps.append(step)
      values.append(float(v))
  return out


def eval_files(workdir, step=None):
  """The evaluations scripts/evaluate.py wrote (DIR/eval/step_S_SPLIT_kK.json), newest first.

  Returns [{'path', 'step', 'split', 'k', 'mtime', 'record'}] (of `step` only, if given);
  files that do not parse as a JSON object are skipped.
  """
  found = []
  for path in glob.glob(os.path.join(workdir, 'eval', 'step_*.json')):
    m = EVAL_FILE.match(os.path.basename(path))
    if not m or (step is not None and int(m.group(1)) != int(step)):
      continue
    try:
      with open(path) as f:
        record = json.load(f)
    except (OSError, ValueError):
      continue
    if not isinstance(record, dict):
      continue
    found.append({'path': path, 'step': int(m.group(1)), 'split': record.get('split', m.group(2)),
                  'k': int(m.group(3)), 'mtime': os.path.getmtime(path), 'record': record})
  return sorted(found, key=lambda e: e['mtime'], reverse=True)
