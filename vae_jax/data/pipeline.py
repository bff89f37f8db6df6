"""Training and evaluation batches for each process, from any of the three back ends.

Batches are global (batch_size over all processes); process p gets rows
[p * B / P, (p + 1) * B / P) of each. Each batch carries 'index' (the example's index in the
base split's canonical order, also for slices: 'train[55000:]' starts at 55000) and, for
training, 'epoch', the inputs of the binarization keys.
"""

import itertools
import os
import threading
import time

import numpy as np

from vae_jax.data import datasets, order, records

# Steps of indices computed at once by the memory iterator (amortises the numpy calls).
_INDEX_CHUNK = 256


def process_rows(batch_size, process_index, process_count):
  """(first row, row count) of this process's contiguous share of each global batch."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'Bad process_index {process_index} of process_count {process_count}.')
  if batch_size % process_count:
    raise ValueError(f'batch_size {batch_size} is not divisible by process_count '
                     f'{process_count}.')
  local = batch_size // process_count
  return process_index * local, local


def make_train_iterator(data_cfg, *, batch_size, data_seed, start_step, process_index=0,
                        process_count=1):
  """Endless iterator of this process's training batches from step start_step on.

  Yields:
    {'image': uint8 [B/P, H, W, C], 'index': int32 [B/P], 'epoch': int32 [B/P]}. Batches from
    step s are the same whether reached from step 0 or recreated at s (see `order`).
  """
  lo, local = process_rows(batch_size, process_index, process_count)
  if data_cfg.backend == 'memory':
    arrays = datasets.load_arrays(data_cfg, data_cfg.train_split)
    return _memory_train(arrays, batch_size=batch_size, data_seed=data_seed,
                         start_step=start_step, process_index=process_index,
                         process_count=process_count)
  if data_cfg.backend == 'grain':
    return _grain_train(datasets.prepared_records(data_cfg), data_cfg.train_split,
                        batch_size=batch_size, data_seed=data_seed, start_step=start_step,
                        lo=lo, local=local, workers=data_cfg.workers)
  if data_cfg.backend == 'stream':
    ds = _stream_train(datasets.prepared_records(data_cfg), data_cfg.train_split,
                       batch_size=batch_size, data_seed=data_seed, start_step=start_step, lo=lo,
                       local=local, block_size=data_cfg.shuffle_buffer)
    return ds.as_numpy_iterator()
  raise ValueError(f'Unknown data.backend {data_cfg.backend!r}; valid: memory, stream, grain.')


def memory_train_indices(base_index, *, data_seed, start_step, num_steps, batch_size,
                         process_index=0, process_count=1):
  """The memory back end's rows of steps start_step .. start_step + num_steps - 1 for a process.

  The one definition of the memory training order: the iterator here and the trainer's
  on-device feeder both use it.

  Args:
    base_index: int [n], load_arrays(...)['index'] of the training split: each loaded row's
      index in the base split.
    data_seed, start_step, num_steps, batch_size: as for order.train_indices.
    process_index, process_count: which share of each global batch (see process_rows).

  Returns:
    (positions, index), each int32 [num_steps, batch_size / process_count]: positions are rows
    of the loaded arrays to gather; index is base_index[positions], the examples' indices in the
    base split (the binarization keys).
  """
  lo, local = process_rows(batch_size, process_index, process_count)
  positions = order.train_indices(data_seed, start_step, num_steps, batch_size,
                                  len(base_index))[:, lo:lo + local]
  return positions, np.asarray(base_index, np.int32)[positions]


def _memory_train(arrays, *, batch_size, data_seed, start_step, process_index, process_count):
  images, n = arrays['image'], len(arrays['image'])
  for chunk_start in itertools.count(start_step, _INDEX_CHUNK):
    positions, index = memory_train_indices(
        arrays['index'], data_seed=data_seed, start_step=chunk_start, num_steps=_INDEX_CHUNK,
        batch_size=batch_size, process_index=process_index, process_count=process_count)
    for step, (pos, idx) in enumerate(zip(positions, index, strict=True), chunk_start):
      yield {'image': images[pos], 'index': idx,
             'epoch': np.full(len(idx), order.epoch_of(step, n, batch_size), np.int32)}


# grain back end: an endless iterator's last step (grain's ranges are finite) and its host
# pipeline: threads reading batches ahead in each process that reads (see _grain_train).
_GRAIN_LAST_STEP = 2**31 - 1
_GRAIN_THREADS = 2
_GRAIN_PREFETCH = 8


class _GrainTrainBatch:
  """Step -> this process's rows of that step's batch (the memory back end's order), read from
  the base split's ArrayRecord copy. Picklable: grain's worker processes each get one."""

  def __init__(self, rows, *, first, n, batch_size, data_seed, lo, local):
    self.rows, self.first, self.n = rows, first, n
    self.batch_size, self.data_seed, self.lo, self.local = batch_size, data_seed, lo, local

  def __call__(self, step):
    # order.train_indices is memory_train_indices's order: the batches are the same bitwise.
    positions = order.train_indices(self.data_seed, step, 1, self.batch_size, self.n)[0]
    index = (self.first + positions[self.lo:self.lo + self.local]).astype(np.int32)
    return {'image': self.rows.read(index), 'index': index,
            'epoch': np.full(self.local, order.epoch_of(step, self.n, self.batch_size),
                             np.int32)}


def _grain_train(prepared, split, *, batch_size, data_seed, start_step, lo, local, workers):
  """grain iterator of this process's rows of the batches of steps start_step, start_step + 1...

  Each step's batch is a pure function of the step (no iterator state: resuming at step s
  builds this from s). Batches are read ahead by threads in the training process, or with
  workers > 0 by that many worker processes (grain's mp_prefetch: worker w reads steps
  start_step + w, + w + workers, ...; grain interleaves them back in step order).
  """
  import grain

  from vae_jax.data import arrayrecords

  base, first, stop = records.resolve(prepared, split)
  order.steps_per_epoch(stop - first, batch_size)  # a split smaller than a batch fails here
  read = _GrainTrainBatch(arrayrecords.split_rows(prepared, base), first=first, n=stop - first,
                          batch_size=batch_size, data_seed=data_seed, lo=lo, local=local)
  ds = grain.MapDataset.range(start_step, _GRAIN_LAST_STEP).map(read).to_iter_dataset(
      grain.ReadOptions(num_threads=_GRAIN_THREADS, prefetch_buffer_size=_GRAIN_PREFETCH))
  if workers:
    from absl import flags

    if not flags.FLAGS.is_parsed():
      # grain reads its absl flags (worker profiling) when it starts workers, which raises
      # before flags are parsed: a library call or a test. The scripts parse them in app.run.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                     per_worker_buffer_size=_GRAIN_PREFETCH),
                        worker_init_fn=_end_with_parent)
  return iter(ds)


def _end_with_parent(worker_index, worker_count):
  """grain worker set-up: the worker exits once the process that started it is gone.

  grain's workers stop when their iterator is closed; a training process killed outright
  (SIGKILL, the OOM killer) closes nothing, and they would wait for that forever.
  """
  del worker_index, worker_count
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(1)
    os._exit(0)

  threading.Thread(target=watch, name='end-with-parent', daemon=True).start()


def _stream_train(prepared, split, *, batch_size, data_seed, start_step, lo, local, block_size):
  """A tf.data.Dataset over the split's records in `order.stream_epoch_plan` order.

  The plan is over positions 0..n-1 of the split (a slice: of its range [first, first + n) of
  the base split); blocks are read from the base split's shards at first + their start.
  Host memory is bounded by one block (block_size serialized records) plus a few prefetched
  batches. The order is computed in numpy from (data_seed, epoch), so a stream recreated at
  step s starts exactly where the one from step 0 is at step s.
  """
  import tensorflow as tf

  base, first, stop = records.resolve(prepared, split)
  records.require_tfrecord(prepared)
  files, lengths = records.record_files(prepared, base)
  n = stop - first
  block_size = min(block_size, n)
  spe = order.steps_per_epoch(n, batch_size)
  first_epoch, skip_steps = divmod(start_step, spe)

  def plan(epoch):
    epoch = int(epoch)
    starts, sizes, offsets, rows = order.stream_epoch_plan(
        data_seed, epoch, n, batch_size, block_size,
        skip_steps=skip_steps if epoch == first_epoch else 0)
    starts = (starts + first).astype(np.int32)  # base-split indices of the blocks
    pieces = [order.shard_pieces(a, m, lengths) for a, m in zip(starts, sizes, strict=True)]
    flat = np.array([p for ps in pieces for p in ps], np.int64).reshape(-1, 3)
    piece_offsets = np.cumsum([0] + [len(ps) for ps in pieces]).astype(np.int64)
    return starts, offsets, rows, piece_offsets, flat[:, 0], flat[:, 1], flat[:, 2]

  paths = tf.constant(files)

  def epoch_blocks(epoch):
    # numpy_function, not from_generator: nothing Python-side is left to finalise at exit.
    starts, offsets, rows, p_off, shards, skips, takes = tf.numpy_function(
        plan, [epoch], [tf.int32, tf.int32, tf.int32] + [tf.int64] * 4, stateful=False)

    def block(j):
      pieces = slice(p_off[j], p_off[j + 1])
      return {'epoch': tf.cast(epoch, tf.int32), 'start': starts[j],
              'rows': rows[offsets[j]:offsets[j + 1]],
              'paths': tf.gather(paths, shards[pieces]), 'skips': skips[pieces],
              'takes': takes[pieces]}

    return tf.data.Dataset.range(tf.size(starts, out_type=tf.int64)).map(block)

  def read_block(b):
    serialized = tf.data.Dataset.from_tensor_slices((b['paths'], b['skips'], b['takes']))
    serialized = serialized.flat_map(
        lambda p, k, t: tf.data.TFRecordDataset(p, buffer_size=1 << 20).skip(k).take(t))
    # The whole block as one element (the shuffle window), then its examples in `rows` order.
    return serialized.batch(block_size).map(lambda block: {
        'serialized': tf.gather(block, b['rows']),
        'index': b['start'] + b['rows'],
        'epoch': tf.fill(tf.shape(b['rows']), b['epoch']),
    }).unbatch()

  decode = records.make_decoder(prepared, with_features=False,
                                scale=records.value_scale(prepared))

  def local_rows(batch):
    batch = {k: v[lo:lo + local] for k, v in batch.items()}
    return {'image': decode(batch['serialized'])['image'], 'index': batch['index'],
            'epoch': batch['epoch']}

  ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int32).max).flat_map(epoch_blocks)
  ds = ds.flat_map(read_block).batch(batch_size, drop_remainder=True)
  # Decoding (the costly part) runs in parallel over batches; the order stays deterministic.
  ds = ds.map(local_rows, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(4)


def eval_batches(data_cfg, split, *, batch_size, process_index=0, process_count=1,
                 arrays=None):
  """One pass over the whole split (or slice) in canonical order, in global batches.

  The last global batch is padded (mask False, image zeros, index 0), never dropped, so every
  example is seen exactly once over all processes. 'index' is the example's index in the base
  split. Pass `arrays` (load_arrays(data_cfg, split), with its 'index') to reuse them across
  evaluations; otherwise the memory back end loads the split and the stream and grain back
  ends read it.

  Yields:
    {'image': uint8 [B/P, H, W, C], 'index': int32 [B/P], 'mask': bool [B/P]}.
  """
  lo, local = process_rows(batch_size, process_index, process_count)
  if arrays is None and data_cfg.backend == 'memory':
    arrays = datasets.load_arrays(data_cfg, split)
  if arrays is not None:
    if 'index' not in arrays:
      raise ValueError("eval_batches: arrays lack 'index' (the base-split index of each row); "
                       'pass load_arrays(data_cfg, split) as it is.')
    images, base_index = arrays['image'], np.asarray(arrays['index'], np.int32)
    n = len(images)
    for start in range(0, n, batch_size):
      pos, mask = _eval_rows(start, lo, local, n)
      yield {'image': np.where(mask[:, None, None, None], images[pos], 0).astype(np.uint8),
             'index': np.where(mask, base_index[pos], 0).astype(np.int32), 'mask': mask}
    return
  if data_cfg.backend == 'grain':
    yield from _grain_eval(datasets.prepared_records(data_cfg), split, batch_size=batch_size,
                           lo=lo, local=local)
    return
  yield from _stream_eval(datasets.prepared_records(data_cfg), split, batch_size=batch_size,
                          lo=lo, local=local)


def _eval_rows(start, lo, local, n):
  """(positions in the split, clipped to 0 where padded, and the mask) of one batch's rows."""
  pos = start + lo + np.arange(local, dtype=np.int32)
  mask = pos < n
  return np.where(mask, pos, 0).astype(np.int32), mask


def _stream_eval(prepared, split, *, batch_size, lo, local):
  import tensorflow as tf

  base, first, stop = records.resolve(prepared, split)
  records.require_tfrecord(prepared)
  files, lengths = records.record_files(prepared, base)
  n = stop - first
  decode = records.make_decoder(prepared, with_features=False,
                                scale=records.value_scale(prepared))
  ds = records.slice_records(files, lengths, first, n).batch(batch_size)
  ds = ds.map(lambda s: decode(s[lo:lo + local])['image'],
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(4)
  for start, images in zip(range(0, n, batch_size), ds.as_numpy_iterator(), strict=True):
    pos, mask = _eval_rows(start, lo, local, n)
    padded = np.zeros((local,) + images.shape[1:], np.uint8)
    padded[:len(images)] = images
    yield {'image': padded, 'index': np.where(mask, first + pos, 0).astype(np.int32),
           'mask': mask}


class _GrainEvalBatch:
  """First position of a global batch -> this process's rows of it, padded (see eval_batches)."""

  def __init__(self, rows, *, first, n, lo, local):
    self.rows, self.first, self.n, self.lo, self.local = rows, first, n, lo, local

  def __call__(self, start):
    pos, mask = _eval_rows(start, self.lo, self.local, self.n)
    index = np.where(mask, self.first + pos, 0).astype(np.int32)
    image = np.zeros((self.local,) + self.rows.shape, np.uint8)
    image[mask] = self.rows.read(index[mask])  # the real rows come first
    return {'image': image, 'index': index, 'mask': mask}


def _grain_eval(prepared, split, *, batch_size, lo, local):
  # Read ahead by threads only: raw records need no decoding, and worker processes would be
  # started again for every evaluation.
  import grain

  from vae_jax.data import arrayrecords

  base, first, stop = records.resolve(prepared, split)
  read = _GrainEvalBatch(arrayrecords.split_rows(prepared, base), first=first, n=stop - first,
                         lo=lo, local=local)
  yield from grain.MapDataset.range(0, stop - first, batch_size).map(read).to_iter_dataset(
      grain.ReadOptions(num_threads=_GRAIN_THREADS, prefetch_buffer_size=_GRAIN_PREFETCH))
