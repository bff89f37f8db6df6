"""Image likelihoods p(x|h) in pure jnp: Bernoulli, continuous Bernoulli, Gaussian and the
discretized logistic mixture (independent or PixelCNN++'s RGB-coupled form); log-probability,
mean and sampling, and nats to bits per dimension.

Each is a proper density (or mass) with its normaliser, named by `LIKELIHOODS`, with one entry
point each for log-probability, mean and sampling. All values are in nats, stable in float32.
"""

import math

import jax
import jax.numpy as jnp

from vae_jax.config import names

LIKELIHOODS = names.LIKELIHOODS
# Forms of the discretized logistic mixture (see vae_jax.config.names).
LOGISTIC_COUPLINGS = names.LOGISTIC_COUPLINGS

_LOG_2PI = math.log(2.0 * math.pi)
# Continuous Bernoulli: below this |logit| the closed forms cancel catastrophically and are
# replaced by Taylor series (truncation error < 1e-8 there, far below float32 resolution).
_CB_TAYLOR_CUT = 0.5
# Discretized logistic: 256 bins of width 2/255 on [-1, 1].
_NUM_BINS = 256



@jax.custom_jvp
def softplus(x):
  """log(1 + e^x), stable for any x, as max(x, 0) + log1p(e^-|x|).

  Equal to jax.nn.softplus to float32 rounding and about 3x faster on CPU (measured on
  [8000, 784] logits: jax's form goes through logaddexp), which matters where the likelihood
  is evaluated for every pixel of K samples. The derivative is sigmoid(x) from the same
  exponential (plain autodiff of max and |x| would give 0 at x = 0 instead of 1/2).
  """
  return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


@softplus.defjvp
def _softplus_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  e = jnp.exp(-jnp.abs(x))
  sigmoid = jnp.where(x >= 0, 1.0, e) / (1.0 + e)
  return jnp.maximum(x, 0.0) + jnp.log1p(e), sigmoid * t


def _sum_event(log_p, x):
  """Sums per-element log-probabilities over x's non-batch axes: [..., B]."""
  event_ndim = x.ndim - 1
  return jnp.sum(log_p, axis=tuple(range(-event_ndim, 0))) if event_ndim else log_p


def _bernoulli_log_prob(logits, x):
  # x log sigmoid(l) + (1 - x) log sigmoid(-l) = x l - softplus(l), stable for any l.
  return x * logits - softplus(logits)


def _cb_log_norm(logits):
  """log C of the continuous Bernoulli, in terms of its logit eta.

  With lambda = sigmoid(eta), 1 - 2 lambda = -tanh(eta / 2) and artanh(1 - 2 lambda) = -eta / 2,
  so C = 2 artanh(1 - 2 lambda) / (1 - 2 lambda) = eta / tanh(eta / 2), an even function equal to
  2 at eta = 0. With a = |eta|: log C = log a + log1p(exp(-a)) - log(-expm1(-a)), exact for large
  a; near a = 0 it cancels, so there log C = log 2 + log(u coth u), u = eta / 2, by its series.
  """
  a = jnp.abs(logits)
  small = a < _CB_TAYLOR_CUT
  a_safe = jnp.where(small, 1.0, a)  # keeps the unused branch (and its gradient) finite
  exact = jnp.log(a_safe) + jnp.log1p(jnp.exp(-a_safe)) - jnp.log(-jnp.expm1(-a_safe))
  u2 = jnp.square(0.5 * jnp.where(small, logits, 0.0))
  # log(u coth u) = u^2/3 - 7u^4/90 + 62u^6/2835 - 127u^8/18900 + O(u^10)
  series = math.log(2.0) + u2 * (1 / 3 + u2 * (-7 / 90 + u2 * (62 / 2835 - u2 * 127 / 18900)))
  return jnp.where(small, series, exact)


def _cb_log_prob(logits, x):
  # The unnormalised part is the Bernoulli cross-entropy; the normaliser makes it a density.
  return _bernoulli_log_prob(logits, x) + _cb_log_norm(logits)


def _cb_mean(logits):
  """E[x] = 1/2 + (coth u - 1/u) / 2 with u = eta / 2 (the Langevin function)."""
  small = jnp.abs(logits) < _CB_TAYLOR_CUT
  u = 0.5 * jnp.where(small, 1.0, logits)
  exact = 1.0 / jnp.tanh(u) - 1.0 / u
  us = 0.5 * jnp.where(small, logits, 0.0)
  u2 = jnp.square(us)
  # coth u - 1/u = u/3 - u^3/45 + 2u^5/945 - u^7/4725 + O(u^9)
  series = us * (1 / 3 + u2 * (-1 / 45 + u2 * (2 / 945 - u2 / 4725)))
  return 0.5 + 0.5 * jnp.where(small, series, exact)


def _cb_sample(logits, key):
  """Inverse-CDF sample: x = log1p(v expm1(eta)) / eta for v ~ U(0, 1).

  Written for a = |eta| as 1 + log1p((1 - v) expm1(-a)) / a, which neither overflows for large
  a nor cancels for small a; negative eta uses the symmetry x -> 1 - x, eta -> -eta.
  """
  v = jax.random.uniform(key, logits.shape, logits.dtype)
  positive = logits >= 0
  v = jnp.where(positive, v, 1.0 - v)
  a = jnp.abs(logits)
  tiny = a < 1e-6
  a_safe = jnp.where(tiny, 1.0, a)
  y = 1.0 + jnp.log1p((1.0 - v) * jnp.expm1(-a_safe)) / a_safe
  y = jnp.where(tiny, v, y)  # the uniform density is the eta -> 0 limit
  return jnp.clip(jnp.where(positive, y, 1.0 - y), 0.0, 1.0)


def _gaussian_log_prob(loc, log_scale, x):
  z = (x - loc) * jnp.exp(-log_scale)
  return -0.5 * jnp.square(z) - log_scale - 0.5 * _LOG_2PI


def _log_sigmoid_diff(a, b, delta):
  """log(sigmoid(a) - sigmoid(b)) for a > b, with delta = a - b > 0 given directly.

  sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(-delta)), so no difference of two
  nearly equal probabilities is ever formed: stable in both tails and for tiny or huge scales.
  Passing delta (rather than forming a - b) keeps it exact where a and b are large.
  """
  return -softplus(-a) - softplus(b) + jnp.log(-jnp.expm1(-delta))


def _bin_edges(x, dtype):
  """(lower, upper) edges of bin x (integers 0..255) on the [-1, 1] scale, in dtype.

  Bin v is [(2v - 1 - 255) / 255, (2v + 1 - 255) / 255). The numerators are odd integers,
  exact in float32, so each edge is the correctly rounded quotient (see _div255); the former
  (2v + 1) (1/255) - 1 rounded three times, up to 3x the error, and never gave the middle edge
  exactly 0, errors that a small scale magnifies. Neighbouring bins share a numerator, so a
  shared edge is the same float on both sides and the masses telescope to 1 even for scales
  near float32 resolution.
  """
  centred = 2.0 * x.astype(dtype) - 255.0  # exact
  return _div255(centred - 1.0), _div255(centred + 1.0)


def _div255(c):
  """c / 255, correctly rounded for the integers |c| <= 256 in float32.

  As c / 256 + c / 65280 (1/255 = 1/256 + 1/(256 * 255)): the first term is exact and the
  second 255 times smaller, so the sum's one rounding gives the correctly rounded quotient
  (the tests check all 513 numerators). A plain `c / 255.0` is compiled by XLA into c times
  the rounded reciprocal, up to 1.25 ulp off.
  """
  return c * (1.0 / 256.0) + c * (1.0 / 65280.0)


def _rescaled(x, dtype):
  """The bin centre of x (integers 0..255) on the [-1, 1] scale: (2x - 255) / 255."""
  return _div255(2.0 * x.astype(dtype) - 255.0)


def _discretized_logistic_log_mass(loc, log_scale, x):
  """log P(bin x) of each discretized logistic: [..., K] for x [...] against loc [..., K]."""
  x = x[..., None]  # against the trailing mixture axis K
  lower, upper = _bin_edges(x, loc.dtype)
  inv_scale = jnp.exp(-log_scale)
  upper = inv_scale * (upper - loc)  # [..., K]
  lower = inv_scale * (lower - loc)
  # Bin 0 takes the whole left tail and bin 255 the whole right tail, so the 256 masses sum to 1.
  return jnp.where(
      x == 0,
      -softplus(-upper),  # log sigmoid(upper)
      jnp.where(
          x == _NUM_BINS - 1,
          -softplus(lower),  # log(1 - sigmoid(lower))
          _log_sigmoid_diff(upper, lower, inv_scale * (2.0 / 255.0)),
      ),
  )


def _discretized_logistic_log_prob(loc, log_scale, logit_weights, x):
  """Per-sub-pixel log-mass of a mixture of discretized logistics: [..., H, W, C]."""
  log_mass = _discretized_logistic_log_mass(loc, log_scale, x)  # [..., K]
  log_mix = jax.nn.log_softmax(logit_weights, axis=-1)
  return jax.nn.logsumexp(log_mix + log_mass, axis=-1)


def _coupled_locs(loc, coeffs, r, g):
  """The R, G, B locations [..., K] given the earlier channels' values r, g [..., K].

  PixelCNN++'s autoregression within a pixel: mu_G = loc_G + c0 r, mu_B = loc_B + c1 r + c2 g,
  with loc [..., 3, K] and coeffs [..., 3, K] = (c0, c1, c2).
  """
  mu_r = loc[..., 0, :]
  mu_g = loc[..., 1, :] + coeffs[..., 0, :] * r
  mu_b = loc[..., 2, :] + coeffs[..., 1, :] * r + coeffs[..., 2, :] * g
  return mu_r, mu_g, mu_b


def _check_rgb(x_or_loc, axis):
  channels = x_or_loc.shape[axis]
  if channels != 3:
    raise ValueError(f'the coupled (rgb) discretized logistic needs 3 channels, got {channels}')


def _coupled_logistic_log_prob(loc, log_scale, logit_weights, coeffs, x):
  """Per-pixel log-mass of PixelCNN++'s coupled mixture: [..., H, W].

  One mixture indicator per pixel (logit_weights [..., H, W, K]) and, per component, a
  discretized logistic for R, for G given R and for B given R and G, each conditioned on the
  earlier channels' actual values rescaled to [-1, 1] (loc, log_scale, coeffs [..., H, W, 3, K]).
  """
  _check_rgb(x, -1)
  dtype = loc.dtype
  r, g = (_rescaled(x[..., c], dtype)[..., None] for c in (0, 1))  # [..., H, W, 1]
  locs = _coupled_locs(loc, coeffs, r, g)  # 3 x [..., H, W, K]
  log_mass = sum(_discretized_logistic_log_mass(mu, log_scale[..., c, :], x[..., c])
                 for c, mu in enumerate(locs))  # [..., H, W, K]: the channels multiply
  log_mix = jax.nn.log_softmax(logit_weights, axis=-1)
  return jax.nn.logsumexp(log_mix + log_mass, axis=-1)


def _discretized_logistic_mean(loc, log_scale, logit_weights):
  """Mixture mean of the logistic clipped to [-1, 1], mapped to [0, 1].

  E[clip(Y, -1, 1)] = -1 + s (softplus((mu + 1) / s) - softplus((mu - 1) / s)) in closed form;
  the discretized value is within half a bin of clip(Y), so this is within 1/510 of its mean.
  """
  clipped = _clipped_logistic_mean(loc, log_scale)
  mean = jnp.sum(jax.nn.softmax(logit_weights, axis=-1) * clipped, axis=-1)
  return jnp.clip(0.5 * (mean + 1.0), 0.0, 1.0)


def _clipped_logistic_mean(loc, log_scale):
  """E[clip(Y, -1, 1)] for Y logistic(loc, exp(log_scale)), in closed form: [...]."""
  s = jnp.exp(log_scale)
  return -1.0 + s * (softplus((loc + 1.0) / s) - softplus((loc - 1.0) / s))


def _coupled_logistic_mean(loc, log_scale, logit_weights, coeffs):
  """Mixture mean of the coupled form, mapped to [0, 1]: [..., H, W, 3].

  Per component, the channels' clipped-logistic means in order, each earlier channel entering
  the later locations through its component mean: m_R = E[clip R], m_G = E[clip G] at
  mu_G = loc_G + c0 m_R, m_B likewise at loc_B + c1 m_R + c2 m_G; then the mixture average.
  Without the clipping the location is linear in the earlier values, so this plug-in would be
  the exact mean; the clipping makes it an approximation, exact where the scales are small
  against the distance to the edges (within 1/510 per channel of the plain form otherwise).
  """
  _check_rgb(loc, -2)
  m_r = _clipped_logistic_mean(loc[..., 0, :], log_scale[..., 0, :])  # [..., H, W, K]
  _, mu_g, _ = _coupled_locs(loc, coeffs, m_r, 0.0)
  m_g = _clipped_logistic_mean(mu_g, log_scale[..., 1, :])
  _, _, mu_b = _coupled_locs(loc, coeffs, m_r, m_g)
  m_b = _clipped_logistic_mean(mu_b, log_scale[..., 2, :])
  weights = jax.nn.softmax(logit_weights, axis=-1)[..., None, :]  # [..., H, W, 1, K]
  mean = jnp.sum(weights * jnp.stack([m_r, m_g, m_b], axis=-2), axis=-1)  # [..., H, W, 3]
  return jnp.clip(0.5 * (mean + 1.0), 0.0, 1.0)


def _discretized_logistic_sample(loc, log_scale, logit_weights, key):
  """Samples a component, then a logistic, and bins it: int32 in 0..255."""
  shape = jnp.broadcast_shapes(loc.shape, log_scale.shape, logit_weights.shape)
  key_mix, key_noise = jax.random.split(key)
  k = jax.random.categorical(key_mix, jnp.broadcast_to(logit_weights, shape), axis=-1)
  k = k[..., None]  # [..., 1], the chosen component
  loc = jnp.take_along_axis(jnp.broadcast_to(loc, shape), k, axis=-1)[..., 0]
  log_scale = jnp.take_along_axis(jnp.broadcast_to(log_scale, shape), k, axis=-1)[..., 0]
  y = loc + jnp.exp(log_scale) * jax.random.logistic(key_noise, loc.shape, loc.dtype)
  return _to_bin(y)


def _to_bin(y):
  """The bin of a continuous value y on the [-1, 1] scale: int32 in 0..255.

  Bin v covers [(2v - 1 - 255) / 255, (2v + 1 - 255) / 255); the tails go to the edge bins.
  """
  return jnp.round((jnp.clip(y, -1.0, 1.0) + 1.0) * 127.5).astype(jnp.int32)


def _coupled_logistic_sample(loc, log_scale, logit_weights, coeffs, key):
  """A component per pixel, then R, then G given R, then B given R and G: int32 [..., H, W, 3].

  Each later channel is conditioned on the earlier channels' sampled bins rescaled to [-1, 1],
  as the log-mass conditions on the data's, so the draws follow that mass exactly.
  """
  _check_rgb(loc, -2)
  key_mix, key_noise = jax.random.split(key)
  lead = jnp.broadcast_shapes(loc.shape[:-2], log_scale.shape[:-2], coeffs.shape[:-2],
                              logit_weights.shape[:-1])  # [..., H, W]
  logits = jnp.broadcast_to(logit_weights, lead + logit_weights.shape[-1:])  # [..., H, W, K]
  k = jax.random.categorical(key_mix, logits, axis=-1)[..., None, None]  # [..., H, W, 1, 1]
  pick = lambda a: jnp.take_along_axis(jnp.broadcast_to(a, lead + a.shape[-2:]), k, axis=-1)
  loc, log_scale, coeffs = pick(loc), pick(log_scale), pick(coeffs)  # [..., H, W, 3, 1]
  noise = jax.random.logistic(key_noise, lead + (3, 1), loc.dtype)
  draw = lambda mu, c: _to_bin(mu + jnp.exp(log_scale[..., c, :]) * noise[..., c, :])
  x_r = draw(loc[..., 0, :], 0)  # [..., H, W, 1]
  r = _rescaled(x_r, loc.dtype)
  _, mu_g, _ = _coupled_locs(loc, coeffs, r, 0.0)
  x_g = draw(mu_g, 1)
  _, _, mu_b = _coupled_locs(loc, coeffs, r, _rescaled(x_g, loc.dtype))
  x_b = draw(mu_b, 2)
  return jnp.concatenate([x_r, x_g, x_b], axis=-1)  # [..., H, W, 3]


def _flatten_events(params, x, trailing):
  """Elementwise work on [..., B, H*W*C] rather than [..., B, H, W, C].

  XLA's CPU loops over the 4-D form (trailing C = 1) ran the reconstruction term about 25%
  slower here. Parameters that broadcast (a per-pixel sigma shared over the batch) are
  broadcast first; anything that does not end in x's event shape is left as it was.
  """
  event = tuple(x.shape[1:])
  n = len(event)
  if n <= 1:
    return params, x
  shape = jnp.broadcast_shapes(*(v.shape for v in params.values()))
  end = len(shape) - trailing
  if end < n + 1 or tuple(shape[end - n:end]) != event:
    return params, x
  flat = shape[:end - n] + (math.prod(event),) + shape[end:]
  params = {k: jnp.broadcast_to(v, shape).reshape(flat) for k, v in params.items()}
  return params, x.reshape(x.shape[:1] + (-1,))


def _check(name):
  if name not in LIKELIHOODS:
    raise ValueError(f'unknown likelihood {name!r}; expected one of {LIKELIHOODS}')


def likelihood_log_prob(name, params, x):
  """log p(x|h) summed over all non-batch axes of x: [B] (or [..., B]).

  Likelihoods (per element, independent):
    bernoulli: {'logits'}. The Bernoulli mass for binary x. For grey x in [0, 1] it is the
      cross-entropy that the Flax VAE example trains on, NOT a normalised density on [0, 1].
    continuous_bernoulli: {'logits'}. The continuous Bernoulli density on [0, 1] (Loaiza-Ganem
      and Cunningham 2019), log normaliser included; stable at lambda = 1/2 and large |logits|.
    gaussian: {'loc', 'log_scale'}; log_scale broadcasts against loc. x real.
    discretized_logistic: {'loc', 'log_scale', 'logit_weights'}, each [..., K] (K = 1 is a
      plain logistic). x integer in 0..255; loc and scale live on the [-1, 1] scale with bins
      of width 2/255 and the tails in the edge bins (PixelCNN++, Salimans et al. 2017).
      With 'coeffs' it is PixelCNN++'s coupled form instead (x [..., H, W, 3] only): one mixture
      indicator per pixel, logit_weights [..., H, W, K]; loc and log_scale [..., H, W, 3, K];
      coeffs [..., H, W, 3, K] = (c0, c1, c2), in [-1, 1] (the decoder bounds them by tanh),
      with mu_G = loc_G + c0 r and mu_B = loc_B + c1 r + c2 g, where r, g are the pixel's R
      and G values rescaled to [-1, 1]. Not independent over the channels of a pixel.

  Args:
    name: one of LIKELIHOODS.
    params: dict of arrays [B, H, W, C] (with a trailing [K] for the mixture); they may carry
      leading sample axes, against which x broadcasts.
    x: data, [B, H, W, C].

  Returns:
    log p(x|h): [B], or [..., B] with the params' leading sample axes.
  """
  _check(name)
  if 'coeffs' in params:
    log_p = _coupled_logistic_log_prob(params['loc'], params['log_scale'],
                                       params['logit_weights'], params['coeffs'], x)  # [..., H, W]
    return jnp.sum(log_p, axis=(-2, -1))
  params, x = _flatten_events(params, x, trailing=1 if name == 'discretized_logistic' else 0)
  if name == 'discretized_logistic':
    log_p = _discretized_logistic_log_prob(
        params['loc'], params['log_scale'], params['logit_weights'], x)
    return _sum_event(log_p, x)
  if name == 'gaussian':
    loc = params['loc']
    log_p = _gaussian_log_prob(loc, params['log_scale'], x.astype(loc.dtype))
    return _sum_event(log_p, x)
  logits = params['logits']
  x = x.astype(logits.dtype)
  if name == 'bernoulli':
    return _sum_event(_bernoulli_log_prob(logits, x), x)
  return _sum_event(_cb_log_prob(logits, x), x)


def likelihood_mean(name, params):
  """Image-space mean in [0, 1]: [B, H, W, C].

  The exact mean for bernoulli and continuous_bernoulli; the Gaussian's loc clipped to the data
  range [0, 1]; for discretized_logistic the mixture mean of the clipped logistic mapped from
  [-1, 1] to [0, 1] (within 1/510 of the discrete mean); for its coupled form (with 'coeffs')
  the mixture of the channels' means computed in order, each earlier channel's component mean
  standing in for its value (see _coupled_logistic_mean).
  """
  _check(name)
  if name == 'bernoulli':
    return jax.nn.sigmoid(params['logits'])
  if name == 'continuous_bernoulli':
    return _cb_mean(params['logits'])
  if name == 'gaussian':
    return jnp.clip(params['loc'], 0.0, 1.0)
  if 'coeffs' in params:
    return _coupled_logistic_mean(params['loc'], params['log_scale'], params['logit_weights'],
                                  params['coeffs'])
  return _discretized_logistic_mean(params['loc'], params['log_scale'], params['logit_weights'])


def likelihood_sample(name, params, key):
  """A sample of x in the data's space: [B, H, W, C].

  Float in [0, 1] for bernoulli ({0, 1}), continuous_bernoulli and gaussian (clipped to [0, 1]
  for display); int32 in 0..255 for discretized_logistic.
  """
  _check(name)
  if name == 'bernoulli':
    logits = params['logits']
    return jax.random.bernoulli(key, jax.nn.sigmoid(logits)).astype(logits.dtype)
  if name == 'continuous_bernoulli':
    return _cb_sample(params['logits'], key)
  if name == 'gaussian':
    loc = params['loc']
    scale = jnp.exp(params['log_scale'])
    return jnp.clip(loc + scale * jax.random.normal(key, loc.shape, loc.dtype), 0.0, 1.0)
  if 'coeffs' in params:
    return _coupled_logistic_sample(params['loc'], params['log_scale'], params['logit_weights'],
                                    params['coeffs'], key)
  return _discretized_logistic_sample(
      params['loc'], params['log_scale'], params['logit_weights'], key)


def nats_to_bits_per_dim(nats, num_dims):
  """Converts a per-example negative log-likelihood in nats to bits per dimension.

  Only meaningful for a discrete likelihood (discretized_logistic on 0..255, or bernoulli on
  binary data); a density on [0, 1] is not comparable with the published numbers.
  """
  return nats / (num_dims * math.log(2.0))
