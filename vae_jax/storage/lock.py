"""One run per workdir: a lock that a run holds for its whole life.

Two runs training into one workdir (a second terminal, a sweep runner or a SLURM requeue that
launches a point twice) would overwrite each other's checkpoints and interleave their metrics.
The second one is refused at once with `WorkdirLockedError`, which names the holder.

The lock is `fcntl.flock` on an open file, `DIR/locks/process_{process_index}.lock`. The kernel
drops it when the holding process exits in any way, SIGKILL and OOM kills included, so a
crashed run never blocks the next one; the holder's details written into the file are only
for the message, never trusted on their own. On a network file system flock works across
hosts where the client supports it (Linux NFS clients map it onto NFS byte-range locks).

Multi-host: every process of a job locks its own file, named by its process index. The
processes of one job therefore never collide with each other, while a second job on the same
workdir collides process by process (its process 0 with the first job's process 0, ...), so
each of its processes is refused.

  with workdir_lock.hold(workdir, jax.process_index()):
    ...  # the whole run

Whether a run is live (`is_held`, the sweep's status) is told from the holder's record where it
names a process of this host, without taking the lock: a probe that took it, even for
microseconds, would refuse a run starting at that moment. Where only the kernel can tell (no
record yet, another host), the probe takes it for an instant, and `acquire` waits out such a
moment (up to WAIT_SECONDS) before refusing a holder that has not recorded itself.

A sweep folder has one runner: `SweepLock` is the same lock on `DIR/locks/sweep.lock`.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time

LOCKS_DIR = 'locks'
SWEEP_LOCK = 'sweep.lock'
# How long acquire waits on a holder that names no live process of this host: a probe holds
# the lock for microseconds, a run that has just taken it records itself within milliseconds.
WAIT_SECONDS = 2.0
# Errors of a file system without flock support: the run goes ahead unlocked, with a warning,
# rather than refusing to train at all.
_NO_LOCKING = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class WorkdirLockedError(RuntimeError):
  """Another live process holds this workdir's lock for the same process index."""


def lock_path(workdir, process_index=0):
  return os.path.join(os.path.abspath(workdir), LOCKS_DIR, f'process_{process_index}.lock')


class WorkdirLock:
  """The lock of one process of a run on one workdir; `acquire` refuses if it is held.

  A second acquire in the same process is refused too (flock belongs to the open file).
  """

  def __init__(self, workdir, process_index=0):
    self.workdir = os.path.abspath(workdir)
    self.process_index = int(process_index)
    self.path = lock_path(workdir, process_index)
    self._fd = None

  def acquire(self):
    """Takes the lock and records this process in the file.

    Returns:
      self.

    Raises:
      WorkdirLockedError: a live process holds it; the message names that process.
    """
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    # O_CLOEXEC: a program this run starts must not keep the lock alive after the run ends.
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except BlockingIOError:
        holder = _read_holder(fd)
        if _alive_here(holder) or time.monotonic() >= deadline:
          os.close(fd)
          raise WorkdirLockedError(self._locked_message(holder)) from None
        time.sleep(0.005)  # a probe, or a holder about to record itself
      except OSError as e:
        os.close(fd)
        if e.errno not in _NO_LOCKING:
          raise
        print(f'WARNING: the file system of {self.workdir} does not support file locks '
              f'({e.strerror}); nothing stops a second run from using this workdir at the '
              'same time.', file=sys.stderr, flush=True)
        return self
    holder = {
        'host': socket.gethostname(),
        'pid': os.getpid(),
        # With the pid, tells this process from a later one given the same pid.
        'start_ticks': _start_ticks(os.getpid()),
        'process_index': self.process_index,
        'since': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'command': shlex.join([sys.executable, *sys.argv]),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + '\n').encode(), 0)
    self._fd = fd
    return self

  def release(self):
    """Releases the lock (also done by the kernel when the process ends)."""
    if self._fd is None:
      return
    # Emptied first, so nobody reads a finished run as the holder. The file itself stays:
    # deleting a lock file races with a process that has it open and is about to lock it.
    os.ftruncate(self._fd, 0)
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()

  def _locked_message(self, holder):
    if holder:
      who = (f'pid {holder.get("pid")} on host {holder.get("host")} (process '
             f'{holder.get("process_index")}), running since {holder.get("since")}, command: '
             f'{holder.get("command")}')
    else:
      who = 'a process that has not recorded itself yet (it has just started)'
    return (f'The workdir {self.workdir} is in use by another run: {who}. Two runs in one '
            "workdir would overwrite each other's checkpoints and metrics. Wait for that run "
            'to end or stop it, or pass another --workdir. (The lock is '
            f'{self.path}; the system releases it when its holder exits, even if killed.)')


class SweepLock(WorkdirLock):
  """The lock of a sweep folder's runner: a second runner on the folder is refused."""

  def __init__(self, workdir):
    super().__init__(workdir)
    self.path = os.path.join(self.workdir, LOCKS_DIR, SWEEP_LOCK)

  def _locked_message(self, holder):
    if holder:
      who = (f'pid {holder.get("pid")} on host {holder.get("host")}, running since '
             f'{holder.get("since")}, command: {holder.get("command")}')
    else:
      who = 'a process that has not recorded itself yet (it has just started)'
    return (f'The sweep folder {self.workdir} is in use by another sweep runner: {who}. Two '
            'runners would launch the same points. Wait for it to end or stop it (the points '
            'it runs resume when the sweep is run again); --report reads the folder without '
            f'the lock. (The lock is {self.path}; the system releases it when its holder '
            'exits, even if killed.)')


def _read_holder(fd):
  try:
    text = os.pread(fd, 65536, 0).decode(errors='replace').strip()
    holder = json.loads(text) if text else None
  except (OSError, ValueError):
    return None
  return holder if isinstance(holder, dict) else None


def _start_ticks(pid):
  """The process's start time in clock ticks since boot (Linux /proc), or None."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      # Field 22 (starttime), counted after the command name, which may hold spaces.
      return int(f.read().rsplit(')', 1)[1].split()[19])
  except (OSError, ValueError, IndexError):
    return None


def _alive_here(holder):
  """Whether the holder record names a live process: True or False for one of this host, None
  where the record cannot tell (none, another host)."""
  if not holder or holder.get('host') != socket.gethostname():
    return None
  pid = holder.get('pid')
  if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
    return None
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # alive, another user's
  except OSError:
    return None
  recorded, now = holder.get('start_ticks'), _start_ticks(pid)
  if recorded is not None and now is not None and recorded != now:
    return False  # the pid was given to a later process
  return True


def is_held(workdir, process_index=0, path=None):
  """Whether a live process holds the lock; never refuses a run that is starting meanwhile.

  The holder's record answers where it names a process of this host (no lock taken). Else only
  the kernel can tell: the lock is taken and dropped at once, which `acquire` waits out.
  """
  path = path or lock_path(workdir, process_index)
  try:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
  except OSError:
    return False  # no lock file: no run has ever held it
  try:
    alive = _alive_here(_read_holder(fd))
    if alive is not None:
      return alive
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return True
    except OSError:
      return False  # no locking on this file system: nothing can be told
    return False
  finally:
    os.close(fd)  # closing drops the lock if it was taken


@contextlib.contextmanager
def hold(workdir, process_index=0):
  """Holds the workdir's lock for process `process_index` for the `with` block.

  Raises:
    WorkdirLockedError: on entry, if a live process holds it.
  """
  with WorkdirLock(workdir, process_index) as lock:
    yield lock
