"""Writers for what a run reports: metrics.jsonl, TensorBoard scalars, config.json, PNG grids.

Only process 0 writes; other processes get writers that do nothing, so callers never branch.
TensorBoard events are written with the `tensorboard` package's own event writer (no TF import).
"""

import hashlib
import json
import math
import os
import time

import jax
import numpy as np

from vae_jax.storage import records


def tensorboard_without_tensorflow():
  """Makes tensorboard's writers use its own file layer, not TensorFlow's.

  Wherever TensorFlow is installed, tensorboard imports it for tf.io.gfile (about 3 s of every
  run's start); a module named tensorboard.compat.notf selects its stub instead (the pip
  form of its no_tensorflow build target). Local files are all the writers here need. Call it
  before the first tensorboard writer of the process.
  """
  import sys
  import types
  sys.modules.setdefault('tensorboard.compat.notf', types.ModuleType('tensorboard.compat.notf'))


class MetricWriter:
  """Appends one JSON object per line to DIR/metrics.jsonl and mirrors scalars to TensorBoard.

  `resume_step`: the step a run (re)starts from. The records of later steps are dropped first,
  because the run recomputes those steps exactly and would otherwise write them twice (a run
  killed after its step-30 records but before its step-30 save resumes at 20); 0 empties the
  file. None keeps the file as it is. Appends survive a line cut by a kill (storage.records).
  """

  def __init__(self, workdir, resume_step=None):
    self.enabled = jax.process_index() == 0  # only process 0 writes
    self._path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      if resume_step is not None:
        dropped = records.drop_after_step(self._path, int(resume_step))
        if dropped:
          print(f'{self._path}: dropped {dropped} records of steps after {resume_step}, '
                'which this start recomputes.', flush=True)
      try:
        tensorboard_without_tensorflow()
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
        self._tb = EventFileWriter(os.path.join(workdir, 'tensorboard'))
      except ImportError:  # tensorboard is a declared dependency; metrics.jsonl is the record
        self._tb = None

  def write(self, step, kind, values):
    """Writes one record {'step', 'kind', **values}; floats are plain Python floats."""
    if not self.enabled:
      return
    record = {'step': int(step), 'kind': kind}
    for k, v in values.items():
      record[k] = _plain(v)
    records.append(self._path, record)
    if self._tb is not None:
      self._write_tb(step, kind, record)

  def _write_tb(self, step, kind, record):
    from tensorboard.compat.proto import event_pb2, summary_pb2
    values = []
    for k, v in record.items():
      if k in ('step', 'kind') or not isinstance(v, (int, float)) or isinstance(v, bool):
        continue
      tag = f'{kind}/{record["split"]}/{k}' if 'split' in record else f'{kind}/{k}'
      values.append(summary_pb2.Summary.Value(tag=tag, simple_value=float(v)))
    if values:
      event = event_pb2.Event(wall_time=time.time(), step=int(step),
                              summary=summary_pb2.Summary(value=values))
      self._tb.add_event(event)
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _plain(v):
  # Non-finite floats stay numbers: Python's json writes and reads NaN and Infinity, so a
  # reader doing arithmetic on metrics.jsonl never meets strings.
  if isinstance(v, (np.generic, np.ndarray)) or hasattr(v, 'dtype'):
    v = np.asarray(v).item()
  return v


def read_metrics(workdir, kind=None):
  """The records of DIR/metrics.jsonl (optionally of one kind), in order."""
  got = records.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  return [r for r in got if kind is None or r.get('kind') == kind]


def write_config(workdir, config):
  """DIR/config.json: the resolved config of the latest start (process 0).

  Earlier starts' configs are kept in config_history.jsonl (append_config_history).
  """
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, 'config.json.tmp')
  with open(tmp, 'w') as f:
    f.write(config.to_json(indent=2, sort_keys=True))
  os.replace(tmp, os.path.join(workdir, 'config.json'))


def config_digest(config):
  """SHA-256 of the resolved config (sorted JSON): what identifies a config in DONE."""
  return hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()


def append_config_history(workdir, config, step, changes=()):
  """One line per start of a run in DIR/config_history.jsonl (process 0).

  Each line: the step the start trained from, the time, the changes applied at that step
  ([dotted key, old, new]) and the whole config, so no earlier config is ever lost.
  """
  if jax.process_index() != 0:
    return
  record = {'step': int(step), 'time': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
            'changes': [list(c) for c in changes], 'config_sha256': config_digest(config),
            'config': json.loads(config.to_json())}
  records.append(os.path.join(workdir, 'config_history.jsonl'), record)


def image_grid(images):
  """[N, H, W, C] values in [0, 1] -> one uint8 [rows*H, cols*W, C] grid with 1-pixel gaps."""
  images = np.clip(np.nan_to_num(np.asarray(images, np.float32)), 0.0, 1.0)
  n, h, w, c = images.shape
  cols = int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / cols))
  grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c), np.float32)
  for i in range(n):
    r, q = divmod(i, cols)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = images[i]
  return (grid * 255 + 0.5).astype(np.uint8)


def save_png(path, images):
  """Writes a PNG grid of [N, H, W, C] images in [0, 1] (process 0)."""
  if jax.process_index() != 0:
    return
  from PIL import Image
  grid = image_grid(images)
  if grid.shape[-1] == 1:
    grid = grid[..., 0]
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(grid).save(path)
