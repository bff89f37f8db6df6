"""DIR/STOP_REQUEST: how anyone outside a run (a search's pruner, a user) asks it to stop cleanly.

The loop looks for the file at each of its evaluations. Where it finds it, the run stops there:
a final checkpoint of that step, a `stop` record whose `reason` is the file's first line
(`pruned` where the file is empty), and no DONE. While the file stays, a rerun of the workdir
trains nothing (the run is still stopped); delete the file and the same command resumes from
the saved step exactly. JAX-free: the sweep and search controllers write and read it.

The file is plain text: its first line is the reason (one word: `pruned`, `user`, ...), the
rest a free explanation for a human (which pruner, at which step, on what value).
"""

import os

STOP_REQUEST_FILE = 'STOP_REQUEST'
DEFAULT_REASON = 'pruned'


def stop_request_path(workdir):
  return os.path.join(workdir, STOP_REQUEST_FILE)


def read_stop_request(workdir):
  """The reason of the workdir's stop request, or None where there is none."""
  try:
    with open(stop_request_path(workdir), errors='replace') as f:
      lines = f.read().strip().splitlines()
  except FileNotFoundError:
    return None
  except OSError:
    return DEFAULT_REASON  # there, but unreadable: a request all the same
  return (lines[0].strip() if lines else '') or DEFAULT_REASON


def request_stop(workdir, reason=DEFAULT_REASON, detail=''):
  """Writes DIR/STOP_REQUEST (whole or not at all): the run stops at its next evaluation."""
  os.makedirs(workdir, exist_ok=True)
  path = stop_request_path(workdir)
  with open(path + '.tmp', 'w') as f:
    f.write(reason.strip().splitlines()[0] + '\n' + (detail.rstrip() + '\n' if detail else ''))
  os.replace(path + '.tmp', path)
