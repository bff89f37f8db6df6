"""Gaussian posteriors and likelihoods against closed forms, quadrature and Monte Carlo."""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy import stats

from vae_jax.maths import gaussians, likelihoods

# Jitted once per shape: on a busy CPU, compiling each eager primitive separately dominates.
jd = types.SimpleNamespace(
    gaussian_rsample=jax.jit(gaussians.gaussian_rsample),
    gaussian_log_prob=jax.jit(gaussians.gaussian_log_prob),
    gaussian_entropy=jax.jit(gaussians.gaussian_entropy),
    gaussian_kl_to_standard_normal=jax.jit(gaussians.gaussian_kl_to_standard_normal),
    standard_normal_log_prob=jax.jit(gaussians.standard_normal_log_prob),
    scale_tril_from_raw=jax.jit(gaussians.scale_tril_from_raw),
    likelihood_log_prob=jax.jit(likelihoods.likelihood_log_prob, static_argnums=0),
    likelihood_mean=jax.jit(likelihoods.likelihood_mean, static_argnums=0),
    likelihood_sample=jax.jit(likelihoods.likelihood_sample, static_argnums=0),
    cb_log_norm=jax.jit(likelihoods._cb_log_norm),
)


def _normal(seed, shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _random_posteriors(seed, batch, d):
  """A diagonal and a full posterior with well-conditioned random parameters (float32)."""
  mean = _normal(seed, (batch, d))
  log_scale = 0.5 * _normal(seed + 1, (batch, d))
  offdiag = 0.5 * _normal(seed + 2, (batch, d * (d - 1) // 2))
  diag_raw = 0.5 * _normal(seed + 3, (batch, d))
  diag = {'mean': mean, 'log_scale': log_scale}
  full = {'mean': mean, 'scale_tril': np.asarray(jd.scale_tril_from_raw(diag_raw, offdiag))}
  return diag, full


def _shared(full):
  """One covariance for the whole batch: L is [D, D]."""
  return {'mean': full['mean'], 'scale_tril': full['scale_tril'][0]}


def _mvn_logpdf(h, mean, cov):
  """jax.scipy's multivariate normal in float64, vmapped over the batch: [K, B]."""
  with jax.enable_x64(True):
    fn = jax.jit(jax.vmap(stats.multivariate_normal.logpdf, in_axes=(1, 0, 0), out_axes=1))
    return np.asarray(fn(*(np.asarray(a, np.float64) for a in (h, mean, cov))))


def _cov(post):
  """Sigma, [..., D, D], in float64 numpy."""
  if 'scale_tril' in post:
    scale_tril = np.asarray(post['scale_tril'], np.float64)
    return scale_tril @ np.swapaxes(scale_tril, -1, -2)
  scale = np.exp(np.asarray(post['log_scale'], np.float64))
  return scale[..., :, None] ** 2 * np.eye(scale.shape[-1])


def _kl_reference(mean, cov):
  """KL(N(mean, cov) || N(0, I)) from its textbook formula, float64: [B]."""
  d = mean.shape[-1]
  _, logdet = np.linalg.slogdet(cov)
  return 0.5 * (np.trace(cov, axis1=-2, axis2=-1) + np.sum(mean**2, -1) - d - logdet)


# ------------------------------------------------------------------------------------------
# Posteriors.


def test_scale_tril_from_raw_structure():
  diag_raw = jnp.array([[0.1, -0.2, 0.3]])
  offdiag = jnp.array([[1.0, 2.0, 3.0]])
  scale_tril = jd.scale_tril_from_raw(diag_raw, offdiag)
  expected = np.array([[math.exp(0.1), 0, 0], [1.0, math.exp(-0.2), 0], [2.0, 3.0, math.exp(0.3)]])
  np.testing.assert_allclose(scale_tril[0], expected, rtol=1e-6)
  with pytest.raises(ValueError):
    jd.scale_tril_from_raw(diag_raw, offdiag[:, :2])


@pytest.mark.parametrize('kind', ['diag', 'full', 'shared'])
def test_log_prob_matches_multivariate_normal(kind):
  diag, full = _random_posteriors(0, batch=4, d=3)
  post = {'diag': diag, 'full': full, 'shared': _shared(full)}[kind]
  h = 2 * _normal(1, (5, 4, 3))  # [K, B, D]
  log_prob = jd.gaussian_log_prob(post, h)
  assert log_prob.shape == (5, 4)
  expected = _mvn_logpdf(h, post['mean'], np.broadcast_to(_cov(post), (4, 3, 3)))
  np.testing.assert_allclose(log_prob, expected, rtol=1e-5, atol=1e-5)
  # Without sample axes: [B, D] -> [B].
  np.testing.assert_allclose(jd.gaussian_log_prob(post, h[0]), expected[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kind', ['diag', 'full', 'shared'])
def test_kl_and_entropy_closed_form(kind):
  diag, full = _random_posteriors(2, batch=6, d=4)
  post = {'diag': diag, 'full': full, 'shared': _shared(full)}[kind]
  cov = np.broadcast_to(_cov(post), (6, 4, 4))
  mean = np.asarray(post['mean'], np.float64)
  kl = jd.gaussian_kl_to_standard_normal(post)
  assert kl.shape == (6,)
  np.testing.assert_allclose(kl, _kl_reference(mean, cov), rtol=1e-5, atol=1e-5)
  entropy = jd.gaussian_entropy(post)
  assert entropy.shape == (6,)
  expected = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * cov)[1]
  np.testing.assert_allclose(entropy, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kind', ['diag', 'full', 'shared'])
def test_rsample_moments_kl_and_entropy_by_monte_carlo(kind):
  diag, full = _random_posteriors(3, batch=2, d=3)
  post = {'diag': diag, 'full': full, 'shared': _shared(full)}[kind]
  n = 200_000
  eps = _normal(4, (n, 2, 3))
  h = jd.gaussian_rsample(post, eps)  # [N, B, D]
  assert h.shape == (n, 2, 3)
  cov = np.broadcast_to(_cov(post), (2, 3, 3))
  h64 = np.asarray(h, np.float64)
  sd = np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))
  np.testing.assert_allclose(h64.mean(0), post['mean'], atol=float(5 * sd.max() / math.sqrt(n)))
  centered = h64 - h64.mean(0)
  emp_cov = np.einsum('nbi,nbj->bij', centered, centered) / n
  np.testing.assert_allclose(emp_cov, cov, atol=0.03 * float(np.max(cov)))
  # KL = E_q[log q - log p] and H = -E_q log q, up to Monte Carlo error.
  log_q = jd.gaussian_log_prob(post, h)  # [N, B]
  log_ratio = np.asarray(log_q - jd.standard_normal_log_prob(h), np.float64)
  se = log_ratio.std(0) / math.sqrt(n)
  kl = np.asarray(jd.gaussian_kl_to_standard_normal(post))
  assert np.all(np.abs(log_ratio.mean(0) - kl) < 5 * se + 1e-4), (log_ratio.mean(0), kl, se)
  neg_log_q = -np.asarray(log_q, np.float64)
  se = neg_log_q.std(0) / math.sqrt(n)
  entropy = np.asarray(jd.gaussian_entropy(post))
  assert np.all(np.abs(neg_log_q.mean(0) - entropy) < 5 * se + 1e-4)


def test_diag_and_full_agree_when_scale_tril_is_diagonal():
  diag, _ = _random_posteriors(5, batch=3, d=4)
  full = {
      'mean': diag['mean'],
      'scale_tril': jd.scale_tril_from_raw(diag['log_scale'], jnp.zeros((3, 6))),
  }
  eps = _normal(6, (7, 3, 4))
  h_diag, h_full = jd.gaussian_rsample(diag, eps), jd.gaussian_rsample(full, eps)
  np.testing.assert_allclose(h_diag, h_full, rtol=1e-6, atol=1e-6)
  for fn in (jd.gaussian_entropy, jd.gaussian_kl_to_standard_normal):
    np.testing.assert_allclose(fn(diag), fn(full), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(
      jd.gaussian_log_prob(diag, h_diag), jd.gaussian_log_prob(full, h_diag), rtol=1e-5)


def test_kl_float32_stable_near_the_prior():
  # Near q = p the naive exp(2s) - 1 - 2s cancels; the KL must stay >= 0 and accurate.
  log_scale = jnp.array([[0.0, 1e-4, -1e-4, 3e-3]], jnp.float32)
  post = {'mean': jnp.zeros((1, 4), jnp.float32), 'log_scale': log_scale}
  kl = jd.gaussian_kl_to_standard_normal(post)
  s = np.asarray(log_scale, np.float64)
  expected = 0.5 * np.sum(np.exp(2 * s) - 1 - 2 * s)
  assert kl[0] >= 0
  np.testing.assert_allclose(kl, [expected], rtol=1e-3)
  zero = {'mean': jnp.zeros((1, 4)), 'log_scale': jnp.zeros((1, 4))}
  assert float(jd.gaussian_kl_to_standard_normal(zero)[0]) == 0.0
  # Large and small scales stay finite, gradients too.
  wide = {'mean': jnp.zeros((1, 2)), 'log_scale': jnp.array([[-30.0, 20.0]])}
  grad = jax.jit(jax.grad(lambda p: gaussians.gaussian_kl_to_standard_normal(p).sum()))(wide)
  assert np.isfinite(jd.gaussian_kl_to_standard_normal(wide)).all()
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grad))


def test_standard_normal_log_prob():
  h = _normal(7, (2, 3, 5))
  expected = _mvn_logpdf(h, np.zeros((3, 5)), np.broadcast_to(np.eye(5), (3, 5, 5)))
  np.testing.assert_allclose(jd.standard_normal_log_prob(h), expected, rtol=1e-6)


# ------------------------------------------------------------------------------------------
# Likelihoods. Normalisation checks put the data grid on the batch axis and the parameter
# values on an extra leading axis: params [M, 1, 1, 1, 1(, K)] against x [N, 1, 1, 1] gives
# log p [M, N], which also exercises broadcasting of leading sample axes.


def _column(values, dtype=jnp.float32):
  return jnp.asarray(values, dtype).reshape(-1, 1, 1, 1)


def _gauss_legendre_panels(breaks, order=32):
  """Composite Gauss-Legendre nodes and weights over consecutive breakpoints (float64)."""
  nodes, weights = np.polynomial.legendre.leggauss(order)
  xs, ws = [], []
  for lo, hi in zip(breaks[:-1], breaks[1:], strict=True):
    xs.append(0.5 * (hi - lo) * nodes + 0.5 * (hi + lo))
    ws.append(0.5 * (hi - lo) * weights)
  return np.concatenate(xs), np.concatenate(ws)


def test_bernoulli_sums_to_one_and_matches_formula():
  logits = np.array([-50.0, -3.0, -1e-3, 0.0, 0.7, 40.0])
  log_p = jd.likelihood_log_prob('bernoulli', {'logits': _column(logits)[:, None]},
                                   _column([0.0, 1.0]))
  assert log_p.shape == (6, 2)
  np.testing.assert_allclose(np.exp(np.asarray(log_p, np.float64)).sum(1), 1.0, rtol=1e-6)
  x = (np.random.default_rng(8).uniform(size=(3, 4, 4, 2)) < 0.4).astype(np.float32)
  lg = 3 * _normal(9, (3, 4, 4, 2))
  p = 1 / (1 + np.exp(-lg.astype(np.float64)))
  expected = np.sum(x * np.log(p) + (1 - x) * np.log1p(-p), axis=(1, 2, 3))
  np.testing.assert_allclose(
      jd.likelihood_log_prob('bernoulli', {'logits': lg}, x), expected, rtol=1e-5)


CB_LOGITS = [0.0, 1e-7, -1e-4, 1e-2, -0.3, 0.49, 0.51, -1.0, 3.0, -12.0, 30.0, -90.0]


def test_continuous_bernoulli_integrates_to_one():
  # Panels graded towards both ends resolve the boundary layers of width 1/|logit|.
  ends = np.logspace(-9, -1, 9)
  breaks = np.unique(np.concatenate([[0.0, 1.0], ends, 1 - ends, np.linspace(0, 1, 11)]))
  x, w = _gauss_legendre_panels(breaks)
  for dtype, tol in ((jnp.float64, 1e-9), (jnp.float32, 2e-6)):
    with jax.enable_x64(True):
      log_p = jd.likelihood_log_prob(
          'continuous_bernoulli', {'logits': _column(CB_LOGITS, dtype)[:, None]},
          _column(x, dtype))
      total = np.exp(np.asarray(log_p, np.float64)) @ w
    np.testing.assert_allclose(total, 1.0, atol=tol, err_msg=str(dtype))


def test_continuous_bernoulli_matches_direct_formula():
  # log p = x log l + (1 - x) log(1 - l) + log(2 artanh(1 - 2l) / (1 - 2l)), away from l = 1/2.
  logits = np.array([-14.0, -5.0, -0.8, -0.02, 0.02, 0.6, 2.0, 15.0])  # textbook form exact
  x = np.array([0.0, 0.3, 0.5, 0.999])
  lam = 1 / (1 + np.exp(-logits))
  expected = (x[:, None] * np.log(lam) + (1 - x[:, None]) * np.log1p(-lam)
              + np.log(2 * np.arctanh(1 - 2 * lam) / (1 - 2 * lam)))  # [N, M]
  log_p = jd.likelihood_log_prob(
      'continuous_bernoulli', {'logits': _column(logits)[:, None]}, _column(x))
  np.testing.assert_allclose(log_p.T, expected, rtol=2e-6, atol=2e-6)
  # At lambda = 1/2 the density is uniform: log C = log 2 and x l - softplus(l) = -log 2.
  at_half = jd.likelihood_log_prob('continuous_bernoulli', {'logits': jnp.zeros((2, 1, 1, 1))},
                                     _column([0.1, 0.9]))
  np.testing.assert_allclose(at_half, 0.0, atol=1e-7)


def test_continuous_bernoulli_float32_accuracy_and_gradients():
  eta = np.concatenate([-np.logspace(-8, 2, 400)[::-1], [0.0], np.logspace(-8, 2, 400)])
  with jax.enable_x64(True):
    ref = np.asarray(jd.cb_log_norm(jnp.asarray(eta, jnp.float64)))
  got = np.asarray(jd.cb_log_norm(jnp.asarray(eta, jnp.float32)), np.float64)
  np.testing.assert_allclose(got, ref, atol=5e-7)
  # d/dl log C is (1/l - 1/sinh(l)) in closed form: 0 at l = 0 and smooth across the series cut.
  grad = jax.jit(jax.vmap(jax.grad(likelihoods._cb_log_norm)))(jnp.asarray(eta, jnp.float32))
  assert np.isfinite(grad).all()
  big = np.abs(eta) > 1e-2
  with np.errstate(over='ignore'):
    expected = 1 / eta[big] - 1 / np.sinh(eta[big])
  np.testing.assert_allclose(np.asarray(grad)[big], expected, atol=2e-6)
  np.testing.assert_allclose(np.asarray(grad)[~big], eta[~big] / 6, atol=1e-6)
  # The gradient of the log-density at lambda = 1/2 is x - 1/2 (d log C = 0), finite.
  x = _column([0.2, 0.8])

  def f(logits):
    return jd.likelihood_log_prob('continuous_bernoulli', {'logits': logits}, x).sum()

  g = jax.jit(jax.grad(f))(jnp.zeros((2, 1, 1, 1)))
  np.testing.assert_allclose(g.ravel(), [-0.3, 0.3], atol=1e-6)


def test_continuous_bernoulli_mean_and_sample():
  logits = np.array([0.0, 1e-5, -0.2, 0.499, 2.0, -7.0, 40.0])
  x, w = _gauss_legendre_panels(np.unique(np.concatenate([np.linspace(0, 1, 21),
                                                          np.logspace(-6, -1, 6),
                                                          1 - np.logspace(-6, -1, 6)])))
  with jax.enable_x64(True):
    log_p = jd.likelihood_log_prob(
        'continuous_bernoulli', {'logits': _column(logits, jnp.float64)[:, None]},
        _column(x, jnp.float64))
    quad_mean = np.exp(np.asarray(log_p)) @ (w * x)
  mean = jd.likelihood_mean('continuous_bernoulli', {'logits': _column(logits)})
  np.testing.assert_allclose(np.ravel(mean), quad_mean, atol=1e-6)
  # Samples follow the CDF F(x) = expm1(l x) / expm1(l) (Kolmogorov-Smirnov distance).
  n = 40_000
  params = {'logits': jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (n, 1, 1, 7))}
  samples = np.asarray(jd.likelihood_sample('continuous_bernoulli', params, jax.random.key(10)))
  assert samples.shape == (n, 1, 1, 7) and samples.min() >= 0 and samples.max() <= 1
  grid = np.linspace(0.01, 0.99, 50)
  for j, eta in enumerate(logits):
    emp = (samples[:, 0, 0, j][:, None] <= grid).mean(0)
    cdf = grid if abs(eta) < 1e-8 else np.expm1(eta * grid) / np.expm1(eta)
    assert np.max(np.abs(emp - cdf)) < 0.015, (eta, np.max(np.abs(emp - cdf)))


def test_gaussian_integrates_to_one_and_matches_norm():
  loc = np.array([0.3, -2.0, 0.3, 5.0])
  log_scale = np.array([-3.0, 0.0, 1.0, -6.0])
  breaks = np.unique(np.concatenate([np.linspace(-60, 60, 241), 5 + np.linspace(-0.1, 0.1, 41)]))
  x, w = _gauss_legendre_panels(breaks)
  with jax.enable_x64(True):
    params = {'loc': _column(loc, jnp.float64)[:, None],
              'log_scale': _column(log_scale, jnp.float64)[:, None]}
    log_p = jd.likelihood_log_prob('gaussian', params, _column(x, jnp.float64))
    np.testing.assert_allclose(np.exp(np.asarray(log_p)) @ w, 1.0, atol=1e-8)
  x = np.random.default_rng(11).uniform(size=(2, 3, 3, 2)).astype(np.float32)
  loc = np.random.default_rng(12).uniform(size=(2, 3, 3, 2)).astype(np.float32)
  log_scale = jnp.array([-2.0, 0.5])  # per channel, shared: broadcasts against loc
  log_p = jd.likelihood_log_prob('gaussian', {'loc': loc, 'log_scale': log_scale}, x)
  norm_logpdf = jax.jit(stats.norm.logpdf)
  expected = norm_logpdf(x, loc, jnp.exp(log_scale)).sum((1, 2, 3))
  np.testing.assert_allclose(log_p, expected, rtol=1e-5)


def _dl_params(loc, log_scale, weights):
  """Mixture params [M, 1, 1, 1, 1, K] from [M, K] tables."""
  def col(a):
    return jnp.asarray(a, jnp.float32).reshape(len(a), 1, 1, 1, 1, -1)
  return {'loc': col(loc), 'log_scale': col(log_scale), 'logit_weights': col(weights)}


def _dl_reference(loc, log_scale, weights, x):
  """Discretized logistic mixture log-mass straight from the CDF, float64: [M, N]."""
  loc, log_scale, weights = (np.asarray(a, np.float64)[:, None, :]
                             for a in (loc, log_scale, weights))
  xs = (2 * np.asarray(x, np.float64) / 255 - 1)[None, :, None]
  s = np.exp(log_scale)

  def cdf(y):
    return 1 / (1 + np.exp(-(y - loc) / s))

  upper = np.where(xs > 0.999, 1.0, cdf(xs + 1 / 255))
  lower = np.where(xs < -0.999, 0.0, cdf(xs - 1 / 255))
  w = np.exp(weights) / np.exp(weights).sum(-1, keepdims=True)
  with np.errstate(divide='ignore'):  # masses that underflow even in float64 become -inf
    return np.log(np.sum(w * (upper - lower), -1))


def test_discretized_logistic_sums_to_one():
  # Plain, mixtures, extreme locations (outside [-1, 1], on a bin edge) and extreme scales.
  loc = [[0.1], [-5.0], [5.0], [1.0], [-1 + 1 / 255], [0.3], [0.0],
         [-0.5, 0.2, 0.9], [3.0, -3.0, 0.0], [0.0, 0.5, -0.99]]
  log_scale = [[-3.0], [-1.0], [0.0], [-12.0], [-12.0], [-20.0], [4.0],
               [-4.0, -2.0, -6.0], [-9.0, 1.0, -3.0], [-12.0, 3.0, 0.0]]
  weights = [[0.0], [0.0], [0.0], [0.0], [0.0], [0.0], [0.0],
             [0.0, 1.0, -2.0], [5.0, -5.0, 0.0], [30.0, -30.0, 0.0]]
  k = 3
  pad = [(row + [row[-1]] * k)[:k] for row in loc]
  # Pad plain rows to K=3 with zero weight on the copies: logit -inf is avoided, -1e9 instead.
  weights = [row if len(row) == k else row + [-1e9] * (k - len(row)) for row in weights]
  log_scale = [(row + [row[-1]] * k)[:k] for row in log_scale]
  x = _column(np.arange(256), jnp.int32)
  log_p = jd.likelihood_log_prob('discretized_logistic', _dl_params(pad, log_scale, weights), x)
  assert log_p.shape == (len(pad), 256)
  assert np.isfinite(log_p).all()
  np.testing.assert_allclose(jnp.exp(jax.nn.logsumexp(log_p, axis=1)), 1.0, atol=2e-6)
  # Also K = 1 on its own, and uint8 data.
  single = {name: v[..., :1] for name, v in _dl_params(pad, log_scale, weights).items()}
  log_p1 = jd.likelihood_log_prob('discretized_logistic', single,
                                    x.astype(jnp.uint8))
  np.testing.assert_allclose(jnp.exp(jax.nn.logsumexp(log_p1, axis=1)), 1.0, atol=2e-6)


def test_discretized_logistic_matches_cdf_formula_and_is_stable():
  loc = [[0.1, -0.4], [0.7, 0.69], [-1.2, 2.0]]
  log_scale = [[-2.0, -4.0], [-3.0, 0.0], [-1.0, -5.0]]
  weights = [[0.3, -0.3], [0.0, 2.0], [1.0, 1.0]]
  values = np.arange(256)
  log_p = jd.likelihood_log_prob('discretized_logistic', _dl_params(loc, log_scale, weights),
                                   _column(values, jnp.int32))
  ref = _dl_reference(loc, log_scale, weights, values)
  ok = ref > -30  # where the float64 CDF difference itself is still accurate
  np.testing.assert_allclose(np.asarray(log_p)[ok], ref[ok], rtol=1e-4, atol=1e-5)
  # Deep tails, where the naive CDF difference underflows in float32 (PixelCNN++ falls back to
  # a midpoint density there): the log-space difference stays finite and matches float64.
  params = _dl_params([[0.0], [0.9]], [[-7.0], [-9.0]], [[0.0], [0.0]])
  x = _column([200, 3], jnp.int32)
  log_p32 = jd.likelihood_log_prob('discretized_logistic', params, x)
  with jax.enable_x64(True):
    params64 = {k: v.astype(jnp.float64) for k, v in params.items()}
    log_p64 = jd.likelihood_log_prob('discretized_logistic', params64, x)
  assert np.isfinite(log_p32).all() and np.all(np.asarray(log_p32) < -100)
  np.testing.assert_allclose(log_p32, log_p64, rtol=1e-5)
  grads = jax.jit(jax.grad(
      lambda p: likelihoods.likelihood_log_prob('discretized_logistic', p, x).sum()))(params)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_discretized_logistic_mean_and_sample():
  loc = [[0.1, -0.6], [1.4, 0.0], [-0.98, -0.97]]
  log_scale = [[-2.0, -3.0], [-1.0, 0.5], [-4.0, -4.0]]
  weights = [[0.5, -0.5], [2.0, 0.0], [0.0, 0.0]]
  params = _dl_params(loc, log_scale, weights)
  probs = np.exp(_dl_reference(loc, log_scale, weights, np.arange(256)))  # [M, 256]
  exact = probs @ (np.arange(256) / 255)
  mean = jd.likelihood_mean('discretized_logistic', params)
  np.testing.assert_allclose(np.ravel(mean), exact, atol=1 / 510)
  n = 30_000
  tiled = {k: jnp.broadcast_to(v[:, 0], (len(loc), n, 1, 1, 2)) for k, v in params.items()}
  samples = jd.likelihood_sample('discretized_logistic', tiled, jax.random.key(13))
  assert samples.dtype == jnp.int32 and samples.shape == (len(loc), n, 1, 1)
  samples = np.asarray(samples).reshape(len(loc), n)
  assert samples.min() >= 0 and samples.max() <= 255
  for m in range(len(loc)):  # Kolmogorov-Smirnov distance to the exact CDF
    emp = np.cumsum(np.bincount(samples[m], minlength=256)) / n
    assert np.max(np.abs(emp - np.cumsum(probs[m]))) < 0.015


def _coupled_params(loc, log_scale, weights, coeffs):
  """Coupled-form params for M pixels, each the lone pixel of an example: from tables
  loc, log_scale, coeffs [M, 3, K] and weights [M, K] -> [M, 1, 1, 3, K] and [M, 1, 1, K]."""
  col = lambda a, n: jnp.asarray(a, jnp.float32).reshape((len(a), 1, 1) + (3, -1)[-n:])
  return {'loc': col(loc, 2), 'log_scale': col(log_scale, 2), 'logit_weights': col(weights, 1),
          'coeffs': col(coeffs, 2)}


def _coupled_reference(loc, log_scale, weights, coeffs, x):
  """PixelCNN++'s coupled log-mass straight from the CDF, float64: [M] for x [M, 3]."""
  loc, log_scale, coeffs = (np.asarray(a, np.float64) for a in (loc, log_scale, coeffs))
  w = np.exp(weights) / np.exp(weights).sum(-1, keepdims=True)  # [M, K]
  x = np.asarray(x, np.int64)
  v = (2 * x - 255) / 255  # [M, 3] bin centres on [-1, 1]
  mu = [loc[:, 0], loc[:, 1] + coeffs[:, 0] * v[:, :1],
        loc[:, 2] + coeffs[:, 1] * v[:, :1] + coeffs[:, 2] * v[:, 1:2]]  # 3 x [M, K]
  mass = np.ones_like(w)
  for c in range(3):
    cdf = lambda y, c=c: 1 / (1 + np.exp(-(y - mu[c]) / np.exp(log_scale[:, c])))
    xc = x[:, c:c + 1]
    upper = np.where(xc == 255, 1.0, cdf(v[:, c:c + 1] + 1 / 255))  # the edge bins take the tails
    lower = np.where(xc == 0, 0.0, cdf(v[:, c:c + 1] - 1 / 255))
    mass = mass * (upper - lower)
  return np.log(np.sum(w * mass, -1))


def _random_coupled_tables(seed, m, k):
  rng = np.random.default_rng(seed)
  return (rng.uniform(-1.2, 1.2, (m, 3, k)), rng.uniform(-5.0, -1.0, (m, 3, k)),
          rng.normal(size=(m, k)), np.tanh(rng.normal(size=(m, 3, k))))


def test_bin_edges_are_correctly_rounded_in_float32():
  v = np.arange(256)
  lower, upper = (np.asarray(e) for e in jax.jit(likelihoods._bin_edges, static_argnums=1)(
      jnp.asarray(v, jnp.int32), jnp.float32))
  for sign, edge in ((-1, lower), (1, upper)):
    exact = (2.0 * v + sign - 255.0) / 255.0  # float64
    new = np.abs(edge.astype(np.float64) - exact)
    # The former form, (2v +- 1) (1/255) - 1, in float32 arithmetic (IEEE, as XLA's).
    old_form = (np.float32(2) * v.astype(np.float32) + np.float32(sign)) * np.float32(1 / 255)
    old = np.abs((old_form - np.float32(1)).astype(np.float64) - exact)
    assert np.all(new <= 0.5 * np.spacing(np.abs(exact).astype(np.float32)))  # one rounding
    # Never worse; 2x (lower) and 3x (upper) smaller at the worst edge, 6x on average.
    assert np.all(new <= old) and old.max() > 1.9 * new.max() and old.mean() > 4 * new.mean()
  assert lower[128] == upper[127] == 0.0  # the middle edge, where the former form erred most
  # Every numerator the edges and bin centres use: the correctly rounded quotient.
  c = np.arange(-256, 257)
  np.testing.assert_array_equal(jax.jit(likelihoods._div255)(jnp.asarray(c, jnp.float32)),
                                c.astype(np.float32) / np.float32(255))


@pytest.mark.slow
def test_coupled_logistic_sums_to_one_over_every_pixel_value():
  # 2 pixels with random parameters, 3 components, the coefficients through tanh; the second
  # also with a component located far outside [-1, 1] (its mass in the edge bins), a
  # near-flat one and coefficients near +-1. 2 x 256^3 log-masses, 256 chunks of 65536.
  loc, log_scale, weights, coeffs = _random_coupled_tables(0, 2, 3)
  loc[1, :, 0], log_scale[1, :, 2], coeffs[1] = [4.0, -3.0, 2.0], 2.0, np.sign(coeffs[1]) * 0.999
  params = _coupled_params(loc, log_scale, weights, coeffs)  # [2, 1, 1, ...]
  gb = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing='ij'), -1).reshape(-1, 2)
  gb = jnp.asarray(gb, jnp.int32)[:, None, None, :]  # [65536, 1, 1, 2]: every (G, B)

  @jax.jit
  def total_log_mass():
    def for_red(r):  # log of the mass of every (r, G, B), per pixel: [2]
      x = jnp.concatenate([jnp.full_like(gb[..., :1], r), gb], -1)  # [65536, 1, 1, 3]
      lp = likelihoods.likelihood_log_prob(
          'discretized_logistic', jax.tree.map(lambda a: a[:, None], params), x)  # [2, 65536]
      return jax.nn.logsumexp(lp, axis=1)
    return jax.nn.logsumexp(jax.lax.map(for_red, jnp.arange(256)), axis=0)  # [2]

  np.testing.assert_allclose(np.exp(total_log_mass()), 1.0, atol=1e-5)


def test_coupled_logistic_matches_the_cdf_formula_with_edge_tails():
  loc, log_scale, weights, coeffs = _random_coupled_tables(1, 6, 2)
  loc[0, :, 0] = [-5.0, 5.0, -5.0]  # component 0 of pixel 0 sits in the edge bins' tails
  x = np.random.default_rng(2).integers(0, 256, (6, 3))
  x[0], x[1] = [0, 255, 0], [255, 0, 128]  # edge bins: the whole tail beyond them
  ref = _coupled_reference(loc, log_scale, weights, coeffs, x)
  log_p = jd.likelihood_log_prob('discretized_logistic',
                                 _coupled_params(loc, log_scale, weights, coeffs),
                                 jnp.asarray(x, jnp.int32)[:, None, None, :])
  assert np.isfinite(log_p).all()  # also where the float64 CDF difference underflows
  ok = ref > -40  # where that difference itself is still accurate
  np.testing.assert_allclose(np.asarray(log_p)[ok], ref[ok], rtol=1e-5, atol=1e-5)
  assert ok[:2].all() and ref[0] > -1.0  # the tails hold most of pixel 0's mass


def test_coupled_logistic_equals_the_per_sub_pixel_form_where_they_coincide():
  # One component and zero coefficients: three independent discretized logistics.
  loc, log_scale, _, _ = _random_coupled_tables(3, 5, 1)
  weights, coeffs = np.zeros((5, 1)), np.zeros((5, 3, 1))
  x = jnp.asarray(np.random.default_rng(4).integers(0, 256, (5, 1, 1, 3)), jnp.int32)
  x = x.at[0].set(jnp.array([0, 255, 7]))
  coupled = _coupled_params(loc, log_scale, weights, coeffs)
  plain = {'loc': coupled['loc'], 'log_scale': coupled['log_scale'],
           'logit_weights': jnp.zeros_like(coupled['loc'])}  # [M, 1, 1, 3, 1]
  np.testing.assert_allclose(jd.likelihood_log_prob('discretized_logistic', coupled, x),
                             jd.likelihood_log_prob('discretized_logistic', plain, x), rtol=1e-6)
  np.testing.assert_allclose(jd.likelihood_mean('discretized_logistic', coupled),
                             jd.likelihood_mean('discretized_logistic', plain), atol=1e-6)
  with pytest.raises(ValueError, match='3 channels'):
    jd.likelihood_log_prob('discretized_logistic', coupled, x[..., :1])


def test_coupled_logistic_sample_frequencies_and_mean_agree_with_the_pmf():
  # Small scales (about a bin) and strong coupling: the mass sits on a few hundred values, so
  # the draws' frequencies can be checked against the pmf value by value.
  loc = [[[-0.5, 0.3], [0.1, -0.2], [0.4, 0.0]]]
  log_scale = [[[-5.0, -4.5], [-5.5, -5.0], [-4.8, -5.2]]]
  weights, coeffs = [[0.3, -0.2]], [[[0.8, -0.6], [-0.5, 0.7], [0.6, 0.9]]]
  params = _coupled_params(loc, log_scale, weights, coeffs)
  n = 200_000
  tiled = jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape[1:]), params)
  samples = jd.likelihood_sample('discretized_logistic', tiled, jax.random.key(21))
  assert samples.dtype == jnp.int32 and samples.shape == (n, 1, 1, 3)
  s = np.asarray(samples).reshape(n, 3)
  codes, counts = np.unique(s @ np.array([65536, 256, 1]), return_counts=True)
  values = np.stack([codes // 65536, codes // 256 % 256, codes % 256], -1)  # [U, 3]
  one = jax.tree.map(lambda a: a[:1], params)
  probs = np.exp(jd.likelihood_log_prob(
      'discretized_logistic', jax.tree.map(lambda a: a[None], one),
      jnp.asarray(values, jnp.int32)[:, None, None, :]))[0]  # [U]
  assert probs.sum() > 0.99  # the draws cover the support but for the logistic's far tails
  tv = 0.5 * (np.abs(counts / n - probs).sum() + (1.0 - probs.sum()))
  assert tv < 0.04, tv  # about 0.02 from the sampling noise alone
  mean = np.asarray(jd.likelihood_mean('discretized_logistic', one)).reshape(3)
  np.testing.assert_allclose(mean, (values * probs[:, None]).sum(0) / 255, atol=0.01)


def test_bernoulli_and_gaussian_mean_and_sample():
  logits = jnp.array([-3.0, 0.0, 2.0]).reshape(1, 1, 1, 3)
  np.testing.assert_allclose(jd.likelihood_mean('bernoulli', {'logits': logits}),
                             jax.nn.sigmoid(logits))
  tiled = {'logits': jnp.broadcast_to(logits, (20_000, 1, 1, 3))}
  samples = jd.likelihood_sample('bernoulli', tiled, jax.random.key(14))
  assert set(np.unique(samples)) <= {0.0, 1.0}
  np.testing.assert_allclose(samples.mean(0).ravel(), jax.nn.sigmoid(logits).ravel(), atol=0.02)
  params = {'loc': jnp.array([-0.5, 0.4, 1.5]).reshape(1, 1, 1, 3), 'log_scale': jnp.array(-3.0)}
  np.testing.assert_allclose(jd.likelihood_mean('gaussian', params).ravel(), [0.0, 0.4, 1.0])
  samples = jd.likelihood_sample(
      'gaussian', {'loc': jnp.broadcast_to(params['loc'], (5000, 1, 1, 3)),
                   'log_scale': params['log_scale']}, jax.random.key(15))
  assert samples.min() >= 0 and samples.max() <= 1
  np.testing.assert_allclose(samples[..., 1].mean(), 0.4, atol=0.005)


def test_likelihood_names_and_bits_per_dim():
  assert likelihoods.LIKELIHOODS == (
      'bernoulli', 'continuous_bernoulli', 'gaussian', 'discretized_logistic')
  with pytest.raises(ValueError):
    jd.likelihood_log_prob('poisson', {}, jnp.zeros((1, 1, 1, 1)))
  nats = jnp.array([3072 * math.log(2) * 3.0, 0.0])
  np.testing.assert_allclose(likelihoods.nats_to_bits_per_dim(nats, 3072), [3.0, 0.0], rtol=1e-6)
