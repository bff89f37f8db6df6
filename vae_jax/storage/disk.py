"""A full disk: telling it from other write errors (Orbax and TensorStore raise it in several
forms), naming it once (DiskFullError), and quieting the noise Orbax's threads make about it.

A save that cannot fit is refused before it writes (storage/checkpoint.py checks the free space
against the newest step's size); a write that fails for lack of space anyway fails the step's
commit, so the steps saved before stay intact and a rerun with space resumes exactly.
"""

import errno
import logging
import os
import sys
import threading
import time


class DiskFullError(RuntimeError):
  """A checkpoint step could not be written: its file system is full (or the quota spent).

  The steps saved before are intact; a rerun with space resumes from the newest of them.
  """


# OS errors that say the file system, or the user's quota on it, is full.
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


# TensorStore raises them as ValueError('RESOURCE_EXHAUSTED: ... No space left on device
# [os_error_code=\'28\']'): the OS error is only in the text.
_NO_SPACE_TEXTS = (tuple(os.strerror(n) for n in _NO_SPACE_ERRNOS)
                   + tuple(f"os_error_code='{n}'" for n in _NO_SPACE_ERRNOS))


def is_no_space(error):
  """Whether `error`, or an error it was raised from or while handling, says the file system
  is full."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _NO_SPACE_ERRNOS:
      return True
    if any(text in str(error) for text in _NO_SPACE_TEXTS):
      return True
    error = error.__cause__ or error.__context__
  return False


def format_bytes(n):
  """'3.2 MiB' (binary units, as df -h counts)."""
  for unit in ('bytes', 'KiB', 'MiB', 'GiB', 'TiB'):
    if n < 1024 or unit == 'TiB':
      return f'{n:.0f} {unit}' if unit == 'bytes' else f'{n:.1f} {unit}'
    n /= 1024


def folder_bytes(folder):
  """The bytes of the files under `folder`."""
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(folder) for name in names)


def join_orbax_save_threads(timeout_s=60.0):
  """Waits (bounded) for the threads of Orbax's failed save: its first failure surfaces while
  the other writes of the step still run, and a process that exits under them gets their
  tracebacks ('cannot schedule new futures after interpreter shutdown')."""
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:  # again: a thread may start another as it ends
    threads = [t for t in threading.enumerate() if t is not threading.current_thread() and (
        type(t).__module__.startswith('orbax.') or t.name == 'async_save')]
    if not threads:
      return
    for thread in threads:  # the plain join: Orbax's own re-raises the thread's error
      threading.Thread.join(thread, max(0.0, deadline - time.monotonic()))


_ORBAX_FILES = f'{os.sep}orbax{os.sep}'


class _OrbaxNoSpaceFilter(logging.Filter):
  """Drops the log records of a write that found no space (each with a traceback): Orbax's,
  from several threads, and asyncio's about the tasks of the writes Orbax abandoned, collected
  with their exception unretrieved. DiskFullError reports the failure once."""

  def filter(self, record):
    error = record.exc_info[1] if record.exc_info else None
    if record.name == 'asyncio':
      return not is_no_space(error)
    if _ORBAX_FILES not in record.pathname:
      return True
    return not (is_no_space(error) or any(t in record.getMessage() for t in _NO_SPACE_TEXTS))


def _is_abandoned_orbax_write(unraisable, orbax_files=_ORBAX_FILES):
  """Whether an unraisable exception is the echo of Orbax writes abandoned after one failed:
  TensorStore completing a write for an event loop Orbax has closed, or at exit the pending
  write coroutines being destroyed. The failure itself is raised where the save is waited for.
  (Runs at interpreter exit too: no imports, no module state beyond the default argument.)"""
  if unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError):
    tb, names = unraisable.exc_traceback, set()
    while tb is not None:
      names.add(tb.tb_frame.f_code.co_name)
      tb = tb.tb_next
    return 'call_soon_threadsafe' in names and 'Event loop is closed' in str(
        unraisable.exc_value)
  code = getattr(unraisable.object, 'cr_code', None)
  return code is not None and orbax_files in code.co_filename


def quiet_orbax_no_space_noise():
  """Installs the log filter and the unraisable-exception filter above, once per process."""
  absl_logger = logging.getLogger('absl')
  if any(isinstance(f, _OrbaxNoSpaceFilter) for f in absl_logger.filters):
    return
  absl_logger.addFilter(_OrbaxNoSpaceFilter())
  logging.getLogger('asyncio').addFilter(_OrbaxNoSpaceFilter())
  previous, is_noise = sys.unraisablehook, _is_abandoned_orbax_write  # kept for exit time

  def hook(unraisable):
    try:
      if is_noise(unraisable):
        return
    except Exception:  # noqa: BLE001 - never let the filter itself add noise
      pass
    previous(unraisable)

  sys.unraisablehook = hook
