"""Offline preparation from each dataset's original file format, loaded back through TFDS."""

import hashlib
import json
import os

import numpy as np
import pytest

from tests.test_data_checks import data_config
from vae_jax import data
from vae_jax.data import formats

DEBIAN_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'


def data_cfg(name, data_dir, manual_dir='', **overrides):
  return data_config(**{'name': name, 'manual_dir': manual_dir, 'data_dir': str(data_dir),
                        'shuffle_buffer': 50, **overrides})


def write_idx_set(folder, splits, gz):
  os.makedirs(folder, exist_ok=True)
  suffix = '.gz' if gz else ''
  for prefix, (images, labels) in splits.items():
    formats.write_idx(os.path.join(folder, f'{prefix}-images-idx3-ubyte{suffix}'), images)
    formats.write_idx(os.path.join(folder, f'{prefix}-labels-idx1-ubyte{suffix}'), labels)


def random_split(rng, n, shape, classes=10):
  return rng.integers(0, 256, (n,) + shape, dtype=np.uint8), rng.integers(0, classes, n)


def assert_same_examples(loaded, images, labels=None):
  """The split holds exactly these examples (TFDS stores them in its own shuffled order)."""
  assert len(loaded['image']) == len(images)
  where = {img.tobytes(): i for i, img in enumerate(images)}
  rows = np.array([where[img.tobytes()] for img in loaded['image']])
  np.testing.assert_array_equal(np.sort(rows), np.arange(len(images)))
  if labels is not None:
    np.testing.assert_array_equal(loaded['label'], labels[rows])


def load_with_tfds(name, data_dir, split):
  """Reads a split with TFDS's own registered builder (not ours)."""
  import tensorflow_datasets as tfds

  builder = tfds.builder(name, data_dir=str(data_dir))
  assert type(builder).__module__.startswith('tensorflow_datasets.')
  return builder, tfds.as_numpy(builder.as_dataset(split, batch_size=-1, shuffle_files=False))


@pytest.mark.parametrize('name,gz', [('mnist', True), ('fashion_mnist', False)])
def test_idx(tmp_path, name, gz):
  rng = np.random.default_rng(0)
  train, test = random_split(rng, 120, (28, 28)), random_split(rng, 30, (28, 28))
  manual = tmp_path / 'manual'
  write_idx_set(str(manual), {'train': train, 't10k': test}, gz)
  builder = data.prepare(data_cfg(name, tmp_path / 'tfds', str(manual)))
  assert builder.info.splits['train'].num_examples == 120
  tfds_builder, loaded = load_with_tfds(name, tmp_path / 'tfds', 'test')
  assert {k: v.num_examples for k, v in tfds_builder.info.splits.items()} == {
      'train': 120, 'test': 30}
  assert tuple(tfds_builder.info.features['image'].shape) == (28, 28, 1)
  assert tfds_builder.info.features['label'].num_classes == 10
  assert_same_examples(loaded, test[0][..., None], test[1])
  assert_same_examples(data.load_arrays(data_cfg(name, tmp_path / 'tfds'), 'train'),
                       train[0][..., None], train[1])
  # Provenance: built locally, from these exact files.
  with open(os.path.join(builder.data_dir, 'vae_jax_provenance.json')) as f:
    record = json.load(f)
  assert record['method'] == 'decoded-local-files' and record['format'] == 'idx'
  assert not record['matches_registered_checksums']
  path = manual / f'train-images-idx3-ubyte{".gz" if gz else ""}'
  assert record['files'][path.name]['sha256'] == hashlib.sha256(path.read_bytes()).hexdigest()
  assert record['split_sizes'] == {'train': 120, 'test': 30}


def test_binarized_mnist_amat(tmp_path):
  rng = np.random.default_rng(1)
  splits = {s: rng.integers(0, 2, (n, 784), dtype=np.uint8)
            for s, n in (('train', 40), ('valid', 20), ('test', 25))}
  manual = tmp_path / 'manual'
  manual.mkdir()
  for split, values in splits.items():
    formats.write_amat(str(manual / f'binarized_mnist_{split}.amat'), values)
  cfg = data_cfg('binarized_mnist', tmp_path / 'tfds', str(manual))
  data.prepare(cfg)
  builder, loaded = load_with_tfds('binarized_mnist', tmp_path / 'tfds', 'validation')
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      'train': 40, 'validation': 20, 'test': 25}
  assert set(builder.info.features) == {'image'}
  # TFDS stores 0/1, as the official dataset does ...
  assert_same_examples(loaded, splits['valid'].reshape(-1, 28, 28, 1))
  # ... and load_arrays scales binary datasets to {0, 255} like every other dataset.
  arrays = data.load_arrays(cfg, 'test')
  assert set(np.unique(arrays['image'])) == {0, 255}
  assert_same_examples({'image': arrays['image'] // 255}, splits['test'].reshape(-1, 28, 28, 1))
  stream = data.make_train_iterator(
      data_cfg('binarized_mnist', tmp_path / 'tfds', backend='stream'), batch_size=8,
      data_seed=0, start_step=0)
  assert set(np.unique(next(stream)['image'])) <= {0, 255}
  # Its own validation split is the one model selection uses; training keeps all of train.
  own = data_cfg('binarized_mnist', tmp_path / 'tfds', train_split='train',
                 valid_split='validation', eval_split='test')
  info = data.dataset_info(own)
  data.validate_splits(own, info)
  assert info.split_size(own.valid_split) == 20
  valid = next(data.eval_batches(own, 'validation', batch_size=32))
  assert valid['mask'].sum() == 20 and set(np.unique(valid['image'][valid['mask']])) == {0, 255}
  assert_same_examples({'image': valid['image'][valid['mask']] // 255},
                       splits['valid'].reshape(-1, 28, 28, 1))


def test_cifar10_python_tarball(tmp_path):
  rng = np.random.default_rng(2)
  names = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
           'truck']
  splits = {s: {'image': rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                'label': rng.integers(0, 10, n)} for s, n in (('train', 50), ('test', 20))}
  manual = tmp_path / 'manual'
  manual.mkdir()
  formats.write_cifar_python(str(manual / 'cifar-10-python.tar.gz'), splits, {'label': names})
  data.prepare(data_cfg('cifar10', tmp_path / 'tfds', str(manual)))
  builder, loaded = load_with_tfds('cifar10', tmp_path / 'tfds', 'train')
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {'train': 50, 'test': 20}
  assert builder.info.features['label'].names == names
  assert set(builder.info.features) == {'id', 'image', 'label'}
  assert_same_examples(loaded, splits['train']['image'], splits['train']['label'])
  ids = sorted(i.decode() for i in loaded['id'])
  assert ids == [f'train_{i:05d}' for i in range(50)]


def test_registered_checksum_decision(tmp_path):
  """Files byte-identical to TFDS's registered ones take TFDS's own manual_dir path."""
  from tensorflow_datasets.core.download import checksums

  from vae_jax.data import offline

  path = tmp_path / 'a.gz'
  path.write_bytes(b'content')
  digest = hashlib.sha256(b'content').hexdigest()
  same = {'u': checksums.UrlInfo(size=7, checksum=digest, filename='a.gz')}
  other = {'u': checksums.UrlInfo(size=7, checksum='0' * 64, filename='a.gz')}
  absent = {'u': checksums.UrlInfo(size=7, checksum=digest, filename='b.gz')}
  assert offline.registered_match(str(tmp_path), same)[1]
  assert not offline.registered_match(str(tmp_path), other)[1]
  assert not offline.registered_match(str(tmp_path), absent)[1]


def test_formats_round_trip(tmp_path):
  array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  for name in ('x.gz', 'x'):
    formats.write_idx(str(tmp_path / name), array)
    np.testing.assert_array_equal(formats.read_idx(str(tmp_path / name)), array)
  (tmp_path / 'bad.amat').write_text('0 1 2\n1 10 0\n')
  with pytest.raises(ValueError, match='single digits'):
    formats.read_amat(str(tmp_path / 'bad.amat'))


@pytest.mark.slow
def test_debian_fashion_mnist(tmp_path):
  if not os.path.exists(os.path.join(DEBIAN_FASHION_MNIST, 'train-images-idx3-ubyte.gz')):
    pytest.skip(f'Debian package dataset-fashion-mnist is not installed '
                f'({DEBIAN_FASHION_MNIST} missing).')
  cfg = data_cfg('fashion_mnist', tmp_path, DEBIAN_FASHION_MNIST)
  data.prepare(cfg)
  info = data.dataset_info(data_cfg('fashion_mnist', tmp_path))
  assert info.num_examples == {'train': 60_000, 'test': 10_000}
  assert info.image_shape == (28, 28, 1)
  test = data.load_arrays(cfg, 'test')
  np.testing.assert_array_equal(np.bincount(test['label']), [1000] * 10)
  raw = formats.read_idx(os.path.join(DEBIAN_FASHION_MNIST, 't10k-images-idx3-ubyte.gz'))
  # Same content as the files (as multisets of images; TFDS reorders by key hash).
  ours = np.sort(test['image'].reshape(10_000, -1).view(f'V{784}').ravel())
  theirs = np.sort(np.ascontiguousarray(raw.reshape(10_000, -1)).view(f'V{784}').ravel())
  assert (ours == theirs).all()
  # A held-out slice of train: the base split's last 5000 rows, with their base indices.
  held_out = data_cfg('fashion_mnist', tmp_path, train_split='train[:55000]',
                      valid_split='train[55000:]')
  data.validate_splits(held_out, info)
  assert info.split_size(held_out.train_split) == 55_000
  train = data.load_arrays(held_out, 'train')
  valid = data.load_arrays(held_out, held_out.valid_split)
  np.testing.assert_array_equal(valid['index'], np.arange(55_000, 60_000))
  np.testing.assert_array_equal(valid['image'], train['image'][55_000:])
  np.testing.assert_array_equal(valid['label'], train['label'][55_000:])


def test_cifar100_python_tarball(tmp_path):
  rng = np.random.default_rng(3)
  names = {'label': [f'fine{i}' for i in range(100)],
           'coarse_label': [f'coarse{i}' for i in range(20)]}
  splits = {s: {'image': rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                'label': rng.integers(0, 100, n), 'coarse_label': rng.integers(0, 20, n)}
            for s, n in (('train', 30), ('test', 10))}
  manual = tmp_path / 'manual'
  manual.mkdir()
  formats.write_cifar_python(str(manual / 'cifar-100-python.tar.gz'), splits, names,
                             layout='cifar100')
  data.prepare(data_cfg('cifar100', tmp_path / 'tfds', str(manual)))
  builder, loaded = load_with_tfds('cifar100', tmp_path / 'tfds', 'test')
  assert builder.info.features['coarse_label'].names == names['coarse_label']
  assert_same_examples(loaded, splits['test']['image'], splits['test']['label'])
  where = {img.tobytes(): i for i, img in enumerate(splits['test']['image'])}
  rows = [where[img.tobytes()] for img in loaded['image']]
  np.testing.assert_array_equal(loaded['coarse_label'], splits['test']['coarse_label'][rows])
