"""Model and data randomness come from disjoint roots: no two named streams share a key."""

import itertools

import jax
import numpy as np
import pytest
from scipy.special import erfinv

from vae_jax.data.preprocess import uniform
from vae_jax.maths import streams

SEED_PAIRS = [(0, 0), (0, 1), (1, 0), (3, 3), (12345, 12345)]


def _data(keys):
  rows = np.asarray(jax.random.key_data(keys)).reshape(-1, 2)
  return [tuple(int(v) for v in row) for row in rows]


def _all_stream_keys(seed, data_seed, n=16):
  """Every key a run derives, for steps, indices and epochs 0..n-1, with the stream's name."""
  idx = np.arange(n)
  root = streams.model_root(seed)
  named = {
      'init': _data(streams.init_key(seed)),
      'train': _data(jax.vmap(lambda s: streams.train_key(root, s))(idx)),
      'eval': _data(streams.eval_keys(seed, idx)),
      'eval_samples': _data(jax.vmap(jax.vmap(jax.random.fold_in, (None, 0)), (0, None))(
          streams.eval_keys(seed, idx), idx)),
      'prior': _data(streams.prior_key(seed)),
      'binarize_eval': _data(streams.binarize_keys(idx, data_seed=data_seed)),
  }
  for e in range(4):
    named[f'binarize_train_epoch{e}'] = _data(
        streams.binarize_keys(idx, data_seed=data_seed, epoch=e))
  return named


@pytest.mark.parametrize('seed, data_seed', SEED_PAIRS)
def test_no_two_named_streams_share_a_key(seed, data_seed):
  named = _all_stream_keys(seed, data_seed)
  owner = {}
  for name, keys in named.items():
    for k in keys:
      assert k not in owner, f'{name} and {owner[k]} share the key {k} (seeds {seed}, {data_seed})'
      owner[k] = name


def test_model_and_data_roots_differ_for_any_seed_pair():
  pairs = itertools.product(range(6), range(6))
  models = {s: _data(streams.model_root(s))[0] for s in range(6)}
  datas = {s: _data(streams.data_root(s))[0] for s in range(6)}
  for s, d in pairs:
    assert models[s] != datas[d]


@pytest.mark.parametrize('sample', [None, 0, 1])
def test_eval_noise_is_independent_of_the_binarization_when_seeds_are_equal(sample):
  # With one root for both, example i's noise would be sqrt(2) erfinv(2u - 1) of its own
  # binarization uniforms u, coupling every pixel with the noise of a K-sample estimate.
  n, d = 256, 20
  idx = np.arange(n)
  fold = (lambda k: k) if sample is None else (lambda k: jax.random.fold_in(k, sample))
  eps = jax.vmap(lambda k: jax.random.normal(fold(k), (d,)))(streams.eval_keys(0, idx))
  u = uniform(streams.binarize_keys(idx, data_seed=0), (d,))
  eps, from_u = np.asarray(eps).ravel(), np.sqrt(2) * erfinv(2 * np.asarray(u).ravel() - 1)
  corr = np.corrcoef(eps, from_u)[0, 1]
  assert abs(corr) < 0.05, corr  # independent draws: |corr| ~ 1/sqrt(5120) = 0.014
