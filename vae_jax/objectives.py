"""The derived objective: per-example terms, their one reduction, the momentum-tracked loss.

Minimising KL(P_phi(X, h) || P_theta(X, h)) is, up to the data entropy, minimising the negative
ELBO per example:
  neg_elbo(x) = recon(x) + kl(x),  recon = -E_q log p(x|h),  kl = KL(q(h|x) || p(h)),
with q(h|x) Gaussian, p(h) = N(0, I), the KL analytic and E_q estimated with reparameterized
samples.
"""

import jax.numpy as jnp

from vae_jax import distributions


def elbo_terms(posterior, likelihood_params, x, likelihood):
  """Per-example terms of the negative ELBO, in nats.

  Args:
    posterior: Gaussian posterior dict (see distributions): mean [B, D] and log_scale or
      scale_tril.
    likelihood_params: parameters of p(x|h) at h ~ q(h|x), [B, ...]; with leading sample axes
      [S, B, ...] the reconstruction term averages over the S samples.
    x: data, [B, H, W, C].
    likelihood: one of distributions.LIKELIHOODS.

  Returns:
    dict of [B] arrays: recon (-E_q log p(x|h), Monte Carlo), kl (KL(q || N(0, I)), analytic)
    and neg_elbo = recon + kl.
  """
  log_px_h = distributions.likelihood_log_prob(likelihood, likelihood_params, x)  # [..., B]
  # A single sample in training; more samples only lower the estimator's variance.
  recon = -jnp.mean(log_px_h, axis=tuple(range(log_px_h.ndim - 1)))  # [B]
  kl = distributions.gaussian_kl_to_standard_normal(posterior)  # [B]
  return dict(recon=recon, kl=kl, neg_elbo=recon + kl)


def training_loss(terms, beta):
  """recon + beta * kl: [B]. beta = 1 is the derived negative ELBO; beta may be traced."""
  return terms['recon'] + beta * terms['kl']


def reduce_terms(per_example, weight, denominator):
  """The one place per-example terms become scalars: sum(weight * term) / denominator.

  Args:
    per_example: dict of [B] arrays.
    weight: [B] float mask (0 for padding examples), or None for all ones.
    denominator: the count to divide by. Inside a shard_map the trainer passes the global batch
      size, so the per-device results add up (psum) to the global mean; evaluation accumulates
      with the mask and divides by the number of real examples.

  Returns:
    dict of scalars with the same keys.
  """
  out = {}
  for name, term in per_example.items():
    total = jnp.sum(term) if weight is None else jnp.sum(weight.astype(term.dtype) * term)
    out[name] = total / denominator
  return out


def momentum_update(prev, batch_loss, gamma, first):
  """The momentum-tracked loss over mini-batches.

  L_0 = the first batch's loss; then L <- gamma L + (1 - gamma) L_batch. `first` may be a traced
  bool: jnp.where selects, so a placeholder (even NaN) in `prev` never leaks into L_0.
  """
  return jnp.where(first, batch_loss, gamma * prev + (1.0 - gamma) * batch_loss)
