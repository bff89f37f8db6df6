"""The embedded generated sprites: deterministic, distinct, complete, with the right entropy."""

import math

import numpy as np
import pytest

from tests.test_data_checks import data_config
from vae_jax import data
from vae_jax.data import sprites

SMALL = sprites.SPRITE_SPECS['small']


@pytest.fixture(scope='module')
def small():
  return sprites.generate(SMALL)


def test_deterministic(small):
  again = sprites.generate(SMALL)
  for key in ('images', 'factors', 'render_index'):
    np.testing.assert_array_equal(small[key], again[key])
  for split in ('train', 'test'):
    np.testing.assert_array_equal(small['splits'][split], again['splits'][split])


def test_distinct_binary_and_complete(small):
  images = small['images']
  assert images.dtype == np.uint8 and set(np.unique(images)) == {0, 255}
  flat = images.reshape(len(images), -1)
  assert len(np.unique(flat, axis=0)) == len(images)
  assert small['num_renders'] == SMALL.num_renders == 3 * 2 * 4 * 8 * 8
  assert 0.8 * SMALL.num_renders < len(images) <= SMALL.num_renders
  for column, name in enumerate(sprites.FACTORS):
    values = np.unique(small['factors'][:, column])
    np.testing.assert_array_equal(values, np.arange(SMALL.factor_sizes[name]))
  assert (flat.max(axis=1) == 255).all()  # every example shows something


def test_split(small):
  train, test = small['splits']['train'], small['splits']['test']
  n = len(small['images'])
  assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == n
  assert len(test) == round(0.1 * n)


def test_default_size_renders():
  # The default set itself (numpy only, about a second).
  spec = sprites.SPRITE_SPECS['default']
  generated = sprites.generate(spec)
  assert generated['num_renders'] == 3 * 4 * 8 * 16 * 16 == 24_576
  n = len(generated['images'])
  assert 24_000 < n <= 24_576  # a few tiny rotated shapes rasterise alike and are dropped
  assert generated['images'].shape[1:] == (32, 32, 1)


def test_builder_metadata_and_dataset_info(tmp_path):
  cfg = data_config(name='sprites/small', data_dir=str(tmp_path), train_split='train[:90%]',
                    valid_split='train[90%:]', eval_split='test')
  info = data.dataset_info(cfg)  # generates it: sprites never need a download
  generated = sprites.generate(SMALL)
  n = len(generated['images'])
  assert info.image_shape == (16, 16, 1)
  assert info.num_distinct == n
  assert info.entropy_nats == pytest.approx(math.log(n), rel=1e-12)
  assert info.num_examples == {'train': n - round(0.1 * n), 'test': round(0.1 * n)}

  import tensorflow_datasets as tfds

  builder = tfds.builder('sprites/small', data_dir=str(tmp_path))
  assert builder.info.metadata['num_renders'] == SMALL.num_renders
  train = data.load_arrays(cfg, 'train')
  assert set(train) == {'image', 'index', *sprites.FACTORS}
  # The stored examples are exactly the generated ones, factors attached to the right image.
  render_index = np.ravel_multi_index(
      tuple(train[f] for f in sprites.FACTORS), tuple(SMALL.factor_sizes.values()))
  lookup = dict(zip(generated['render_index'].tolist(), range(n), strict=True))
  rows = np.array([lookup[r] for r in render_index.tolist()])
  np.testing.assert_array_equal(train['image'], generated['images'][rows])
  np.testing.assert_array_equal(np.sort(rows), generated['splits']['train'])
  # A held-out slice of train for model selection: the last 10% of train's rows.
  data.validate_splits(cfg, info)
  n_train = info.num_examples['train']
  valid = data.load_arrays(cfg, cfg.valid_split)
  assert len(valid['index']) == info.split_size(cfg.valid_split) == n_train - round(0.9 * n_train)
  np.testing.assert_array_equal(valid['index'], np.arange(round(0.9 * n_train), n_train))
  for key in train:
    np.testing.assert_array_equal(valid[key], train[key][valid['index']], err_msg=key)
