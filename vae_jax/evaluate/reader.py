"""What every reader of a saved run (scripts/evaluate.py, scripts/analyze.py) shares: a damaged
DIR/config.json, a run training the workdir meanwhile, a folder it cannot write, and the errors
for these."""

import json
import os
import sys
import tempfile

from vae_jax.config import compat


class ResultNotSavedError(RuntimeError):
  """A reader computed its result but could not write it (a read-only workdir, say).

  `result` holds what was computed: the scripts print it (their last stdout line) before this
  message, and exit with status 2.
  """

  def __init__(self, message, result):
    super().__init__(message)
    self.result = result


class StepDeletedError(Exception):
  """The checkpoint step a reader checked is gone (a live run's checkpoint.keep deleted it)."""


def warn(message):
  """A reader's warning, on stderr as the checkpointer's are."""
  print(f'WARNING: {message}', file=sys.stderr, flush=True)


def read_run_config(workdir):
  """(DIR/config.json as a saved config, '') or (None, why it cannot be read).

  Readers use it only to open the checkpoints: every checkpoint step holds the config it was
  saved with, which is what they evaluate by, so a damaged file need not stop them.
  """
  path = os.path.join(workdir, 'config.json')
  try:
    with open(path) as f:
      saved = json.load(f)
    if not isinstance(saved, dict):
      return None, f'it holds a JSON {type(saved).__name__}, not an object'
    return compat.saved_config(saved), ''
  except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
    # (a JSONDecodeError or UnicodeDecodeError is a ValueError)
    return None, f'{type(e).__name__}: {e}'


def reader_checkpointer(workdir, config):
  """A Checkpointer of the run that changes nothing on disk (create=False).

  config None (config.json damaged): a stand-in, since a reader uses none of the checkpoint
  policy fields the run's config would give.
  """
  from vae_jax.storage import checkpoint as ckpt_lib
  if config is None:
    import ml_collections
    config = ml_collections.ConfigDict({'checkpoint': {'keep': 1, 'async_save': False}})
  return ckpt_lib.Checkpointer(workdir, config, create=False)


def damaged_config_warning(workdir, why, step):
  """The reader's warning that config.json is damaged and checkpoint `step`'s config is used."""
  return (f'{os.path.join(workdir, "config.json")} cannot be read ({why}); using the config '
          f'saved with checkpoint step {step} instead (a scripts/train.py run on this workdir '
          'writes config.json again).')


def live_run_notice(workdir):
  """A line telling a reader that a run is training `workdir` now, or None.

  The workdir lock is probed without taking it (workdir_lock.is_held), so a run starting at
  this moment is never refused.
  """
  from vae_jax.storage import lock as workdir_lock
  if not workdir_lock.is_held(workdir):
    return None
  return (f'NOTE: a run is training {workdir} now: this reads the newest checkpoint step it has '
          'committed at this moment (steps it saves later are not seen); if the run deletes that '
          'step meanwhile (checkpoint.keep), the newest step is checked again.')


def restore_checked(checkpointer, exp, step):
  """(state, meta) of checkpoint `step`, the step a reader checked and took its config from,
  restored into exp's abstract state laid out as the restored step's own config has it.

  Never a newer step (one a live run committed after the check), and an older one only past a
  damaged `step` (restore_good's fallback, warned; the caller then takes the config of the step
  restored).

  Raises:
    StepDeletedError: `step` is gone (a live run's checkpoint.keep deleted it since the check).
  """
  from vae_jax import state as state_lib
  from vae_jax.config import compat
  from vae_jax.storage import checkpoint as ckpt_lib
  target = lambda m: state_lib.restore_target(exp.abstract_state, compat.saved_config(m['config']))
  gone = lambda: not os.path.isdir(os.path.join(checkpointer.directory, str(step)))
  if step not in checkpointer.all_steps():
    raise StepDeletedError(step)
  try:
    state, meta = checkpointer.restore_good(target, step=step)
  except ckpt_lib.NoGoodCheckpointError:
    if gone():
      raise StepDeletedError(step) from None
    raise
  if int(meta['step']) != step and gone():
    raise StepDeletedError(step)
  return state, meta


def unwritable(folder):
  """Why `folder` cannot be created and written (probed with a file made and removed at
  once), or '' where it can."""
  if os.path.exists(folder) and not os.path.isdir(folder):
    return 'it is a file, not a folder'
  try:
    os.makedirs(folder, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=folder, prefix='.write_probe_')
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    return e.strerror or str(e)
  return ''
