"""Flax networks: encoders, decoders and the VAE network that wires them together.

The encoder maps x [B,H,W,C] to the parameters of q(h|x):
  diag: {'mean': [B,D], 'log_scale': [B,D]}
  full: {'mean': [B,D], 'scale_tril': [B,D,D]}  (lower-triangular, positive diagonal)
With `shared_covariance` the scale parameters are free parameters that do not depend on x,
broadcast to the batch. With a posterior flow (`flow_steps` > 0) the encoder's output also has
'context': [B, flow_hidden], the IAF's context vector (models/flows.py), and the VAE network
applies the flow to the Gaussian sample.

The decoder maps h [N,D] to the parameters of p(x|h), by likelihood:
  bernoulli, continuous_bernoulli: {'logits': [N,H,W,C]}
  gaussian: {'loc': [N,H,W,C] (unconstrained), 'log_scale': [H,W,C]} (log_scale a learned
    per-pixel parameter initialised at log(gaussian_sigma), or that constant)
  discretized_logistic: {'loc', 'log_scale', 'logit_weights'}, each [N,H,W,C,K]; loc is
    unconstrained on the [-1, 1] data scale (the edge bins absorb values beyond it, as in
    PixelCNN++), log_scale is clipped below at -7. With logistic_coupling='rgb' (PixelCNN++'s
    coupled form, C = 3): logit_weights [N,H,W,K] (one indicator per pixel), loc and log_scale
    [N,H,W,3,K] and coeffs [N,H,W,3,K] = tanh of the raw outputs; 10 K outputs per pixel, laid
    out as PixelCNN++'s (K logits, then per channel K locs, K log-scales, K coefficients).

No losses and no randomness live here: the maths of these parameters is in vae_jax/maths/,
and the model family built on these networks (`gaussian_vae`) draws the noise eps.
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.config import names
from vae_jax.maths.gaussians import gaussian_rsample, scale_tril_from_raw
from vae_jax.maths.likelihoods import LIKELIHOODS, LOGISTIC_COUPLINGS
from vae_jax.models import conv, flows

ENCODERS = names.ENCODERS
DECODERS = names.DECODERS
POSTERIORS = names.POSTERIORS
# Floor of the discretized-logistic log scale: below it the bin probabilities underflow.
MIN_LOGISTIC_LOG_SCALE = -7.0


def _check(name: str, value: str, allowed: Sequence[str]):
  if value not in allowed:
    raise ValueError(f'Unknown {name} {value!r}; expected one of {tuple(allowed)}.')


def to_float_input(x: jax.Array) -> jax.Array:
  """Network input: float32 in [0, 1]; integer images (0..255) are divided by 255."""
  if jnp.issubdtype(x.dtype, jnp.integer):
    return x.astype(jnp.float32) / 255.0
  return x.astype(jnp.float32)


def num_pixel_params(likelihood: str, logistic_mixtures: int) -> int:
  """Raw decoder outputs per sub-pixel for a likelihood."""
  _check('likelihood', likelihood, LIKELIHOODS)
  if likelihood == 'discretized_logistic':
    return 3 * logistic_mixtures  # loc, log_scale, logit_weights
  return 1


def num_pixel_outputs(likelihood: str, logistic_mixtures: int, channels: int,
                      logistic_coupling: str = 'none') -> int:
  """Raw decoder outputs per pixel (all its channels together)."""
  _check('logistic coupling', logistic_coupling, LOGISTIC_COUPLINGS)
  if likelihood == 'discretized_logistic' and logistic_coupling == 'rgb':
    if channels != 3:
      raise ValueError(f'logistic_coupling=rgb couples R, G and B: it needs 3 channels, got '
                       f'{channels}.')
    # K logits + per channel K locs, K log-scales and K coefficients (c0, c1, c2 over channels).
    return logistic_mixtures * (1 + 3 * channels)
  return channels * num_pixel_params(likelihood, logistic_mixtures)


@dataclasses.dataclass(frozen=True)
class LikelihoodSpec:
  """What a decoder's output head needs to know: the image and the likelihood's options.

  One frozen (hashable) value shared by the decoders and their likelihood head, so a new
  likelihood option is declared here once.
  """

  image_shape: tuple = (28, 28, 1)
  likelihood: str = 'bernoulli'
  learn_sigma: bool = True         # gaussian: learn a per-pixel sigma, else gaussian_sigma
  gaussian_sigma: float = 0.1
  logistic_mixtures: int = 1       # discretized_logistic: mixture components per sub-pixel
  logistic_coupling: str = 'none'  # discretized_logistic: none | rgb (PixelCNN++'s coupling)

  @property
  def coupled(self) -> bool:
    return self.likelihood == 'discretized_logistic' and self.logistic_coupling == 'rgb'

  @property
  def pixel_params(self) -> int:
    """Raw decoder outputs per sub-pixel (the per-channel forms only)."""
    if self.coupled:
      raise ValueError('the coupled (rgb) discretized logistic has no per-sub-pixel outputs: '
                       'its heads emit pixel_outputs per pixel.')
    return num_pixel_params(self.likelihood, self.logistic_mixtures)

  @property
  def pixel_outputs(self) -> int:
    """Raw decoder outputs per pixel: [N,H,W,pixel_outputs] is what LikelihoodHead reads."""
    return num_pixel_outputs(self.likelihood, self.logistic_mixtures, self.image_shape[-1],
                             self.logistic_coupling)


def _groups(channels: int) -> int:
  # GroupNorm needs groups that divide the channels; 32 (Flax's default) or fewer.
  return math.gcd(channels, 32)


class DenseParams(nn.Module):
  """The kernel [F,N] and bias [N] of an nn.Dense, declared without applying them.

  Same names, shapes, initialisers and random streams as nn.Dense(features), so a checkpoint
  or parameter tree is interchangeable with one made by nn.Dense.
  """

  features: int
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
    kernel = self.param('kernel', self.kernel_init, (in_features, self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,), jnp.float32)
    return kernel, bias


class PosteriorHead(nn.Module):
  """Features [B,F] -> parameters of q(h|x) (see the module docstring).

  The heads that read the features (mean, logvar and offdiag, each an nn.Dense in the
  parameter tree) run as one matmul of their concatenated kernels: one [F, sum N] product
  instead of two or three thin ones, forward and backward (about 2% of an MLP step on CPU).
  It computes in float32 whatever the network's compute dtype: bfloat16 outputs would round
  the posterior mean by a tenth to a half of a sharp posterior's std. With context_dim > 0 a
  'context' head of that many units (the flow's context vector) joins the same matmul.
  """

  latent_dim: int
  posterior: str = 'diag'
  shared_covariance: bool = False
  context_dim: int = 0  # units of the posterior flow's context head (0 = no flow)

  @nn.compact
  def __call__(self, feats: jax.Array) -> dict[str, jax.Array]:
    _check('posterior', self.posterior, POSTERIORS)
    d, b = self.latent_dim, feats.shape[0]
    f32 = jnp.float32
    full = self.posterior == 'full'
    n_off = d * (d - 1) // 2
    # The scale head outputs log-variance as in the Flax example: log_scale = 0.5 * logvar. A
    # full posterior uses it for log diag(L), so with a zero off-diagonal it equals the diagonal
    # posterior with the same parameters. The off-diagonal head starts at zero (kernel and
    # bias), so L starts diagonal and learns from the first step.
    heads = [('mean', d, nn.initializers.lecun_normal())]
    if not self.shared_covariance:
      heads.append(('logvar', d, nn.initializers.lecun_normal()))
      if full:
        heads.append(('offdiag', n_off, nn.initializers.zeros))
    if self.context_dim:
      heads.append(('context', self.context_dim, nn.initializers.lecun_normal()))
    params = [DenseParams(n, init, name=name)(feats.shape[-1]) for name, n, init in heads]
    kernel = jnp.concatenate([k for k, _ in params], axis=1)  # [F, sum N]
    bias = jnp.concatenate([bb for _, bb in params])  # [sum N]
    x, kernel, bias = nn.dtypes.promote_dtype(feats, kernel, bias, dtype=f32)
    y = jnp.dot(x, kernel) + bias  # [B, sum N]
    splits = np.cumsum([n for _, n, _ in heads])[:-1]
    outs = dict(zip([name for name, _, _ in heads], jnp.split(y, splits, axis=1), strict=True))
    mean = outs['mean']  # [B,D]
    if self.shared_covariance:
      logvar = self.param('logvar', nn.initializers.zeros, (d,), f32)  # [D]
      logvar = jnp.broadcast_to(logvar, (b, d))
    else:
      logvar = outs['logvar']  # [B,D]
    extra = {'context': outs['context']} if self.context_dim else {}  # [B, context_dim]
    if not full:
      return {'mean': mean, 'log_scale': 0.5 * logvar, **extra}
    if self.shared_covariance:
      offdiag = self.param('offdiag', nn.initializers.zeros, (n_off,), f32)  # [D(D-1)/2]
      offdiag = jnp.broadcast_to(offdiag, (b, n_off))
    else:
      offdiag = outs['offdiag']  # [B,D(D-1)/2]
    return {'mean': mean, 'scale_tril': scale_tril_from_raw(0.5 * logvar, offdiag),  # [B,D,D]
            **extra}


class LikelihoodHead(nn.Module):
  """Raw decoder outputs -> parameters of p(x|h) (see the module docstring).

  raw is [N,H,W,Q] with Q = spec.pixel_outputs, or, for the per-channel forms, already split
  per sub-pixel as [N,H,W,C,P] with P = spec.pixel_params (the same numbers: Q = C P).
  """

  spec: LikelihoodSpec

  @nn.compact
  def __call__(self, raw: jax.Array) -> dict[str, jax.Array]:
    spec = self.spec
    _check('likelihood', spec.likelihood, LIKELIHOODS)
    raw = raw.astype(jnp.float32)
    if spec.coupled:
      return _coupled_logistic_params(raw, spec.logistic_mixtures)
    if raw.ndim == 4:  # [N,H,W,C*P] -> [N,H,W,C,P]
      raw = raw.reshape(raw.shape[:3] + (spec.image_shape[-1], spec.pixel_params))
    if spec.likelihood in ('bernoulli', 'continuous_bernoulli'):
      return {'logits': raw[..., 0]}  # [N,H,W,C]
    if spec.likelihood == 'gaussian':
      shape = tuple(spec.image_shape)
      log_sigma = math.log(spec.gaussian_sigma)
      if spec.learn_sigma:
        init = nn.initializers.constant(log_sigma)
        log_scale = self.param('log_sigma', init, shape, jnp.float32)  # [H,W,C]
      else:
        log_scale = jnp.full(shape, log_sigma, jnp.float32)  # [H,W,C], constant
      return {'loc': raw[..., 0], 'log_scale': log_scale}
    k = spec.logistic_mixtures
    return {
        'loc': raw[..., :k],  # [N,H,W,C,K]
        'log_scale': jnp.maximum(raw[..., k : 2 * k], MIN_LOGISTIC_LOG_SCALE),
        'logit_weights': raw[..., 2 * k :],
    }


def _coupled_logistic_params(raw: jax.Array, k: int) -> dict[str, jax.Array]:
  """[N,H,W,10K] -> the coupled form's parameters, in PixelCNN++'s layout."""
  per_channel = raw[..., k:].reshape(raw.shape[:-1] + (3, 3 * k))  # [N,H,W,3,3K]
  return {
      'logit_weights': raw[..., :k],  # [N,H,W,K]
      'loc': per_channel[..., :k],  # [N,H,W,3,K]
      'log_scale': jnp.maximum(per_channel[..., k : 2 * k], MIN_LOGISTIC_LOG_SCALE),
      'coeffs': jnp.tanh(per_channel[..., 2 * k :]),  # [N,H,W,3,K]: (c0, c1, c2)
  }


class MLPEncoder(nn.Module):
  """Flatten, Dense + relu per hidden width, then the posterior heads.

  With hidden=(500,), latent_dim=20 on 28x28x1 this is the Flax example's encoder.
  """

  hidden: Sequence[int] = (500,)
  latent_dim: int = 20
  posterior: str = 'diag'
  shared_covariance: bool = False
  context_dim: int = 0  # the posterior flow's context head (PosteriorHead)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    x = to_float_input(x)
    y = x.reshape((x.shape[0], -1))  # [B,H*W*C]
    for i, width in enumerate(self.hidden):
      y = nn.relu(nn.Dense(width, dtype=self.dtype, name=f'hidden_{i}')(y))
    return PosteriorHead(self.latent_dim, self.posterior, self.shared_covariance,
                         self.context_dim, name='head')(y)


class MLPDecoder(nn.Module):
  """Dense + relu per hidden width (reversed encoder order), Dense to every pixel's params.

  With hidden=(500,) and a Bernoulli likelihood on 28x28x1 this is the Flax example's decoder.
  """

  hidden: Sequence[int] = (500,)  # encoder order; the decoder runs them reversed
  spec: LikelihoodSpec = LikelihoodSpec()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array) -> dict[str, jax.Array]:
    shape, q = tuple(self.spec.image_shape), self.spec.pixel_outputs
    y = h  # [N,D]
    for i, width in enumerate(reversed(tuple(self.hidden))):
      y = nn.relu(nn.Dense(width, dtype=self.dtype, name=f'hidden_{i}')(y))
    # The likelihood's layer computes in float32 (see PosteriorHead), a few % of the FLOPs.
    y = nn.Dense(math.prod(shape[:2]) * q, dtype=jnp.float32, name='out')(y)
    raw = y.reshape((h.shape[0], *shape[:2], q))  # [N,H,W,Q]
    return LikelihoodHead(self.spec, name='likelihood')(raw)


class ResBlock(nn.Module):
  """Pre-activation residual block: (GroupNorm, swish, 3x3 conv) x 2, plus the input."""

  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = x  # [B,h,w,c]
    for i in range(2):
      y = nn.GroupNorm(_groups(self.channels), dtype=self.dtype, name=f'norm_{i}')(y)
      y = nn.swish(y)
      # The last conv starts at zero, so each block starts as the identity.
      init = nn.initializers.zeros if i == 1 else nn.initializers.lecun_normal()
      y = conv.Conv(self.channels, (3, 3), dtype=self.dtype, kernel_init=init, name=f'conv_{i}')(y)
    return x + y


def remat_if(block_cls, remat: bool):
  """The block class, rematerialised (nn.remat) when `remat`: its activations are recomputed
  in the backward pass instead of kept, trading compute for memory; parameters and numbers
  are unchanged."""
  return nn.remat(block_cls) if remat else block_cls


def stage_sizes(size: int, num_stages: int) -> list[int]:
  """Spatial sizes through the stages: each halves, rounding up (28 -> 14 -> 7 -> 4)."""
  sizes = [size]
  for _ in range(num_stages):
    sizes.append(-(-sizes[-1] // 2))
  return sizes


class ConvEncoder(nn.Module):
  """Per stage: stride-2 3x3 conv to conv_channels[i], then conv_blocks residual blocks.

  GroupNorm only (no BatchNorm, so no mutable state). Then GroupNorm, swish, flatten, and the
  posterior heads.
  """

  conv_channels: Sequence[int] = (32, 64)
  conv_blocks: int = 1
  latent_dim: int = 20
  posterior: str = 'diag'
  shared_covariance: bool = False
  context_dim: int = 0  # the posterior flow's context head (PosteriorHead)
  dtype: Any = jnp.float32
  remat: bool = False  # rematerialise each residual block (remat_if)

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    y = to_float_input(x)  # [B,H,W,C]
    for i, ch in enumerate(self.conv_channels):
      y = conv.Conv(ch, (3, 3), strides=(2, 2), dtype=self.dtype, name=f'down_{i}')(y)
      for j in range(self.conv_blocks):
        y = remat_if(ResBlock, self.remat)(ch, self.dtype, name=f'block_{i}_{j}')(y)
    y = nn.swish(nn.GroupNorm(_groups(y.shape[-1]), dtype=self.dtype, name='norm_out')(y))
    y = y.reshape((y.shape[0], -1))  # [B,h*w*c] at the lowest resolution
    return PosteriorHead(self.latent_dim, self.posterior, self.shared_covariance,
                         self.context_dim, name='head')(y)


class ConvDecoder(nn.Module):
  """Mirror of ConvEncoder: Dense to the lowest resolution, then per stage (reversed)
  conv_blocks residual blocks and a 2x nearest upsample + 3x3 conv, cropped to the encoder's
  size at that stage (so odd sizes such as 7 come back exactly). Then GroupNorm, swish and a
  3x3 conv to every sub-pixel's params.
  """

  conv_channels: Sequence[int] = (32, 64)
  conv_blocks: int = 1
  spec: LikelihoodSpec = LikelihoodSpec()
  dtype: Any = jnp.float32
  remat: bool = False  # rematerialise each residual block (remat_if)

  @nn.compact
  def __call__(self, h: jax.Array) -> dict[str, jax.Array]:
    height, width, _ = self.spec.image_shape
    chans = tuple(self.conv_channels)
    n_stages = len(chans)
    hs, ws = stage_sizes(height, n_stages), stage_sizes(width, n_stages)
    q = self.spec.pixel_outputs
    y = nn.Dense(hs[-1] * ws[-1] * chans[-1], dtype=self.dtype, name='dense_in')(h)
    y = y.reshape((h.shape[0], hs[-1], ws[-1], chans[-1]))  # [N,h,w,c_last]
    for i in reversed(range(n_stages)):
      for j in range(self.conv_blocks):
        y = remat_if(ResBlock, self.remat)(chans[i], self.dtype, name=f'block_{i}_{j}')(y)
      y = jnp.repeat(jnp.repeat(y, 2, axis=1), 2, axis=2)[:, : hs[i], : ws[i]]  # [N,hs[i],ws[i],c]
      y = conv.Conv(chans[max(i - 1, 0)], (3, 3), dtype=self.dtype, name=f'up_{i}')(y)
    y = nn.swish(nn.GroupNorm(_groups(y.shape[-1]), dtype=self.dtype, name='norm_out')(y))
    # The likelihood's layer computes in float32 (see PosteriorHead).
    raw = conv.Conv(q, (3, 3), dtype=jnp.float32, name='conv_out')(y)  # [N,H,W,Q]
    return LikelihoodHead(self.spec, name='likelihood')(raw)


class VAE(nn.Module):
  """Encoder -> q(h|x) -> reparameterized sample h -> decoder -> p(x|h) params.

  Fields mirror `config.model`. Call with `model.apply(params, x, eps)`, or one half with
  `method='encode'` / `method='decode'`.
  """

  image_shape: Sequence[int] = (28, 28, 1)
  encoder: str = 'mlp'
  decoder: str = 'mlp'
  hidden: Sequence[int] = (500,)
  conv_channels: Sequence[int] = (32, 64)
  conv_blocks: int = 1
  latent_dim: int = 20
  posterior: str = 'diag'
  shared_covariance: bool = False
  likelihood: str = 'bernoulli'
  learn_sigma: bool = True
  gaussian_sigma: float = 0.1
  logistic_mixtures: int = 1
  logistic_coupling: str = 'none'
  # K learned pseudo-inputs, for a VampPrior (0 = none: the family's prior is N(0, I)).
  num_pseudo_inputs: int = 0
  # An inverse autoregressive flow on the posterior sample (flows.IAF): its steps (0 = none) and
  # the width of its masked layers and of the encoder's context head.
  flow_steps: int = 0
  flow_hidden: int = 0
  # Computation dtype; parameters, outputs and the heads' last layers stay float32.
  dtype: Any = jnp.float32
  remat: bool = False  # rematerialise the conv encoder's and decoder's residual blocks

  def setup(self):
    _check('encoder', self.encoder, ENCODERS)
    _check('decoder', self.decoder, DECODERS)
    post = dict(latent_dim=self.latent_dim, posterior=self.posterior,
                shared_covariance=self.shared_covariance, dtype=self.dtype,
                context_dim=self.flow_hidden if self.flow_steps else 0)
    lik = dict(spec=LikelihoodSpec(
        image_shape=tuple(self.image_shape), likelihood=self.likelihood,
        learn_sigma=self.learn_sigma, gaussian_sigma=self.gaussian_sigma,
        logistic_mixtures=self.logistic_mixtures, logistic_coupling=self.logistic_coupling),
        dtype=self.dtype)
    if self.encoder == 'mlp':
      self.enc = MLPEncoder(hidden=tuple(self.hidden), **post)
    else:
      self.enc = ConvEncoder(
          conv_channels=tuple(self.conv_channels), conv_blocks=self.conv_blocks,
          remat=self.remat, **post)
    if self.decoder == 'mlp':
      self.dec = MLPDecoder(hidden=tuple(self.hidden), **lik)
    else:
      self.dec = ConvDecoder(
          conv_channels=tuple(self.conv_channels), conv_blocks=self.conv_blocks,
          remat=self.remat, **lik)
    if self.num_pseudo_inputs:
      # The VampPrior's pseudo-inputs are the sigmoid of these logits, so they stay inside the
      # encoder's input range (0, 1) with a gradient everywhere (a hard-tanh clip would strand
      # any that cross an edge). Logits ~ N(0, 0.1^2): inputs 0.5 +- 0.025, grey images whose
      # small differences break the symmetry between the mixture's components.
      self.pseudo_input_logits = self.param(
          'pseudo_input_logits', nn.initializers.normal(0.1),
          (self.num_pseudo_inputs, *self.image_shape), jnp.float32)  # [K,H,W,C]
    if self.flow_steps:
      self.flow = flows.IAF(self.flow_steps, self.flow_hidden)

  def pseudo_inputs(self) -> jax.Array:
    """The VampPrior's K pseudo-inputs, [K,H,W,C] floats in (0, 1), like encoder inputs."""
    return jax.nn.sigmoid(self.pseudo_input_logits)

  def encode_pseudo_inputs(self) -> dict[str, jax.Array]:
    """q(h|u_k) of each pseudo-input u_k: the VampPrior's components, posterior params [K,...]."""
    return self.enc(self.pseudo_inputs())

  def encode(self, x: jax.Array) -> dict[str, jax.Array]:
    """x [B,H,W,C] (floats in [0,1] or integers 0..255) -> posterior params (and, with a flow,
    its 'context' [B, flow_hidden])."""
    return self.enc(x)

  def flow_forward(self, h0: jax.Array, context: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The posterior flow: base samples h0 [..., B, D] (leading sample axes allowed) and the
    encoder's context [B, C] -> (h [..., B, D], log|det dh/dh0| [..., B])."""
    context = jnp.broadcast_to(context, (*h0.shape[:-1], context.shape[-1]))
    h, log_det = self.flow(h0, context)
    return h, jnp.sum(log_det, axis=-1)

  def decode(self, h: jax.Array) -> dict[str, jax.Array]:
    """h [..., D] (e.g. [N,D] or [K,B,D]) -> likelihood params with the same leading dims."""
    lead = h.shape[:-1]
    out = self.dec(h.reshape((-1, h.shape[-1])))  # [N,D] -> [N,...]
    for k, v in out.items():
      # The Gaussian log_scale is per pixel, not per example: it has no leading dims.
      if not (k == 'log_scale' and self.likelihood == 'gaussian'):
        out[k] = v.reshape((*lead, *v.shape[1:]))
    return out

  def __call__(self, x: jax.Array, eps: jax.Array) -> dict[str, Any]:
    """x [B,H,W,C], eps [B,D] standard normal -> {'posterior', 'h': [B,D], 'likelihood'}.

    eps may carry leading sample dims, [K,B,D]; then h and the likelihood params do too. With
    a flow, 'posterior' is the base Gaussian (its 'context' apart), 'h0' the Gaussian sample,
    'h' the flow's output and 'log_det' [B] (or [K,B]) log|det dh/dh0|.
    """
    posterior = self.encode(x)
    if not self.flow_steps:
      h = gaussian_rsample(posterior, eps)  # [B,D] or [K,B,D]
      return {'posterior': posterior, 'h': h, 'likelihood': self.decode(h)}
    posterior = dict(posterior)
    context = posterior.pop('context')  # [B,C]
    h0 = gaussian_rsample(posterior, eps)  # [B,D] or [K,B,D]
    h, log_det = self.flow_forward(h0, context)
    return {'posterior': posterior, 'context': context, 'h0': h0, 'h': h, 'log_det': log_det,
            'likelihood': self.decode(h)}


def build_network(model_cfg, image_shape: Sequence[int], num_pseudo_inputs: int = 0) -> VAE:
  """The Flax VAE network described by `config.model` for images of image_shape (with
  num_pseudo_inputs learned pseudo-inputs for a VampPrior; 0 = none; an IAF on the posterior
  sample where model.posterior_flow=iaf)."""
  iaf = model_cfg.get('posterior_flow', 'none') == 'iaf'
  return VAE(
      image_shape=tuple(image_shape),
      encoder=model_cfg.encoder,
      decoder=model_cfg.decoder,
      hidden=tuple(model_cfg.hidden),
      conv_channels=tuple(model_cfg.conv_channels),
      conv_blocks=model_cfg.conv_blocks,
      latent_dim=model_cfg.latent_dim,
      posterior=model_cfg.posterior,
      shared_covariance=model_cfg.shared_covariance,
      likelihood=model_cfg.likelihood,
      learn_sigma=model_cfg.learn_sigma,
      gaussian_sigma=model_cfg.gaussian_sigma,
      logistic_mixtures=model_cfg.logistic_mixtures,
      logistic_coupling=model_cfg.logistic_coupling,
      num_pseudo_inputs=num_pseudo_inputs,
      flow_steps=model_cfg.flow_steps if iaf else 0,
      flow_hidden=model_cfg.flow_hidden if iaf else 0,
      dtype=jnp.dtype(model_cfg.dtype),
      remat=bool(model_cfg.remat),
  )
