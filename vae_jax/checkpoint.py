"""The one owner of Orbax: saving and restoring the train state, the data position and the config.

A checkpoint step holds two items: `state` (the whole TrainState) and `meta` (JSON: the step,
which is also the data pipeline's position, and the resolved config). Restores go into an
abstract state whose leaves carry the current mesh's shardings, so a run saved on one device
count resumes on another (without shardings Orbax silently puts everything on device 0).
"""

import json
import os

import jax
import orbax.checkpoint as ocp

# Config fields that define the model or the data: resuming with any of them changed would mix
# two experiments. Everything else (steps, intervals, logging) may change across a resume.
_COMPATIBLE_KEYS = (
    ('model',), ('data', 'name'), ('data', 'preprocess'), ('data', 'train_split'),
    ('batch_size',), ('seed',), ('data_seed',), ('optim', 'name'), ('optim', 'clip_norm'),
)


class IncompatibleCheckpointError(ValueError):
  """The workdir's checkpoint was written by a config that defines a different experiment."""


def checkpoint_dir(workdir):
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


class Checkpointer:
  """Orbax CheckpointManager for one workdir."""

  def __init__(self, workdir, config, create=True):
    self.directory = checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.checkpoint.keep,
        enable_async_checkpointing=config.checkpoint.async_save,
        create=create,
    )
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=('state', 'meta'))

  def latest_step(self):
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def save(self, step, state, config):
    """Saves (asynchronously if configured) the state, the data position and the config."""
    meta = {'step': int(step), 'data_position': int(step),
            'config': json.loads(config.to_json())}
    self._manager.save(int(step), force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def restore(self, step, abstract_state):
    """Restores `step` into `abstract_state`'s structure, dtypes and shardings."""
    restored = self._manager.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored['state'], restored['meta']

  def restore_meta(self, step):
    restored = self._manager.restore(int(step), args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))
    return restored['meta']

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_with_shardings(abstract_state, shardings):
  """ShapeDtypeStructs that carry the target shardings (the restore target)."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)


def check_compatible(saved_config, config, where):
  """Raises IncompatibleCheckpointError when the saved run defines a different experiment."""
  current = json.loads(config.to_json())
  diffs = []
  for path in _COMPATIBLE_KEYS:
    a, b = saved_config, current
    for key in path:
      a = a.get(key) if isinstance(a, dict) else None
      b = b.get(key) if isinstance(b, dict) else None
    if a != b:
      diffs.append(f'{".".join(path)}: saved {a!r}, now {b!r}')
  if diffs:
    raise IncompatibleCheckpointError(
        f'The checkpoint in {where} was written by a different experiment ('
        + '; '.join(diffs) + '). Resuming would mix two runs. Use a new --workdir, or restore '
        'the original values of these fields (steps, intervals and logging may change).')
