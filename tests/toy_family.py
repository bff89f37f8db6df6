"""A model family of a test's own, added as a researcher would: one file, no library file edited.

A single-layer VAE whose prior is learned: p(h) = N(m, diag s^2) with m and s parameters
(`--config.model.kind=tests.toy_family`, its fields in `config.model.toy`). It provides the
model contract (vae_jax/models/contract.py) with its own networks, and declares per-unit KLs to
its own prior (kl_units) but not a standard prior.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vae_jax.maths import gaussians, likelihoods
from vae_jax.maths.gaussians import standard_normal_noise
from vae_jax.models.contract import Capabilities

NAME = 'toy'


def get_config():
  c = ml_collections.ConfigDict()
  # Width of the one hidden layer of the encoder and of the decoder.
  c.width = 32
  # Initial log-scale of the learned prior.
  c.prior_log_scale = 0.0
  return c


def validate(config):
  from vae_jax.config.validation import ConfigError
  if config.model.toy.width <= 0:
    raise ConfigError('config.model.toy.width must be > 0.')
  if config.model.likelihood != 'bernoulli':
    raise ConfigError('the toy family decodes Bernoulli logits: set model.likelihood=bernoulli.')


def capabilities(model_cfg):
  return Capabilities(
      kl_units=True, group_kl=False, diagonal_posterior=True, standard_prior=False,
      description=f'learned-prior toy VAE: {model_cfg.latent_dim} units, prior N(m, diag s^2)',
      prior_description='h ~ N(m, T^2 diag(s^2)) with m and s learned')


class _Net(nn.Module):
  image_shape: tuple
  latent_dim: int
  width: int
  prior_log_scale: float

  def setup(self):
    d = self.latent_dim
    self.enc = nn.Dense(self.width)
    self.enc_mean, self.enc_log_scale = nn.Dense(d), nn.Dense(d)
    self.dec = nn.Dense(self.width)
    self.dec_out = nn.Dense(math.prod(self.image_shape))
    self.p_mean = self.param('prior_mean', nn.initializers.zeros, (d,))
    self.p_log_scale = self.param('prior_log_scale',
                                  nn.initializers.constant(self.prior_log_scale), (d,))

  def encode(self, x):
    f = nn.relu(self.enc(x.reshape(x.shape[0], -1).astype(jnp.float32)))
    return {'mean': self.enc_mean(f), 'log_scale': self.enc_log_scale(f)}  # [B, D] each

  def decode(self, h):
    logits = self.dec_out(nn.relu(self.dec(h)))
    return {'logits': logits.reshape(*h.shape[:-1], *self.image_shape)}  # [..., H, W, C]

  def prior(self):
    return {'mean': self.p_mean, 'log_scale': self.p_log_scale}  # [D] each

  def __call__(self, x, h):
    return self.encode(x), self.decode(h), self.prior()


@dataclasses.dataclass(frozen=True)
class ToyVAE:
  network: _Net
  capabilities: Capabilities

  @property
  def unit_groups(self):
    return (self.network.latent_dim,)

  def _apply(self, params, method, *args):
    return self.network.apply({'params': params}, *args, method=method)

  def init(self, key, x):
    return self.network.init(key, x, jnp.zeros((x.shape[0], self.network.latent_dim)))['params']

  def encode(self, params, x):
    return self._apply(params, 'encode', x)

  def terms(self, params, x, key):
    post = self.encode(params, x)
    eps = standard_normal_noise(key, x.shape[0], self.network.latent_dim)  # [B, D]
    h = gaussians.gaussian_rsample(post, eps)
    recon = -likelihoods.likelihood_log_prob('bernoulli', self._apply(params, 'decode', h), x)
    prior = self._apply(params, 'prior')
    r = post['log_scale'] - prior['log_scale']
    d = (post['mean'] - prior['mean']) * jnp.exp(-prior['log_scale'])
    kl_units = 0.5 * (jnp.square(d) + jnp.expm1(2.0 * r) - 2.0 * r)  # [B, D]
    kl = kl_units.sum(-1)
    return dict(recon=recon, kl=kl, neg_elbo=recon + kl, kl_units=kl_units)

  def log_weights(self, params, x, keys, num_samples, sample_offset=0, encoded=None):
    post = self.encode(params, x) if encoded is None else encoded
    eps = standard_normal_noise(keys, x.shape[0], self.network.latent_dim, num_samples,
                                sample_offset)  # [K, B, D]
    h = gaussians.gaussian_rsample(post, eps)
    log_px = likelihoods.likelihood_log_prob('bernoulli', self._apply(params, 'decode', h), x)
    log_p = gaussians.gaussian_log_prob(self._apply(params, 'prior'), h)
    return log_px + log_p - gaussians.gaussian_log_prob(post, h)  # [K, B]

  def sample(self, params, key, n, temperature=1.0):
    k_h, k_x = jax.random.split(key)
    prior = self._apply(params, 'prior')
    h = prior['mean'] + temperature * jnp.exp(prior['log_scale']) * jax.random.normal(
        k_h, (n, self.network.latent_dim))
    logits = self._apply(params, 'decode', h)
    return {'means': likelihoods.likelihood_mean('bernoulli', logits),
            'samples': likelihoods.likelihood_sample('bernoulli', logits, k_x)}

  def decode_mean(self, params, h):
    return likelihoods.likelihood_mean('bernoulli', self._apply(params, 'decode', h))

  def reconstruct(self, params, x):
    return self.decode_mean(params, self.encode(params, x)['mean'])

  def posterior_stats(self, params, x, key=None):
    post = self.encode(params, x)
    return {'mean': post['mean'], 'var': jnp.exp(2.0 * post['log_scale'])}


def build(model_cfg, image_shape, x_dtype=None):
  f = model_cfg.toy
  return ToyVAE(_Net(tuple(image_shape), model_cfg.latent_dim, f.width, f.prior_log_scale),
                capabilities(model_cfg))
