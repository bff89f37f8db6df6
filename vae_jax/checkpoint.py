"""The one owner of Orbax: saving, verifying and restoring the train state, data position and
config.

A checkpoint step holds two items: `state` (the whole TrainState) and `meta` (JSON: the step,
which is also the data pipeline's position, the image shape and the resolved config). Restores
go into an abstract state whose leaves carry the current mesh's shardings, so a run saved on one
device count resumes on another (without shardings Orbax silently puts everything on device 0).

Orbax 0.12 keeps no checksums: a flipped byte restores silently wrong values, and a truncated
file still leaves `latest_step()` naming the damaged step. So once a save has committed, a
SHA-256 digest of every file of the step is written to `checkpoints/digests/STEP.json`
(atomically). A restore verifies it and, on a mismatch or a restore error, warns (naming the
step) and falls back to the previous good step. A committed step whose digest was never written
(the process died in between) is verified by a full restore instead.
"""

import hashlib
import json
import os
import sys
import time

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

# Config fields that define the model or the data: resuming with any of them changed would mix
# two experiments. Everything else (steps, intervals, logging) may change across a resume.
_COMPATIBLE_KEYS = (
    ('model',), ('data', 'name'), ('data', 'preprocess'), ('data', 'train_split'),
    ('batch_size',), ('seed',), ('data_seed',), ('optim', 'name'), ('optim', 'clip_norm'),
)
# Test-only pause point between a save's commit and its digest (seconds), so a test can kill
# the process exactly there.
_PAUSE_ENV = 'VAE_JAX_TEST_PAUSE_BEFORE_DIGEST'
# Test-only pause point right after an asynchronous save has started (the write is in flight).
_PAUSE_SAVE_ENV = 'VAE_JAX_TEST_PAUSE_AFTER_SAVE_START'
_BEST_METRIC = 'neg_elbo'


class IncompatibleCheckpointError(ValueError):
  """The workdir's checkpoint was written by a config that defines a different experiment."""


class NoGoodCheckpointError(RuntimeError):
  """Every checkpoint step of a directory failed verification."""


def checkpoint_dir(workdir):
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def _warn(message):
  if jax.process_index() == 0:
    print(f'WARNING: {message}', file=sys.stderr, flush=True)


class Checkpointer:
  """Orbax CheckpointManager for one workdir, with digests and fallback past damaged steps."""

  def __init__(self, workdir, config, create=True):
    self.directory = checkpoint_dir(workdir)
    self.digest_dir = os.path.join(self.directory, 'digests')
    keep = config.checkpoint.keep
    # Keep the newest `keep` steps and, in addition, the best evaluated one.
    preservation = policies.AnyPreservationPolicy([
        policies.LatestN(n=keep),
        policies.BestN(get_metric_fn=lambda m: m[_BEST_METRIC], reverse=True, n=1,
                       keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=config.checkpoint.async_save,
        create=create,
        preservation_policy=preservation,
    )
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=('state', 'meta'))
    self._undigested = set()

  def latest_step(self):
    return self._manager.latest_step()

  def all_steps(self):
    return sorted(self._manager.all_steps())

  def save(self, step, state, config, image_shape, eval_metrics=None):
    """Saves (asynchronously if configured) the state, the data position and the config."""
    self._digest_committed()  # the previous save has committed by the time this one starts
    meta = {'step': int(step), 'image_shape': list(image_shape),
            'config': json.loads(config.to_json())}
    metrics = None
    if eval_metrics is not None:
      metrics = {_BEST_METRIC: float(eval_metrics[_BEST_METRIC])}
    self._manager.save(int(step), force=True, metrics=metrics, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    self._undigested.add(int(step))
    pause = float(os.environ.get(_PAUSE_SAVE_ENV, '0') or 0)
    if pause:
      print(f'TEST PAUSE after save start of step {step}', flush=True)
      time.sleep(pause)

  def wait(self):
    """Blocks until pending saves have committed, then writes their digests."""
    self._manager.wait_until_finished()
    self._digest_committed()

  def close(self):
    self.wait()
    self._manager.close()

  # -- digests ---------------------------------------------------------------------------------

  def _digest_committed(self):
    if not self._undigested:
      return
    self._manager.wait_until_finished()
    pause = float(os.environ.get(_PAUSE_ENV, '0') or 0)
    if pause:
      print(f'TEST PAUSE before digest of steps {sorted(self._undigested)}', flush=True)
      time.sleep(pause)
    committed = set(self.all_steps())
    if jax.process_index() == 0:
      for step in sorted(self._undigested & committed):
        self._write_digest(step)
      self._remove_stale_digests(committed)
    self._undigested.clear()

  def _remove_stale_digests(self, committed):
    """Digests of steps the preservation policy has deleted."""
    if not os.path.isdir(self.digest_dir):
      return
    for name in os.listdir(self.digest_dir):
      stem = name.split('.')[0]
      if stem.isdigit() and int(stem) not in committed:
        os.remove(os.path.join(self.digest_dir, name))

  def _step_dir(self, step):
    return os.path.join(self.directory, str(step))

  def _write_digest(self, step):
    os.makedirs(self.digest_dir, exist_ok=True)
    path = os.path.join(self.digest_dir, f'{step}.json')
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump({'step': step, 'files': step_digest(self._step_dir(step))}, f)
    os.replace(tmp, path)

  def verify(self, step):
    """(True, '') if the step's files match its digest; (None, why) if it has no digest."""
    path = os.path.join(self.digest_dir, f'{step}.json')
    if not os.path.exists(path):
      return None, 'no digest was written (the process may have stopped right after the save)'
    try:
      with open(path) as f:
        want = json.load(f)['files']
    except (OSError, ValueError, KeyError) as e:
      return False, f'its digest file is unreadable ({e})'
    got = step_digest(self._step_dir(step))
    if got != want:
      bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
      return False, f'files differ from their digest: {", ".join(bad[:5])}'
    return True, ''

  # -- restoring -------------------------------------------------------------------------------

  def restore(self, step, abstract_state):
    """Restores `step` into `abstract_state`'s structure, dtypes and shardings (no checks)."""
    restored = self._manager.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored['state'], restored['meta']

  def restore_meta(self, step):
    restored = self._manager.restore(int(step), args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))
    return restored['meta']

  def restore_good(self, abstract_state, step=None, check_config=None):
    """Restores the newest verified step (or `step`), falling back past damaged ones.

    Returns (state, meta) or (None, None) when the directory has no checkpoint.
    `check_config(meta)` may raise to refuse an incompatible checkpoint.
    """
    steps = self.all_steps()
    if step is not None:
      if step not in steps:
        raise ValueError(f'No checkpoint step {step} in {self.directory}; there are {steps}.')
      steps = [s for s in steps if s <= step]
    if not steps:
      return None, None
    failures = []
    for s in reversed(steps):
      ok, why = self.verify(s)
      if ok is False:
        failures.append(s)
        _warn(f'checkpoint step {s} in {self.directory} is damaged ({why}); falling back to '
              'the previous step.')
        continue
      try:
        meta = self.restore_meta(s)
        if check_config is not None:
          check_config(meta)
        state, meta = self.restore(s, abstract_state)
      except IncompatibleCheckpointError:
        raise
      except Exception as e:  # noqa: BLE001 - any damage shows up as some error here
        failures.append(s)
        _warn(f'checkpoint step {s} in {self.directory} cannot be restored '
              f'({type(e).__name__}: {str(e)[:200]}); falling back to the previous step.')
        continue
      if ok is None and jax.process_index() == 0:
        self._write_digest(s)  # a full restore verified it
      return state, meta
    raise NoGoodCheckpointError(
        f'Every checkpoint in {self.directory} ({failures}) is damaged. Move the folder aside '
        'to start again, or point config.init_from at a good copy.')


def step_digest(step_dir):
  """{relative path: sha256} of every file under one checkpoint step."""
  out = {}
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      h = hashlib.sha256()
      with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
          h.update(block)
      out[os.path.relpath(path, step_dir)] = h.hexdigest()
  return out


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
