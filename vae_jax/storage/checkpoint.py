"""The one owner of Orbax: saving, verifying and restoring the train state, data position and
config.

A checkpoint step holds two items: `state` (the whole TrainState) and `meta` (JSON: the step,
which is also the data pipeline's position, the image shape and the resolved config). Restores
go into an abstract state whose leaves carry the current mesh's shardings, so a run saved on one
device count resumes on another (without shardings Orbax silently puts everything on device 0).

Digests. Orbax 0.12 keeps no checksums of the array data (the zarr2 chunks it writes by default
carry none, and its zarr3 layout checksums only the shard index): a flipped byte restores
silently wrong values, and a full restore cannot tell. So every save writes a SHA-256 digest of
each file of the step to `checkpoints/digests/STEP.json` (atomically) from inside Orbax's
commit: Orbax's post-finalization callback runs, on its background thread and on process 0, once
every process's data is written and finalized and before the step directory is renamed into
place. Every save takes that path (a synchronous save simply waits for it), so a step that Orbax
lists has its digest unless writing the digest failed (warned) or an older version of this
module wrote the step. A kill before the rename leaves only a temporary directory that Orbax
ignores (and perhaps a digest for it, which the run's next save removes or replaces). The two
files Orbax writes during the rename itself (`_CHECKPOINT_METADATA`, which gains the commit
time, and `commit_success.txt` at the step's top level) are left out of the digest.

Restoring uses verified data only: the newest step whose files match its digest. A step whose
files differ, whose digest is unreadable, or which has no digest (unverified) is skipped with a
warning naming it. A verified step whose restore raises is not damage (its bytes are as
written; the cause is memory, a state layout changed since, a library upgrade): that is
raised as CheckpointRestoreError, and nothing is skipped or moved. A digest is never written
on the strength of a restore, which cannot detect a flipped byte. The run's own checkpointer
(`create=True`) then moves each skipped step newer than the restored one aside to
`checkpoints/damaged/STEP` (`STEP.1`, `STEP.2`, ... when taken), its digest to `STEP.json` and
the reason to `STEP.reason.txt` beside it: nothing is deleted, and the resumed run can save
that step again (Orbax refuses to save a step it already lists). Readers (`create=False`: load_run,
config.init_from) change nothing on disk. When no step verifies, nothing is moved and
NoGoodCheckpointError says what to do.

A full disk (DiskFullError). A save that cannot fit (the file system has less free space than
the newest saved step takes) is refused before anything is written. A write that fails for
lack of space anyway (the disk filled meanwhile) fails the step's commit: Orbax leaves it in
its temporary directory, which it ignores, so the steps saved before stay intact. Either way
the run ends with one DiskFullError naming the step, the folder and its free space, wherever
the failure surfaces: at the save call, when a save is waited for, or in the next save, which
first waits for the one in flight. Orbax's threads log such a failure with tracebacks, and the
writes it abandons reach a closed event loop; that noise is filtered out, as DiskFullError
says it once.

Whether a checkpoint may be resumed under the current config is config/compat.py's rule;
a full disk is storage/disk.py's error.
"""

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from vae_jax.config import compat
from vae_jax.storage import disk

# Test-only pause point inside the commit, after the data is final and before its digest
# (seconds), so a test can kill the process exactly there.
_PAUSE_ENV = 'VAE_JAX_TEST_PAUSE_BEFORE_DIGEST'
# Test-only pause point right after an asynchronous save has started (the write is in flight).
_PAUSE_SAVE_ENV = 'VAE_JAX_TEST_PAUSE_AFTER_SAVE_START'
# Test-only switch: skip the free-space check before a save, so a test can fill the disk during
# the write itself.
_SKIP_SPACE_CHECK_ENV = 'VAE_JAX_TEST_SKIP_SPACE_CHECK'
_BEST_METRIC = 'neg_elbo'
# Top-level files of a step that Orbax writes while renaming it into place, after the digest.
_OUTSIDE_DIGEST = frozenset({'_CHECKPOINT_METADATA', 'commit_success.txt'})


class NoGoodCheckpointError(RuntimeError):
  """Every checkpoint step of a directory failed verification."""


class CheckpointRestoreError(RuntimeError):
  """A verified checkpoint step (its files match their digest) failed to restore: the cause
  is in this process or its code, not in the step's files."""


def checkpoint_dir(workdir):
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def _warn(message):
  if jax.process_index() == 0:
    print(f'WARNING: {message}', file=sys.stderr, flush=True)


# Orbax writes a replicated array by slicing it across the devices that hold it ("replica-
# parallel"), each writing its part. Each slice is an op dispatched to its device (the first
# time of each shape: a compile); for a VAE's small arrays that costs more than it saves (a
# tiny sprites run on 8 CPU devices, 4 saves: 832 slices, 48 compiles, 2.0 s; written whole
# 0.7 s). Arrays whose slices would hold fewer bytes are written by one replica.
MIN_REPLICA_SLICE_BYTES = 1 << 20


@functools.cache
def _register_array_handler():
  """Orbax's jax.Array handler with MIN_REPLICA_SLICE_BYTES, once per process (process-wide).

  Through Orbax's public constructor: it keeps no per-host array metadata files (Orbax's
  default handler writes them; restores here always pass the target's shardings).
  """
  ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(
      min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES), override=True)


class Checkpointer:
  """Orbax CheckpointManager for one workdir, with digests and fallback past damaged steps.

  Args:
    workdir: the run's folder (checkpoints live in workdir/checkpoints).
    config: the run's config (checkpoint.keep, checkpoint.async_save).
    create: True for the run that owns the folder and saves into it: the folder is created,
      and steps a restore falls back past are moved aside so they can be saved again. False
      for readers, which change nothing on disk.
  """

  def __init__(self, workdir, config, create=True):
    _register_array_handler()
    self.directory = checkpoint_dir(workdir)
    self.digest_dir = os.path.join(self.directory, 'digests')
    self.damaged_dir = os.path.join(self.directory, 'damaged')
    self._owner = create
    self._async = config.checkpoint.async_save
    # The step whose save is in flight; Orbax's commit thread reads it. One save at a time:
    # each save first waits for the previous one (including its commit callback).
    self._saving = None
    self._full_steps = set()  # the steps whose failed save was raised as DiskFullError
    keep = config.checkpoint.keep
    # Keep the newest `keep` steps and, in addition, the best evaluated one.
    preservation = policies.AnyPreservationPolicy([
        policies.LatestN(n=keep),
        policies.BestN(get_metric_fn=lambda m: m[_BEST_METRIC], reverse=True, n=1,
                       keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        # Always Orbax's asynchronous path: its post-finalization callback is the one moment
        # the data is final and not yet committed, where the digest belongs. A synchronous
        # save waits for it.
        enable_async_checkpointing=True,
        async_options=ocp.AsyncOptions(post_finalization_callback=self._digest_before_commit),
        create=create,
        preservation_policy=preservation,
        # Without best_fn Orbax never writes a step's metrics to disk, so after a restart the
        # best step looks metric-less and the policy above would delete it at the next save.
        best_fn=lambda m: m[_BEST_METRIC],
        best_mode='min',
    )
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=('state', 'meta'))
    disk.quiet_orbax_no_space_noise()

  def latest_step(self):
    return self._manager.latest_step()

  def all_steps(self):
    return sorted(self._manager.all_steps())

  def save(self, step, state, config, image_shape, eval_metrics=None, selection=None):
    """Saves the state, the data position and the config; the digest is part of the commit.

    Asynchronous if config.checkpoint.async_save (training continues while it is written),
    otherwise the step and its digest are on disk when this returns.

    eval_metrics: the step's evaluation of data.valid_split (its neg_elbo ranks the step for
      model selection: ranked_steps), or None where the step was not evaluated.
    selection: the loop's model-selection state at this step (JSON: the best step so far and
      early stopping's count), kept in the meta so that a resumed run continues it.
    """
    step = int(step)
    self._settle()
    self._check_space(step)
    meta = {'step': step, 'image_shape': list(image_shape),
            'config': json.loads(config.to_json())}
    if selection is not None:
      meta['selection'] = selection
    metrics = None
    if eval_metrics is not None:
      value = float(eval_metrics[_BEST_METRIC])
      # A non-finite evaluation ranks last (NaN would break the policy's ordering).
      metrics = {_BEST_METRIC: value if math.isfinite(value) else float('inf')}
    self._saving = step
    with self._disk_full_raised(step):
      self._manager.save(step, force=True, metrics=metrics, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    if not self._async:
      self._settle()
    pause = float(os.environ.get(_PAUSE_SAVE_ENV, '0') or 0)
    if pause:
      print(f'TEST PAUSE after save start of step {step}', flush=True)
      time.sleep(pause)

  def wait(self):
    """Blocks until pending saves have committed (with their digests)."""
    self._settle()

  def close(self):
    """Waits for the save in flight, then closes; raises disk.DiskFullError as wait() does."""
    try:
      self._settle()
    finally:
      with self._disk_full_raised(self._saving):
        self._manager.close()

  def _settle(self):
    """Waits for the save in flight, then drops digests of steps that no longer exist.

    Raises:
      disk.DiskFullError: the save in flight found no space (its step is not committed).
    """
    with self._disk_full_raised(self._saving):
      self._manager.wait_until_finished()
    if self._owner and jax.process_index() == 0:
      self._remove_stale_digests(set(self.all_steps()))

  # -- a full disk -----------------------------------------------------------------------------

  @contextlib.contextmanager
  def _disk_full_raised(self, step):
    """Turns a failed save for lack of space, however Orbax raises it, into DiskFullError."""
    try:
      yield
    except Exception as e:
      if not disk.is_no_space(e):
        raise
      if step in self._full_steps:
        return  # raised already: Orbax raises a failed save's errors at each later wait
      self._full_steps.add(step)
      disk.join_orbax_save_threads()
      raise self._disk_full(step) from e

  def _check_space(self, step):
    """Refuses a save before it writes when the newest saved step would not fit beside the
    others (a step's size changes little): a write that fails midway leaves a temporary step,
    and one whose directory cannot be created holds Orbax's save until its timeout. Every
    process reaches the same answer, so none starts a save the others refuse."""
    before = [s for s in self.all_steps() if s < step]
    if not before or os.environ.get(_SKIP_SPACE_CHECK_ENV):
      return
    try:
      free = shutil.disk_usage(self.directory).free
      short = free < disk.folder_bytes(self._step_dir(before[-1]))
    except OSError:  # cannot tell: let the save try
      short = False
    if _any_process(short):
      raise self._disk_full(step)

  def _disk_full(self, step):
    """The disk.DiskFullError of step `step`: the folder, its free space, and how to go on."""
    try:
      usage = shutil.disk_usage(self.directory)
      space = f'{disk.format_bytes(usage.free)} free of {disk.format_bytes(usage.total)} there'
    except OSError as e:
      space = f'its free space is unknown: {e.strerror}'
    before = [s for s in self.all_steps() if step is None or s < step]
    if before:
      try:
        size = disk.folder_bytes(self._step_dir(before[-1]))
        space += f'; a step takes {disk.format_bytes(size)}'
      except OSError:
        pass
      what = (f'The steps saved before are intact, the newest is step {before[-1]}: free space '
              'or move the workdir to a bigger disk, then rerun the same command to resume '
              f'from step {before[-1]}.')
    else:
      what = ('No step was saved before it: free space or choose a workdir on a bigger disk, '
              'then rerun the same command.')
    return disk.DiskFullError(f'No space left on device: checkpoint step {step} could not be '
                              f'written to {self.directory} ({space}). {what}')

  # -- digests ---------------------------------------------------------------------------------

  def _digest_before_commit(self):
    """Orbax's post-finalization callback: its background thread, process 0 only.

    The step's data is final and still in its temporary directory (which the rename keeps
    file for file); on file systems that commit with a marker file instead it is already in
    the final one.
    """
    step = self._saving
    pause = float(os.environ.get(_PAUSE_ENV, '0') or 0)
    if pause:
      print(f'TEST PAUSE before digest of steps [{step}]', flush=True)
      time.sleep(pause)
    final = self._step_dir(step)
    candidates = [final + ocp.utils.TMP_DIR_SUFFIX, final]
    found = [p for p in candidates if os.path.isdir(p)]
    try:
      if not found:
        raise FileNotFoundError(f'none of {candidates} exists')
      self._write_digest(step, found[0])
    except OSError as e:
      if disk.is_no_space(e):
        # Raised into Orbax's commit, which then leaves the step uncommitted: the disk is
        # full, so the run must stop (the wait for this save raises disk.DiskFullError).
        with contextlib.suppress(OSError):
          os.remove(self._digest_path(step) + '.tmp')
        raise
      # The save itself is fine; without a digest a resume will not use this step.
      _warn(f'could not write the digest of checkpoint step {step} ({e}); a resume will skip '
            'this step as unverified.')

  def _remove_stale_digests(self, committed):
    """Digests of steps the preservation policy deleted, or of saves killed before commit."""
    if not os.path.isdir(self.digest_dir):
      return
    for name in os.listdir(self.digest_dir):
      stem = name.split('.')[0]
      if stem.isdigit() and int(stem) not in committed:
        os.remove(os.path.join(self.digest_dir, name))

  def _step_dir(self, step):
    return os.path.join(self.directory, str(step))

  def _digest_path(self, step):
    return os.path.join(self.digest_dir, f'{step}.json')

  def _write_digest(self, step, step_dir):
    os.makedirs(self.digest_dir, exist_ok=True)
    path = self._digest_path(step)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump({'step': step, 'files': step_digest(step_dir)}, f)
    os.replace(tmp, path)

  def verify(self, step):
    """Checks a step's files against its digest.

    Returns:
      (True, '') if they match, (False, why) if they differ or the digest is unreadable,
      (None, why) if the step has no digest.
    """
    path = self._digest_path(step)
    if not os.path.exists(path):
      return None, ('it has no digest (an older version of vae_jax wrote it, or its digest '
                    'could not be written or was removed)')
    try:
      with open(path) as f:
        want = json.load(f)['files']
    except (OSError, ValueError, KeyError) as e:
      return False, f'its digest file is unreadable ({e})'
    # Digests written by earlier versions also cover the files Orbax writes during the commit.
    want = {k: v for k, v in want.items() if k not in _OUTSIDE_DIGEST}
    got = step_digest(self._step_dir(step))
    if got != want:
      bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
      return False, f'files differ from their digest: {", ".join(bad[:5])}'
    return True, ''

  # -- restoring -------------------------------------------------------------------------------

  def restore(self, step, abstract_state):
    """Restores `step` into `abstract_state`'s structure, dtypes and shardings (no checks).

    A field of the state that is None in the target (an optional part that is off) and absent
    from the step (saved before the field existed) is left None.
    """
    absent = self._absent_none_fields(step, abstract_state)
    target = abstract_state
    if absent:  # restored as a dict of the fields the step has, then put back together
      target = {f.name: getattr(abstract_state, f.name)
                for f in dataclasses.fields(abstract_state) if f.name not in absent}
    restored = self._manager.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    state = restored['state']
    if absent:
      state = abstract_state.replace(**state)
    return state, restored['meta']

  def _absent_none_fields(self, step, abstract_state):
    if not dataclasses.is_dataclass(abstract_state):
      return ()
    nones = [f.name for f in dataclasses.fields(abstract_state)
             if getattr(abstract_state, f.name) is None]
    if not nones:
      return ()
    from etils import epath  # Orbax's path type
    path = epath.Path(os.path.join(self._step_dir(int(step)), 'state'))
    tree = ocp.StandardCheckpointHandler().metadata(path).tree
    return tuple(n for n in nones if n not in tree)

  def validation_value(self, step):
    """The validation neg_elbo saved with `step` (Orbax's metrics item of the step, covered by
    its digest), or None where the step was saved without an evaluation."""
    path = os.path.join(self._step_dir(step), 'metrics', 'metrics')
    try:
      with open(path) as f:
        value = json.load(f).get(_BEST_METRIC)
    except (OSError, ValueError, AttributeError):
      return None
    return float(value) if isinstance(value, (int, float)) else None

  def ranked_steps(self):
    """[(validation neg_elbo, step)] of the saved steps that hold an evaluation, best first (a
    non-finite evaluation ranks last; ties go to the earlier step)."""
    ranked = [(v, s) for s in self.all_steps() if (v := self.validation_value(s)) is not None]
    return sorted(ranked, key=lambda vs: (not math.isfinite(vs[0]), vs[0], vs[1]))

  def restore_meta(self, step):
    restored = self._manager.restore(int(step), args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))
    return restored['meta']

  def restore_good(self, abstract_state, step=None, check_config=None):
    """Restores the newest verified step (or `step`), falling back past the others.

    Damaged and unverified steps are skipped with a warning; the run's own checkpointer
    (create=True) moves those newer than the restored step aside (see the module docstring).

    Args:
      abstract_state: the restore target (structure, dtypes and shardings), or a function of
        a step's meta that returns it (the layout may follow the config the step was saved
        with: state.restore_target).
      step: the newest step to consider; None = all.
      check_config: `check_config(meta)` may raise compat.IncompatibleCheckpointError to refuse a
        checkpoint (raised as is, nothing moved).

    Returns:
      (state, meta), or (None, None) when the directory has no checkpoint.

    Raises:
      NoGoodCheckpointError: there are steps, and none verifies.
      CheckpointRestoreError: the newest verified step failed to restore (nothing moved).
    """
    steps = self.all_steps()
    if step is not None:
      if step not in steps:
        raise ValueError(f'No checkpoint step {step} in {self.directory}; there are {steps}.')
      steps = [s for s in steps if s <= step]
    if not steps:
      return None, None
    skipped = []
    for s in reversed(steps):
      ok, why = self.verify(s)
      if not ok:
        kind = 'damaged' if ok is False else 'unverified'
        skipped.append((s, kind, why))
        _warn(f'checkpoint step {s} in {self.directory} is {kind} ({why}); falling back to '
              'the previous step.')
        continue
      try:
        meta = self.restore_meta(s)
        if check_config is not None:
          check_config(meta)
        target = _target(abstract_state, meta)
        state, meta = self.restore(s, target)
      except (compat.IncompatibleCheckpointError, _TargetError):
        raise
      except Exception as e:  # noqa: BLE001 - the files verified: not damage, whatever it is
        cause = ' '.join(f'{type(e).__name__}: {e}'.split())[:500]
        raise CheckpointRestoreError(
            f'Checkpoint step {s} in {self.directory} matches its digest (its files are as '
            f'written), yet restoring it failed: {cause}. That is not damage of the step, so '
            'nothing was moved and no older step is used instead: the cause is in this '
            'process or its code (memory, a train state whose layout changed since the step '
            'was saved, a library upgrade). Fix it and rerun.') from e
      if skipped and self._owner:
        self._set_aside(skipped, s)
      return state, meta
    raise NoGoodCheckpointError(
        f'No checkpoint step in {self.directory} can be trusted ('
        + '; '.join(f'step {s}: {kind}, {why}' for s, kind, why in skipped)
        + '). Nothing was moved. Move the folder aside to start again, or point '
        'config.init_from at a good copy.')

  def _set_aside(self, skipped, restored):
    """Moves the skipped steps to damaged/ so Orbax no longer lists them.

    Every process reached the same decision from the same files; process 0 moves them once
    all are done reading, and the others wait for it before re-reading the step list.
    """
    from jax.experimental import multihost_utils
    multi = jax.process_count() > 1
    if multi:
      multihost_utils.sync_global_devices('vae_jax checkpoint: before setting steps aside')
    if jax.process_index() == 0:
      for s, kind, why in skipped:
        dest = self._move_aside(s, f'{kind}: {why}')
        _warn(f'moved {kind} checkpoint step {s} aside to {dest} (kept, not deleted); the run '
              f'resumes from step {restored} and saves step {s} again.')
    if multi:
      multihost_utils.sync_global_devices('vae_jax checkpoint: steps set aside')
    self._manager.reload()

  def _move_aside(self, step, reason):
    os.makedirs(self.damaged_dir, exist_ok=True)
    name, n = str(step), 0
    while any(os.path.exists(os.path.join(self.damaged_dir, name + ext))
              for ext in ('', '.json', '.reason.txt')):
      n += 1
      name = f'{step}.{n}'
    dest = os.path.join(self.damaged_dir, name)
    os.rename(self._step_dir(step), dest)
    if os.path.exists(self._digest_path(step)):
      os.rename(self._digest_path(step), dest + '.json')
    with open(dest + '.reason.txt', 'w') as f:
      f.write(f'checkpoint step {step} was set aside as {reason}\n')
    return dest


def _any_process(flag):
  """Whether `flag` holds on any process (every process calls it at the same point)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


class _TargetError(RuntimeError):
  """Building the restore target failed: a fault of the caller, never of the step's files."""


def _target(abstract_state, meta):
  if not callable(abstract_state):
    return abstract_state
  try:
    return abstract_state(meta)
  except Exception as e:  # noqa: BLE001 - re-raised as not-damage, so nothing is set aside
    raise _TargetError(f'building the restore target from the step\'s config failed: '
                       f'{type(e).__name__}: {e}') from e


def step_digest(step_dir):
  """{relative path: sha256} of every file under one checkpoint step.

  The top-level files Orbax writes while renaming the step into place are left out.
  """
  out = {}
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if rel in _OUTSIDE_DIGEST:
        continue
      h = hashlib.sha256()
      with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
          h.update(block)
      out[rel] = h.hexdigest()
  return out


