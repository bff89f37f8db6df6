"""The hierarchical top-down VAE family (Ladder VAE / NVAE / VDVAE): the model contract over
its networks (hierarchical_networks.py), and its builder.

Group 0 is the TOP: p(z_0) = N(0, I), each lower group's prior p(z_l | groups above) is
learned, and q(z_l | x, groups above) shares the top-down state (hierarchical_networks.py
describes the architecture; models/hvae.py declares the config fields and capabilities).

Terms: recon, kl, neg_elbo [B]; kl/<l> [B] for each group l (0 = top) and kl_units [B, U]
(free bits per group or per unit act on these). Units U of posterior_stats / decode_mean are
every group's latents flattened and concatenated, top group first; posterior_stats and
reconstruct follow the posterior-mean path (z_l = mu_q at each group).

With a posterior flow (model.posterior_flow=iaf) each group's Gaussian sample passes the group's
own IAF (hierarchical_networks.py) and log q(z_l | x, z_above) is the flow's exact density, so
kl/<l> is the one-sample estimate log q(z_l | .) - log p(z_l | z_above) at the sampled path;
kl_base [B] (and kl_base/<l>) is the analytic KL of each base Gaussian to its prior on the same
path, reported beside it; there is no kl_units. posterior_stats estimates the marginal moments
of q(z | x) from flows.STATS_SAMPLES sampled paths, and reconstruct follows the path z_l = the
flow applied to the base mean.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.maths import gaussians, likelihoods
from vae_jax.models import contract, flows, networks
from vae_jax.models.hierarchical_networks import HierarchicalNetwork, group_shapes


@dataclasses.dataclass(frozen=True)
class HierarchicalVAE:
  """The model contract (see gaussian_vae) over a HierarchicalNetwork."""

  network: HierarchicalNetwork
  likelihood: str
  x_dtype: Any = jnp.float32  # the model input's dtype (int32 for 8-bit discrete data)
  capabilities: Any = None    # contract.Capabilities (models/hvae.py); None: from the network

  def __post_init__(self):
    if self.capabilities is None:  # a HierarchicalVAE made by hand, not by models/hvae.py
      caps = contract.Capabilities(
          kl_units=not self.flow, group_kl=True,
          diagonal_posterior=self.num_groups == 1 and not self.flow,
          standard_prior=False, description=f'top-down hierarchical VAE, {self.num_groups} groups',
          prior_description='top-down: each group z_l ~ p(z_l | z_above) with its scale times T')
      object.__setattr__(self, 'capabilities', caps)

  @property
  def shapes(self):
    """Latent shape of each group, top first."""
    n = self.network
    return [shape for _, shape in group_shapes(n.variant, n.image_shape, n.groups,
                                               n.conv_channels, n.latent_dim)]

  @property
  def flow(self):
    """Whether each group's posterior sample passes an IAF."""
    return self.network.flow_steps > 0

  @property
  def num_groups(self):
    return len(self.shapes)

  @property
  def num_units(self):
    """U: every group's latents."""
    return sum(math.prod(s) for s in self.shapes)

  @property
  def unit_groups(self):
    """Units of each group, top first."""
    return tuple(math.prod(s) for s in self.shapes)

  def _split(self, flat):
    """[N, U] -> per group [N, *shape], top first."""
    sizes = [math.prod(s) for s in self.shapes]
    parts = jnp.split(flat, np.cumsum(sizes)[:-1], axis=-1)
    return [p.reshape((flat.shape[0], *s)) for p, s in zip(parts, self.shapes, strict=True)]

  def init(self, key, x):
    """Parameters for inputs shaped like x [B, H, W, C]."""
    eps = self._split(jnp.zeros((x.shape[0], self.num_units), jnp.float32))
    return self.network.init(key, x, eps)['params']

  def _apply(self, params, method, *args):
    return self.network.apply({'params': params}, *args, method=method)

  def encode(self, params, x):
    """The bottom-up features of every group (top first), reused across log_weights chunks."""
    return self._apply(params, 'bottom_up', x)

  def _posterior_pass(self, params, x, feats, eps, mode='sample'):
    """(likelihood params [N, ...], per-group dicts) for features [N, ...], eps [N, U]."""
    s, groups = self._apply(params, 'top_down', feats, self._split(eps), mode)
    return self._apply(params, 'decode', s), groups

  def _path_terms(self, params, x, feats, eps):
    """Per-example quantities of one posterior sample each: x, feats [N, ...], eps [N, U].

    Returns log_px [N], kl_groups [L] of [N] (analytic KL of each group at the sampled groups
    above), kl_units [N, U], log_q and log_p [L] of [N] (each group's log-density at its z).
    With a flow kl_groups are log_q - log_p at the sample, kl_base_groups [L] of [N] the base
    Gaussians' analytic KLs, and there is no kl_units.
    """
    lik, groups = self._posterior_pass(params, x, feats, eps)
    log_px = likelihoods.likelihood_log_prob(self.likelihood, lik, x)  # [N]
    kl_units = [gaussians.diagonal_gaussian_kl_units(g['posterior'], g['prior']) for g in groups]
    if self.flow:
      log_q = [gaussians.gaussian_log_prob(g['posterior'], g['base_z']) - g['log_det']
               for g in groups]  # each [N]: the flow's exact density at z
      log_p = [gaussians.gaussian_log_prob(g['prior'], g['z']) for g in groups]
      return {
          'log_px': log_px,
          'kl_groups': [q - p for q, p in zip(log_q, log_p, strict=True)],  # each [N]
          'kl_base_groups': [jnp.sum(k, axis=-1) for k in kl_units],  # each [N]
          'log_q': log_q,
          'log_p': log_p,
      }
    return {
        'log_px': log_px,
        'kl_groups': [jnp.sum(k, axis=-1) for k in kl_units],  # each [N]
        'kl_units': jnp.concatenate(kl_units, axis=-1),  # [N, U]
        'log_q': [gaussians.gaussian_log_prob(g['posterior'], g['z']) for g in groups],
        'log_p': [gaussians.gaussian_log_prob(g['prior'], g['z']) for g in groups],
    }

  def terms(self, params, x, key):
    """recon, kl, neg_elbo, kl/<l> (0 = top) each [B], and kl_units [B, U]: nats. With a flow
    kl_base and kl_base/<l> [B] instead of kl_units (see the module docstring)."""
    eps = gaussians.standard_normal_noise(key, x.shape[0], self.num_units)  # [B, U]
    t = self._path_terms(params, x, self.encode(params, x), eps)
    recon = -t['log_px']  # [B]
    kl = sum(t['kl_groups'])  # [B]
    if self.flow:
      out = dict(recon=recon, kl=kl, neg_elbo=recon + kl, kl_base=sum(t['kl_base_groups']))
      out.update({f'kl_base/{g}': k for g, k in enumerate(t['kl_base_groups'])})
    else:
      out = dict(recon=recon, kl=kl, neg_elbo=recon + kl, kl_units=t['kl_units'])
    out.update({f'kl/{g}': k for g, k in enumerate(t['kl_groups'])})
    return out

  def _tiled(self, tree, k):
    """[B, ...] -> [K*B, ...]: row k*B + i is example i (matching eps [K, B, U] flattened)."""
    return jax.tree.map(
        lambda a: jnp.broadcast_to(a, (k, *a.shape)).reshape((-1, *a.shape[1:])), tree)

  def log_density_terms(self, params, x, keys, num_samples, sample_offset=0, encoded=None):
    """The per-group parts of log_weights, each [K, B]: log_px, log_q/<l>, log_p/<l>, kl/<l>."""
    feats = self.encode(params, x) if encoded is None else encoded
    b = x.shape[0]
    eps = gaussians.standard_normal_noise(keys, b, self.num_units, num_samples,
                                          sample_offset)  # [K,B,U]
    t = self._path_terms(params, self._tiled(x, num_samples), self._tiled(feats, num_samples),
                         eps.reshape((-1, self.num_units)))
    kb = lambda a: a.reshape((num_samples, b))
    out = {'log_px': kb(t['log_px'])}
    for g in range(self.num_groups):
      out[f'log_q/{g}'], out[f'log_p/{g}'] = kb(t['log_q'][g]), kb(t['log_p'][g])
      out[f'kl/{g}'] = kb(t['kl_groups'][g])
    return out

  def log_weights(self, params, x, keys, num_samples, sample_offset=0, encoded=None):
    """log p(x|z) + sum_l log p(z_l|z_above) - sum_l log q(z_l|x, z_above): [K, B].

    Sample k of example i draws all its groups' noise from fold_in(key_i, sample_offset + k),
    so chunks concatenate to the unchunked result. The bottom-up pass runs once per call, or
    not at all with `encoded`; the top-down path and decoder see the K samples.
    """
    t = self.log_density_terms(params, x, keys, num_samples, sample_offset, encoded)
    return t['log_px'] + sum(t[f'log_p/{g}'] - t[f'log_q/{g}'] for g in range(self.num_groups))

  def sample(self, params, key, n, temperature=1.0):
    """n top-down prior draws, each group's scale times temperature, decoded:
    {'means', 'samples'} [n, H, W, C]."""
    k_z, k_x = jax.random.split(key)
    eps = self._split(jax.random.normal(k_z, (n, self.num_units)))
    s, _ = self._apply(params, 'top_down', None, eps, 'prior', temperature)
    lik = self._apply(params, 'decode', s)
    samples = likelihoods.likelihood_sample(self.likelihood, lik, k_x)
    if jnp.issubdtype(samples.dtype, jnp.integer):
      samples = samples.astype(jnp.float32) / 255.0
    return {'means': likelihoods.likelihood_mean(self.likelihood, lik), 'samples': samples}

  def _mean_path(self, params, x):
    zeros = jnp.zeros((x.shape[0], self.num_units), jnp.float32)
    return self._posterior_pass(params, x, self.encode(params, x), zeros, mode='mean')

  def reconstruct(self, params, x):
    """E[x|z] on the posterior-mean path (z_l = mu_q at every group; with a flow, the flow
    applied to the base Gaussian's mean): [B, H, W, C]."""
    lik, _ = self._mean_path(params, x)
    return likelihoods.likelihood_mean(self.likelihood, lik)

  def decode_mean(self, params, h):
    """E[x|z] for every group's latents h [n, U] (posterior_stats' layout): [n, H, W, C]."""
    s, _ = self._apply(params, 'top_down', None, self._split(h), 'given')
    return likelihoods.likelihood_mean(self.likelihood, self._apply(params, 'decode', s))

  def posterior_stats(self, params, x, key=None):
    """{'mean', 'var'} [B, U] of q(z_l | x, z_above) on the posterior-mean path, top first.

    Each unit's KL to its own prior is the terms' kl_units, on the sampled path: a plug-in KL on
    this path would not add up to the kl term. With a flow: the marginal mean and variance of
    each unit under q(z | x), estimated from flows.STATS_SAMPLES sampled top-down paths per
    example drawn with key (flows.stats_noise: one key, keys [B], or None for a fixed one)."""
    if self.flow:
      feats, b = self.encode(params, x), x.shape[0]

      def draw(offset):  # [chunk, B, U]: every group's z on sampled paths
        kc = flows.STATS_CHUNK
        eps = flows.stats_noise(key, b, self.num_units, kc, offset).reshape((-1, self.num_units))
        _, groups = self._apply(params, 'top_down', self._tiled(feats, kc), self._split(eps),
                                'sample')
        return jnp.concatenate([g['z'] for g in groups], axis=-1).reshape((kc, b, -1))
      return flows.sample_moments(draw, (b, self.num_units))
    _, groups = self._mean_path(params, x)
    cat = lambda f: jnp.concatenate([f(g) for g in groups], axis=-1)  # [B, U]
    return {'mean': cat(lambda g: g['posterior']['mean']),
            'var': jnp.exp(2.0 * cat(lambda g: g['posterior']['log_scale']))}


def likelihood_spec(model_cfg, image_shape):
  """networks.LikelihoodSpec from config.model: every spec field the config declares."""
  names = [f.name for f in dataclasses.fields(networks.LikelihoodSpec) if f.name != 'image_shape']
  as_hashable = lambda v: tuple(v) if isinstance(v, list) else v
  return networks.LikelihoodSpec(image_shape=tuple(image_shape), **{
      n: as_hashable(model_cfg[n]) for n in names if n in model_cfg})


def build_model(model_cfg, image_shape, x_dtype=None, caps=None):
  """The hierarchical family `config.model` describes (model.kind=hvae; models/hvae.py
  declares its fields and capabilities)."""
  f = model_cfg.hvae
  iaf = model_cfg.get('posterior_flow', 'none') == 'iaf'
  network = HierarchicalNetwork(
      image_shape=tuple(image_shape),
      variant=model_cfg.encoder,
      groups=tuple(f.groups),
      latent_dim=model_cfg.latent_dim,
      hidden=tuple(model_cfg.hidden),
      width=f.width,
      conv_channels=tuple(model_cfg.conv_channels),
      conv_blocks=model_cfg.conv_blocks,
      residual_posterior=bool(f.residual_posterior),
      spec=likelihood_spec(model_cfg, image_shape),
      dtype=jnp.dtype(model_cfg.dtype),
      remat=bool(model_cfg.remat),
      flow_steps=model_cfg.flow_steps if iaf else 0,
      flow_hidden=model_cfg.flow_hidden if iaf else 0,
  )
  return HierarchicalVAE(network=network, likelihood=model_cfg.likelihood,
                         x_dtype=jnp.float32 if x_dtype is None else x_dtype, capabilities=caps)
