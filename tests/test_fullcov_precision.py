"""The full-covariance Gaussian log-density keeps float32-level accuracy on ill-conditioned
covariances (condition numbers 1e11..1e14), against a float64 computation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from vae_jax.maths import gaussians

K, B = 64, 4


def _scale_tril(rng, d, log10_min):
  """L [B, D, D]: a diagonal spanning 10^log10_min..1 (both ends present), unit-lower random
  off-diagonals scaled by their column's diagonal. cond(L L^T) is about 10^(-2 log10_min)."""
  unit = np.tril(rng.normal(0.0, 0.5 / math.sqrt(d), (B, d, d)), -1) + np.eye(d)
  diag = 10.0 ** rng.uniform(log10_min, 0.0, (B, d))
  diag[:, 0], diag[:, 1] = 1.0, 10.0 ** log10_min
  return (unit * diag[:, None, :]).astype(np.float32)


def _log_prob_float64(mean, scale_tril, h):
  """log N(h; mean, L L^T) in float64 from the (float32) inputs: [K, B]."""
  mean, scale_tril, h = (np.asarray(a, np.float64) for a in (mean, scale_tril, h))
  d = mean.shape[-1]
  out = np.empty(h.shape[:-1])
  for b in range(scale_tril.shape[0]):
    z = scipy.linalg.solve_triangular(scale_tril[b], (h[:, b] - mean[b]).T, lower=True)
    out[:, b] = (-0.5 * np.sum(z * z, axis=0) - np.sum(np.log(np.diag(scale_tril[b])))
                 - 0.5 * d * math.log(2 * math.pi))
  return out


@jax.jit
def _float32_level(mean, scale_tril, h):
  """The straightforward float32 computation (the formulation of c7f3982): one triangular
  solve per sample vector, L broadcast over the samples. Its error is what float32 inputs and
  arithmetic cost on these covariances (mostly the rounding of h - mean, amplified by L^-1)."""
  diff = h - mean  # [K, B, D]
  tril = jnp.broadcast_to(scale_tril, diff.shape[:-1] + scale_tril.shape[-2:])
  z = jax.lax.linalg.triangular_solve(tril, diff[..., None], left_side=True, lower=True)[..., 0]
  log_det = jnp.sum(jnp.log(jnp.diagonal(scale_tril, axis1=-2, axis2=-1)), axis=-1)
  return -0.5 * jnp.sum(z * z, axis=-1) - log_det - 0.5 * diff.shape[-1] * math.log(2 * math.pi)


@pytest.mark.parametrize('d', [20, 64])
def test_full_covariance_log_prob_is_float32_accurate_when_ill_conditioned(d):
  rng = np.random.default_rng(d)
  log_prob = jax.jit(gaussians.gaussian_log_prob)
  for log10_min in (-5.5, -6.0, -6.5, -7.0):  # cond(Sigma) about 1e11, 1e12, 1e13, 1e14
    scale_tril = _scale_tril(rng, d, log10_min)
    mean = rng.normal(size=(B, d)).astype(np.float32)
    # Samples of the posterior itself, as the estimator evaluates them: h = mean + L eps.
    eps = rng.normal(size=(K, B, d))
    h = (mean + np.einsum('bij,kbj->kbi', scale_tril.astype(np.float64), eps)).astype(np.float32)
    want = _log_prob_float64(mean, scale_tril, h)  # [K, B]
    got = log_prob({'mean': mean, 'scale_tril': scale_tril}, h)
    level = np.max(np.abs(np.asarray(_float32_level(mean, scale_tril, h)) - want))
    err = np.max(np.abs(np.asarray(got) - want))
    # Within twice the float32 formulation's own error (tenths of a nat at 1e14 here), plus a
    # floor of 1e-3 nats for where that error happens to be tiny.
    assert err <= 2.0 * level + 1e-3, (d, log10_min, err, level)
