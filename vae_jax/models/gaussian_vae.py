"""The single-stochastic-layer VAE: q(h|x) Gaussian (diagonal or full), p(h) = N(0, I) or the
VampPrior p(h) = (1/K) sum_k q(h|u_k) over K learned pseudo-inputs u_k (Tomczak and Welling
2018; `prior='vamp'`, diagonal posterior).

`GaussianVAE` provides the model contract (models/contract.py: `Model` and `Capabilities`); its
config fields, validation and builder are models/vae.py's. What this family adds to the
contract: with the VampPrior `kl` is the one-sample estimate log q(h|x) - log p(h) at the same
posterior sample h the recon uses (the KL to a mixture has no closed form), so neg_elbo stays an
unbiased one-sample estimate; the analytic KL(q(h|x) || N(0, I)) is reported beside it as
`kl_standard` [B], and there is no `kl_units` (that KL is not a sum over units). With N(0, I)
and a diagonal posterior, `kl_units` [B, D] is each unit's part of `kl`.

With a posterior flow (model.posterior_flow=iaf: an inverse autoregressive flow, models/flows.py,
conditioned on the encoder's context vector) h = flow(h0) with h0 ~ N(mean, diag(var)), and
log q(h|x) = log N(h0; mean, var) - log|det dh/dh0| exactly: `kl` is the one-sample estimate
log q(h|x) - log p(h) at the recon's sample, `kl_base` [B] the base Gaussian's analytic KL to
N(0, I) beside it, and there is no `kl_units`; log_weights use the exact log q, posterior_stats
estimates the marginal moments from flows.STATS_SAMPLES samples, and reconstruct decodes the flow
applied to the base mean.
Callers hand keys, never noise: nobody outside this module knows the latent's size.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from vae_jax.maths import gaussians, likelihoods, objectives
from vae_jax.models import contract, flows, networks


@dataclasses.dataclass(frozen=True)
class GaussianVAE:
  """The contract over one Flax `networks.VAE` (its encoder, decoder and likelihood)."""

  network: networks.VAE
  likelihood: str
  latent_dim: int
  x_dtype: Any = jnp.float32  # the model input's dtype (int32 for 8-bit discrete data)
  prior: str = 'standard'     # standard: N(0, I) | vamp: the network's pseudo-inputs' mixture
  capabilities: Any = None    # contract.Capabilities (models/vae.py); None: from the fields

  def __post_init__(self):
    if self.capabilities is None:  # a GaussianVAE made by hand, not by models/vae.py
      diag, vamp = self.network.posterior == 'diag', self.prior == 'vamp'
      caps = contract.Capabilities(
          kl_units=diag and not vamp and not self.flow, group_kl=False,
          diagonal_posterior=diag and not self.flow,
          standard_prior=not vamp, description=f'single-layer VAE ({self.prior} prior)',
          prior_description='h ~ N(0, T^2 I)' if not vamp else 'a VampPrior component, then h')
      object.__setattr__(self, 'capabilities', caps)

  def init(self, key, x):
    """Parameters for inputs shaped like x [B, H, W, C]."""
    eps = jnp.zeros((x.shape[0], self.latent_dim), jnp.float32)
    return self.network.init(key, x, eps)['params']

  @property
  def unit_groups(self):
    return (self.latent_dim,)

  @property
  def flow(self):
    """Whether the posterior sample passes an IAF (the network's flow_steps > 0)."""
    return self.network.flow_steps > 0

  def _noise(self, key, batch, num_samples=None, sample_offset=0):
    return gaussians.standard_normal_noise(key, batch, self.latent_dim, num_samples,
                                           sample_offset)

  @property
  def _vamp(self):
    if self.prior not in ('standard', 'vamp'):
      raise ValueError(f"Unknown prior {self.prior!r}; expected 'standard' or 'vamp'.")
    if self.prior == 'vamp' and not self.network.num_pseudo_inputs:
      raise ValueError('the VampPrior needs a network with num_pseudo_inputs > 0.')
    return self.prior == 'vamp'

  def prior_components(self, params):
    """The VampPrior's K components q(h|u_k): {'mean': [K, D], 'log_scale': [K, D]}.

    One encoder pass over the K pseudo-inputs, shared by every h of the call.
    """
    return self.network.apply({'params': params}, method='encode_pseudo_inputs')

  @property
  def sample_cost(self):
    """Decoder rows one sample of one example costs in log_weights: the estimator's automatic
    chunk counts each sample as this many (evaluate.default_chunk_size).

    A row's unit is the likelihood's H*W*C outputs; the VampPrior adds K_pseudo component
    log-densities per sample ([Kc, B, K_pseudo]; the [.., K_pseudo, D] differences fuse into
    their sum and never materialise, checked in XLA's CPU memory analysis), so it costs
    1 + ceil(K_pseudo / (H*W*C)) rows: 2 for 500 pseudo-inputs on 28x28 images. A posterior
    flow adds its hidden activations per sample, 2 flow_hidden per step, in the same unit.
    """
    pixels = math.prod(self.network.image_shape)
    cost = 1 + (-(-self.network.num_pseudo_inputs // pixels) if self._vamp else 0)
    if self.flow:
      cost += -(-2 * self.network.flow_hidden * self.network.flow_steps // pixels)
    return cost

  def log_prior(self, params, h, components=None):
    """log p(h): [...] for h [..., D] (components: prior_components, reused if given)."""
    if not self._vamp:
      return gaussians.standard_normal_log_prob(h)
    components = self.prior_components(params) if components is None else components
    return gaussians.diagonal_mixture_log_prob(components, h)

  def terms(self, params, x, key):
    """recon, kl, neg_elbo: each [B], nats (one reparameterized sample per example).

    VampPrior: kl is log q(h|x) - log p(h) at that sample, plus kl_standard [B] (see above).
    """
    eps = self._noise(key, x.shape[0])  # [B, D]
    out = self.network.apply({'params': params}, x, eps)
    if self.flow:
      return self._flow_terms(params, x, out)
    if not self._vamp:
      return objectives.elbo_terms(out['posterior'], out['likelihood'], x, self.likelihood)
    post, h = out['posterior'], out['h']  # h: [B, D]
    recon = -likelihoods.likelihood_log_prob(self.likelihood, out['likelihood'], x)  # [B]
    kl = gaussians.gaussian_log_prob(post, h) - self.log_prior(params, h)  # [B]
    kl_standard = gaussians.gaussian_kl_to_standard_normal(post)  # [B]
    return dict(recon=recon, kl=kl, neg_elbo=recon + kl, kl_standard=kl_standard)

  def _flow_terms(self, params, x, out):
    """recon, kl (log q(h|x) - log p(h) at the sample), neg_elbo and kl_base (the base
    Gaussian's analytic KL to N(0, I)), each [B], from the network's output with a flow."""
    post, h = out['posterior'], out['h']  # h: [B, D]
    recon = -likelihoods.likelihood_log_prob(self.likelihood, out['likelihood'], x)  # [B]
    log_q = gaussians.gaussian_log_prob(post, out['h0']) - out['log_det']  # [B]
    kl = log_q - self.log_prior(params, h)  # [B]
    kl_base = gaussians.gaussian_kl_to_standard_normal(post)  # [B]
    return dict(recon=recon, kl=kl, neg_elbo=recon + kl, kl_base=kl_base)

  def _encoded(self, params, x):
    """(q(h|x)'s base Gaussian parameters (see maths/gaussians.py), the flow's context [B, C]
    or None without a flow)."""
    post = self.network.apply({'params': params}, x, method='encode')
    if not self.flow:
      return post, None
    post = dict(post)
    return post, post.pop('context')

  def _posterior(self, params, x):
    """q(h|x)'s parameters (see maths/gaussians.py): with a flow, its base Gaussian's."""
    return self._encoded(params, x)[0]

  def _flow_forward(self, params, h0, context):
    """(h [..., B, D], log|det dh/dh0| [..., B]) of base samples h0 [..., B, D]."""
    return self.network.apply({'params': params}, h0, context, method='flow_forward')

  def encode(self, params, x):
    """The state log_weights reuses across the estimator's chunks: {'posterior': q(h|x)'s
    parameters} and, with the VampPrior, 'prior': prior_components, so its K pseudo-inputs are
    encoded once per batch rather than once per chunk; with a flow, 'context' [B, C]."""
    post, context = self._encoded(params, x)
    state = {'posterior': post}
    if self._vamp:
      state['prior'] = self.prior_components(params)
    if self.flow:
      state['context'] = context
    return state

  def log_weights(self, params, x, keys, num_samples, sample_offset=0, encoded=None):
    """log p(x|h) + log p(h) - log q(h|x): [K, B], for samples offset .. offset + K - 1.

    The encoder (of x and of the VampPrior's pseudo-inputs) runs once per call, or not at all
    with `encoded`; only the decoder and the prior's density see the K samples.
    """
    state = self.encode(params, x) if encoded is None else encoded
    post = state['posterior']
    eps = self._noise(keys, x.shape[0], num_samples, sample_offset)  # [K, B, D]
    h = gaussians.gaussian_rsample(post, eps)  # [K, B, D]
    log_q = gaussians.gaussian_log_prob(post, h)  # [K, B]
    if self.flow:  # the flow's exact density: log N(h0) - log|det dh/dh0|
      h, log_det = self._flow_forward(params, h, state['context'])
      log_q = log_q - log_det
    lik = self.network.apply({'params': params}, h, method='decode')
    log_px_h = likelihoods.likelihood_log_prob(self.likelihood, lik, x)  # [K, B]
    log_p_h = self.log_prior(params, h, state.get('prior'))  # [K, B]
    return log_px_h + log_p_h - log_q

  def dreg_log_weights(self, params, x, keys, num_samples):
    """(log_w_theta, log_w_phi): [K, B] each, both with log_weights(params, x, keys,
    num_samples)'s value, for the doubly reparameterised gradient (contract.Model;
    objectives.dreg_iwae_terms).

    log_w_theta: only the decoder's parameters get a gradient (h and q's parameters stopped).
    log_w_phi: only the sample path h = mean + L eps does (the decoder's parameters and q's
    density's parameters stopped; log q is taken at the live h). Only where capabilities.dreg
    (models/vae.py): N(0, I) prior and no flow, since the VampPrior's density and a flow's log q
    depend on parameters outside this sample path. stop_gradient is the identity in the forward
    pass, so the two share one encoder pass here, and XLA may merge their decoder passes.
    """
    if not self.capabilities.dreg:
      raise ValueError(f'dreg_log_weights: this model ({self.capabilities.description}) does not '
                       'declare Capabilities.dreg; it needs the N(0, I) prior and no posterior '
                       'flow (use objective.iwae_gradient=reparam).')
    post = self._posterior(params, x)
    eps = self._noise(keys, x.shape[0], num_samples)  # [K, B, D]
    h = gaussians.gaussian_rsample(post, eps)  # [K, B, D], differentiable in phi
    post_sg = jax.lax.stop_gradient(post)

    def log_w(dec_params, h):
      lik = self.network.apply({'params': dec_params}, h, method='decode')
      log_px_h = likelihoods.likelihood_log_prob(self.likelihood, lik, x)  # [K, B]
      return (log_px_h + gaussians.standard_normal_log_prob(h)
              - gaussians.gaussian_log_prob(post_sg, h))

    log_w_theta = log_w(params, jax.lax.stop_gradient(h))
    log_w_phi = log_w(jax.lax.stop_gradient(params), h)
    return log_w_theta, log_w_phi

  def sample_latents(self, params, key, n, temperature=1.0):
    """n prior draws h [n, D] with every scale multiplied by temperature.

    Standard: h ~ N(0, temperature^2 I). VampPrior: a component k uniformly per draw, then
    h ~ N(mean_k, temperature^2 diag(scale_k^2)).
    """
    if not self._vamp:
      return temperature * jax.random.normal(key, (n, self.latent_dim))
    comp = self.prior_components(params)  # [K, D] each
    k_c, k_h = jax.random.split(key)
    idx = jax.random.randint(k_c, (n,), 0, comp['mean'].shape[0])  # [n]
    scale = jnp.exp(jnp.broadcast_to(comp['log_scale'], comp['mean'].shape)[idx])
    return comp['mean'][idx] + temperature * scale * jax.random.normal(k_h, (n, self.latent_dim))

  def sample(self, params, key, n, temperature=1.0):
    """n prior draws (sample_latents), decoded: {'means', 'samples'} [n, H, W, C]."""
    k_h, k_x = jax.random.split(key)
    h = self.sample_latents(params, k_h, n, temperature)
    lik = self.network.apply({'params': params}, h, method='decode')
    samples = likelihoods.likelihood_sample(self.likelihood, lik, k_x)
    if jnp.issubdtype(samples.dtype, jnp.integer):
      samples = samples.astype(jnp.float32) / 255.0
    return {'means': likelihoods.likelihood_mean(self.likelihood, lik), 'samples': samples}

  def reconstruct(self, params, x):
    """E[x|h] at h = the posterior mean of each x: [B, H, W, C] in [0, 1]. With a flow, at h =
    the flow applied to the base Gaussian's mean (its most likely path, not q's mean)."""
    post, context = self._encoded(params, x)
    h = post['mean']  # [B, D]
    if self.flow:
      h, _ = self._flow_forward(params, h, context)
    return self.decode_mean(params, h)

  def decode_mean(self, params, h):
    """E[x|h] for latents h [n, D] laid out as posterior_stats' units: [n, H, W, C] in [0, 1].

    For interpolations and traversals in the latent space.
    """
    lik = self.network.apply({'params': params}, h, method='decode')
    return likelihoods.likelihood_mean(self.likelihood, lik)

  def posterior_stats(self, params, x, key=None):
    """{'mean': [B, D], 'var': [B, D]}: the marginal mean and variance of each latent unit
    (closed form: key is not used). With a flow, estimated from flows.STATS_SAMPLES samples of
    q(h|x) per example drawn with key (flows.stats_noise: one key, keys [B], or None for a
    fixed one)."""
    post, context = self._encoded(params, x)
    if self.flow:
      def draw(offset):  # [chunk, B, D]
        eps = flows.stats_noise(key, x.shape[0], self.latent_dim, flows.STATS_CHUNK, offset)
        return self._flow_forward(params, gaussians.gaussian_rsample(post, eps), context)[0]
      return flows.sample_moments(draw, post['mean'].shape)
    if 'scale_tril' in post:
      var = jnp.sum(jnp.square(jnp.tril(post['scale_tril'])), axis=-1)  # diag(L L^T)
    else:
      var = jnp.exp(2.0 * post['log_scale'])
    return {'mean': post['mean'], 'var': jnp.broadcast_to(var, post['mean'].shape)}


def build_model(model_cfg, image_shape, x_dtype=None, caps=None):
  """The single-layer family `config.model` describes (model.kind=vae; models/vae.py declares
  its fields and capabilities)."""
  f = model_cfg.vae
  network = networks.build_network(
      model_cfg, image_shape, num_pseudo_inputs=f.num_pseudo_inputs if f.prior == 'vamp' else 0)
  return GaussianVAE(network=network, likelihood=model_cfg.likelihood,
                     latent_dim=model_cfg.latent_dim,
                     x_dtype=jnp.float32 if x_dtype is None else x_dtype, prior=f.prior,
                     capabilities=caps)
