"""Inverse autoregressive flows (Kingma et al. 2016) over a posterior sample: MADE-style masked
layers and the IAF steps, each conditioned on a context vector from the encoder.

One step, with (m, s) = MADE(z, h_ctx) autoregressive in z (output i sees z_<i only, in the
step's order, and the whole context):
  sigma = sigmoid(s),  z <- sigma * z + (1 - sigma) * m,  log|det dz'/dz| = sum_i log sigma_i
(the paper's numerically stable form: an LSTM-like gated update, never a division). The
Jacobian of a step is triangular in its order with diagonal sigma, so the density of the last
sample z_T is
  log q(z_T | x) = log N(z_0; mu, sigma_0) - sum over steps and units of log sigma.
The order of the units is reversed between steps (step t reads them reversed when t is odd), so
every unit can depend on every other after two steps. The gate's bias starts at +2 (sigma = 0.88):
each step starts near the identity, as the paper advises.

The flow acts on the last axis: z [..., D] with a context [..., C] of the same leading axes (a
single layer's [B, D] or [K, B, D]; a convolutional hierarchy's [N, h, w, D], a flow over the
channels at every position). Parameters and computation are float32 whatever the network's
compute dtype: the flow is part of the posterior head (networks.PosteriorHead).
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# The gate's initial bias: sigma = sigmoid(2) = 0.88, so a step starts close to the identity.
GATE_BIAS_INIT = 2.0
# posterior_stats of a model with a flow: the marginal moments of q(z_T|x) are estimated from
# this many samples per example (the mean's Monte-Carlo variance, var / 256, stays well below the
# active-units threshold of 0.01), drawn in chunks of STATS_CHUNK to bound the memory.
STATS_SAMPLES = 256
STATS_CHUNK = 32


def input_degrees(dim: int, reverse: bool) -> tuple:
  """MADE degrees of the D latent units in a step's order: 1..D, or D..1 reversed."""
  degrees = tuple(range(1, dim + 1))
  return degrees[::-1] if reverse else degrees


def hidden_degrees(dim: int, width: int) -> tuple:
  """Degrees 0..D-1 of the hidden units, cycled: a unit of degree k sees z's units of degree <= k
  (degree 0: only the context), so output unit i (degree i) reads every hidden unit of degree
  < i, the context among them: even the first unit's shift and gate depend on x."""
  return tuple(k % dim for k in range(width))


@functools.cache
def degree_mask(in_degrees: tuple, out_degrees: tuple, strict: bool) -> np.ndarray:
  """The [in, out] 0/1 mask of a masked layer, built once per degree pattern (a constant of the
  traced program): a connection out <- in where deg(out) >= deg(in) (strict: >)."""
  d_in, d_out = np.asarray(in_degrees)[:, None], np.asarray(out_degrees)[None, :]
  mask = d_out > d_in if strict else d_out >= d_in
  return mask.astype(np.float32)


class MaskedDense(nn.Module):
  """A Dense layer whose kernel is multiplied by a constant degree mask (MADE)."""

  features: int
  in_degrees: Sequence[int]
  out_degrees: Sequence[int]
  strict: bool = False
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x):
    mask = degree_mask(tuple(self.in_degrees), tuple(self.out_degrees), self.strict)
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
    return jnp.dot(x, kernel * mask) + bias  # [..., features]


class IAFStep(nn.Module):
  """One IAF step: z [..., D], context [..., C] -> (z' [..., D], log sigma [..., D]).

  MADE with two masked hidden layers of `hidden` ELU units (the paper's), the context entering
  the first one through its own Dense; the shift m and the gate s are two masked output heads.
  """

  hidden: int
  reverse: bool = False  # read the units in reverse order (every other step)

  @nn.compact
  def __call__(self, z, context):
    z, context = z.astype(jnp.float32), context.astype(jnp.float32)
    d = z.shape[-1]
    deg_in, deg_h = input_degrees(d, self.reverse), hidden_degrees(d, self.hidden)
    y = MaskedDense(self.hidden, deg_in, deg_h, name='masked_in')(z)
    y = nn.elu(y + nn.Dense(self.hidden, name='context')(context))  # [..., H]
    y = nn.elu(MaskedDense(self.hidden, deg_h, deg_h, name='masked_hidden')(y))  # [..., H]
    m = MaskedDense(d, deg_h, deg_in, strict=True, name='shift')(y)  # [..., D]
    s = MaskedDense(d, deg_h, deg_in, strict=True, name='gate',
                    bias_init=nn.initializers.constant(GATE_BIAS_INIT))(y)  # [..., D]
    # sigmoid(-s) = 1 - sigma without cancellation; log_sigmoid stays finite for any s.
    z = jax.nn.sigmoid(s) * z + jax.nn.sigmoid(-s) * m
    return z, jax.nn.log_sigmoid(s)


class IAF(nn.Module):
  """`steps` IAF steps, the order reversed between them: (z_0, context) -> (z_T, log_det) with
  log_det [..., D] = each unit's sum over steps of log sigma (sum it over the units to get
  log|det dz_T/dz_0|)."""

  steps: int
  hidden: int

  @nn.compact
  def __call__(self, z, context):
    log_det = jnp.zeros(z.shape, jnp.float32)  # [..., D]
    for t in range(self.steps):
      z, log_sigma = IAFStep(self.hidden, reverse=t % 2 == 1, name=f'step_{t}')(z, context)
      log_det = log_det + log_sigma
    return z, log_det


def stats_noise(key, batch, dim, num, offset):
  """Standard normal eps [num, batch, dim] for samples offset .. offset + num - 1 of a flow
  model's posterior_stats: a single key draws chunk `offset // num` from fold_in(key, offset)
  (the batch in the global view); keys [batch] follow the evaluation convention (sample k of
  example i from fold_in(key_i, k), the estimator's own samples); None: a fixed key (0), so the
  statistics are reproducible but depend on how the examples are batched."""
  if key is None:
    key = jax.random.key(0)
  if key.ndim == 0:
    return jax.random.normal(jax.random.fold_in(key, offset), (num, batch, dim))
  ks = offset + jnp.arange(num)
  draw = lambda k, s: jax.random.normal(jax.random.fold_in(k, s), (dim,))
  return jax.vmap(lambda s: jax.vmap(lambda k: draw(k, s))(key))(ks)  # [num, B, D]


def sample_moments(draw, shape, samples=STATS_SAMPLES, chunk=STATS_CHUNK):
  """Per-unit mean and variance (ddof 0) over `samples` draws, `chunk` at a time: [B, U] each.

  draw(offset) -> z [chunk, *shape] (shape = [B, U]): samples offset .. offset + chunk - 1.
  Each chunk's mean and centred sum of squares are merged into the running ones (Chan et al.'s
  pairwise update), so the variance does not cancel in float32 however far the mean is from 0.
  """

  def add(carry, c):
    n, mean, m2 = carry  # n: the samples merged so far; mean, m2: [B, U]
    z = draw(c * chunk)  # [chunk, B, U]
    z_mean = jnp.mean(z, axis=0)
    z_m2 = jnp.sum(jnp.square(z - z_mean), axis=0)
    total = n + chunk
    delta = z_mean - mean
    return (total, mean + delta * (chunk / total),
            m2 + z_m2 + jnp.square(delta) * (n * chunk / total)), None

  zero = jnp.zeros(shape, jnp.float32)
  (_, mean, m2), _ = jax.lax.scan(add, (jnp.float32(0), zero, zero), jnp.arange(samples // chunk))
  return {'mean': mean, 'var': m2 / samples}
