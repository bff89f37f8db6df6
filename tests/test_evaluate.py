"""The evaluator through its real code: the K-sample estimator against a linear-Gaussian model
whose log p(x) and p(h|x) are closed form, its invariances, the unit statistics, the loop's
hook and scripts/evaluate.py."""

import dataclasses
import json
import math
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erfinv

from tests.test_config import ROOT, load_config
from tests.test_train import set_fields, tiny_config
from vae_jax import evaluate, experiment, sharding, train
from vae_jax.config import validation
from vae_jax.data.preprocess import uniform
from vae_jax.evaluate import saved_run
from vae_jax.maths import gaussians, streams
from vae_jax.models.contract import Capabilities
from vae_jax.storage import writers as metrics_lib

# ------------------------------------------------------------------------------------------
# A linear-Gaussian family implementing the model contract:
#   p(h) = N(0, I_D), p(x|h) = N(W h + b, s^2 I_P), q(h|x) = N(A x + c, S) (S diagonal or full,
#   shared by all x). Then p(x) = N(b, W W^T + s^2 I), p(h|x) = N(mu(x), Sigma) with
#   Sigma = (I + W^T W / s^2)^{-1}, mu(x) = Sigma W^T (x - b) / s^2.
# Its data are real vectors; to pass unrounded through the real uint8 pipeline each float32
# travels as its 4 bytes (image [P, 4, 1], data.preprocess='uint8'), rebuilt by the family.

D, P = 2, 3
IMAGE = (P, 4, 1)


def to_images(x):
  """float32 [N, P] -> uint8 [N, P, 4, 1] (the bytes of each value)."""
  return np.ascontiguousarray(x, np.float32).view(np.uint8).reshape(len(x), *IMAGE)


def _from_input(x):
  """int32 [B, P, 4, 1] bytes (little-endian) -> float32 [B, P]."""
  b = x[..., 0].astype(jnp.uint32)  # [B, P, 4]
  bits = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16) | (b[..., 3] << 24)
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


@dataclasses.dataclass(frozen=True)
class LinearGaussian:
  """The contract (terms, encode, log_weights, posterior_stats) of the linear-Gaussian VAE."""

  full: bool = True
  latent_dim: int = D
  x_dtype = jnp.int32

  @property
  def capabilities(self):
    return Capabilities(kl_units=False, group_kl=False, diagonal_posterior=not self.full,
                        standard_prior=True, description='linear-Gaussian VAE',
                        prior_description='h ~ N(0, T^2 I)')

  @property
  def unit_groups(self):
    return (self.latent_dim,)

  def encode(self, params, x):
    y = _from_input(x)
    mean = y @ params['enc_a'].T + params['enc_c']  # [B, D]
    if self.full:
      return {'mean': mean, 'scale_tril': params['enc_scale_tril']}  # shared [D, D]
    return {'mean': mean, 'log_scale': jnp.broadcast_to(params['enc_log_scale'], mean.shape)}

  def _log_lik(self, params, y, h):
    """log N(y; W h + b, s^2 I): [..., B] for h [..., B, D]."""
    z = (y - h @ params['w'].T - params['b']) * jnp.exp(-params['log_s'])
    return jnp.sum(-0.5 * jnp.square(z) - params['log_s'] - 0.5 * math.log(2 * math.pi), -1)

  def terms(self, params, x, keys):
    post = self.encode(params, x)
    eps = gaussians.standard_normal_noise(keys, x.shape[0], D)  # [B, D]
    recon = -self._log_lik(params, _from_input(x), gaussians.gaussian_rsample(post, eps))
    kl = gaussians.gaussian_kl_to_standard_normal(post)
    return {'recon': recon, 'kl': kl, 'neg_elbo': recon + kl}

  def log_weights(self, params, x, keys, num_samples, sample_offset=0, encoded=None):
    post = self.encode(params, x) if encoded is None else encoded
    eps = gaussians.standard_normal_noise(keys, x.shape[0], D, num_samples, sample_offset)
    h = gaussians.gaussian_rsample(post, eps)  # [K, B, D]
    return (self._log_lik(params, _from_input(x), h) + gaussians.standard_normal_log_prob(h)
            - gaussians.gaussian_log_prob(post, h))

  def posterior_stats(self, params, x, key=None):
    post = self.encode(params, x)
    if self.full:
      var = jnp.sum(jnp.square(jnp.tril(post['scale_tril'])), -1)
    else:
      var = jnp.exp(2 * post['log_scale'])
    return {'mean': post['mean'], 'var': jnp.broadcast_to(var, post['mean'].shape)}


def _decoder(seed=0):
  rng = np.random.default_rng(seed)
  return {'w': rng.normal(size=(P, D)), 'b': 0.3 * rng.normal(size=P), 'log_s': math.log(0.5)}


def _exact_posterior(dec):
  """(A, c, Sigma) of p(h|x) = N(A x + c, Sigma)."""
  s2 = math.exp(2 * dec['log_s'])
  sigma = np.linalg.inv(np.eye(D) + dec['w'].T @ dec['w'] / s2)
  a = sigma @ dec['w'].T / s2
  return a, -a @ dec['b'], sigma


def _params(dec, a, c, cov):
  """float32 params of the family with encoder mean A x + c and covariance cov."""
  p = {**dec, 'enc_a': a, 'enc_c': c, 'enc_scale_tril': np.linalg.cholesky(cov),
       'enc_log_scale': 0.5 * np.log(np.diag(cov))}
  return {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}


def _approximate_posterior(dec):
  """A q that differs from p(h|x) by about 1 nat: a shifted mean map, a narrower, rotated
  covariance (narrower than p(h|x), so the weights have heavy tails and K matters)."""
  a, c, sigma = _exact_posterior(dec)
  rot = np.array([[1.0, 0.4], [-0.3, 1.0]])
  return 0.8 * a, c + 0.6, 0.5 * rot @ sigma @ rot.T


def _log_px(dec, y):
  s2 = math.exp(2 * dec['log_s'])
  return _gaussian_log_pdf(y, dec['b'], dec['w'] @ dec['w'].T + s2 * np.eye(P))


def _gaussian_log_pdf(y, mean, cov):
  diff = y - mean
  sol = np.linalg.solve(cov, diff.T).T
  return -0.5 * (np.sum(diff * sol, -1) + np.linalg.slogdet(2 * np.pi * cov)[1])


def _gaussian_kl(m1, c1, m2, c2):
  """KL(N(m1, c1) || N(m2, c2)) for means [N, d] and shared covariances: [N]."""
  c2_inv = np.linalg.inv(c2)
  diff = m2 - m1
  return 0.5 * (np.trace(c2_inv @ c1) + np.einsum('ni,ij,nj->n', diff, c2_inv, diff)
                - len(c1) + np.linalg.slogdet(c2)[1] - np.linalg.slogdet(c1)[1])


def _exact_gap(dec, q, y):
  """KL(q(h|y) || p(h|y)) per example: [N]."""
  a_p, c_p, sigma = _exact_posterior(dec)
  a, c, cov = q
  return _gaussian_kl(y @ a.T + c, cov, y @ a_p.T + c_p, sigma)


def _exact_neg_elbo(dec, q, y):
  return -_log_px(dec, y) + _exact_gap(dec, q, y)


def _linear_experiment(full=True, devices=1, batch=64, chunk=0):
  config = load_config('default')
  set_fields(config, eval_batch_size=batch, eval_chunk_size=chunk, compilation_cache='',
             **{'data.preprocess': 'uint8', 'model.likelihood': 'gaussian',
                'mesh.data': devices})
  experiment.configure_jax(config)
  return experiment.Experiment(config=config, mesh=sharding.make_mesh(config),
                               model=LinearGaussian(full=full), tx=None, image_shape=IMAGE,
                               abstract_state=None)


def _data(n, seed=1, dec=None):
  """n draws from the model's own p(x) (float64) and their arrays for eval_batches."""
  dec = dec or _decoder()
  rng = np.random.default_rng(seed)
  y = rng.normal(size=(n, D)) @ dec['w'].T + dec['b'] + 0.5 * rng.normal(size=(n, P))
  y = y.astype(np.float32)
  return y.astype(np.float64), {'image': to_images(y), 'index': np.arange(n, dtype=np.int32)}


# ------------------------------------------------------------------------------------------
# Closed-form checks through evaluate.estimate.


def test_linear_gaussian_elbo_terms_match_the_closed_form():
  dec = _decoder()
  q = _approximate_posterior(dec)
  y, arrays = _data(256)
  r = evaluate.estimate(_linear_experiment(), _params(dec, *q), 'test', 400, arrays=arrays,
                        units=False)
  want = _exact_neg_elbo(dec, q, y)
  # Single-sample terms: their mean over the split, within its standard error.
  assert abs(r['neg_elbo'] - want.mean()) < 4 * r['neg_elbo_stderr']
  # The analytic KL term exactly; the K-sample Monte Carlo ELBO example by example.
  a, c, cov = q
  kl = _gaussian_kl(y @ a.T + c, cov, np.zeros((1, D)), np.eye(D))
  np.testing.assert_allclose(r['per_example']['kl'], kl, rtol=1e-5, atol=1e-5)
  err = r['per_example']['neg_elbo_mc'] - want  # [N]: Monte Carlo noise of 400 samples each
  assert np.sqrt(np.mean(err**2)) < 0.1 and abs(err.mean()) < 0.02, err


def test_nll_converges_to_the_exact_log_likelihood_from_above():
  dec = _decoder()
  y, arrays = _data(256)
  exact = -_log_px(dec, y)  # [N]
  exp, params = _linear_experiment(), _params(dec, *_approximate_posterior(dec))
  excess, stderrs = [], []
  for k in (1, 10, 100, 2000):
    r = evaluate.estimate(exp, params, 'test', k, arrays=arrays, units=False)
    diff = r['per_example']['nll'] - exact  # [N]
    excess.append(diff.mean())
    stderrs.append(diff.std(ddof=1) / math.sqrt(len(diff)))
    assert excess[-1] > -3 * stderrs[-1], (k, excess, stderrs)  # never below, beyond noise
  # The upward bias shrinks (roughly like 1/K) towards 0.
  assert all(a - b > 3 * s for a, b, s in zip(excess, excess[1:], stderrs, strict=False))
  assert excess[-1] < 0.05, excess
  # The posterior gap at large K: the exact E KL(q || p(h|x)), approached from below.
  gap = _exact_gap(dec, _approximate_posterior(dec), y).mean()
  assert gap > 0.5
  mc_gap = r['neg_elbo_mc'] - r['nll']
  assert gap - 0.05 < mc_gap <= gap + 3 * stderrs[-1], (mc_gap, gap)
  assert abs(r['posterior_gap'] - gap) < 4 * r['posterior_gap_stderr'] + 0.05


def test_exact_posterior_gives_zero_gap_and_the_exact_nll_at_one_sample():
  dec = _decoder()
  y, arrays = _data(128)
  r = evaluate.estimate(_linear_experiment(), _params(dec, *_exact_posterior(dec)), 'test', 1,
                        arrays=arrays, units=False)
  # log p(x|h) + log p(h) - log q(h|x) = log p(x) for every h when q = p(h|x).
  np.testing.assert_allclose(r['per_example']['nll'], -_log_px(dec, y), rtol=1e-5, atol=2e-5)
  np.testing.assert_allclose(r['per_example']['neg_elbo_mc'], r['per_example']['nll'],
                             rtol=1e-6)
  assert abs(r['posterior_gap']) < 3 * r['posterior_gap_stderr']  # only recon's noise
  assert r['ess'] == pytest.approx(1.0)


def test_joint_kl_is_the_marginal_kl_plus_the_posterior_gap_on_gaussian_data():
  """With data X ~ P = N(mu, C) of known entropy H(P):
  KL(P(X) q(h|X) || p(h) p(X|h)) = KL(P || P_theta) + E_P KL(q(h|X) || p(h|X)) = E neg_elbo - H(P).
  """
  dec = _decoder()
  q = _approximate_posterior(dec)
  rng = np.random.default_rng(5)
  mu, root = 0.5 * rng.normal(size=P), rng.normal(size=(P, P))
  cov_p = 0.3 * root @ root.T + 0.2 * np.eye(P)
  n = 2048
  y = (mu + rng.normal(size=(n, P)) @ np.linalg.cholesky(cov_p).T).astype(np.float32)
  arrays = {'image': to_images(y), 'index': np.arange(n, dtype=np.int32)}
  entropy = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * cov_p)[1]
  r = evaluate.estimate(_linear_experiment(), _params(dec, *q), 'test', 500, arrays=arrays,
                        units=False, data_entropy=entropy)
  # Population values in closed form.
  s2 = math.exp(2 * dec['log_s'])
  cov_theta = dec['w'] @ dec['w'].T + s2 * np.eye(P)
  marginal = _gaussian_kl(mu[None], cov_p, dec['b'][None], cov_theta)[0]
  a_p, c_p, sigma = _exact_posterior(dec)
  a, c, cov_q = q
  g, g0 = a - a_p, c - c_p  # mean(q) - mean(p(h|x)) = g x + g0
  sigma_inv = np.linalg.inv(sigma)
  mean_diff = g @ mu + g0
  gap = 0.5 * (np.trace(sigma_inv @ cov_q) - D + np.linalg.slogdet(sigma)[1]
               - np.linalg.slogdet(cov_q)[1] + mean_diff @ sigma_inv @ mean_diff
               + np.trace(sigma_inv @ g @ cov_p @ g.T))
  assert r['data_entropy'] == pytest.approx(entropy)
  assert abs(r['joint_kl'] - (marginal + gap)) < 4 * r['joint_kl_stderr'], (r['joint_kl'],
                                                                            marginal + gap)
  assert abs(r['marginal_kl'] - marginal) < 4 * r['marginal_kl_stderr'] + 0.02
  assert r['normalized'] and r['bits_per_dim'] is None  # a density: no bits per dimension


# ------------------------------------------------------------------------------------------
# Invariances of the real GaussianVAE estimator.

N_SMALL = 100  # not a multiple of the batch sizes below: the last batch is padded


def _binary_arrays(n=N_SMALL, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': (rng.random((n, 8, 8, 1)) < 0.4).astype(np.uint8) * 255,
          'index': np.arange(n, dtype=np.int32)}


@pytest.fixture(scope='module')
def small_vae():
  """A tiny MLP VAE for 8x8 images, at its initialisation (the config and params)."""
  config = tiny_config(eval_batch_size=16)
  exp = experiment.build(config, image_shape=(8, 8, 1))
  params = jax.device_get(experiment.init_state(exp).params)
  return config, params


def _vae_experiment(config, **overrides):
  config = set_fields(config.copy_and_resolve_references(), **overrides)
  return experiment.build(config, image_shape=(8, 8, 1))


def test_chunked_equals_unchunked_and_log_weights_concatenate(small_vae):
  config, params = small_vae
  exp, arrays = _vae_experiment(config, **{'mesh.data': 1}), _binary_arrays()
  runs = [evaluate.estimate(exp, params, 'test', 30, chunk_size=kc, arrays=arrays, units=False)
          for kc in (1, 7, 30)]
  for r in runs[1:]:
    assert r['num_chunks'] in (5, 1)
    # ess = exp(2 lse - lse2) amplifies float32 rounding of the log-sum-exps (~50 here).
    for k, rtol in (('nll', 2e-6), ('neg_elbo_mc', 2e-6), ('neg_elbo', 0), ('ess', 1e-4)):
      np.testing.assert_allclose(r['per_example'][k], runs[0]['per_example'][k], rtol=rtol)
  x = jnp.asarray(arrays['image'][:8] / 255.0, jnp.float32)
  keys = streams.eval_keys(config.seed, jnp.arange(8))
  lw = jax.jit(exp.model.log_weights, static_argnums=3)
  whole = lw(params, x, keys, 12, 0)
  parts = jnp.concatenate([lw(params, x, keys, 4, off) for off in (0, 4, 8)])
  np.testing.assert_allclose(parts, whole, rtol=1e-6)


def test_numbers_do_not_depend_on_devices_batch_size_or_padding(small_vae):
  config, params = small_vae
  arrays = _binary_arrays()
  runs = [evaluate.estimate(_vae_experiment(config, eval_batch_size=b, **{'mesh.data': m}),
                            params, 'test', 20, chunk_size=6, arrays=arrays)
          for b, m in ((16, -1), (40, 1))]
  assert runs[0]['num_devices'] == 8 and runs[1]['num_devices'] == 1
  for r in runs[1:]:
    assert r['num_examples'] == N_SMALL
    np.testing.assert_array_equal(r['per_example']['index'], np.arange(N_SMALL))
    for k in ('nll', 'neg_elbo', 'recon', 'kl'):
      np.testing.assert_allclose(r['per_example'][k], runs[0]['per_example'][k], rtol=1e-5)
    np.testing.assert_allclose(r['kl_per_unit'], runs[0]['kl_per_unit'], rtol=1e-5)
    assert r['mutual_info'] == pytest.approx(runs[0]['mutual_info'], rel=1e-4)
  # The ELBO terms equal the loop's cheap path.
  cheap = evaluate.evaluate(_vae_experiment(config), params, 'test', arrays=arrays)
  for k in ('neg_elbo', 'recon', 'kl'):
    assert runs[0][k] == pytest.approx(cheap[k], rel=1e-5)
  assert runs[0]['normalized'] and runs[0]['bits_per_dim'] == pytest.approx(
      runs[0]['nll'] / (64 * math.log(2)))


def test_normalized_is_false_for_a_bernoulli_on_grey_values(small_vae):
  config, params = small_vae
  rng = np.random.default_rng(0)
  grey = {'image': rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8),
          'index': np.arange(40, dtype=np.int32)}
  one = {'mesh.data': 1}
  r = evaluate.estimate(_vae_experiment(config, **one), params, 'test', 2, arrays=grey,
                        units=False)
  assert r['normalized'] is False and 'not a normalised density' in r['note']
  assert r['bits_per_dim'] is None and r['joint_kl'] is None
  binarized = _vae_experiment(config, **one, **{'data.preprocess': 'dynamic_binarize'})
  r = evaluate.estimate(binarized, params, 'test', 2, arrays=grey, units=False)
  assert r['normalized'] is True and r['bits_per_dim'] is not None


@pytest.mark.parametrize('sample', [0, 1, 999])
def test_sample_noise_is_independent_of_the_binarization(sample):
  """With seed == data_seed, sample k's noise shares neither keys nor counters with the eval
  binarization draws of the same examples."""
  n = 256
  idx = np.arange(n)
  keys = streams.eval_keys(0, idx)
  eps = gaussians.standard_normal_noise(keys, n, 20, 1, sample)[0]  # [B, 20]
  u = uniform(streams.binarize_keys(idx, data_seed=0), (20,))
  corr = np.corrcoef(np.asarray(eps).ravel(), np.sqrt(2) * erfinv(2 * np.asarray(u).ravel() - 1))
  assert abs(corr[0, 1]) < 0.05, corr  # independent: |corr| ~ 1/sqrt(5120) = 0.014
  folded = jax.vmap(lambda k: jax.random.fold_in(k, sample))(keys)
  data = lambda k: {tuple(r) for r in np.asarray(jax.random.key_data(k)).reshape(-1, 2)}
  assert not data(folded) & data(streams.binarize_keys(idx, data_seed=0))


# ------------------------------------------------------------------------------------------
# Unit statistics.


def test_unit_statistics_match_numpy_and_sum_to_the_kl_term(small_vae):
  config, params = small_vae
  exp, arrays = _vae_experiment(config), _binary_arrays()
  u = evaluate.unit_statistics(exp, params, 'test', arrays=arrays)
  x = jnp.asarray(arrays['image'] / 255.0, jnp.float32)
  s = jax.device_get(jax.jit(exp.model.posterior_stats)(params, x))
  m, v = np.asarray(s['mean'], np.float64), np.asarray(s['var'], np.float64)
  np.testing.assert_allclose(u['kl_per_unit'], (0.5 * (m**2 + v - 1 - np.log(v))).mean(0),
                             rtol=1e-5)
  np.testing.assert_allclose(u['mean_var'], m.var(0), rtol=1e-5)
  assert u['active_units'] == int(np.sum(m.var(0) > 0.01))
  elbo = evaluate.evaluate(exp, params, 'test', arrays=arrays)
  assert u['kl_per_unit'].sum() == pytest.approx(elbo['kl'], rel=1e-5)
  assert 0 <= u['mutual_info'] <= math.log(N_SMALL)
  assert u['aggregate_kl'] == pytest.approx(elbo['kl'] - u['mutual_info'], rel=1e-4)


def test_mutual_information_limits_and_a_brute_force_estimate():
  mesh = sharding.make_mesh(set_fields(load_config('default'), **{'mesh.data': -1}))
  n, u = 60, 2
  index = np.arange(n)
  same = evaluate.mutual_information(mesh, np.zeros((n, u), np.float32),
                                     np.ones((n, u), np.float32), index, 0)
  np.testing.assert_allclose(same, 0.0, atol=1e-5)  # q(h|x) = q(h): no information
  apart = 20.0 * np.stack([index % 8, index // 8], 1).astype(np.float32)  # a grid, 20 sd apart
  far = evaluate.mutual_information(mesh, apart, np.ones((n, u), np.float32), index, 0)
  np.testing.assert_allclose(far, math.log(n), atol=1e-4)  # x is recovered from h exactly
  rng = np.random.default_rng(0)
  mean = rng.normal(size=(n, u)).astype(np.float32)
  var = np.exp(rng.normal(size=(n, u)) - 1).astype(np.float32)
  terms = evaluate.mutual_information(mesh, mean, var, index, 0)
  # Brute force in float64: 400 draws per example, the same exact mixture of all n.
  h = mean[:, None] + np.sqrt(var[:, None]) * rng.normal(size=(n, 400, u))  # [n, S, u]
  log_q = -0.5 * np.sum((h[:, :, None] - mean) ** 2 / var + np.log(2 * np.pi * var), -1)
  own = log_q[np.arange(n), :, np.arange(n)]  # [n, S]
  brute = own - (np.logaddexp.reduce(log_q, axis=-1) - math.log(n))
  stderr = math.sqrt(terms.var() / n + brute.mean(1).var() / n)
  assert abs(terms.mean() - brute.mean()) < 4 * stderr, (terms.mean(), brute.mean())
  # Only the draws are subsampled, evenly: the mixture keeps every example.
  sub = evaluate.mutual_information(mesh, mean, var, index, 0, max_samples=20)
  # Each is one of the full call's terms, to float32 round-off (the two calls are different
  # programs); a mixture of the 20 drawn examples only would move them by far more.
  assert sub.shape == (20,)
  assert np.all(np.isclose(sub[:, None], terms[None, :], rtol=1e-5, atol=1e-5).any(1))


def test_full_covariance_posterior_gets_no_mutual_information():
  dec = _decoder()
  _, arrays = _data(50)
  params = _params(dec, *_approximate_posterior(dec))
  full = evaluate.unit_statistics(_linear_experiment(full=True), params, 'test', arrays=arrays)
  diag = evaluate.unit_statistics(_linear_experiment(full=False), params, 'test', arrays=arrays)
  assert full['mutual_info'] is None and diag['mutual_info'] is not None
  # The marginals are the same: the per-unit numbers agree.
  np.testing.assert_allclose(full['mean_var'], diag['mean_var'], rtol=1e-6)


def test_full_covariance_log_density_solves_samples_as_columns():
  """gaussian_log_prob of [K, B, D] samples never broadcasts L to [K, B, D, D]."""
  rng = np.random.default_rng(0)
  k, b, d = 7, 5, 3
  for shared in (False, True):
    batch = () if shared else (b,)
    post = {'mean': rng.normal(size=(b, d)).astype(np.float32),
            'scale_tril': np.asarray(gaussians.scale_tril_from_raw(
                jnp.asarray(0.3 * rng.normal(size=batch + (d,)), jnp.float32),
                jnp.asarray(rng.normal(size=batch + (3,)), jnp.float32)))}
    h = rng.normal(size=(k, b, d)).astype(np.float32)
    jaxpr = jax.make_jaxpr(gaussians.gaussian_log_prob)(post, h)
    shapes = {tuple(v.aval.shape) for eqn in jaxpr.eqns for v in eqn.outvars}
    assert (k, b, d, d) not in shapes and (k, b, d, 1) not in shapes, shapes
    cov = np.broadcast_to(post['scale_tril'] @ np.swapaxes(post['scale_tril'], -1, -2),
                          (b, d, d))
    want = np.stack([[_gaussian_log_pdf(h[i, j][None], post['mean'][j], cov[j])[0]
                      for j in range(b)] for i in range(k)])
    np.testing.assert_allclose(gaussians.gaussian_log_prob(post, h), want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------
# The loop's hook and scripts/evaluate.py.

SCRIPT = os.path.join(ROOT, 'scripts', 'evaluate.py')


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
  """A 20-step sprites run whose loop estimates the nll with K = 4."""
  workdir = str(tmp_path_factory.mktemp('eval_run'))
  result = train.train_and_evaluate(tiny_config(eval_num_samples=4), workdir)
  return workdir, result


def _script(*args, env=None, timeout=300):
  t0 = time.perf_counter()
  proc = subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, env=env)
  return proc, time.perf_counter() - t0


def test_loop_records_hold_the_nll_and_gap(trained_run):
  workdir, result = trained_run
  records = metrics_lib.read_metrics(workdir, 'eval')
  assert {r['split'] for r in records} == {'train[90%:]', 'test'}
  for r in records:
    assert r['num_samples'] == 4 and r['params'] == 'state'
    assert r['posterior_gap'] == pytest.approx(r['neg_elbo'] - r['nll'], rel=1e-4)
    assert r['nll'] < r['neg_elbo_mc'] and r['normalized'] is True
  assert result['eval']['test']['nll'] == records[-1]['nll']


@pytest.mark.slow
def test_script_writes_and_prints_the_report(trained_run):
  workdir, result = trained_run
  proc, _ = _script(f'--workdir={workdir}', '--num_samples=6', '--chunk_size=4')
  assert proc.returncode == 0, proc.stderr[-3000:]
  last = json.loads(proc.stdout.strip().splitlines()[-1])
  for key in ('neg_elbo', 'neg_elbo_stderr', 'recon', 'kl', 'nll', 'nll_stderr',
              'posterior_gap', 'num_examples', 'num_samples', 'step', 'split', 'samples_per_sec',
              'normalized', 'bits_per_dim', 'joint_kl', 'active_units', 'kl_per_unit',
              'mutual_info', 'recon_stderr'):
    assert key in last, key
  assert last['step'] == 20 and last['split'] == 'test' and last['num_samples'] == 6
  assert last['params'] == 'state' and last['normalized'] is True
  assert last['joint_kl'] == pytest.approx(last['neg_elbo'] - math.log(24488), rel=1e-6)
  # The K-free ELBO terms of the loop's last test evaluation, to float32 rounding.
  assert last['neg_elbo'] == pytest.approx(result['eval']['test']['neg_elbo'], rel=1e-5)
  path = os.path.join(workdir, 'eval', 'step_20_test_k6.json')
  assert json.load(open(path)) == last
  per_example = np.load(path[:-5] + '.npz')
  assert per_example['nll'].shape == (last['num_examples'],)
  assert 'evaluated' in proc.stdout and '\r' not in proc.stdout + proc.stderr


def test_an_existing_evaluation_is_replaced_only_when_the_results_agree(tmp_path):
  path = str(tmp_path / 'eval' / 'step_5_test_k3.json')
  report = {'nll': 80.0, 'kl_per_unit': [1.0, 2.0], 'split': 'test', 'samples_per_sec': 9.0}
  per_example = {'nll': np.arange(3.0)}
  logged = []
  saved_run._write_eval(path, report, per_example, logged.append)
  # The same results, run differently (speed, float32 rounding of another device count).
  saved_run._write_eval(path, {**report, 'nll': 80.0 + 1e-5, 'samples_per_sec': 12.0},
                        per_example, logged.append)
  assert sorted(os.listdir(tmp_path / 'eval')) == ['step_5_test_k3.json', 'step_5_test_k3.npz']
  assert not logged and json.load(open(path))['samples_per_sec'] == 12.0
  # Different results: the old file is kept beside the new one, with a warning.
  saved_run._write_eval(path, {**report, 'kl_per_unit': [1.0, 2.5]}, per_example, logged.append)
  assert sorted(os.listdir(tmp_path / 'eval')) == [
      'step_5_test_k3.json', 'step_5_test_k3.json.1', 'step_5_test_k3.npz',
      'step_5_test_k3.npz.1']
  assert 'held different results' in logged[0]
  assert json.load(open(path + '.1'))['kl_per_unit'] == [1.0, 2.0]


def test_a_saved_config_gets_the_fields_added_since_at_their_defaults():
  saved = json.loads(tiny_config(eval_batch_size=64).to_json())
  del saved['eval_chunk_size'], saved['objective']['beta']
  config = evaluate.saved_config(saved)
  assert config.eval_chunk_size == 0 and config.objective.beta == 1.0  # the defaults
  assert config.eval_batch_size == 64 and config.model.latent_dim == 4  # the run's own


@pytest.mark.parametrize('args, match', [
    (['--workdir=EMPTY'], 'holds no vae_jax run'),
    (['--workdir=RUN', '--step=7'], 'no checkpoint at that step'),
    (['--workdir=RUN', '--num_samples=0'], '--num_samples=0 must be'),
    (['--workdir=RUN', '--split=tset'], "Unknown split 'tset'"),
    (['--workdir=RUN', '--split=test[:20000]'], 'out of range'),
    (['--workdir=RUN', '--params=ema'], 'no EMA parameters'),
])
def test_script_user_errors_are_fast_and_need_no_tensorflow(trained_run, tmp_path, args, match):
  # A stand-in tensorflow that fails on import: any import of it before the error shows.
  fake = tmp_path / 'fake' / 'tensorflow'
  fake.mkdir(parents=True)
  (fake / '__init__.py').write_text('raise ImportError("tensorflow was imported")\n')
  env = dict(os.environ, PYTHONPATH=f'{tmp_path / "fake"}{os.pathsep}{ROOT}')
  workdir, _ = trained_run
  args = [a.replace('EMPTY', str(tmp_path)).replace('RUN', workdir) for a in args]
  proc, seconds = _script(*args, env=env, timeout=60)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr and match in proc.stderr, proc.stderr[-3000:]
  assert seconds < 30


def test_paired_difference_matches_examples_by_index_and_gives_the_paired_stderr(tmp_path):
  rng = np.random.default_rng(0)
  shared = rng.normal(100.0, 10.0, size=500)  # what both runs find hard: cancels when paired
  a = shared + rng.normal(0.0, 0.1, size=500)
  b = shared - 0.5 + rng.normal(0.0, 0.1, size=500)
  order = rng.permutation(500)  # b's file lists the same examples in another order
  np.savez(tmp_path / 'a.npz', index=np.arange(500), nll=a)
  np.savez(tmp_path / 'b.npz', index=order, nll=b[order])
  out = evaluate.paired_difference(str(tmp_path / 'a.json'), str(tmp_path / 'b.npz'))
  d = a - b
  assert out['difference'] == pytest.approx(d.mean())
  assert out['difference_stderr'] == pytest.approx(d.std(ddof=1) / math.sqrt(500))
  assert out['difference_stderr'] < out['a_stderr'] / 50 and out['z'] > 30
  np.savez(tmp_path / 'c.npz', index=np.arange(400), nll=a[:400])
  with pytest.raises(validation.ConfigError, match='different examples'):
    evaluate.paired_difference(str(tmp_path / 'a.npz'), str(tmp_path / 'c.npz'))
  with pytest.raises(validation.ConfigError, match="no per-example 'kl/1'"):
    evaluate.paired_difference(str(tmp_path / 'a.npz'), str(tmp_path / 'b.npz'), key='kl/1')
  with pytest.raises(validation.ConfigError, match='does not exist'):
    evaluate.paired_difference(str(tmp_path / 'a.npz'), str(tmp_path / 'none.json'))
