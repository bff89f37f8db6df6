"""Preprocessing modes and the invariances of dynamic binarization."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax.data.preprocess import example_keys, gather_images, preprocess, uniform


@pytest.fixture(scope='module')
def batch():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
  images[0] = 0
  images[1] = 255
  return jnp.asarray(images), jnp.arange(100, 116, dtype=jnp.int32)


def test_deterministic_modes(batch):
  images, index = batch
  grey = preprocess(images, index, mode='grey', data_seed=0)
  assert grey.dtype == jnp.float32
  # XLA may divide as a multiply by 1/255: equal to within an ulp, ends exact.
  np.testing.assert_allclose(grey, np.asarray(images, np.float32) / 255, rtol=1e-6)
  assert float(grey.min()) == 0.0 and float(grey.max()) == 1.0
  threshold = preprocess(images, index, mode='threshold', data_seed=0)
  np.testing.assert_array_equal(threshold, np.asarray(images) > 127)
  ints = preprocess(images, index, mode='uint8', data_seed=0)
  assert ints.dtype == jnp.int32
  np.testing.assert_array_equal(ints, np.asarray(images))
  with pytest.raises(ValueError, match='dynamic_binarize'):
    preprocess(images, index, mode='binary', data_seed=0)


def test_uniform_matches_jax_random(batch):
  # The unrolled threefry must give jax.random.uniform's exact bits (partitionable mode).
  keys = example_keys(batch[1], data_seed=3, epoch=2)
  with jax.threefry_partitionable(True):
    ref = jax.vmap(lambda k: jax.random.uniform(k, (8, 8, 1)))(keys)
  np.testing.assert_array_equal(uniform(keys, (8, 8, 1)), ref)


def test_keys_follow_the_documented_recipe():
  from vae_jax.maths import streams
  base = jax.random.fold_in(jax.random.key(7), streams.DATA_TAG)
  train = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(base, 1), 4), 12)
  evaluate = jax.random.fold_in(jax.random.fold_in(base, 2), 12)
  data = jax.random.key_data
  np.testing.assert_array_equal(data(example_keys(jnp.array([12]), data_seed=7, epoch=4))[0],
                                data(train))
  np.testing.assert_array_equal(data(example_keys(jnp.array([12]), data_seed=7))[0],
                                data(evaluate))


def test_dynamic_binarize_reproducible_and_fresh(batch):
  images, index = batch
  binarize = jax.jit(lambda x, i, e: preprocess(x, i, mode='dynamic_binarize', data_seed=5,
                                                 epoch=e))
  a = binarize(images, index, 0)
  np.testing.assert_array_equal(a, binarize(images, index, 0))
  assert set(np.unique(a)) <= {0.0, 1.0}
  np.testing.assert_array_equal(a[0], 0)  # black stays black
  np.testing.assert_array_equal(a[1], 1)  # white stays white
  assert not np.array_equal(a, binarize(images, index, 1))  # a fresh draw each epoch
  evaluation = preprocess(images, index, mode='dynamic_binarize', data_seed=5)
  # Keyed by the example's index: a batch holding only some of the examples draws the same bits.
  np.testing.assert_array_equal(
      evaluation[2:], preprocess(images[2:], index[2:], mode='dynamic_binarize', data_seed=5))
  assert not np.array_equal(evaluation, a)
  other_seed = preprocess(images, index, mode='dynamic_binarize', data_seed=6, epoch=0)
  assert not np.array_equal(other_seed, a)


def test_dynamic_binarize_independent_of_batch_split(batch):
  images, index = batch
  epoch = jnp.full(index.shape, 3)
  whole = preprocess(images, index, mode='dynamic_binarize', data_seed=1, epoch=epoch)
  # As 4 processes would see it: each its own quarter of the rows.
  parts = [preprocess(images[p * 4:(p + 1) * 4], index[p * 4:(p + 1) * 4],
                      mode='dynamic_binarize', data_seed=1, epoch=epoch[p * 4:(p + 1) * 4])
           for p in range(4)]
  np.testing.assert_array_equal(whole, jnp.concatenate(parts))
  # Shuffled rows get their own draws back: the draw belongs to the example, not the row.
  perm = np.random.default_rng(1).permutation(len(index))
  shuffled = preprocess(images[perm], index[perm], mode='dynamic_binarize', data_seed=1,
                        epoch=epoch[perm])
  np.testing.assert_array_equal(shuffled, whole[perm])
  # [steps, batch] at once equals step by step.
  stacked = preprocess(images.reshape(2, 8, 8, 8, 1), index.reshape(2, 8),
                       mode='dynamic_binarize', data_seed=1, epoch=epoch.reshape(2, 8))
  np.testing.assert_array_equal(stacked.reshape(whole.shape), whole)


def test_dynamic_binarize_mean_matches_intensity():
  images = jnp.full((2000, 4, 4, 1), 64, jnp.uint8)
  x = preprocess(images, jnp.arange(2000), mode='dynamic_binarize', data_seed=0, epoch=0)
  assert abs(float(x.mean()) - 64 / 255) < 0.01


def test_gather_images(batch):
  images, _ = batch
  index = jnp.array([[3, 1], [0, 15]])
  np.testing.assert_array_equal(gather_images(images, index), np.asarray(images)[index])
