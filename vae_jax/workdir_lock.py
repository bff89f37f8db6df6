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

LOCKS_DIR = 'locks'
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
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise WorkdirLockedError(self._locked_message(holder)) from None
    except OSError as e:
      os.close(fd)
      if e.errno not in _NO_LOCKING:
        raise
      print(f'WARNING: the file system of {self.workdir} does not support file locks '
            f'({e.strerror}); nothing stops a second run from using this workdir at the same '
            'time.', file=sys.stderr, flush=True)
      return self
    holder = {
        'host': socket.gethostname(),
        'pid': os.getpid(),
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


def _read_holder(fd):
  try:
    text = os.pread(fd, 65536, 0).decode(errors='replace').strip()
    return json.loads(text) if text else None
  except (OSError, ValueError):
    return None


@contextlib.contextmanager
def hold(workdir, process_index=0):
  """Holds the workdir's lock for process `process_index` for the `with` block.

  Raises:
    WorkdirLockedError: on entry, if a live process holds it.
  """
  with WorkdirLock(workdir, process_index) as lock:
    yield lock
