"""JSON-lines records (metrics.jsonl, config_history.jsonl): one forgiving reader, and appends
that survive a kill. JAX-free, so the sweep parent and the readers can import it cheaply.

A process killed while appending can leave the file's last line cut (no final newline). The
next append first ends that line, so its own record starts on a line of its own; the cut line
stays in the file as it is. Every reader skips a line that does not parse as a JSON object,
with one warning naming the file and the line numbers.
"""

import json
import os
import re
import sys

# The start of every record vae_jax writes ({"step": N, ...}): how the step of a cut line
# that no longer parses is still read.
_STEP_PREFIX = re.compile(r'^\s*\{\s*"step"\s*:\s*(-?\d+)\s*[,}]')


def _warn(message):
  print(f'WARNING: {message}', file=sys.stderr, flush=True)


def read_jsonl(path, warn=_warn):
  """The JSON objects of the file's lines, in order; [] if the file does not exist.

  A line that does not parse (cut by a kill, or damaged) or is not an object is skipped, with
  one call of `warn` (None: silent) naming the file and those lines.
  """
  try:
    with open(path, 'rb') as f:
      raw = f.read()
  except FileNotFoundError:
    return []
  out, bad = [], []
  for number, line in enumerate(raw.decode('utf-8', errors='replace').splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except ValueError:
      record = None
    if isinstance(record, dict):
      out.append(record)
    else:
      bad.append(number)
  if bad and warn is not None:
    lines = f'line {bad[0]}' if len(bad) == 1 else f'lines {", ".join(map(str, bad))}'
    warn(f'{path}: skipped {lines}, which {"does" if len(bad) == 1 else "do"} not parse as a '
         'JSON record (cut by a kill or damaged); the other lines are read.')
  return out


def end_cut_line(path):
  """Ends the file's last line with a newline if a kill cut it; returns whether it did."""
  try:
    with open(path, 'rb+') as f:
      if f.seek(0, os.SEEK_END) == 0:
        return False
      f.seek(-1, os.SEEK_END)
      if f.read(1) == b'\n':
        return False
      f.write(b'\n')
      return True
  except FileNotFoundError:
    return False


def append(path, record):
  """Appends one record as a JSON line, on a line of its own even after a cut last line."""
  end_cut_line(path)
  with open(path, 'a') as f:
    f.write(json.dumps(record) + '\n')


def line_step(line):
  """The step of a record line, parsed or cut (None where it cannot be told)."""
  try:
    record = json.loads(line)
  except ValueError:
    m = _STEP_PREFIX.match(line)
    return int(m.group(1)) if m else None
  step = record.get('step') if isinstance(record, dict) else None
  return step if isinstance(step, int) and not isinstance(step, bool) else None


def drop_after_step(path, step):
  """Removes the lines of records with a step > `step` (a cut line too, when its step can be
  read), rewriting the file atomically; returns how many lines it removed.

  A run resuming at `step` recomputes every later step exactly, so those records would
  otherwise be in the file twice. Lines whose step cannot be told are kept.
  """
  try:
    with open(path, 'rb') as f:
      raw = f.read()
  except FileNotFoundError:
    return 0
  lines = raw.decode('utf-8', errors='replace').splitlines()
  kept = []
  for line in lines:
    s = line_step(line) if line.strip() else None
    if s is None or s <= step:
      kept.append(line)
  dropped = len(lines) - len(kept)
  if not dropped:
    return 0
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(''.join(line + '\n' for line in kept))
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return dropped
