"""Training and evaluation batches for each process, from either back end.

Batches are global (batch_size over all processes); process p gets rows
[p * B / P, (p + 1) * B / P) of each. Each batch carries 'index' (the example's index in the
split's canonical order) and, for training, 'epoch', the inputs of the binarization keys.
"""

import itertools

import numpy as np

from vae_jax.data import datasets, order

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
    return _memory_train(arrays['image'], batch_size=batch_size, data_seed=data_seed,
                         start_step=start_step, rows=slice(lo, lo + local))
  if data_cfg.backend == 'stream':
    builder = datasets.prepare(data_cfg)
    ds = _stream_train(builder, data_cfg.train_split, batch_size=batch_size,
                       data_seed=data_seed, start_step=start_step, lo=lo, local=local,
                       block_size=data_cfg.shuffle_buffer)
    return ds.as_numpy_iterator()
  raise ValueError(f'Unknown data.backend {data_cfg.backend!r}; valid: memory, stream.')


def _memory_train(images, *, batch_size, data_seed, start_step, rows):
  n = len(images)
  spe = order.steps_per_epoch(n, batch_size)
  for chunk_start in itertools.count(start_step, _INDEX_CHUNK):
    indices = order.train_indices(data_seed, chunk_start, _INDEX_CHUNK, batch_size, n)
    for step, row in enumerate(indices[:, rows], chunk_start):
      yield {'image': images[row], 'index': row,
             'epoch': np.full(len(row), step // spe, np.int32)}


def _stream_train(builder, split, *, batch_size, data_seed, start_step, lo, local, block_size):
  """A tf.data.Dataset over the split's records in `order.stream_epoch_plan` order.

  Host memory is bounded by one block (block_size serialized records) plus a few prefetched
  batches. The order is computed in numpy from (data_seed, epoch), so a stream recreated at
  step s starts exactly where the one from step 0 is at step s.
  """
  import tensorflow as tf

  files, lengths = datasets.record_files(builder, split)
  n = sum(lengths)
  block_size = min(block_size, n)
  spe = order.steps_per_epoch(n, batch_size)
  first_epoch, skip_steps = divmod(start_step, spe)

  def plan(epoch):
    epoch = int(epoch)
    starts, sizes, offsets, rows = order.stream_epoch_plan(
        data_seed, epoch, n, batch_size, block_size,
        skip_steps=skip_steps if epoch == first_epoch else 0)
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
    records = tf.data.Dataset.from_tensor_slices((b['paths'], b['skips'], b['takes'])).flat_map(
        lambda p, k, t: tf.data.TFRecordDataset(p, buffer_size=1 << 20).skip(k).take(t))
    # The whole block as one element (the shuffle window), then its examples in `rows` order.
    return records.batch(block_size).map(lambda block: {
        'serialized': tf.gather(block, b['rows']),
        'index': b['start'] + b['rows'],
        'epoch': tf.fill(tf.shape(b['rows']), b['epoch']),
    }).unbatch()

  decode = datasets.make_decoder(builder, with_features=False, scale=datasets.value_scale(builder))

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
  """One pass over the whole split in canonical order, in global batches of batch_size.

  The last global batch is padded (mask False, image zeros, index 0), never dropped, so every
  example is seen exactly once over all processes. Pass `arrays` (from load_arrays) to reuse
  them across evaluations; otherwise the memory back end loads the split and the stream back
  end reads it.

  Yields:
    {'image': uint8 [B/P, H, W, C], 'index': int32 [B/P], 'mask': bool [B/P]}.
  """
  lo, local = process_rows(batch_size, process_index, process_count)
  if arrays is None and data_cfg.backend == 'memory':
    arrays = datasets.load_arrays(data_cfg, split)
  if arrays is not None:
    images = arrays['image']
    n = len(images)
    for start in range(0, n, batch_size):
      index, mask = _eval_rows(start, lo, local, n)
      yield {'image': np.where(mask[:, None, None, None], images[index], 0).astype(np.uint8),
             'index': index, 'mask': mask}
    return
  yield from _stream_eval(datasets.prepare(data_cfg), split, batch_size=batch_size, lo=lo,
                          local=local)


def _eval_rows(start, lo, local, n):
  index = start + lo + np.arange(local, dtype=np.int32)
  mask = index < n
  return np.where(mask, index, 0).astype(np.int32), mask


def _stream_eval(builder, split, *, batch_size, lo, local):
  import tensorflow as tf

  files, lengths = datasets.record_files(builder, split)
  n = sum(lengths)
  decode = datasets.make_decoder(builder, with_features=False, scale=datasets.value_scale(builder))
  ds = tf.data.TFRecordDataset(files, buffer_size=8 << 20).batch(batch_size)
  ds = ds.map(lambda s: decode(s[lo:lo + local])['image'],
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(4)
  for start, images in zip(range(0, n, batch_size), ds.as_numpy_iterator(), strict=True):
    index, mask = _eval_rows(start, lo, local, n)
    padded = np.zeros((local,) + images.shape[1:], np.uint8)
    padded[:len(images)] = images
    yield {'image': padded, 'index': index, 'mask': mask}
