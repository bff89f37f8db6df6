"""The derived objective: per-example terms, their one reduction, the momentum-tracked loss.

Minimising KL(P_phi(X, h) || P_theta(X, h)) is, up to the data entropy, minimising the negative
ELBO per example:
  neg_elbo(x) = recon(x) + kl(x),  recon = -E_q log p(x|h),  kl = KL(q(h|x) || p(h)),
with q(h|x) Gaussian, p(h) = N(0, I), the KL analytic and E_q estimated with reparameterized
samples.
"""

import jax
import jax.numpy as jnp

from vae_jax.maths import gaussians, likelihoods


def elbo_terms(posterior, likelihood_params, x, likelihood):
  """Per-example terms of the negative ELBO, in nats.

  Args:
    posterior: Gaussian posterior dict (see maths/gaussians.py): mean [B, D] and log_scale or
      scale_tril.
    likelihood_params: parameters of p(x|h) at h ~ q(h|x), [B, ...]; with leading sample axes
      [S, B, ...] the reconstruction term averages over the S samples.
    x: data, [B, H, W, C].
    likelihood: one of likelihoods.LIKELIHOODS.

  Returns:
    dict of [B] arrays: recon (-E_q log p(x|h), Monte Carlo), kl (KL(q || N(0, I)), analytic)
    and neg_elbo = recon + kl; for a diagonal posterior also kl_units [B, D], the KL of each
    latent unit (free bits per unit floors them).
  """
  log_px_h = likelihoods.likelihood_log_prob(likelihood, likelihood_params, x)  # [..., B]
  # A single sample in training; more samples only lower the estimator's variance.
  recon = -jnp.mean(log_px_h, axis=tuple(range(log_px_h.ndim - 1)))  # [B]
  kl = gaussians.gaussian_kl_to_standard_normal(posterior)  # [B]
  terms = dict(recon=recon, kl=kl, neg_elbo=recon + kl)
  if 'log_scale' in posterior:
    terms['kl_units'] = gaussians.gaussian_kl_units_to_standard_normal(posterior)  # [B, D]
  return terms


def kl_weight(beta, warmup_steps, step):
  """The KL's weight at `step`: beta * min(1, step / warmup_steps) (KL warm-up).

  The weight ramps linearly from 0 at step 0 to beta at step warmup_steps; warmup_steps <= 0
  turns the ramp off. All three may be traced (a population can vmap them).
  """
  ramp = jnp.minimum(1.0, step / jnp.maximum(warmup_steps, 1.0))
  return beta * jnp.where(warmup_steps > 0, ramp, 1.0)


def free_bits_kl(kl_means, floor):
  """The KL term under free bits (Kingma et al. 2016): sum of max(floor, KL) over groups.

  Args:
    kl_means: batch-mean KL per group: a scalar (the total KL: one group) or [U] (per latent
      unit). Each group whose batch-mean KL is below the floor contributes the floor, so it
      gets no gradient pushing its KL lower.
    floor: nats per group (traced); 0 leaves the KL unchanged (it is never negative).

  Returns:
    a scalar.
  """
  return jnp.sum(jnp.maximum(kl_means, floor))


def iwae_terms(log_weights):
  """The importance-weighted bound (Burda et al. 2016) per example: [K, B] -> [B].

  -log (1/K) sum_k exp(log_w_k), by a stable log-sum-exp; with K = 1 it is the single-sample
  negative ELBO log p(x|h) + log p(h) - log q(h|x) (its KL estimated by Monte Carlo).
  """
  k = log_weights.shape[0]
  return -(jax.nn.logsumexp(log_weights, axis=0) - jnp.log(float(k)))


def dreg_iwae_terms(log_w_theta, log_w_phi):
  """iwae_terms' value with the doubly reparameterised gradient (DReG; Tucker et al. 2019).

  Args:
    log_w_theta: [K, B] log weights whose gradient reaches only the decoder's and prior's
      parameters theta.
    log_w_phi: [K, B] the same values, whose gradient reaches the encoder's parameters phi only
      along the sample path h(phi, eps) (q's density at h taken with phi stopped); see the
      model contract's `dreg_log_weights`.

  Returns:
    [B], equal to iwae_terms(log_w_theta). Its gradient, with w~ = softmax_k(log w) held
    constant: theta: -sum_k w~_k d log w_k (the IWAE gradient itself); phi: -sum_k w~_k^2
    d log w_k / dh dh / dphi. The score term of the reparameterised estimator, whose variance
    does not fall with K, is gone and the estimate stays unbiased, so the encoder's
    signal-to-noise ratio no longer falls as K grows.
  """
  w = jax.lax.stop_gradient(jax.nn.softmax(log_w_theta, axis=0))  # [K, B], sums to 1 over K
  surrogate = jnp.sum(w * log_w_theta + jnp.square(w) * log_w_phi, axis=0)  # [B]
  # The surrogate's gradient, iwae_terms' value: the surrogate minus itself stopped is 0.
  value = iwae_terms(jax.lax.stop_gradient(log_w_theta))
  return value - (surrogate - jax.lax.stop_gradient(surrogate))


def training_objective(means, hparams, step, free_bits_per='total'):
  """The scalar loss the optimizer minimises, from the batch means of the terms.

  mean recon + kl_weight(beta, kl_warmup_steps, step) * KL, where KL is the batch-mean KL
  under free bits (per latent unit with free_bits_per='unit', which reads 'kl_units' [U]; per
  stochastic group with free_bits_per='group', which reads every 'kl/<group>' scalar).
  With an 'iwae' term present (the importance-weighted objective) the loss is its mean: the
  bound itself, not reweighted. The true neg_elbo is always reported apart from this loss.
  """
  if 'iwae' in means:
    return means['iwae']
  if free_bits_per == 'unit':
    if 'kl_units' not in means:
      raise ValueError("free_bits_per='unit' needs the model's 'kl_units' terms [B, U], and "
                       'its terms have none: a family that declares Capabilities.kl_units must '
                       'return them (models/contract.py).')
    kl = free_bits_kl(means['kl_units'], hparams['free_bits'])
  elif free_bits_per == 'group':
    groups = group_kl_means(means)
    if groups is None:
      raise ValueError("free_bits_per='group' needs the model's 'kl/<group>' terms (a "
                       'hierarchical model); this model has none.')
    kl = free_bits_kl(groups, hparams['free_bits'])
  else:
    kl = free_bits_kl(means['kl'], hparams['free_bits'])
  return means['recon'] + kl_weight(hparams['beta'], hparams['kl_warmup_steps'], step) * kl


def group_kl_means(means):
  """The 'kl/<group>' batch means stacked, [G] in the groups' order, or None if there are none."""
  names = sorted((k for k in means if k.startswith('kl/')), key=lambda k: int(k[3:]))
  return jnp.stack([means[k] for k in names]) if names else None


def reduce_terms(per_example, weight, denominator):
  """The one place per-example terms become scalars: sum(weight * term) / denominator.

  Args:
    per_example: dict of [B] arrays (or [B, ...]: reduced over the batch axis only).
    weight: [B] float mask (0 for padding examples), or None for all ones.
    denominator: the count to divide by. Inside a shard_map the trainer passes the global batch
      size, so the per-device results add up (psum) to the global mean; evaluation accumulates
      with the mask and divides by the number of real examples.

  Returns:
    dict of scalars with the same keys.
  """
  out = {}
  for name, term in per_example.items():
    if weight is not None:
      term = weight.astype(term.dtype).reshape(weight.shape + (1,) * (term.ndim - 1)) * term
    out[name] = jnp.sum(term, axis=0) / denominator
  return out


def momentum_update(prev, batch_loss, gamma, first):
  """The momentum-tracked loss over mini-batches.

  L_0 = the first batch's loss; then L <- gamma L + (1 - gamma) L_batch. `first` may be a traced
  bool: jnp.where selects, so a placeholder (even NaN) in `prev` never leaks into L_0.
  """
  return jnp.where(first, batch_loss, gamma * prev + (1.0 - gamma) * batch_loss)
