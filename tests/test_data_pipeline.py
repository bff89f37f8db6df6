"""Training order, exact recreation at any step, process splits, and padded evaluation."""

import itertools

import numpy as np
import pytest

from tests.test_data_checks import data_config
from vae_jax import data
from vae_jax.data import formats, order, records, splits

N_TRAIN, N_TEST = 300, 70
BATCH = 32


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """A tiny 'mnist' (300 / 70 examples) prepared offline from idx files."""
  root = tmp_path_factory.mktemp('pipeline')
  rng = np.random.default_rng(0)
  manual = root / 'manual'
  manual.mkdir()
  for prefix, n in (('train', N_TRAIN), ('t10k', N_TEST)):
    formats.write_idx(str(manual / f'{prefix}-images-idx3-ubyte.gz'),
                      rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    formats.write_idx(str(manual / f'{prefix}-labels-idx1-ubyte.gz'), np.arange(n) % 10)
  data.prepare(cfg(root / 'tfds', manual_dir=str(manual)))
  return root / 'tfds'


def cfg(data_dir, **overrides):
  # Training on the whole train split unless a test says otherwise; the validation split is
  # then another base split (these tests never select models).
  return data_config(**{'name': 'mnist', 'data_dir': str(data_dir), 'backend': 'memory',
                        'shuffle_buffer': 64, 'train_split': 'train', 'valid_split': 'test',
                        'eval_split': 'test', **overrides})


@pytest.fixture(scope='module')
def train_arrays(data_dir):
  return data.load_arrays(cfg(data_dir), 'train')


def take(iterator, k):
  return list(itertools.islice(iterator, k))


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_epoch_permutation_and_train_indices():
  n, b = 100, 16
  spe = n // b  # 6 batches per epoch; 4 examples of each permutation skipped
  perm = data.epoch_permutation(3, 0, n)
  assert perm.dtype == np.int32 and sorted(perm) == list(range(n))
  data.epoch_permutation.cache_clear()  # drawn again, not the cached array
  np.testing.assert_array_equal(perm, data.epoch_permutation(3, 0, n))
  assert not np.array_equal(perm, data.epoch_permutation(3, 1, n))
  assert not np.array_equal(perm, data.epoch_permutation(4, 0, n))
  indices = data.train_indices(3, 0, 3 * spe, b, n)
  assert indices.shape == (3 * spe, b) and indices.dtype == np.int32
  for epoch in range(3):
    expected = data.epoch_permutation(3, epoch, n)[:spe * b].reshape(spe, b)
    np.testing.assert_array_equal(indices[epoch * spe:(epoch + 1) * spe], expected)
  # Any window equals the same rows of a longer run.
  np.testing.assert_array_equal(data.train_indices(3, 5, 4, b, n), indices[5:9])


def test_stream_plan_matches_documented_order():
  n, b, block = 103, 10, 25
  full = order.stream_epoch_order(7, 2, n, block)
  assert sorted(full) == list(range(n))
  starts, _, offsets, rows = order.stream_epoch_plan(7, 2, n, b, block)
  emitted = np.concatenate([starts[j] + rows[offsets[j]:offsets[j + 1]]
                            for j in range(len(starts))])
  np.testing.assert_array_equal(emitted, full[:100])  # remainder of 3 cut
  starts, _, offsets, rows = order.stream_epoch_plan(7, 2, n, b, block, skip_steps=4)
  resumed = np.concatenate([starts[j] + rows[offsets[j]:offsets[j + 1]]
                            for j in range(len(starts))])
  np.testing.assert_array_equal(resumed, full[40:100])
  assert order.shard_pieces(90, 30, [50, 50, 50]) == [(1, 40, 10), (2, 0, 20)]


@pytest.mark.parametrize('backend', ['memory', 'stream'])
def test_recreated_at_any_step(data_dir, backend):
  c = cfg(data_dir, backend=backend)
  spe = N_TRAIN // BATCH  # 9
  from_start = take(data.make_train_iterator(c, batch_size=BATCH, data_seed=1, start_step=0),
                    3 * spe + 2)
  for s in (1, spe - 1, spe, 2 * spe + 3):
    resumed = take(data.make_train_iterator(c, batch_size=BATCH, data_seed=1, start_step=s),
                   len(from_start) - s)
    assert_batches_equal(from_start[s:], resumed)
  epochs = [int(x['epoch'][0]) for x in from_start]
  assert epochs == [step // spe for step in range(len(from_start))]
  for epoch in range(3):
    seen = np.concatenate([x['index'] for x in from_start[epoch * spe:(epoch + 1) * spe]])
    assert len(np.unique(seen)) == spe * BATCH  # no repeats within an epoch


@pytest.mark.parametrize('backend', ['memory', 'stream'])
def test_batches_content_and_order(data_dir, train_arrays, backend):
  c = cfg(data_dir, backend=backend)
  batches = take(data.make_train_iterator(c, batch_size=BATCH, data_seed=2, start_step=0), 10)
  for x in batches:
    assert x['image'].dtype == np.uint8 and x['image'].shape == (BATCH, 28, 28, 1)
    assert x['index'].dtype == np.int32 and x['epoch'].dtype == np.int32
    # 'index' is the canonical index in both back ends: the same image as load_arrays'.
    np.testing.assert_array_equal(x['image'], train_arrays['image'][x['index']])
  index = np.concatenate([x['index'] for x in batches])
  spe = N_TRAIN // BATCH
  if backend == 'memory':
    expected = data.train_indices(2, 0, 10, BATCH, N_TRAIN).ravel()
  else:
    expected = np.concatenate([order.stream_epoch_order(2, e, N_TRAIN, 64)[:spe * BATCH]
                               for e in range(2)])[:10 * BATCH]
  np.testing.assert_array_equal(index, expected)


@pytest.mark.parametrize('backend', ['memory', 'stream'])
@pytest.mark.parametrize('split', ['train', 'train[30:]'])
def test_processes_split_each_global_batch(data_dir, backend, split):
  c = cfg(data_dir, backend=backend, train_split=split)
  whole = take(data.make_train_iterator(c, batch_size=BATCH, data_seed=0, start_step=5), 4)
  parts = [take(data.make_train_iterator(c, batch_size=BATCH, data_seed=0, start_step=5,
                                         process_index=p, process_count=4), 4)
           for p in range(4)]
  for step, x in enumerate(whole):
    for key in x:
      np.testing.assert_array_equal(np.concatenate([p[step][key] for p in parts]), x[key])
  with pytest.raises(ValueError, match='divisible'):
    data.make_train_iterator(c, batch_size=30, data_seed=0, start_step=0, process_count=4)


def test_process_rows():
  # The one rule both the data iterators and the trainer's on-device feeder use.
  assert data.process_rows(128, 0, 1) == (0, 128)
  assert [data.process_rows(128, p, 4) for p in range(4)] == [(0, 32), (32, 32), (64, 32),
                                                               (96, 32)]
  with pytest.raises(ValueError, match='divisible'):
    data.process_rows(30, 0, 4)
  with pytest.raises(ValueError, match='process_index'):
    data.process_rows(32, 4, 4)


@pytest.mark.parametrize('backend', ['memory', 'stream'])
@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_covers_every_example_once(data_dir, backend, process_count):
  c = cfg(data_dir, backend=backend)
  test = data.load_arrays(c, 'test')
  seen, batches = [], 0
  for p in range(process_count):
    for x in data.eval_batches(c, 'test', batch_size=BATCH, process_index=p,
                               process_count=process_count):
      assert x['image'].shape == (BATCH // process_count, 28, 28, 1)
      assert x['mask'].dtype == bool and x['index'].dtype == np.int32
      valid = x['index'][x['mask']]
      np.testing.assert_array_equal(x['image'][x['mask']], test['image'][valid])
      assert (x['image'][~x['mask']] == 0).all()
      seen.append(valid)
      batches += 1
  assert batches == process_count * -(-N_TEST // BATCH)  # the last batch padded, not dropped
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(N_TEST))


def test_eval_with_preloaded_arrays(data_dir):
  c = cfg(data_dir, backend='stream')
  arrays = data.load_arrays(c, 'test')
  from_arrays = list(data.eval_batches(c, 'test', batch_size=BATCH, arrays=arrays))
  from_stream = list(data.eval_batches(c, 'test', batch_size=BATCH))
  assert_batches_equal(from_arrays, from_stream)


def test_dataset_info(data_dir):
  info = data.dataset_info(cfg(data_dir))
  assert info.name == 'mnist' and info.image_shape == (28, 28, 1)
  assert info.num_examples == {'train': N_TRAIN, 'test': N_TEST}
  assert info.entropy_nats is None and info.num_distinct is None


def test_dataset_info_split_sizes(data_dir):
  info = data.dataset_info(cfg(data_dir))
  assert info.split_size('train[:250]') == 250 and info.split_size('train[-10%:]') == 30
  assert info.split_range('train[250:]') == ('train', 250, N_TRAIN)
  with pytest.raises(ValueError, match=r"'test' \(70 examples\), 'train' \(300 examples\)"):
    info.split_size('validation')


# ---------------------------------------------------------------------------------------------
# Slices of a split: base-split indices everywhere

SLICES = ['train[:250]', 'train[250:]', 'train[-10%:]', 'train[12.5%:37.5%]', 'test[5:-5]']


@pytest.mark.parametrize('split', SLICES)
def test_slice_arrays_are_the_whole_splits_rows(data_dir, split):
  c = cfg(data_dir)
  base, start, stop = splits.resolve(split, {'train': N_TRAIN, 'test': N_TEST})
  whole = data.load_arrays(c, base)
  np.testing.assert_array_equal(whole['index'], np.arange(len(whole['image'])))
  part = data.load_arrays(c, split)
  assert part.keys() == whole.keys() == {'image', 'index', 'label'}
  assert part['index'].dtype == np.int32
  np.testing.assert_array_equal(part['index'], np.arange(start, stop))
  for key in ('image', 'label'):
    np.testing.assert_array_equal(part[key], whole[key][start:stop], err_msg=key)


def test_slices_hold_what_tfds_gives_for_the_same_string(data_dir):
  import tensorflow_datasets as tfds

  builder = data.prepare(cfg(data_dir))
  for split in SLICES + ['train[:33.3%]', 'train[-12.5%:]']:
    theirs = tfds.as_numpy(builder.as_dataset(split, batch_size=-1, shuffle_files=False))
    np.testing.assert_array_equal(data.load_arrays(cfg(data_dir), split)['image'],
                                  theirs['image'], err_msg=split)


def test_slice_records_across_shards(tmp_path):
  import tensorflow as tf

  lengths = [5, 3, 7]
  files, value = [], 0
  for i, length in enumerate(lengths):
    files.append(str(tmp_path / f'shard{i}.tfrecord'))
    with tf.io.TFRecordWriter(files[-1]) as writer:
      for _ in range(length):
        writer.write(str(value).encode())
        value += 1
  for start, size in ((0, 15), (0, 5), (3, 2), (4, 5), (5, 3), (2, 12), (14, 1)):
    got = [int(r) for r in records.slice_records(files, lengths, start, size).as_numpy_iterator()]
    assert got == list(range(start, start + size)), (start, size)


@pytest.mark.parametrize('backend', ['memory', 'stream'])
@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_of_a_slice(data_dir, train_arrays, backend, process_count):
  c = cfg(data_dir, backend=backend)
  split = 'train[37:-50]'  # 213 examples: the last batch of 32 is padded
  seen = []
  for p in range(process_count):
    for x in data.eval_batches(c, split, batch_size=BATCH, process_index=p,
                               process_count=process_count):
      valid = x['index'][x['mask']]
      np.testing.assert_array_equal(x['image'][x['mask']], train_arrays['image'][valid])
      assert (x['image'][~x['mask']] == 0).all() and (x['index'][~x['mask']] == 0).all()
      seen.append(valid)
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(37, N_TRAIN - 50))
  if backend == 'stream':  # the same batches from preloaded arrays
    arrays = data.load_arrays(c, split)
    assert_batches_equal(list(data.eval_batches(c, split, batch_size=BATCH, arrays=arrays)),
                         list(data.eval_batches(c, split, batch_size=BATCH)))


@pytest.mark.parametrize('backend,split,start', [
    ('memory', 'train[20:276]', 20), ('stream', 'train[20:276]', 20),
    ('memory', 'train[-256:]', N_TRAIN - 256), ('stream', 'train[:256]', 0)])
def test_train_on_a_slice(data_dir, train_arrays, backend, split, start):
  n = 256  # 8 whole batches: every epoch visits exactly the slice's examples
  spe = n // BATCH
  c = cfg(data_dir, backend=backend, train_split=split, valid_split='test')
  from_start = take(data.make_train_iterator(c, batch_size=BATCH, data_seed=4, start_step=0),
                    2 * spe + 3)
  for x in from_start:
    np.testing.assert_array_equal(x['image'], train_arrays['image'][x['index']])
  for epoch in range(2):
    seen = np.concatenate([x['index'] for x in from_start[epoch * spe:(epoch + 1) * spe]])
    np.testing.assert_array_equal(np.sort(seen), np.arange(start, start + n))
  assert [int(x['epoch'][0]) for x in from_start] == [s // spe for s in range(len(from_start))]
  # The order is the documented one over slice positions, shifted to base indices.
  index = np.concatenate([x['index'] for x in from_start[:spe]])
  if backend == 'memory':
    expected = data.train_indices(4, 0, spe, BATCH, n).ravel()
  else:
    expected = order.stream_epoch_order(4, 0, n, 64)
  np.testing.assert_array_equal(index, start + expected)
  for s in (1, spe - 1, spe, spe + 3):
    resumed = take(data.make_train_iterator(c, batch_size=BATCH, data_seed=4, start_step=s),
                   len(from_start) - s)
    assert_batches_equal(from_start[s:], resumed)


def test_memory_train_indices_is_the_one_order():
  base_index = np.arange(1000, 1100, dtype=np.int32)  # e.g. 'train[1000:1100]'
  positions, index = data.memory_train_indices(base_index, data_seed=3, start_step=5,
                                               num_steps=7, batch_size=16)
  np.testing.assert_array_equal(positions, data.train_indices(3, 5, 7, 16, 100))
  np.testing.assert_array_equal(index, 1000 + positions)
  assert positions.dtype == index.dtype == np.int32
  parts = [data.memory_train_indices(base_index, data_seed=3, start_step=5, num_steps=7,
                                     batch_size=16, process_index=p, process_count=4)
           for p in range(4)]
  for k in range(2):
    np.testing.assert_array_equal(np.concatenate([p[k] for p in parts], axis=1),
                                  (positions, index)[k])


def test_epoch_of():
  assert [data.epoch_of(s, 100, 16) for s in (0, 5, 6, 11, 12)] == [0, 0, 1, 1, 2]
  np.testing.assert_array_equal(data.epoch_of(np.arange(13), 100, 16), np.arange(13) // 6)
  with pytest.raises(ValueError, match='batch_size'):
    data.epoch_of(0, 10, 16)
