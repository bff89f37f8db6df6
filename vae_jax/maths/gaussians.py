"""Gaussian posteriors and priors in pure jnp: reparameterised samples, log-densities,
entropies, KLs (to N(0, I) and between diagonals), the diagonal mixture, and the standard normal
noise of the model contract's two key conventions; stable in float32.

Posteriors q(h|x) = N(mean, Sigma) are parameter dicts made by the encoder:
  diagonal: {'mean': [B, D], 'log_scale': [B, D]}     Sigma = diag(exp(log_scale))^2
  full:     {'mean': [B, D], 'scale_tril': [B, D, D]}  Sigma = L L^T, L lower, diag(L) > 0
The covariance part may drop the batch axis ([D] or [D, D]) when it is shared across the batch
(q(h|x) = N(mu(x), Sigma)); it broadcasts. Results are per example, [B], or [..., B] where h
carries leading sample axes. All values are in nats.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

_LOG_2PI = math.log(2.0 * math.pi)



def _is_full(post):
  if 'scale_tril' in post:
    return True
  if 'log_scale' in post:
    return False
  raise ValueError(f"posterior needs 'scale_tril' or 'log_scale', got keys {sorted(post)}")


def _batch_shape(post):
  """The per-example shape, [B], of a posterior whose covariance may be shared."""
  cov = post['scale_tril'] if _is_full(post) else post['log_scale']
  extra = 2 if _is_full(post) else 1
  return jnp.broadcast_shapes(post['mean'].shape[:-1], cov.shape[:-extra])


def _log_diag(scale_tril):
  """log of the Cholesky diagonal: [..., D]."""
  return jnp.log(jnp.diagonal(scale_tril, axis1=-2, axis2=-1))


def _half_log_det(post):
  """0.5 log det Sigma = log det L: [...] (the posterior's batch shape, or none if shared)."""
  if _is_full(post):
    return jnp.sum(_log_diag(post['scale_tril']), axis=-1)
  return jnp.sum(post['log_scale'], axis=-1)


def _samples_as_columns(diff, batch_ndim):
  """[*S, *Bt, D] -> ([*Bt, D, prod S], S): the sample axes S become trailing columns.

  Bt are the trailing batch_ndim axes that a Cholesky factor [*Bt, D, D] carries, so one
  triangular solve or product per factor handles every sample of it: L is never broadcast
  over the samples (K B D^2 floats for [K, B, D] h).
  """
  lead = diff.shape[:diff.ndim - 1 - batch_ndim]
  cols = jnp.moveaxis(diff, tuple(range(len(lead))), tuple(range(-len(lead), 0)))
  return cols.reshape(cols.shape[:batch_ndim + 1] + (-1,)), lead


def _columns_as_samples(cols, lead):
  """[*Bt, D, prod S] -> [*S, *Bt, D]: the inverse of _samples_as_columns."""
  out = cols.reshape(cols.shape[:-1] + lead)
  n = len(lead)
  return jnp.moveaxis(out, tuple(range(-n, 0)), tuple(range(n)))


def _apply_tril(scale_tril, vectors, solve):
  """L v (or L^{-1} v with solve) for v [..., *Bt, D] and L [*Bt, D, D]: [..., *Bt, D]."""
  batch_ndim = scale_tril.ndim - 2
  # L broadcasts over the batch axes v has and L lacks a size for (not over samples).
  batch = jnp.broadcast_shapes(scale_tril.shape[:-2], vectors.shape[-1 - batch_ndim:-1])
  scale_tril = jnp.broadcast_to(scale_tril, batch + scale_tril.shape[-2:])
  vectors = jnp.broadcast_to(vectors, vectors.shape[:vectors.ndim - 1 - batch_ndim] + batch
                             + vectors.shape[-1:])
  cols, lead = _samples_as_columns(vectors, batch_ndim)  # [*Bt, D, S]
  if solve:
    out = jax.lax.linalg.triangular_solve(scale_tril, cols, left_side=True, lower=True)
  else:
    out = jnp.matmul(jnp.tril(scale_tril), cols)
  return _columns_as_samples(out, lead)  # [..., *Bt, D]


def gaussian_rsample(post, eps):
  """Reparameterized sample h = mean + L eps.

  Args:
    post: posterior dict (diagonal or full).
    eps: standard normal noise, [..., B, D] (optional leading sample axes).

  Returns:
    h: [..., B, D], differentiable in the posterior parameters.
  """
  if _is_full(post):
    # One product per factor with the samples as its columns. Only L's lower triangle is
    # read, as in the log-density and KL.
    return post['mean'] + _apply_tril(post['scale_tril'], eps, solve=False)
  return post['mean'] + jnp.exp(post['log_scale']) * eps


def gaussian_log_prob(post, h):
  """log N(h; mean, Sigma): [..., B] for h of shape [..., B, D]."""
  diff = h - post['mean']  # [..., B, D]
  d = diff.shape[-1]
  if _is_full(post):
    # z = L^{-1} (h - mean), so (h - mean)^T Sigma^{-1} (h - mean) = |z|^2; no inverse formed.
    # The samples are the solve's right-hand-side columns (see _samples_as_columns).
    z = _apply_tril(post['scale_tril'], diff, solve=True)
  else:
    z = diff * jnp.exp(-post['log_scale'])
  return -0.5 * jnp.sum(jnp.square(z), axis=-1) - _half_log_det(post) - 0.5 * d * _LOG_2PI


def gaussian_entropy(post):
  """H[q] = 0.5 log det(2 pi e Sigma): [B]."""
  d = post['mean'].shape[-1]
  ent = _half_log_det(post) + 0.5 * d * (1.0 + _LOG_2PI)
  return jnp.broadcast_to(ent, _batch_shape(post))


def gaussian_kl_to_standard_normal(post):
  """Analytic KL(N(mean, Sigma) || N(0, I)): [B].

  KL = 0.5 (tr Sigma + |mean|^2 - D - log det Sigma). The trace and log-determinant are taken
  per diagonal entry as exp(2 s) - 1 - 2 s with s = log L_ii (= expm1(2 s) - 2 s), which is >= 0
  term by term, so the sum cannot cancel to a negative value in float32.
  """
  if _is_full(post):
    scale_tril = post['scale_tril']
    log_diag = _log_diag(scale_tril)  # [..., D]
    off = jnp.tril(scale_tril, k=-1)
    off_sq = jnp.sum(jnp.square(off), axis=(-2, -1))  # strictly-lower part of tr(Sigma)
  else:
    log_diag = post['log_scale']
    off_sq = 0.0
  diag_terms = jnp.sum(jnp.expm1(2.0 * log_diag) - 2.0 * log_diag, axis=-1)
  mean_sq = jnp.sum(jnp.square(post['mean']), axis=-1)
  kl = 0.5 * (mean_sq + diag_terms + off_sq)
  return jnp.broadcast_to(kl, _batch_shape(post))


def gaussian_kl_units_to_standard_normal(post):
  """KL(q || N(0, I)) per latent unit of a diagonal posterior: [B, D], summing to the KL.

  0.5 (mean_d^2 + expm1(2 s_d) - 2 s_d), s_d = log_scale_d: each term is >= 0 in float32.
  A full-covariance KL is not a sum over units, so it has no such split.
  """
  if _is_full(post):
    raise ValueError('the KL of a full-covariance posterior is not a sum over latent units')
  s = post['log_scale']
  units = 0.5 * (jnp.square(post['mean']) + jnp.expm1(2.0 * s) - 2.0 * s)
  return jnp.broadcast_to(units, post['mean'].shape)


def diagonal_mixture_log_prob(components, h):
  """log (1/K) sum_k N(h; mean_k, diag(exp(log_scale_k))^2): [...] for h [..., D].

  components: {'mean': [K, D], 'log_scale': [K, D]}, the K equally weighted Gaussians (the
  VampPrior's q(h|u_k)). Each component's log-density is formed from h - mean_k directly (no
  expanded square, which cancels in float32 for small scales), then one log-sum-exp.
  """
  k = components['mean'].shape[0]
  log_p = gaussian_log_prob(components, h[..., None, :])  # [..., K]
  return jax.nn.logsumexp(log_p, axis=-1) - math.log(k)


def standard_normal_log_prob(h):
  """log N(h; 0, I): [...] for h of shape [..., D]."""
  return -0.5 * jnp.sum(jnp.square(h), axis=-1) - 0.5 * h.shape[-1] * _LOG_2PI


def scale_tril_from_raw(diag_raw, offdiag):
  """Builds a valid Cholesky factor L from unconstrained encoder outputs.

  The diagonal is exp(diag_raw), so diag_raw plays exactly the role of a diagonal posterior's
  log_scale (a full posterior with zero off-diagonal equals the diagonal one) and log L_ii is
  exact for the KL and log-densities.

  Args:
    diag_raw: [..., D], log of the diagonal of L.
    offdiag: [..., D (D - 1) / 2], strictly-lower entries in row-major order
      (numpy.tril_indices(D, -1)).

  Returns:
    scale_tril: [..., D, D].
  """
  d = diag_raw.shape[-1]
  if offdiag.shape[-1] != d * (d - 1) // 2:
    raise ValueError(f'offdiag needs {d * (d - 1) // 2} entries for D={d}, got {offdiag.shape}')
  rows, cols = np.tril_indices(d, -1)
  batch = jnp.broadcast_shapes(diag_raw.shape[:-1], offdiag.shape[:-1])
  dtype = jnp.result_type(diag_raw, offdiag)
  lower = jnp.zeros(batch + (d, d), dtype).at[..., rows, cols].set(offdiag)
  diag = jnp.exp(diag_raw)[..., :, None] * jnp.eye(d, dtype=dtype)
  return lower + diag


def diagonal_gaussian_kl_units(q, p):
  """KL(N(q_mean, diag q_scale^2) || N(p_mean, diag p_scale^2)) per unit: [..., U].

  0.5 ((dmu / sigma_p)^2 + expm1(2 r) - 2 r) with r = log sigma_q - log sigma_p: each term is
  >= 0 in float32, so the sum never cancels to a negative value.
  """
  r = q['log_scale'] - p['log_scale']
  d = (q['mean'] - p['mean']) * jnp.exp(-p['log_scale'])
  return 0.5 * (jnp.square(d) + jnp.expm1(2.0 * r) - 2.0 * r)


def standard_normal_noise(key, batch, dim, num_samples=None, sample_offset=0):
  """Standard normal eps of the contract's two key conventions.

  One key: [batch, dim] drawn in the global view (training). Keys [batch], one per example:
  [batch, dim] from fold_in(key_i, 0), or with num_samples [K, batch, dim] whose row k is
  sample sample_offset + k of each example, from fold_in(key_i, sample_offset + k) (evaluation).
  """
  if key.ndim == 0:
    return jax.random.normal(key, (batch, dim))  # [B, D]: the batch in the global view
  if num_samples is None:
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), (dim,)))(key)
  ks = sample_offset + jnp.arange(num_samples)
  draw = lambda k, s: jax.random.normal(jax.random.fold_in(k, s), (dim,))
  return jax.vmap(lambda s: jax.vmap(lambda k: draw(k, s))(key))(ks)  # [K, B, D]
