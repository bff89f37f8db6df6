"""Storage faults: a full disk during a checkpoint save is one clear error (exit 2) and loses
nothing, and a rerun with space resumes exactly; a verified step whose restore raises is not
damage (raised, nothing set aside)."""

import errno
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from etils.epath import gpath

from tests import test_checkpoint as tc
from tests.test_config import ROOT
from tests.test_train import tiny_config
from vae_jax import cli, train
from vae_jax.storage import checkpoint as ckpt_lib
from vae_jax.storage import disk

IMAGE_SHAPE = (8, 8, 1)
ASYNC = {'checkpoint.async_save': True}
# The whole runs train on the 16x16 sprites (a full disk does not depend on the image size).
RUN = {**ASYNC, 'data.name': 'sprites/small'}
# scripts/train.py flags that build tiny_config(**RUN) (the default config's async saves).
FLAGS = ['--config=configs/default.py', '--config.batch_size=32', '--config.eval_batch_size=512',
         '--config.num_train_steps=20', '--config.steps_per_call=5',
         '--config.log_every_steps=5', '--config.eval_every_steps=20',
         '--config.checkpoint_every_steps=10', '--config.model.hidden=(64,)',
         '--config.model.latent_dim=4', '--config.images.num=16', '--config.compilation_cache=',
         '--config.data.name=sprites/small', '--config.mesh.data=2']


def _no_space(path):
  return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))


def _fill_disk_at(monkeypatch, step):
  """Every file Orbax opens for writing in step `step`'s folder fails with ENOSPC, whichever
  thread writes it (Orbax's own files go through etils' path objects)."""
  marker = f'{os.sep}{step}.orbax-checkpoint-tmp'
  real_open = gpath.PosixGPath.open

  def full_open(self, mode='r', *args, **kwargs):
    if marker in os.fspath(self) and any(c in mode for c in 'wax+'):
      raise _no_space(self)
    return real_open(self, mode, *args, **kwargs)

  monkeypatch.setattr(gpath.PosixGPath, 'open', full_open)


def _fill_digest_at(monkeypatch, step):
  """Writing step `step`'s digest (this module's own write, inside Orbax's commit) fails."""
  import builtins
  target = os.path.join('digests', f'{step}.json.tmp')

  def full_open(path, mode='r', *args, **kwargs):
    if os.fspath(path).endswith(target) and 'w' in mode:
      raise _no_space(path)
    return builtins.open(path, mode, *args, **kwargs)

  monkeypatch.setattr(ckpt_lib, 'open', full_open, raising=False)


def _states():
  rng = np.random.RandomState(0)
  first = {'w': jax.numpy.asarray(rng.randn(64, 64).astype(np.float32))}
  return first, jax.tree.map(lambda x: x + 1, first), jax.tree.map(lambda x: x + 2, first)


def _assert_one_paragraph(text, workdir, failed, last):
  checkpoints = os.path.join(str(workdir), 'checkpoints')
  assert checkpoints in text and 'free' in text and 'no space left on device' in text.lower()
  assert f'step {failed}' in text
  assert f'step {last}' in text if last else 'no step' in text.lower()


# -- where the failure surfaces: the save call, a wait, or the next save -----------------------


@pytest.mark.parametrize('where', ['sync_save', 'async_wait', 'async_next_save', 'digest'])
def test_a_full_disk_during_a_save_is_one_error_naming_the_folder_and_free_space(
    tmp_path, monkeypatch, capfd, where):
  config = tiny_config(**({} if where == 'sync_save' else ASYNC))
  first, second, third = _states()
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), config)
  checkpointer.save(10, first, config, IMAGE_SHAPE)
  checkpointer.wait()
  capfd.readouterr()
  if where == 'digest':
    _fill_digest_at(monkeypatch, 20)
  else:
    _fill_disk_at(monkeypatch, 20)
  with pytest.raises(disk.DiskFullError) as raised:
    checkpointer.save(20, second, config, IMAGE_SHAPE)
    if where == 'async_next_save':
      checkpointer.save(30, third, config, IMAGE_SHAPE)  # step 20's failure surfaces here
    checkpointer.wait()
  _assert_one_paragraph(str(raised.value), tmp_path, 20, 10)
  assert '\n' not in str(raised.value)
  # Orbax's background threads logged nothing of it: the error above says it all.
  assert 'Traceback' not in capfd.readouterr().err
  checkpointer.close()  # the same failure is not raised twice
  monkeypatch.undo()
  # Nothing of step 20 is listed; step 10 is intact and restores.
  reader = ckpt_lib.Checkpointer(str(tmp_path), config, create=False)
  assert reader.all_steps() == [10] and reader.verify(10) == (True, '')
  state, _ = reader.restore_good(jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), first))
  reader.close()
  tc._assert_bitwise(state, first)


def test_a_save_that_cannot_fit_is_refused_before_anything_is_written(tmp_path, monkeypatch):
  config = tiny_config(**ASYNC)
  first, second, _ = _states()
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), config)
  checkpointer.save(10, first, config, IMAGE_SHAPE)
  checkpointer.wait()
  step_bytes = sum(os.path.getsize(os.path.join(r, f))
                   for r, _, fs in os.walk(os.path.join(tmp_path, 'checkpoints', '10'))
                   for f in fs)
  real = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(ckpt_lib.shutil, 'disk_usage',
                      lambda p: real._replace(free=step_bytes // 2))
  with pytest.raises(disk.DiskFullError) as raised:
    checkpointer.save(20, second, config, IMAGE_SHAPE)
  _assert_one_paragraph(str(raised.value), tmp_path, 20, 10)
  checkpointer.close()
  assert sorted(os.listdir(os.path.join(tmp_path, 'checkpoints'))) == ['10', 'digests']


# -- the whole run: one paragraph, exit 2, then a rerun resumes exactly ------------------------


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """An uninterrupted 20-step run: its final state and its workdir."""
  workdir = str(tmp_path_factory.mktemp('straight'))
  return train.train_and_evaluate(tiny_config(**RUN), workdir)['state'], workdir


# Runs scripts/train.py with every Orbax file write of step FULL_AT's folder failing (ENOSPC).
_FAULTY_TRAIN = '''
import errno, os, runpy, sys
from etils.epath import gpath
marker = os.sep + os.environ['FULL_AT'] + '.orbax-checkpoint-tmp'
real_open = gpath.PosixGPath.open
def full_open(self, mode='r', *args, **kwargs):
  if marker in os.fspath(self) and any(c in mode for c in 'wax+'):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(self))
  return real_open(self, mode, *args, **kwargs)
gpath.PosixGPath.open = full_open
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def _assert_resumes_exactly(workdir, resumed_from, straight_state, capfd):
  capfd.readouterr()
  result = train.train_and_evaluate(tiny_config(**RUN), str(workdir))
  out = capfd.readouterr().out
  if resumed_from:
    assert f'Resuming from the workdir checkpoint at step {resumed_from}.' in out
  else:
    assert 'Starting from scratch' in out
  assert result['step'] == 20 and os.path.exists(os.path.join(workdir, 'DONE'))
  tc._assert_bitwise(result['state'], straight_state)
  tc._assert_bitwise(tc._final_state(workdir), straight_state)


@pytest.mark.slow
@pytest.mark.parametrize('full_at', [10, 20])
def test_a_full_disk_ends_the_run_with_one_paragraph_and_exit_2_then_a_rerun_resumes_exactly(
    tmp_path, straight, capfd, full_at):
  workdir = tmp_path / 'w'
  env = dict(os.environ, FULL_AT=str(full_at))
  proc = subprocess.run([sys.executable, '-c', _FAULTY_TRAIN, tc.SCRIPT, *FLAGS,
                         f'--workdir={workdir}'], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-3000:]
  error = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(error) == 1, proc.stderr[-3000:]
  _assert_one_paragraph(error[0], workdir, full_at, full_at - 10)
  assert 'Traceback' not in proc.stderr and len(proc.stderr.splitlines()) < 15, proc.stderr
  assert not (workdir / 'DONE').exists()  # the last save never committed
  _assert_resumes_exactly(workdir, full_at - 10, straight[0], capfd)


def _can_mount_tmpfs(folder):
  try:
    proc = subprocess.run(['unshare', '-m', '--propagation', 'private', 'sh', '-c',
                           f'mount -t tmpfs -o size=1m tmpfs "{folder}"'],
                          capture_output=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return False
  return proc.returncode == 0


def _folder_bytes(folder):
  return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(folder) for f in fs)


@pytest.mark.slow
def test_a_real_full_file_system_ends_the_run_with_one_paragraph_and_resumes_exactly(
    tmp_path, straight, capfd):
  """TensorStore's own write fails (RESOURCE_EXHAUSTED, os_error_code 28) on a tmpfs that
  holds step 10's checkpoint but not step 20's as well (in a private mount namespace). The
  check before the save, which would refuse it at once, is off: the write itself fails."""
  small = tmp_path / 'small'
  small.mkdir()
  if not _can_mount_tmpfs(small):
    pytest.skip('mounting a tmpfs in a private mount namespace is not permitted here')
  state, done = straight
  # The finished run's files less half a step: room for everything but step 20.
  size = _folder_bytes(done) - _folder_bytes(os.path.join(done, 'checkpoints', '20')) // 2
  kept = tmp_path / 'kept'
  script = ('mount -t tmpfs -o size="$1" tmpfs "$0" || exit 99; shift; "$@"; rc=$?; '
            'cp -a "$0/w" "$0/../kept"; exit $rc')
  proc = subprocess.run(
      ['unshare', '-m', '--propagation', 'private', 'sh', '-c', script, str(small),
       f'{size // 1024}k', sys.executable, tc.SCRIPT, *FLAGS, f'--workdir={small}/w'],
      cwd=ROOT, env=dict(os.environ, **{ckpt_lib._SKIP_SPACE_CHECK_ENV: '1'}),
      capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-3000:]
  error = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(error) == 1, proc.stderr[-3000:]
  _assert_one_paragraph(error[0], small / 'w', 20, 10)
  assert 'Traceback' not in proc.stderr and len(proc.stderr.splitlines()) < 15, proc.stderr
  assert not (kept / 'DONE').exists()
  _assert_resumes_exactly(kept, 10, state, capfd)


def test_any_other_write_that_finds_the_disk_full_is_one_paragraph_and_exit_2(tmp_path, capsys):
  path = tmp_path / 'metrics.jsonl'  # the metrics writer, say

  def write():
    raise _no_space(path)

  with pytest.raises(SystemExit) as raised:
    cli.run_reporting_user_errors(write)
  assert raised.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and err.count('\n') == 1
  assert str(path) in err and 'free' in err and 'No space left on device' in err


# -- a verified step whose restore raises is not damage -----------------------------------------


@pytest.mark.parametrize('owner', [True, False])
def test_a_verified_step_whose_restore_raises_is_raised_and_nothing_is_set_aside(
    tmp_path, monkeypatch, owner):
  config = tiny_config()
  first, second, _ = _states()
  writer = ckpt_lib.Checkpointer(str(tmp_path), config)
  writer.save(10, first, config, IMAGE_SHAPE)
  writer.save(20, second, config, IMAGE_SHAPE)
  writer.close()
  real_restore = ckpt_lib.Checkpointer.restore

  def restore(self, step, abstract_state):  # the device is out of memory for the newest only
    if int(step) == 20:
      raise MemoryError('out of memory allocating 16384 bytes')
    return real_restore(self, step, abstract_state)

  monkeypatch.setattr(ckpt_lib.Checkpointer, 'restore', restore)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        first)
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), config, create=owner)
  with pytest.raises(ckpt_lib.CheckpointRestoreError) as raised:
    checkpointer.restore_good(target)
  checkpointer.close()
  message = str(raised.value)
  assert 'step 20' in message and str(tmp_path) in message
  assert 'MemoryError: out of memory allocating 16384 bytes' in message
  assert isinstance(raised.value.__cause__, MemoryError)
  # The bytes are as written: nothing was moved aside, step 20 still verifies.
  assert not os.path.exists(os.path.join(tmp_path, 'checkpoints', 'damaged'))
  monkeypatch.undo()
  reader = ckpt_lib.Checkpointer(str(tmp_path), config, create=False)
  assert reader.all_steps() == [10, 20] and reader.verify(20) == (True, '')
  state, meta = reader.restore_good(target)
  reader.close()
  assert meta['step'] == 20
  tc._assert_bitwise(state, second)
