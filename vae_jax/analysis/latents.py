"""The model at chosen latents: posteriors, decodes, prior samples, paths, traversals, PCA.

Numpy in, numpy out, for notebooks. Everything goes through the model contract
(`vae_jax.models.contract`), with the model as a static argument of each jitted function: it is
a frozen dataclass that compares by value, so each function compiles once per model and shape.
`params=None` means the run's own (`Run.params`: the EMA where the run keeps one).

Random draws: the prior samples use the stream of the training pictures
(`streams.prior_key(seed)`), with one key for every temperature, so the panels of different
temperatures decode the same standard-normal draws scaled by T (and the T = 1 panel equals the
training pictures' prior draws of the same count). Nothing else here is random.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.analysis.load import run_params
from vae_jax.data.preprocess import preprocess, split_id
from vae_jax.maths import streams

# Prior temperatures of the sample figure: every prior scale times T. Below 1 the draws sit
# nearer the prior's mode, where a VAE's decoder is usually better trained.
TEMPERATURES = (0.5, 0.8, 1.0)
# Traversal values of one latent unit, in units of the prior's standard deviation.
TRAVERSAL_VALUES = tuple(np.linspace(-3.0, 3.0, 9).tolist())


@functools.partial(jax.jit, static_argnums=0)
def _posterior(model, params, x):
  return model.posterior_stats(params, x)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _encode_images(model, mode, data_seed, params, images, index, split):
  x = preprocess(images, index, mode=mode, data_seed=data_seed, split=split)
  return model.posterior_stats(params, x)


@functools.partial(jax.jit, static_argnums=0)
def _decode_mean(model, params, h):
  return model.decode_mean(params, h)


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct(model, params, x):
  return model.reconstruct(params, x)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _sample(model, params, n, key, temperature):
  return model.sample(params, key, n, temperature)


def posterior(run, x, params=None):
  """{'mean', 'var'}: numpy [B, U] posterior moments of preprocessed inputs x [B, H, W, C]."""
  out = _posterior(run.model, run_params(run, params), jnp.asarray(x))
  return {k: np.asarray(v) for k, v in out.items()}


def encode_split(run, arrays, params=None, batch_size=None, split=None):
  """{'mean', 'var'}: numpy [N, U] posterior moments of every example of `arrays`.

  Batches of config.eval_batch_size (the last one padded, so one shape compiles); the images
  are preprocessed as in evaluation (a binarized dataset's draws are keyed by each example's
  index, and a static binarization's also by its base split: `split`, the split `arrays` were
  loaded from, default config.data.eval_split).
  """
  config = run.config
  ids = jnp.int32(split_id(split or config.data.eval_split))  # traced: one compile per shape
  images, index = arrays['image'], arrays['index']
  n = len(images)
  b = min(batch_size or config.eval_batch_size, n)
  means, variances = [], []
  for start in range(0, n, b):
    rows = np.arange(start, start + b) % n  # the last batch wraps round; sliced off below
    out = _encode_images(run.model, config.data.preprocess, config.data_seed,
                         run_params(run, params), images[rows], index[rows], ids)
    keep = min(b, n - start)
    means.append(np.asarray(out['mean'])[:keep])
    variances.append(np.asarray(out['var'])[:keep])
  return {'mean': np.concatenate(means), 'var': np.concatenate(variances)}


def decode(run, h, params=None):
  """E[x|h] for latents h [..., U]: numpy [..., H, W, C] in [0, 1]."""
  h = np.asarray(h, np.float32)
  flat = h.reshape(-1, h.shape[-1])
  out = np.asarray(_decode_mean(run.model, run_params(run, params), jnp.asarray(flat)))
  return out.reshape(*h.shape[:-1], *out.shape[1:])


def reconstruct(run, x, params=None):
  """E[x|h] at the posterior mean of each preprocessed x: numpy [B, H, W, C] in [0, 1]."""
  return np.asarray(_reconstruct(run.model, run_params(run, params), jnp.asarray(x)))


def prior_samples(run, n, temperatures=TEMPERATURES, params=None):
  """{T: {'means': E[x|h], 'samples': x ~ p(x|h)}} for h = T eps, the same eps for every T."""
  key = streams.prior_key(run.config.seed)
  out = {}
  for t in temperatures:
    s = _sample(run.model, run_params(run, params), int(n), key, float(t))
    out[float(t)] = {k: np.asarray(v) for k, v in s.items()}
  return out


def lerp(a, b, ts):
  """Points (1 - t) a + t b: [len(ts), U] for latents a, b [U]."""
  a, b, ts = np.asarray(a), np.asarray(b), np.asarray(ts)[:, None]
  return (1.0 - ts) * a + ts * b


def slerp(a, b, ts):
  """Spherical interpolation (Shoemake 1985; White 2016 for VAEs): [len(ts), U].

  Moves along the great circle between the directions of a and b, with the norm interpolated
  linearly, so it never passes through the low-norm middle of the prior where few encodings
  lie (a straight line between two N(0, I) draws does). Equals a at t = 0 and b at t = 1.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  ts = np.asarray(ts, np.float64)[:, None]
  na, nb = np.linalg.norm(a), np.linalg.norm(b)
  if na == 0 or nb == 0:
    return lerp(a, b, ts[:, 0])
  ua, ub = a / na, b / nb
  omega = math.acos(float(np.clip(ua @ ub, -1.0, 1.0)))
  if math.sin(omega) < 1e-6:  # (anti)parallel: the great circle is not unique
    return lerp(a, b, ts[:, 0])
  direction = (np.sin((1.0 - ts) * omega) * ua + np.sin(ts * omega) * ub) / math.sin(omega)
  return direction * ((1.0 - ts) * na + ts * nb)


def interpolate(run, x_a, x_b, num=10, method='linear', params=None):
  """Decoded paths between the posterior means of x_a [P, ...] and x_b [P, ...].

  Returns numpy [P, num, H, W, C]: path p at t = 0, 1/(num-1), ..., 1, so its first and last
  images are the reconstructions of x_a[p] and x_b[p].
  """
  path = {'linear': lerp, 'spherical': slerp}[method]
  ma, mb = posterior(run, x_a, params)['mean'], posterior(run, x_b, params)['mean']
  ts = np.linspace(0.0, 1.0, num)
  h = np.stack([path(a, b, ts) for a, b in zip(ma, mb, strict=True)])  # [P, num, U]
  return decode(run, h, params)


def traverse(run, x, dims, values=TRAVERSAL_VALUES, params=None):
  """Latent traversals: numpy [B, len(dims), len(values), H, W, C].

  For each x[b] the posterior mean is kept except unit dims[i], which is set to each value.
  """
  base = posterior(run, x, params)['mean']  # [B, U]
  h = np.repeat(base[:, None, None, :], len(dims), 1).repeat(len(values), 2)
  for i, d in enumerate(dims):
    h[:, i, :, d] = np.asarray(values)
  return decode(run, h, params)


def pca(points, k=2):
  """(projections [N, k], explained variance fractions [k]) of points [N, U]."""
  centred = np.asarray(points, np.float64) - np.mean(points, axis=0)
  _, s, vt = np.linalg.svd(centred, full_matrices=False)
  var = np.square(s)
  return centred @ vt[:k].T, var[:k] / max(var.sum(), 1e-30)
