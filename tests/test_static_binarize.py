"""Static binarization: one fixed draw per example, the same wherever the example is read."""

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from tests.test_data_checks import data_config
from tests.test_streams import SEED_PAIRS, _all_stream_keys, _data
from tests.test_train import set_fields, tiny_config
from vae_jax import analysis, data, evaluate, sharding, train
from vae_jax.data import formats
from vae_jax.data import preprocess as preprocess_lib
from vae_jax.data.preprocess import preprocess
from vae_jax.maths import streams

STATIC = 'static_binarize'
N_TRAIN, N_TEST = 200, 40


def split_id(split):
  return preprocess_lib.split_id(split)


def grey_batch(n=16, first=100, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(1, 255, (n, 8, 8, 1), dtype=np.uint8)
  return jnp.asarray(images), jnp.arange(first, first + n, dtype=jnp.int32)


@functools.partial(jax.jit, static_argnames='mode')
def _binarize(images, index, epoch, ids, data_seed, mode):
  return preprocess(images, index, mode=mode, data_seed=data_seed, epoch=epoch, split=ids)


def static(images, index, split='train', data_seed=5, epoch=None):
  """preprocess(mode=static_binarize) with a traced split id, as the evaluation programs call it
  (jitted, the seed traced too: eager, each op would compile for every shape)."""
  ids = split_id(split) if isinstance(split, str) else split
  return np.asarray(_binarize(images, index, epoch, jnp.asarray(ids, jnp.int32), data_seed,
                              mode=STATIC))


def dynamic(images, index, data_seed=5, epoch=None):
  return np.asarray(_binarize(images, index, epoch, None, data_seed, mode='dynamic_binarize'))


def test_the_draw_is_the_same_at_every_epoch_and_in_evaluation():
  images, index = grey_batch()
  evaluation = static(images, index)
  assert set(np.unique(evaluation)) == {0.0, 1.0}
  for epoch in (0, 3, jnp.full(index.shape, 7)):
    np.testing.assert_array_equal(static(images, index, epoch=epoch), evaluation)
  # Traced inside jit, as the train step calls it (the epoch a traced scalar).
  jitted = jax.jit(lambda x, i, e: preprocess(x, i, mode=STATIC, data_seed=5, epoch=e,
                                              split='train[:90%]'))
  np.testing.assert_array_equal(jitted(images, index, 3), evaluation)
  # And never the dynamic mode's training draws, which change with the epoch.
  assert not np.array_equal(dynamic(images, index, epoch=0), dynamic(images, index, epoch=3))


def test_the_draw_differs_between_examples_and_between_data_seeds():
  images = jnp.full((64, 8, 8, 1), 128, jnp.uint8)  # one grey image, 64 examples
  index = jnp.arange(64)
  x = static(images, index).reshape(64, -1)
  assert len({row.tobytes() for row in x}) == 64
  assert not np.array_equal(x, static(images, index, data_seed=6).reshape(64, -1))
  # The draw belongs to the example, not to its row: any subset, order or batch split.
  perm = np.random.default_rng(1).permutation(64)
  np.testing.assert_array_equal(static(images[perm], index[perm]).reshape(64, -1), x[perm])
  parts = [static(images[p * 8:(p + 1) * 8], index[p * 8:(p + 1) * 8]) for p in range(8)]
  np.testing.assert_array_equal(np.concatenate(parts).reshape(64, -1), x)
  stacked = static(images.reshape(4, 16, 8, 8, 1), index.reshape(4, 16))  # [steps, batch]
  np.testing.assert_array_equal(stacked.reshape(64, -1), x)


@pytest.mark.parametrize('level', [1, 64, 128, 200, 254])
def test_pixel_frequencies_match_the_grey_level(level):
  images = jnp.full((500, 8, 8, 1), level, jnp.uint8)
  x = static(images, jnp.arange(500), data_seed=0)
  ones, n = int(x.sum()), x.size
  assert stats.binomtest(ones, n, level / 255).pvalue > 1e-4, (level, ones / n)
  # Every pixel position too (no position drawn from another p), within 5 sigma.
  p = level / 255
  per_pixel = x.reshape(500, -1).mean(axis=0)
  assert np.all(np.abs(per_pixel - p) < 5 * np.sqrt(p * (1 - p) / 500) + 1e-9), per_pixel
  np.testing.assert_array_equal(static(jnp.zeros((4, 8, 8, 1), jnp.uint8), jnp.arange(4)), 0)
  np.testing.assert_array_equal(static(jnp.full((4, 8, 8, 1), 255, jnp.uint8), jnp.arange(4)),
                                1)


def test_a_slice_is_keyed_by_its_base_split_and_other_base_splits_draw_afresh():
  images, index = grey_batch()
  train = static(images, index, split='train')
  for sliced in ('train[90%:]', 'train[:55000]', 'train[100:116]'):
    assert split_id(sliced) == split_id('train')
  # The name (as the train step passes it) and a traced id per example (as the evaluation
  # programs get it) are the same key.
  by_name = jax.jit(lambda x, i: preprocess(x, i, mode=STATIC, data_seed=5, split='train[90%:]'))
  np.testing.assert_array_equal(by_name(images, index), train)
  ids = jnp.full(index.shape, split_id('train'), jnp.int32)
  np.testing.assert_array_equal(static(images, index, split=ids), train)
  # The same index of another base split: a different example, a different draw.
  for other in ('test', 'validation'):
    assert not np.array_equal(static(images, index, split=other), train), other
  names = ['train', 'test', 'validation', 'unlabelled', 'extra', 'train_clean', 'test_clean']
  assert len({split_id(n) for n in names}) == len(names)
  assert all(0 <= split_id(n) < 2**31 for n in names)
  with pytest.raises(ValueError, match='split'):
    preprocess(images, index, mode=STATIC, data_seed=5)


def test_static_draws_are_neither_the_dynamic_evaluation_draws_nor_any_other_stream():
  images, index = grey_batch()
  assert not np.array_equal(static(images, index), dynamic(images, index))
  # The documented recipe: fold_in(fold_in(fold_in(data root, BINARIZE_STATIC), split id), i).
  k = jax.random.fold_in(streams.data_root(7), streams.BINARIZE_STATIC)
  want = jax.random.fold_in(jax.random.fold_in(k, split_id('test')), 12)
  got = streams.static_binarize_keys(jnp.array([12]), split_id('test'), data_seed=7)[0]
  np.testing.assert_array_equal(jax.random.key_data(got), jax.random.key_data(want))
  idx = np.arange(16)
  for seed, data_seed in SEED_PAIRS:
    named = _all_stream_keys(seed, data_seed)
    for name in ('train', 'test'):
      named[f'static_{name}'] = _data(streams.static_binarize_keys(
          idx, split_id(name), data_seed=data_seed))
    owner = {}
    for name, keys in named.items():
      for key in keys:
        assert key not in owner, f'{name} and {owner[key]} share {key} ({seed}, {data_seed})'
        owner[key] = name


def test_the_same_bits_on_one_and_on_eight_devices():
  assert jax.device_count() == 8
  images, index = grey_batch(n=64)
  one = static(images, index)
  mesh = sharding.make_mesh(set_fields(tiny_config(), **{'mesh.data': -1}))
  bat = sharding.batch_sharding(mesh)
  fn = jax.jit(lambda x, i, s: preprocess(x, i, mode=STATIC, data_seed=5, split=s),
               in_shardings=(bat, bat, bat), out_shardings=bat)
  ids = jnp.full(index.shape, split_id('train'), jnp.int32)
  eight = fn(*jax.device_put((images, index, ids), bat))
  assert len(eight.sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(eight), one)


# ------------------------------------------------------------------------------------------
# End to end: training, every evaluation path and the analysis see the same bits.


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """A tiny grey-level 'fashion_mnist' (200 / 40 examples) prepared offline from idx files.

  Every example is the same grey image, so only its key tells its bits apart: train 5 and test
  5 would draw the same bits if the key left out the split.
  """
  root = tmp_path_factory.mktemp('static')
  image = np.random.default_rng(0).integers(1, 256, (28, 28), dtype=np.uint8)  # never black
  manual = root / 'manual'
  manual.mkdir()
  for prefix, n in (('train', N_TRAIN), ('t10k', N_TEST)):
    formats.write_idx(str(manual / f'{prefix}-images-idx3-ubyte'), np.stack([image] * n))
    formats.write_idx(str(manual / f'{prefix}-labels-idx1-ubyte'), np.arange(n) % 10)
  data.prepare(data_config(name='fashion_mnist', data_dir=str(root / 'tfds'),
                           manual_dir=str(manual)))
  return root / 'tfds'


SPIED = (('train', train.step), ('elbo', evaluate.elbo), ('iwae', evaluate.iwae),
         ('units', evaluate.units), ('pictures', evaluate.pictures),
         ('analysis', analysis.latents))


@pytest.fixture
def seen(monkeypatch):
  """{path: {(base split id, index): set of bit patterns}} of every static draw made."""
  out = collections.defaultdict(lambda: collections.defaultdict(set))

  def spy_for(path):
    def record(images, index, ids, x):
      images, index, ids, x = map(np.asarray, (images, index, ids, x))
      rows = images.reshape(-1, images[0].size).any(axis=1)  # padded rows are all zeros
      for i, s, bits in zip(index.ravel()[rows], ids.ravel()[rows],
                            x.reshape(rows.size, -1)[rows], strict=True):
        out[path][int(s), int(i)].add(np.packbits(bits.astype(bool)).tobytes())

    def spy(images, index, *, mode, data_seed, epoch=None, split=None):
      x = preprocess(images, index, mode=mode, data_seed=data_seed, epoch=epoch, split=split)
      assert mode == STATIC
      ids = split_id(split) if isinstance(split, str) else split
      jax.debug.callback(record, images, index, jnp.broadcast_to(ids, jnp.shape(index)), x)
      return x

    return spy

  for path, module in SPIED:
    monkeypatch.setattr(module, 'preprocess', spy_for(path))
  yield out
  jax.effects_barrier()


def e2e_config(data_dir, **overrides):
  return set_fields(tiny_config(), **{
      'mesh.data': 1, 'data.name': 'fashion_mnist', 'data.data_dir': str(data_dir),
      'data.preprocess': STATIC, 'data.train_split': 'train[:80%]',
      'data.valid_split': 'train[80%:]', 'data.eval_split': 'test', 'batch_size': 20,
      'num_train_steps': 20, 'eval_every_steps': 20, 'eval_batch_size': 64, 'images.num': 8,
      'model.hidden': (8,), 'model.latent_dim': 2,  # small programs: compile-bound
      **overrides})


def test_training_evaluation_and_analysis_see_one_draw_per_example(data_dir, tmp_path, seen):
  config = e2e_config(data_dir)
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  exp, params = result['experiment'], result['state'].params
  assert result['step'] == 20 and np.isfinite(result['eval']['test']['neg_elbo'])
  # The importance-sampled pass over the whole train split (the validation slice read as part
  # of it) and over test, one compiled step for both.
  step = evaluate.EstimateStep(exp, 2, 2)
  evaluate.estimate(exp, params, 'train', 2, chunk_size=2, step=step, units=False)
  report = evaluate.estimate(exp, params, 'test', 2, chunk_size=2, step=step, units=False)
  # Bernoulli on binary inputs: a normalised mass, so the nll is an honest -log p(x).
  assert report['normalized'] is True and np.isfinite(report['nll'])
  run = analysis.load_run(str(tmp_path / 'run'))
  cfg = run.config.data
  analysis.encode_split(run, data.load_arrays(cfg, cfg.valid_split), split=cfg.valid_split)
  jax.effects_barrier()

  train_id, test_id = split_id('train'), split_id('test')
  assert set(seen) == {path for path, _ in SPIED}, set(seen)
  every = collections.defaultdict(set)
  for path, draws in seen.items():
    for example, bits in draws.items():
      assert len(bits) == 1, (path, example)  # one draw, at every epoch and every pass
      every[example] |= bits
  for example, bits in every.items():
    assert len(bits) == 1, (example, [p for p in seen if example in seen[p]])
  # One grey image throughout: every example's bits are its own all the same.
  assert len({b for bits in every.values() for b in bits}) == len(every)
  trained = set(seen['train'])
  assert trained == {(train_id, i) for i in range(160)}  # 400 rows: every example, 2+ epochs
  valid = {(train_id, i) for i in range(160, 200)}
  assert valid == set(seen['units']) == set(seen['analysis'])
  assert {(test_id, i) for i in range(8)} == set(seen['pictures'])
  assert valid | {(test_id, i) for i in range(N_TEST)} == set(seen['elbo'])
  assert valid | trained <= set(seen['iwae'])
  assert {(test_id, i) for i in range(N_TEST)} <= set(seen['iwae'])
  # The test examples' draws are their own, not those of train's examples of the same index.
  assert all(every[test_id, i] != every[train_id, i] for i in range(N_TEST))
  assert_reference_bits(seen, reference_bits(data_dir))


def reference_bits(data_dir, data_seed=0):
  """{(base split id, index): bits} computed directly from the memory back end's arrays."""
  cfg = data_config(name='fashion_mnist', data_dir=str(data_dir))
  out = {}
  for split in ('train', 'test'):
    arrays = data.load_arrays(cfg, split)
    x = static(arrays['image'], arrays['index'], split=split, data_seed=data_seed)
    for i, bits in zip(arrays['index'], x.reshape(len(x), -1), strict=True):
      out[split_id(split), int(i)] = np.packbits(bits.astype(bool)).tobytes()
  return out


def assert_reference_bits(seen, reference):
  for path, draws in seen.items():
    for example, bits in draws.items():
      assert bits == {reference[example]}, (path, example)


def test_the_stream_back_end_draws_the_memory_back_ends_bits(data_dir, tmp_path, seen):
  config = e2e_config(data_dir, num_train_steps=5, eval_every_steps=5, checkpoint_every_steps=5,
                      **{'data.backend': 'stream', 'data.shuffle_buffer': 64})
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert result['step'] == 5 and np.isfinite(result['eval']['test']['neg_elbo'])
  jax.effects_barrier()
  assert {'train', 'elbo', 'units', 'pictures'} == set(seen), set(seen)
  assert len(seen['train']) == 100 and len(seen['elbo']) == 40 + N_TEST
  assert_reference_bits(seen, reference_bits(data_dir))
