"""The objective's terms, its one reduction, the momentum-tracked loss, and the derivation's
identities checked on a linear-Gaussian model where p(x) and p(h|x) are closed form."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import stats

from vae_jax.maths import gaussians, likelihoods, objectives

# Jitted: on a busy CPU, compiling each eager primitive separately dominates the test time.
elbo_terms = jax.jit(objectives.elbo_terms, static_argnums=3)
likelihood_log_prob = jax.jit(likelihoods.likelihood_log_prob, static_argnums=0)
kl_to_prior = jax.jit(gaussians.gaussian_kl_to_standard_normal)


def _normal(seed, shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _posterior(seed, batch, d):
  return {
      'mean': _normal(seed, (batch, d)),
      'scale_tril': np.asarray(gaussians.scale_tril_from_raw(
          0.3 * _normal(seed + 1, (batch, d)), 0.3 * _normal(seed + 2, (batch, d * (d - 1) // 2)))),
  }


def test_elbo_terms_compose_the_derived_objective():
  post = _posterior(0, batch=5, d=3)
  logits = _normal(3, (5, 4, 4, 1))
  x = (np.random.default_rng(4).uniform(size=(5, 4, 4, 1)) < 0.3).astype(np.float32)
  terms = elbo_terms(post, {'logits': logits}, x, 'bernoulli')
  assert all(v.shape == (5,) for v in terms.values())
  np.testing.assert_allclose(
      terms['recon'], -likelihood_log_prob('bernoulli', {'logits': logits}, x), rtol=1e-6)
  np.testing.assert_allclose(terms['kl'], kl_to_prior(post), rtol=1e-6)
  np.testing.assert_allclose(terms['neg_elbo'], terms['recon'] + terms['kl'], rtol=1e-6)
  # Several samples (a leading axis on the likelihood params): recon is their average.
  many = _normal(5, (3, 5, 4, 4, 1))
  terms = elbo_terms(post, {'logits': many}, x, 'bernoulli')
  per_sample = jnp.stack([likelihood_log_prob('bernoulli', {'logits': m}, x) for m in many])
  np.testing.assert_allclose(terms['recon'], -per_sample.mean(0), rtol=1e-6)


def _hparams(beta=1.0, warmup=0.0, free_bits=0.0):
  return {'beta': jnp.float32(beta), 'kl_warmup_steps': jnp.float32(warmup),
          'free_bits': jnp.float32(free_bits)}


MEANS = {'recon': jnp.float32(3.0), 'kl': jnp.float32(1.5),
         'kl_units': jnp.array([0.1, 1.2, 0.2], jnp.float32)}


def test_training_objective_weights_the_kl_by_a_traced_beta():
  loss = jax.jit(objectives.training_objective)
  np.testing.assert_allclose(loss(MEANS, _hparams(), 0), 4.5)  # beta 1: the negative ELBO
  np.testing.assert_allclose(loss(MEANS, _hparams(beta=0.25), 7), 3.375)
  # One compiled program serves every beta, and d loss / d beta = kl.
  np.testing.assert_allclose(loss(MEANS, _hparams(beta=4.0), 3), 9.0)
  assert loss._cache_size() == 1
  grad = jax.grad(lambda b: objectives.training_objective(MEANS, _hparams(beta=b), 0))(2.0)
  np.testing.assert_allclose(grad, 1.5)


def test_kl_warmup_weight_per_step():
  weight = jax.jit(objectives.kl_weight)
  got = [float(weight(2.0, 4.0, s)) for s in range(7)]
  np.testing.assert_allclose(got, [0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
  np.testing.assert_allclose([float(weight(2.0, 0.0, s)) for s in (0, 5)], [2.0, 2.0])  # off
  assert weight._cache_size() == 1  # the warm-up length is traced
  loss = objectives.training_objective(MEANS, _hparams(beta=1.0, warmup=10.0), 5)
  np.testing.assert_allclose(loss, 3.0 + 0.5 * 1.5)


def test_free_bits_floor_each_group_and_stop_its_gradient():
  # Per unit: units below the floor count as the floor and get no gradient.
  kl = jnp.array([0.1, 1.2, 0.2], jnp.float32)
  np.testing.assert_allclose(objectives.free_bits_kl(kl, 0.5), 0.5 + 1.2 + 0.5)
  np.testing.assert_allclose(jax.grad(objectives.free_bits_kl)(kl, 0.5), [0.0, 1.0, 0.0])
  np.testing.assert_allclose(objectives.free_bits_kl(kl, 0.0), 1.5)  # 0: the plain KL
  per_unit = objectives.training_objective(MEANS, _hparams(free_bits=0.5), 0, 'unit')
  np.testing.assert_allclose(per_unit, 3.0 + 2.2)
  total = objectives.training_objective(MEANS, _hparams(free_bits=2.0), 0, 'total')
  np.testing.assert_allclose(total, 3.0 + 2.0)  # the total KL 1.5 is floored at 2
  grad = jax.grad(lambda m: objectives.training_objective(m, _hparams(free_bits=2.0), 0))(
      MEANS)
  assert float(grad['kl']) == 0.0 and float(grad['recon']) == 1.0


def test_iwae_terms_are_a_stable_log_mean_exp():
  log_w = jnp.array([[-1000.0, 2.0], [-1001.0, 0.0]], jnp.float32)  # [K=2, B=2]
  want = -np.logaddexp(log_w[0], log_w[1]) + np.log(2.0)
  np.testing.assert_allclose(objectives.iwae_terms(log_w), want, rtol=1e-6)
  np.testing.assert_allclose(objectives.iwae_terms(log_w[:1]), -log_w[0])  # K = 1


def test_reduce_terms_mask_denominator_and_shards():
  terms = {'a': jnp.arange(8.0), 'b': jnp.arange(8.0) ** 2}
  full = objectives.reduce_terms(terms, jnp.ones(8), 8)
  np.testing.assert_allclose(full['a'], 3.5)
  np.testing.assert_allclose(full['b'], np.mean(np.arange(8.0) ** 2))
  unweighted = objectives.reduce_terms(terms, None, 8)
  np.testing.assert_allclose(unweighted['a'], 3.5)
  # Per-shard sums over the global batch size add up to the global mean (what psum sees).
  shards = [objectives.reduce_terms({k: v[i:i + 4] for k, v in terms.items()}, jnp.ones(4), 8)
            for i in (0, 4)]
  for k in terms:
    np.testing.assert_allclose(shards[0][k] + shards[1][k], full[k], rtol=1e-6)
  # A padded evaluation batch: the mask drops padding, the count of real examples divides.
  mask = jnp.array([1, 1, 1, 0, 0, 1, 0, 0], jnp.float32)
  masked = objectives.reduce_terms(terms, mask, mask.sum())
  np.testing.assert_allclose(masked['a'], (0 + 1 + 2 + 5) / 4)
  # Padding may hold garbage (even NaN-free huge values) without leaking in.
  terms_pad = {'a': terms['a'].at[3].set(1e30)}
  np.testing.assert_allclose(objectives.reduce_terms(terms_pad, mask, 4.0)['a'], 2.0)


def test_momentum_update_matches_a_hand_loop():
  gamma = 0.9
  losses = np.array([10.0, 8.0, 9.0, 4.0, 5.0, 6.5])

  def step(prev, inputs):
    i, loss = inputs
    new = objectives.momentum_update(prev, loss, gamma, i == 0)
    return new, new

  # The carry starts as NaN: the first step must ignore it.
  _, tracked = jax.jit(lambda ls: jax.lax.scan(step, jnp.float32(jnp.nan),
                                               (jnp.arange(len(ls)), ls)))(jnp.asarray(losses))
  expected, prev = [], None
  for i, loss in enumerate(losses):
    prev = loss if i == 0 else gamma * prev + (1 - gamma) * loss
    expected.append(prev)
  np.testing.assert_allclose(tracked, expected, rtol=1e-6)


# ------------------------------------------------------------------------------------------
# Linear-Gaussian model: p(h) = N(0, I_D), p(x|h) = N(W h + b, s^2 I_P). Then
#   p(x) = N(b, W W^T + s^2 I),  p(h|x) = N(mu, Sigma),
#   Sigma = (I + W^T W / s^2)^{-1},  mu = Sigma W^T (x - b) / s^2,
# and E_q log p(x|h) is closed form for Gaussian q, so every identity of the derivation holds
# exactly.

D, IMAGE = 3, (2, 3, 1)
P = math.prod(IMAGE)
LOG_S = math.log(0.5)


def _linear_gaussian(batch=4):
  rng = np.random.default_rng(0)
  w = rng.normal(size=(P, D))
  b = rng.normal(size=P) * 0.3
  h = rng.normal(size=(batch, D))
  x = h @ w.T + b + math.exp(LOG_S) * rng.normal(size=(batch, P))
  s2 = math.exp(2 * LOG_S)
  sigma = np.linalg.inv(np.eye(D) + w.T @ w / s2)
  mu = (x - b) @ w @ sigma / s2  # Sigma is symmetric
  with jax.enable_x64(True):
    log_px = np.asarray(jax.jit(stats.multivariate_normal.logpdf)(x, b, w @ w.T + s2 * np.eye(P)))
  return w, b, x, mu, sigma, log_px


def _decode(w, b, h):
  """Likelihood params for h [..., B, D]: loc [..., B, *IMAGE]."""
  loc = h @ w.T + b
  return {'loc': loc.reshape(h.shape[:-1] + IMAGE), 'log_scale': jnp.asarray(LOG_S, loc.dtype)}


def _expected_recon(w, b, x, mean, cov):
  """-E_q log N(x; W h + b, s^2 I) for q = N(mean, cov), closed form: [B]."""
  s2 = math.exp(2 * LOG_S)
  resid = np.sum((x - mean @ w.T - b) ** 2, -1)
  trace = np.trace(w @ cov @ w.T, axis1=-2, axis2=-1)
  return 0.5 * (resid + trace) / s2 + P * LOG_S + 0.5 * P * math.log(2 * math.pi)


def _gaussian_kl(m1, c1, m2, c2):
  """KL(N(m1, c1) || N(m2, c2)), float64: [B]."""
  c2_inv = np.linalg.inv(c2)
  diff = m2 - m1
  return 0.5 * (np.trace(c2_inv @ c1, axis1=-2, axis2=-1)
                + np.einsum('bi,bij,bj->b', diff, c2_inv, diff) - D
                + np.linalg.slogdet(c2)[1] - np.linalg.slogdet(c1)[1])


def _other_posteriors(mu, batch):
  """A full and a diagonal q that differ from the exact posterior."""
  rng = np.random.default_rng(1)
  full = {'mean': mu + 0.3 * rng.normal(size=mu.shape),
          'scale_tril': np.asarray(gaussians.scale_tril_from_raw(
              jnp.asarray(0.4 * rng.normal(size=(batch, D))),
              jnp.asarray(0.4 * rng.normal(size=(batch, D * (D - 1) // 2)))))}
  diag = {'mean': mu - 0.2, 'log_scale': -0.5 + 0.3 * rng.normal(size=(batch, D))}
  return full, diag


def _cov_of(post):
  if 'scale_tril' in post:
    scale_tril = np.asarray(post['scale_tril'])
    return scale_tril @ np.swapaxes(scale_tril, -1, -2)
  return np.exp(2 * np.asarray(post['log_scale']))[..., None] * np.eye(D)


def test_linear_gaussian_identities_exact():
  """log p(x) = ELBO(q) + KL(q || p(h|x)) for any Gaussian q, with equality at q = p(h|x)."""
  w, b, x, mu, sigma, log_px = _linear_gaussian()
  batch = x.shape[0]
  exact = {'mean': mu, 'scale_tril': np.linalg.cholesky(sigma)}  # shared across the batch
  full, diag = _other_posteriors(mu, batch)
  with jax.enable_x64(True):
    for post in (exact, full, diag):
      cov = np.broadcast_to(_cov_of(post), (batch, D, D))
      kl_prior = np.asarray(kl_to_prior(post))
      elbo = -(_expected_recon(w, b, x, np.asarray(post['mean']), cov) + kl_prior)
      gap = _gaussian_kl(np.asarray(post['mean']), cov, mu, np.broadcast_to(sigma, cov.shape))
      np.testing.assert_allclose(log_px - elbo, gap, rtol=1e-8, atol=1e-8)
    # At the exact posterior log p(x|h) + log p(h) - log q(h) = log p(x) for every h, not only
    # on average: a check of the log-densities themselves, sample by sample.
    @jax.jit
    def log_joint_over_q(post, eps):
      h = gaussians.gaussian_rsample(post, eps)
      return (likelihoods.likelihood_log_prob('gaussian', _decode(w, b, h), x.reshape(-1, *IMAGE))
              + gaussians.standard_normal_log_prob(h) - gaussians.gaussian_log_prob(post, h))

    eps = np.random.default_rng(2).normal(size=(16, batch, D))
    np.testing.assert_allclose(
        log_joint_over_q(exact, eps), np.broadcast_to(log_px, (16, batch)), rtol=1e-9)


def test_linear_gaussian_elbo_terms_by_monte_carlo():
  """elbo_terms (float32, reparameterized samples) estimates -ELBO; at q = p(h|x) it is -log p(x),
  elsewhere -log p(x) + KL(q || p(h|x))."""
  w, b, x, mu, sigma, log_px = _linear_gaussian()
  batch = x.shape[0]
  exact = {'mean': mu, 'scale_tril': np.linalg.cholesky(sigma)}
  full, diag = _other_posteriors(mu, batch)
  x_img = jnp.asarray(x, jnp.float32).reshape(-1, *IMAGE)
  num_samples = 20_000
  eps = _normal(1, (num_samples, batch, D))
  w32, b32 = jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)

  @jax.jit
  def estimate(post):
    h = gaussians.gaussian_rsample(post, eps)  # [S, B, D]
    params = _decode(w32, b32, h)
    per_sample = -likelihoods.likelihood_log_prob('gaussian', params, x_img)  # [S, B]
    return objectives.elbo_terms(post, params, x_img, 'gaussian'), per_sample.std(0)

  for post in (exact, full, diag):
    post32 = {k: jnp.asarray(v, jnp.float32) for k, v in post.items()}
    terms, sd = estimate(post32)
    cov = np.broadcast_to(_cov_of(post), (batch, D, D))
    gap = _gaussian_kl(np.asarray(post['mean']), cov, mu, np.broadcast_to(sigma, cov.shape))
    se = np.asarray(sd) / math.sqrt(num_samples)
    error = np.asarray(terms['neg_elbo'], np.float64) - (-log_px + gap)
    assert np.all(np.abs(error) < 5 * se + 1e-3), (error, se)
