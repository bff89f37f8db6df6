"""One run per workdir: a second run is refused while the first lives, never after it died."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.test_checkpoint import RUN_FLAGS, SCRIPT, _env
from tests.test_config import ROOT
from vae_jax import cli
from vae_jax.storage import lock as workdir_lock
from vae_jax.storage.lock import WorkdirLock, WorkdirLockedError

# Holds the lock of (workdir, process index) in another process until it is killed.
_HOLD = '''
import sys, time
from vae_jax.storage import lock as workdir_lock
with workdir_lock.hold(sys.argv[1], int(sys.argv[2])):
  print('HOLDING', flush=True)
  time.sleep(600)
'''


@pytest.fixture
def holder():
  """Starts holders in other processes; returns start(workdir, index) -> Popen."""
  procs = []

  def start(workdir, index=0):
    proc = subprocess.Popen([sys.executable, '-c', _HOLD, str(workdir), str(index)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    line = proc.stdout.readline()
    assert line.strip() == 'HOLDING', proc.stderr.read()
    return proc

  yield start
  for proc in procs:
    if proc.poll() is None:
      proc.kill()
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()


def _kill(proc):
  proc.send_signal(signal.SIGKILL)
  assert proc.wait(timeout=30) == -signal.SIGKILL


def test_second_holder_is_refused_naming_the_first(tmp_path, holder):
  first = holder(tmp_path, 0)
  with pytest.raises(WorkdirLockedError) as refused:
    WorkdirLock(tmp_path, 0).acquire()
  message = str(refused.value)
  assert f'pid {first.pid} on host {socket.gethostname()}' in message
  assert str(tmp_path) in message and 'process 0' in message and '-c' in message


def test_a_killed_holder_does_not_block_the_next_run(tmp_path, holder):
  first = holder(tmp_path, 0)
  _kill(first)
  path = workdir_lock.lock_path(tmp_path, 0)
  assert json.loads(open(path).read())['pid'] == first.pid  # its record outlived it
  with workdir_lock.hold(tmp_path, 0):
    assert json.loads(open(path).read())['pid'] == os.getpid()


def test_same_index_collides_other_indices_do_not(tmp_path, holder):
  holder(tmp_path, 1)
  with workdir_lock.hold(tmp_path, 0), workdir_lock.hold(tmp_path, 2):
    with pytest.raises(WorkdirLockedError, match='process 1'):
      workdir_lock.hold(tmp_path, 1).__enter__()
  assert sorted(os.listdir(tmp_path / 'locks')) == [
      'process_0.lock', 'process_1.lock', 'process_2.lock']


def test_release_lets_another_acquire(tmp_path, holder):
  lock = WorkdirLock(tmp_path, 0).acquire()
  with pytest.raises(WorkdirLockedError):  # the same process, through another open file
    WorkdirLock(tmp_path, 0).acquire()
  lock.release()
  assert open(workdir_lock.lock_path(tmp_path, 0)).read() == ''  # no stale holder to read
  other = holder(tmp_path, 0)  # another process gets it at once
  _kill(other)


def test_a_locked_workdir_is_a_user_error():
  assert issubclass(WorkdirLockedError, cli.user_errors())


@pytest.mark.slow
def test_second_run_on_a_busy_workdir_is_refused(tmp_path):
  """End to end: the second scripts/train.py exits 2 naming the first while the first trains."""
  first = subprocess.Popen([sys.executable, SCRIPT, *RUN_FLAGS, f'--workdir={tmp_path}'],
                           cwd=ROOT, env=_env(1, VAE_JAX_TEST_PAUSE_AFTER_SAVE_START=20),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 300
    for line in first.stdout:  # the first run is past its start and saving (paused)
      if 'TEST PAUSE after save start of step 10' in line:
        break
      assert time.time() < deadline
    else:
      pytest.fail(f'the first run ended early: {first.wait()} {first.stderr.read()[-3000:]}')
    second = subprocess.run([sys.executable, SCRIPT, *RUN_FLAGS, f'--workdir={tmp_path}'],
                            cwd=ROOT, env=_env(1), capture_output=True, text=True, timeout=120)
    assert first.poll() is None  # still running: the refusal was not a race with its end
    assert second.returncode == 2, second.stderr[-3000:]
    assert 'Traceback' not in second.stderr
    assert 'in use by another run' in second.stderr and f'pid {first.pid}' in second.stderr
  finally:
    first.kill()
    first.communicate(timeout=60)


# Probes a point's status in a loop, as `scripts/sweep.py --report` or a sweep runner does.
_PROBE = '''
import sys, time
from vae_jax import sweep
print('PROBING', flush=True)
t = time.time(); n = 0
while time.time() - t < float(sys.argv[2]):
  sweep.is_running(sys.argv[1]); n += 1
print(n, flush=True)
'''


def test_a_status_probe_never_refuses_a_starting_run(tmp_path):
  WorkdirLock(tmp_path, 0).acquire().release()  # the lock file exists, as after any run
  prober = subprocess.Popen([sys.executable, '-c', _PROBE, str(tmp_path), '1.5'], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
  assert prober.stdout.readline().strip() == 'PROBING'
  refused = starts = 0
  t = time.time()
  while time.time() - t < 1.0:
    starts += 1
    try:
      WorkdirLock(tmp_path, 0).acquire().release()
    except WorkdirLockedError:
      refused += 1
  probes = int(prober.stdout.read())
  assert prober.wait(timeout=30) == 0
  assert probes > 1000 and starts > 100  # both loops really ran side by side
  assert refused == 0, f'{refused} of {starts} starts refused'


def test_is_running_sees_a_live_holder_and_not_a_killed_one(tmp_path, holder):
  from vae_jax import sweep
  assert not sweep.is_running(tmp_path)
  first = holder(tmp_path, 0)
  assert sweep.is_running(tmp_path)
  _kill(first)  # its record stays in the file, naming a dead process
  assert not sweep.is_running(tmp_path)


def test_acquire_waits_out_a_lock_held_for_a_moment(tmp_path):
  import fcntl
  import threading
  WorkdirLock(tmp_path, 0).acquire().release()
  fd = os.open(workdir_lock.lock_path(tmp_path, 0), os.O_RDONLY)
  fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as an older prober takes it, unrecorded
  threading.Timer(0.3, os.close, [fd]).start()
  WorkdirLock(tmp_path, 0).acquire().release()
