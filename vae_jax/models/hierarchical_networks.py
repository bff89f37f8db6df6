"""The hierarchical VAE's Flax networks: the bottom-up pass, the top-down groups (each
group's prior, posterior and state update), the output head, and the network wiring them.

A deterministic bottom-up pass turns x into one feature per stochastic group. The top-down
path starts from a learned constant state s and visits the L groups from the top (group 0)
to the bottom (group L - 1); at group l the prior p(z_l | z_<l) and the posterior
q(z_l | x, z_<l) are both read from the same state s, which carries every group above
(written z_>l in the papers, which count from the bottom; here group 0 is the TOP):
  p(z_0) = N(0, I);  p(z_l | s) = N(mu_p(s), sigma_p(s)^2), l >= 1;
  q(z_l | x, s) = N(mu_q, sigma_q^2) from (s, the bottom-up feature of group l); with
    `residual_posterior` (NVAE) mu_q = mu_p + d_mu and log sigma_q = log sigma_p + d_log;
  s <- Block(s + Proj(z_l)).
With a posterior flow (flow_steps > 0) the Gaussian sample z_l^0 ~ q passes the group's own IAF
(models/flows.py), conditioned on a context head read from q's input:
  z_l = IAF_l(z_l^0, context),  log q(z_l | x, s) = log N(z_l^0; mu_q, sigma_q) - log|det|;
the state, the groups below and p(z_l | s) see z_l. In the conv variant the flow runs over the
latent_dim channels at every position (its context from a 3x3 conv, so it sees the neighbours).
The last state is decoded to p(x | z) by the likelihood heads of `networks` (every likelihood).
Each group's KL is analytic between the two diagonal Gaussians at the sampled groups above; the
ELBO's KL is their sum. Log-scales pass through `soft_clamp` (a scaled tanh), and every head
reads a normalised state, so a deep hierarchy is finite at initialisation whatever the inputs.

Variants (`variant`, from model.encoder, which must equal model.decoder):
  mlp: latent vectors z_l [latent_dim]; one stage holding groups[0] groups; state width `width`.
  conv: groups at several resolutions. The encoder stages of conv_channels halve the resolution
    (stride-2 convs, networks.stage_sizes); groups[0] groups sit at the lowest resolution (the
    top), groups[1] at the next one up, and so on; z_l is [h, w, latent_dim] at its stage and
    every spatial latent is a unit of posterior_stats.
"""

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vae_jax.models import conv, flows, networks

VARIANTS = ('mlp', 'conv')
# Log-scales of every prior and posterior lie in (-LOG_SCALE_BOUND, LOG_SCALE_BOUND): standard
# deviations between 0.0067 and 148 (NVAE's bound), so no exp over- or underflows.
LOG_SCALE_BOUND = 5.0


def soft_clamp(x, bound=LOG_SCALE_BOUND):
  """bound * tanh(x / bound): the identity near 0 (slope 1), smoothly bounded in (-bound, bound).

  Unlike a hard clip its gradient never vanishes abruptly, so a scale pushed to the edge can
  come back.
  """
  return bound * jnp.tanh(x / bound)


def group_shapes(variant, image_shape, groups, conv_channels, latent_dim):
  """[(stage, latent shape)] of every group, top first.

  mlp: stage 0 and shape (latent_dim,). conv: stage i (1 .. S, the resolution after i stride-2
  encoder stages) and shape (h_i, w_i, latent_dim); groups[0] at stage S, groups[1] at S - 1.
  """
  if variant == 'mlp':
    return [(0, (latent_dim,))] * groups[0]
  n_stages = len(conv_channels)
  hs = networks.stage_sizes(image_shape[0], n_stages)
  ws = networks.stage_sizes(image_shape[1], n_stages)
  out = []
  for j, count in enumerate(groups):
    stage = n_stages - j
    out += [(stage, (hs[stage], ws[stage], latent_dim))] * count
  return out


class MLPBlock(nn.Module):
  """Pre-activation residual block: (LayerNorm, swish, Dense) x 2, plus the input.

  The last Dense starts at zero, so each block starts as the identity.
  """

  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = x  # [N, W]
    for i in range(2):
      y = nn.swish(nn.LayerNorm(dtype=self.dtype, name=f'norm_{i}')(y))
      init = nn.initializers.zeros if i == 1 else nn.initializers.lecun_normal()
      y = nn.Dense(self.width, dtype=self.dtype, kernel_init=init, name=f'dense_{i}')(y)
    return x + y


def _block(variant, channels, dtype, name, remat=False):
  cls = MLPBlock if variant == 'mlp' else networks.ResBlock
  return networks.remat_if(cls, remat)(channels, dtype, name=name)


def _norm(variant, channels, dtype, name):
  if variant == 'mlp':
    return nn.LayerNorm(dtype=dtype, name=name)
  return nn.GroupNorm(math.gcd(channels, 32), dtype=dtype, name=name)


def _linear(variant, features, dtype, name, kernel=(3, 3), init=None):
  init = init or nn.initializers.lecun_normal()
  if variant == 'mlp':
    return nn.Dense(features, dtype=dtype, kernel_init=init, name=name)
  return conv.Conv(features, kernel, dtype=dtype, kernel_init=init, name=name)


class BottomUp(nn.Module):
  """x [B, H, W, C] -> the bottom-up feature of every group, top first.

  mlp: flatten, Dense + relu per hidden width, Dense to width, then one MLPBlock per group
  (bottom group first: the top groups read the deepest features). conv: per encoder stage a
  stride-2 3x3 conv and conv_blocks residual blocks; a stage holding groups then adds one
  residual block per group, each output the feature of one group.
  """

  variant: str
  groups: Sequence[int]
  hidden: Sequence[int]
  width: int
  conv_channels: Sequence[int]
  conv_blocks: int
  dtype: Any = jnp.float32
  remat: bool = False  # rematerialise every residual block

  @nn.compact
  def __call__(self, x):
    y = networks.to_float_input(x)  # [B, H, W, C]
    feats = []  # bottom group first
    if self.variant == 'mlp':
      y = y.reshape((y.shape[0], -1))  # [B, H*W*C]
      for i, w in enumerate(self.hidden):
        y = nn.relu(nn.Dense(w, dtype=self.dtype, name=f'hidden_{i}')(y))
      y = nn.Dense(self.width, dtype=self.dtype, name='proj')(y)  # [B, W]
      for g in range(self.groups[0]):
        y = _block('mlp', self.width, self.dtype, f'group_block_{g}', self.remat)(y)
        feats.append(y)
      return feats[::-1]
    n_stages = len(self.conv_channels)
    per_stage = {n_stages - j: count for j, count in enumerate(self.groups)}
    for i, ch in enumerate(self.conv_channels, start=1):
      y = conv.Conv(ch, (3, 3), strides=(2, 2), dtype=self.dtype, name=f'down_{i}')(y)
      for j in range(self.conv_blocks):
        y = _block('conv', ch, self.dtype, f'block_{i}_{j}', self.remat)(y)
      for g in range(per_stage.get(i, 0)):
        y = _block('conv', ch, self.dtype, f'group_block_{i}_{g}', self.remat)(y)
        feats.append(y)  # [B, h_i, w_i, c_i]
    return feats[::-1]


class TopDownGroup(nn.Module):
  """One stochastic group: prior and posterior from the state, a sample, the state update.

  Modes: 'sample' (z ~ q with the given standard normal eps), 'mean' (z = the posterior mean),
  'prior' (z ~ p with eps times temperature), 'given' (z = eps, for decode_mean).
    Returns (new state, {'z', 'prior', 'posterior'}): the Gaussians as {'mean', 'log_scale'} over
  the group's latents flattened [N, U_l] (posterior None in the prior and given modes). With a
  flow, in the sample and mean modes also 'base_z' [N, U_l] (the Gaussian's sample, or mean, z
  came from) and 'log_det' [N] (log|det dz/dbase_z|); 'posterior' is the flow's base Gaussian.
  """

  variant: str
  latent_dim: int
  channels: int
  top: bool
  residual_posterior: bool
  dtype: Any = jnp.float32
  remat: bool = False  # rematerialise the group's residual block
  flow_steps: int = 0  # an IAF on the posterior sample (0 = none)
  flow_hidden: int = 0  # its masked layers' width and the context head's

  def _gaussian(self, raw):
    mean, raw_log_scale = jnp.split(raw.astype(jnp.float32), 2, axis=-1)
    return mean, raw_log_scale

  @nn.compact
  def __call__(self, s, feat, eps, mode, temperature=1.0):
    v, f32 = self.variant, jnp.float32
    zshape = eps.shape  # [N, D] or [N, h, w, D]
    flat = lambda a: a.reshape((a.shape[0], -1))
    if self.top:
      prior = {'mean': jnp.zeros(zshape, f32), 'log_scale': jnp.zeros(zshape, f32)}
    else:
      # The prior head starts at zero: every prior starts as N(0, I).
      h = nn.swish(_norm(v, self.channels, self.dtype, 'prior_norm')(s))
      # The heads compute in float32 whatever the compute dtype (networks.PosteriorHead).
      raw = _linear(v, 2 * self.latent_dim, f32, 'prior_head', init=nn.initializers.zeros)(h)
      mean, raw_ls = self._gaussian(raw)
      prior = {'mean': mean, 'log_scale': soft_clamp(raw_ls)}
    posterior, flowed = None, {}
    if mode == 'prior':
      z = prior['mean'] + temperature * jnp.exp(prior['log_scale']) * eps
    elif mode == 'given':
      z = eps
    else:
      h = jnp.concatenate([_norm(v, self.channels, self.dtype, 'state_norm')(s),
                           _norm(v, feat.shape[-1], self.dtype, 'feat_norm')(feat)], axis=-1)
      raw = _linear(v, 2 * self.latent_dim, f32, 'posterior_head')(nn.swish(h))
      d_mean, d_ls = self._gaussian(raw)
      if self.residual_posterior:
        posterior = {'mean': prior['mean'] + d_mean,
                     'log_scale': soft_clamp(prior['log_scale'] + d_ls)}
      else:
        posterior = {'mean': d_mean, 'log_scale': soft_clamp(d_ls)}
      z = posterior['mean'] if mode == 'mean' else (
          posterior['mean'] + jnp.exp(posterior['log_scale']) * eps)
      if self.flow_steps:
        # The context head reads q's input, in float32 as the posterior head.
        context = _linear(v, self.flow_hidden, f32, 'flow_context')(nn.swish(h))
        base_z = z
        z, log_det = flows.IAF(self.flow_steps, self.flow_hidden, name='flow')(z, context)
        flowed = {'base_z': flat(base_z), 'log_det': jnp.sum(flat(log_det), axis=-1)}  # [N]
    s = s + _linear(v, self.channels, self.dtype, 'z_proj', kernel=(1, 1))(z)
    s = _block(v, self.channels, self.dtype, 'block', self.remat)(s)
    as_flat = lambda g: None if g is None else {k: flat(a) for k, a in g.items()}
    return s, {'z': flat(z), 'prior': as_flat(prior), 'posterior': as_flat(posterior), **flowed}


class TopDown(nn.Module):
  """The top-down path: per-group eps (or z) [N, *shape] -> (final state, per-group dicts).

  conv: from the lowest resolution up, each stage runs its groups, conv_blocks residual blocks,
  then a nearest 2x upsample (cropped to the encoder's size there) and a 3x3 conv to the next
  stage's channels, as networks.ConvDecoder; the last state is at full resolution.
  """

  variant: str
  image_shape: Sequence[int]
  groups: Sequence[int]
  latent_dim: int
  width: int
  conv_channels: Sequence[int]
  conv_blocks: int
  residual_posterior: bool
  dtype: Any = jnp.float32
  remat: bool = False  # rematerialise every residual block
  flow_steps: int = 0  # each group's posterior flow (TopDownGroup; 0 = none)
  flow_hidden: int = 0

  @nn.compact
  def __call__(self, feats, eps, mode, temperature=1.0):
    n = eps[0].shape[0]
    shapes = group_shapes(self.variant, self.image_shape, self.groups, self.conv_channels,
                          self.latent_dim)
    out = []

    def run_group(s, g, channels):
      group = TopDownGroup(self.variant, self.latent_dim, channels, g == 0,
                           self.residual_posterior, self.dtype, self.remat, self.flow_steps,
                           self.flow_hidden, name=f'group_{g}')
      return group(s, None if feats is None else feats[g], eps[g], mode, temperature)

    if self.variant == 'mlp':
      start = self.param('start', nn.initializers.zeros, (self.width,), jnp.float32)
      s = jnp.broadcast_to(start, (n, self.width)).astype(self.dtype)  # [N, W]
      for g in range(len(shapes)):
        s, info = run_group(s, g, self.width)
        out.append(info)
      return s, out
    chans = tuple(self.conv_channels)
    n_stages = len(chans)
    hs = networks.stage_sizes(self.image_shape[0], n_stages)
    ws = networks.stage_sizes(self.image_shape[1], n_stages)
    start = self.param('start', nn.initializers.zeros, (hs[-1], ws[-1], chans[-1]), jnp.float32)
    s = jnp.broadcast_to(start, (n, *start.shape)).astype(self.dtype)  # [N, h_S, w_S, c_S]
    g = 0
    for i in range(n_stages, 0, -1):
      while g < len(shapes) and shapes[g][0] == i:
        s, info = run_group(s, g, chans[i - 1])
        out.append(info)
        g += 1
      for j in range(self.conv_blocks):
        s = _block('conv', chans[i - 1], self.dtype, f'block_{i}_{j}', self.remat)(s)
      s = jnp.repeat(jnp.repeat(s, 2, axis=1), 2, axis=2)[:, : hs[i - 1], : ws[i - 1]]
      s = conv.Conv(chans[max(i - 2, 0)], (3, 3), dtype=self.dtype, name=f'up_{i}')(s)
    return s, out


class OutputHead(nn.Module):
  """The final top-down state -> the parameters of p(x|z), through networks.LikelihoodHead.

  mlp: LayerNorm, swish, Dense + relu per hidden width (reversed), Dense to every pixel's
  outputs. conv: GroupNorm, swish, 3x3 conv to every pixel's outputs. The head reads them as
  [N, H, W, spec.pixel_outputs], so every likelihood form of networks works (the coupled RGB
  logistic mixture included).
  """

  variant: str
  hidden: Sequence[int]
  spec: networks.LikelihoodSpec
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, s):
    shape, q = tuple(self.spec.image_shape), self.spec.pixel_outputs
    y = nn.swish(_norm(self.variant, s.shape[-1], self.dtype, 'norm')(s))
    if self.variant == 'mlp':
      for i, w in enumerate(reversed(tuple(self.hidden))):
        y = nn.relu(nn.Dense(w, dtype=self.dtype, name=f'hidden_{i}')(y))
      # The likelihood's layer computes in float32 (networks.MLPDecoder and ConvDecoder).
      y = nn.Dense(math.prod(shape[:2]) * q, dtype=jnp.float32, name='out')(y)
      y = y.reshape((s.shape[0], *shape[:2], q))
    else:
      y = conv.Conv(q, (3, 3), dtype=jnp.float32, name='conv_out')(y)
    return networks.LikelihoodHead(self.spec, name='likelihood')(y)  # reads [N, H, W, Q]


class HierarchicalNetwork(nn.Module):
  """Bottom-up pass, top-down path and output head; one method per part."""

  image_shape: Sequence[int]
  variant: str = 'mlp'
  groups: Sequence[int] = (2,)
  latent_dim: int = 16
  hidden: Sequence[int] = (512,)
  width: int = 256
  conv_channels: Sequence[int] = (32, 64)
  conv_blocks: int = 1
  residual_posterior: bool = True
  spec: networks.LikelihoodSpec = networks.LikelihoodSpec()
  dtype: Any = jnp.float32  # computation dtype; parameters, likelihood and KL stay float32
  remat: bool = False  # rematerialise every residual block (networks.remat_if)
  flow_steps: int = 0  # an IAF on each group's posterior sample (0 = none)
  flow_hidden: int = 0

  def setup(self):
    if self.variant not in VARIANTS:
      raise ValueError(f'Unknown hierarchy variant {self.variant!r}; expected one of {VARIANTS}.')
    common = dict(variant=self.variant, groups=tuple(self.groups), width=self.width,
                  conv_channels=tuple(self.conv_channels), conv_blocks=self.conv_blocks,
                  dtype=self.dtype, remat=self.remat)
    self.bu = BottomUp(hidden=tuple(self.hidden), **common)
    self.td = TopDown(image_shape=tuple(self.image_shape), latent_dim=self.latent_dim,
                      residual_posterior=self.residual_posterior, flow_steps=self.flow_steps,
                      flow_hidden=self.flow_hidden, **common)
    self.out = OutputHead(self.variant, tuple(self.hidden), self.spec, self.dtype)

  def bottom_up(self, x):
    return self.bu(x)

  def top_down(self, feats, eps, mode, temperature=1.0):
    return self.td(feats, eps, mode, temperature)

  def decode(self, s):
    return self.out(s)

  def __call__(self, x, eps):
    """Every part once (what init needs): x [B, ...], eps per group [B, *shape]."""
    s, groups = self.top_down(self.bottom_up(x), eps, 'sample')
    return {'likelihood': self.decode(s), 'groups': groups}
