"""Exact full-split evaluation through the model contract: the ELBO terms (used by the loop),
the K-sample importance-sampled -log p(x), and per-unit posterior statistics.

Every example of the split is seen once: the last batch is padded and masked, and every mean
comes with its standard error, stderr = sqrt(var / n) with var the unbiased per-example
variance. Posterior samples are keyed by (seed, the example's index, the sample's index), so the
numbers of one checkpoint do not depend on the batch size, the padding, the chunking of K or the
device count (to float32 rounding).

`evaluate` is the loop's cheap path: single-sample ELBO terms summed on device. `estimate` adds
the importance-sampled -log p(x) with K samples from q:
  nll(x) = -log (1/K) sum_k exp(log_w_k),  log_w_k = log p(x|h_k) + log p(h_k) - log q(h_k|x),
computed in chunks of Kc samples inside one jitted step (a lax.scan over the chunks, each
chunk's log-sum-exp combined exactly at the end), so memory is bounded by Kc whatever K is.
Its per-example values come back to the host, where means and standard errors are taken in
float64.

The estimator is consistent but biased upward for finite K: E[nll] >= -log p(x) (Jensen), with
the bias shrinking like O(1/K). So `posterior_gap` = neg_elbo - nll, an estimate of
E KL(q(h|x) || p(h|x)), inherits that bias with the opposite sign: it UNDERESTIMATES the gap.
"""

import json
import math
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import data as data_lib
from vae_jax import sharding
from vae_jax.config import compat
from vae_jax.data.preprocess import preprocess
from vae_jax.maths import likelihoods, streams

# Active units (Burda et al. 2016): a unit is active when Var_x E_q[h_d] exceeds this.
ACTIVE_UNIT_THRESHOLD = 0.01
# The automatic chunk: about this many decoder rows (samples x examples) per device per chunk.
# Measured on the Fashion-MNIST MLP on a 2-core CPU: 2000 to 8000 rows per chunk ran within 5%
# of each other at about 90% of a 2048^2 matmul's FLOP rate; 16000 and 32000 rows ran 15-25%
# slower (the [rows, 784] float32 logits no longer stay in cache). Accelerators want more rows
# (config.eval_chunk_size); never measured there.
ROWS_PER_CHUNK = 8192
# Mixture components of q(h) = mean_x q(h|x) per step of the mutual-information scan.
_MI_BLOCK = 256
# At most this many examples draw the h of the mutual-information estimate (spread evenly over
# the split); the mixture q(h) always has every example of the split.
MI_MAX_SAMPLES = 10_000
# Per-example fields of `estimate` (each [N]) and of its report (mean and `_stderr`).
_PER_EXAMPLE = ('recon', 'kl', 'neg_elbo', 'neg_elbo_mc', 'nll', 'posterior_gap', 'ess')


# ------------------------------------------------------------------------------------------
# The split in global batches.


def _eval_root(exp):
  """The run's evaluation key (streams.eval_root), replicated: every evaluation program takes
  it as a traced argument, so one compile serves the members of a population whatever their
  seeds."""
  return jax.device_put(streams.eval_root(exp.config.seed), sharding.replicated(exp.mesh))


def _global_batches(exp, split, arrays, batch_size):
  """(host batch, its global (images, index, mask)) for each padded batch of the split."""
  for batch in data_lib.eval_batches(exp.config.data, split, batch_size=batch_size,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count(), arrays=arrays):
    yield batch, sharding.host_to_global((batch['image'], batch['index'], batch['mask']),
                                         exp.mesh)


def _jit_batch_fn(exp, fn):
  """fn(params, eval key, images, index, mask), batch-sharded in, replicated out (every
  process can read every example's values)."""
  rep, bat = sharding.replicated(exp.mesh), sharding.batch_sharding(exp.mesh)
  return jax.jit(fn, in_shardings=(rep, rep, bat, bat, bat), out_shardings=rep)


def _kept(outputs):
  """The real examples' rows of replicated per-example outputs (padding dropped)."""
  host = sharding.to_host(outputs)
  mask = host.pop('mask').astype(bool)
  return {k: v[mask] for k, v in host.items()}


def _mean_and_stderr(values):
  """(mean, standard error of the mean) of per-example values, in float64."""
  v = np.asarray(values, np.float64)
  n = v.size
  var = float(np.var(v, ddof=1)) if n > 1 else 0.0
  return float(np.mean(v)), math.sqrt(var / n) if n else float('nan')


# ------------------------------------------------------------------------------------------
# The loop's cheap path: single-sample ELBO terms, summed on device.


def make_eval_step(exp):
  """(params, eval key (streams.eval_root(seed)), uint8 images [B,...], index [B], mask [B]) ->
  masked sums of every [B] term and of its square, and the count."""
  config, model = exp.config, exp.model

  def eval_step(params, key, images, index, mask):
    x = preprocess(images, index, mode=config.data.preprocess, data_seed=config.data_seed)
    terms = model.terms(params, x, streams.eval_keys_at(key, index))
    terms = {k: v for k, v in terms.items() if v.ndim == 1}  # the [B] terms; not [B, U]
    # Padded rows are selected out, not multiplied by 0: a non-finite term there (0 * inf)
    # would make the sum NaN.
    kept = {k: jnp.where(mask, v, 0.0) for k, v in terms.items()}  # each [B]
    sums = {k: jnp.sum(v) for k, v in kept.items()}
    sums.update({f'{k}_sq': jnp.sum(jnp.square(v)) for k, v in kept.items()})
    sums['count'] = jnp.sum(mask.astype(jnp.float32))
    return sums

  return eval_step


def jit_eval_step(exp):
  mesh = exp.mesh
  rep, bat = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  params_sh = jax.tree.map(lambda a: a.sharding, exp.abstract_state.params)
  return jax.jit(make_eval_step(exp), in_shardings=(params_sh, rep, bat, bat, bat),
                 out_shardings=rep)


def _means_and_stderrs(totals):
  """{name: sum, name_sq: sum of squares, count} -> {name: mean, name_stderr: stderr}."""
  n = float(totals.pop('count'))
  out = {}
  for name in [k for k in totals if not k.endswith('_sq')]:
    mean = float(totals[name]) / n
    var = max(float(totals[f'{name}_sq']) / n - mean * mean, 0.0) * n / max(n - 1.0, 1.0)
    out[name] = mean
    out[f'{name}_stderr'] = math.sqrt(var / n)
  out['num_examples'] = int(round(n))
  return out


def evaluate(exp, params, split, *, eval_step=None, arrays=None):
  """Exact metrics of `params` over the whole split (or slice) `split`.

  `arrays` (from data.load_arrays) avoids reading the split again. Returns nats per example:
  neg_elbo, recon, kl, each with `_stderr`, plus split and num_examples.
  """
  eval_step = eval_step or jit_eval_step(exp)
  key, totals = _eval_root(exp), None
  for _, g in _global_batches(exp, split, arrays, exp.config.eval_batch_size):
    sums = eval_step(params, key, *g)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return {'split': split, **_means_and_stderrs(sharding.to_host(totals))}


# ------------------------------------------------------------------------------------------
# Per-unit posterior statistics.


def _posterior_stats_fn(exp, kl):
  config, model = exp.config, exp.model

  def stats(params, key, images, index, mask):
    x = preprocess(images, index, mode=config.data.preprocess, data_seed=config.data_seed)
    s = model.posterior_stats(params, x)  # {'mean', 'var'}: [B, U]
    out = {'mean': s['mean'], 'var': s['var'], 'index': index, 'mask': mask}
    if kl:  # the model's own KL term at the evaluation keys, as `evaluate` reports it
      terms = model.terms(params, x, streams.eval_keys_at(key, index))
      out['kl'] = terms['kl']  # [B]
      if 'kl_units' in terms:
        out['kl_units'] = terms['kl_units']  # [B, U]
    return out

  return stats


def jit_unit_statistics_fn(exp, kl=True):
  """unit_statistics' per-batch program, compiled once and passed back as its `fn`.

  kl=False leaves out the model's KL terms (a decoder pass): only the posterior moments, for
  the active units alone.
  """
  return _jit_batch_fn(exp, _posterior_stats_fn(exp, kl))


def unit_statistics(exp, params, split, *, arrays=None, mutual_info=True, fn=None):
  """Per-unit statistics of q(h|x) over the whole split, each a number of the model's own.

  With m(x), v(x) the marginal mean and variance of unit d under q(h|x) (model.posterior_stats)
  and the model's terms at the evaluation keys (those `evaluate` reports):
    kl_per_unit[d]: where the family gives a per-unit KL (terms' kl_units [B, U]: each unit's
      KL to the model's own prior; a hierarchy's on the sampled path, to p(z_l | z_above)),
      its mean over the split, so the units add up to the reported kl exactly
      (kl_per_unit_to = 'prior'). Otherwise the KL of q's marginal to N(0, 1),
      mean_x 0.5 (m^2 + v - 1 - log v): under a standard prior with a full-covariance
      posterior (still 'prior'; the sum is at most the KL, which also counts the units'
      correlations), and under the VampPrior, whose mixture does not split over units
      ('standard_normal');
    mean_var[d] = Var_x m_d(x) (over the split's examples, ddof 0);
    active_units = #{d: mean_var[d] > 0.01} (Burda et al. 2016), and active_units_per_group
      the same count within each of model.unit_groups (top first).
  mutual_info estimates I(x; h) with x uniform over the split's N examples and h ~ q(h|x), so
  the aggregate posterior q(h) = (1/N) sum_j q(h|x_j) is an exact mixture (no minibatch
  log-mean-exp): for examples i (all of them, or MI_MAX_SAMPLES spread evenly) one draw
  h_i ~ q(h|x_i) gives log q(h_i|x_i) - log q(h_i), whose mean is unbiased for this I, with a
  standard error. This I is at most log N, and as an estimate of the population's I(x; h) it
  is biased low once the posteriors of different examples barely overlap (it saturates at
  log N); the usual minibatch estimator (mixture over a batch of M) saturates at log M.
  `aggregate_kl` = mean kl - mutual_info = KL(q(h) || p(h)) to the model's prior (ELBO
  surgery, Hoffman and Johnson 2016), from the model's own kl term; where the prior is not
  N(0, I) (the VampPrior) `aggregate_kl_standard` = KL(q(h) || N(0, I)) beside it. They need
  q(h|x) to be the Gaussian N(m, diag(v)) (`model.capabilities.diagonal_posterior`); otherwise
  None.
  A `fn` of jit_unit_statistics_fn(exp, kl=False) leaves every KL field None.

  Returns:
    {'kl_per_unit': [U], 'kl_per_unit_to', 'mean_var': [U], 'active_units': int,
     'active_units_per_group': [int], 'mutual_info', 'mutual_info_stderr',
     'aggregate_kl', 'aggregate_kl_standard', 'num_examples', 'split'} (numpy arrays and
     floats).
  """
  fn = fn or jit_unit_statistics_fn(exp)
  params, key = jax.device_put(params, sharding.replicated(exp.mesh)), _eval_root(exp)
  parts = [_kept(fn(params, key, *g)) for _, g in _global_batches(exp, split, arrays,
                                                                  exp.config.eval_batch_size)]
  stats = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  return {'split': split, **_unit_summary(exp, stats['mean'], stats['var'], stats['index'],
                                          mutual_info, kl=stats.get('kl'),
                                          kl_units=stats.get('kl_units'))}


def _unit_summary(exp, mean, var, index, mutual_info=True, kl=None, kl_units=None):
  """unit_statistics' numbers from every example's posterior mean and variance [N, U], the
  model's kl [N] (None: no KL fields) and its per-unit KL [N, U] where it gives one."""
  mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
  with np.errstate(invalid='ignore', divide='ignore'):  # a diverged run's stats stay nan
    kl_standard = 0.5 * (np.square(mean) + var - 1.0 - np.log(var))  # [N, U]: to N(0, 1)
  standard_prior = exp.model.capabilities.standard_prior
  mean_var = np.var(mean, axis=0)  # [U]
  active = mean_var > ACTIVE_UNIT_THRESHOLD  # [U]
  bounds = np.cumsum((0, *exp.model.unit_groups))
  out = {
      'num_examples': int(mean.shape[0]),
      'kl_per_unit': None, 'kl_per_unit_to': None,
      'mean_var': mean_var,
      'active_units': int(np.sum(active)),
      'active_units_per_group': [int(np.sum(active[a:b]))
                                 for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
      'mutual_info': None, 'mutual_info_stderr': None, 'aggregate_kl': None,
      'aggregate_kl_standard': None,
  }
  if kl is None:
    return out
  if kl_units is not None:
    out['kl_per_unit'], out['kl_per_unit_to'] = np.asarray(kl_units, np.float64).mean(0), 'prior'
  else:
    # What kl_per_unit measures the distance to: the model's prior, or N(0, 1) where the prior
    # does not split over units (the VampPrior's mixture).
    out['kl_per_unit'] = kl_standard.mean(axis=0)
    out['kl_per_unit_to'] = 'prior' if standard_prior else 'standard_normal'
  if mutual_info and exp.model.capabilities.diagonal_posterior:
    mi = mutual_information(exp.mesh, mean.astype(np.float32), var.astype(np.float32), index,
                            exp.config.seed)
    out['mutual_info'], out['mutual_info_stderr'] = _mean_and_stderr(mi)
    out['aggregate_kl'] = float(np.mean(np.asarray(kl, np.float64))) - out['mutual_info']
    if not standard_prior:
      out['aggregate_kl_standard'] = (float(kl_standard.sum(axis=1).mean())
                                      - out['mutual_info'])
  return out


def mutual_information(mesh, mean, var, index, seed, max_samples=MI_MAX_SAMPLES):
  """Per-draw terms log q(h_i|x_i) - log q(h_i) of I(x; h) (see unit_statistics): [M].

  Args:
    mesh: the draws are split over its data axis; the mixture is replicated.
    mean, var: [N, U] of the diagonal Gaussians q(h|x_j), every example of the split.
    index: [N] the examples' indices in their split: example i's draw uses the evaluation key
      of (seed, index_i), folded with sample 0.
    seed: the run's seed.
    max_samples: at most this many draws, from examples spread evenly over the split.
  """
  n, u = mean.shape
  rows = np.arange(n) if n <= max_samples else np.linspace(0, n - 1, max_samples).astype(int)
  devices = sharding.data_axis_size(mesh)
  m_pad = -(-len(rows) // devices) * devices  # draws: a multiple of the device count
  j_pad = -(-n // _MI_BLOCK) * _MI_BLOCK  # mixture components: whole blocks
  pad = lambda a, size, value: np.concatenate(
      [a, np.full((size - len(a),) + a.shape[1:], value, a.dtype)])
  own = pad(rows, m_pad, 0)
  comp = {'mean': pad(mean, j_pad, 0.0).reshape(-1, _MI_BLOCK, u),
          'var': pad(var, j_pad, 1.0).reshape(-1, _MI_BLOCK, u),
          'valid': (np.arange(j_pad) < n).reshape(-1, _MI_BLOCK)}

  def log_q(h, m, v):
    """log N(h_i; m_j, diag v_j) for h [M, U] and m, v [J, U]: [M, J]."""
    z2 = jnp.sum(jnp.square(h[:, None, :] - m[None]) / v[None], axis=-1)
    return -0.5 * (z2 + jnp.sum(jnp.log(v), axis=-1)[None] + u * math.log(2 * math.pi))

  def terms(key, own_mean, own_var, own_index, comp):
    keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(streams.eval_keys_at(key, own_index))
    eps = jax.vmap(lambda k: jax.random.normal(k, (u,)))(keys)  # [M, U]
    h = own_mean + jnp.sqrt(own_var) * eps  # [M, U]
    # log q(h_i|x_i) the way the mixture computes its own term, so each term is <= log N up to
    # the rounding of the log-sum-exp.
    log_own = -0.5 * (jnp.sum(jnp.square(h - own_mean) / own_var + jnp.log(own_var), -1)
                      + u * math.log(2 * math.pi))

    def block(lse, c):
      lq = jnp.where(c['valid'][None], log_q(h, c['mean'], c['var']), -jnp.inf)  # [M, J]
      return jnp.logaddexp(lse, jax.nn.logsumexp(lq, axis=1)), None

    lse, _ = jax.lax.scan(block, jnp.full(h.shape[:1], -jnp.inf), comp)  # [M]
    return log_own - (lse - math.log(n))  # [M]

  rep, bat = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  fn = jax.jit(terms, in_shardings=(rep, bat, bat, bat, rep), out_shardings=rep)
  out = fn(jax.device_put(streams.eval_root(seed), rep), mean[own], var[own],
           np.asarray(index)[own].astype(np.int32), comp)
  return np.asarray(jax.device_get(out))[:len(rows)]


# ------------------------------------------------------------------------------------------
# The K-sample importance-sampled estimator.


def chunk_plan(num_samples, chunk_size):
  """(chunks, samples per chunk Kc): the fewest chunks of at most chunk_size covering K, as
  even as possible. chunks * Kc >= K; the last chunk's samples past K are masked out, so the
  estimate uses exactly samples 0 .. K - 1 whatever the chunking."""
  if num_samples < 1 or chunk_size < 1:
    raise ValueError(f'num_samples={num_samples} and chunk_size={chunk_size} must be >= 1.')
  chunks = -(-num_samples // chunk_size)
  return chunks, -(-num_samples // chunks)


def default_chunk_size(exp, batch_size):
  """Samples per chunk giving about ROWS_PER_CHUNK decoder rows per device.

  A family whose log_weights costs more than one decoder row per sample declares how many as
  `sample_cost` (the VampPrior's mixture: gaussian_vae.GaussianVAE.sample_cost); else 1.
  """
  # The mesh's data axis already spans every process's devices.
  per_device = max(1, batch_size // sharding.data_axis_size(exp.mesh))
  return max(1, ROWS_PER_CHUNK // (per_device * getattr(exp.model, 'sample_cost', 1)))


def make_estimate_step(exp, num_samples, chunk_size, units=False):
  """(params, eval key (streams.eval_root(seed)), uint8 images [B,...], index [B], mask [B])
  -> per-example values, each [B].

  recon, kl, neg_elbo: the single-sample ELBO terms of `evaluate` (same keys, same sample 0).
  With num_samples K > 0 also
    nll = log K - logsumexp_k log_w_k, the importance-sampled -log p(x);
    neg_elbo_mc = -mean_k log_w_k, the K-sample Monte Carlo negative ELBO (its KL sampled
      too): the same expectation as neg_elbo with far less noise;
    ess = (sum_k w_k)^2 / sum_k w_k^2, the weights' effective sample size (1 .. K): near 1,
      a few samples dominate and nll is far from converged.
  With units, also post_mean and post_var [B, U] (model.posterior_stats) and the terms'
  post_kl_units [B, U] where the family gives them, for unit_statistics.
  The encoder runs once per batch; chunk c draws samples c Kc .. c Kc + Kc - 1 of every example
  through model.log_weights (a lax.scan over the chunks), and the chunks' log-sum-exps combine
  exactly at the end.
  """
  config, model = exp.config, exp.model
  if num_samples:
    num_chunks, kc = chunk_plan(num_samples, chunk_size)

  def step(params, key, images, index, mask):
    x = preprocess(images, index, mode=config.data.preprocess, data_seed=config.data_seed)
    keys = streams.eval_keys_at(key, index)  # [B]
    terms = model.terms(params, x, keys)
    out = {k: v for k, v in terms.items() if v.ndim == 1}  # each [B]
    if num_samples:
      encoded = model.encode(params, x)

      def chunk(carry, c):
        offset = c * kc
        log_w = model.log_weights(params, x, keys, kc, offset, encoded=encoded)  # [Kc, B]
        real = (offset + jnp.arange(kc) < num_samples)[:, None]  # [Kc, 1]
        masked = jnp.where(real, log_w, -jnp.inf)
        sums = (jax.nn.logsumexp(masked, axis=0), jax.nn.logsumexp(2.0 * masked, axis=0),
                jnp.sum(jnp.where(real, log_w, 0.0), axis=0))  # each [B]
        return carry, sums

      _, (lse, lse2, total) = jax.lax.scan(chunk, None, jnp.arange(num_chunks))  # [C, B]
      lse = jax.nn.logsumexp(lse, axis=0)  # [B]: log sum_k w_k
      out['nll'] = math.log(num_samples) - lse
      out['neg_elbo_mc'] = -jnp.sum(total, axis=0) / num_samples
      out['posterior_gap'] = out['neg_elbo'] - out['nll']
      out['ess'] = jnp.exp(2.0 * lse - jax.nn.logsumexp(lse2, axis=0))
    if units:
      stats = model.posterior_stats(params, x)  # [B, U] each
      out.update(post_mean=stats['mean'], post_var=stats['var'])
      if 'kl_units' in terms:
        out['post_kl_units'] = terms['kl_units']  # [B, U]: the kl term's units
    out.update(index=index, mask=mask)
    return out

  return step


class EstimateStep:
  """The jitted estimator step, compiled ahead of time once per input signature, so an
  estimate can time its batches without the compile. The seed is an argument (the evaluation
  key), so one EstimateStep serves every member of a population."""

  def __init__(self, exp, num_samples, chunk_size, units=False):
    self.num_samples, self.chunk_size, self.units = num_samples, chunk_size, units
    self._jitted = _jit_batch_fn(exp, make_estimate_step(exp, num_samples, chunk_size, units))
    self._compiled = {}

  def compile(self, *args):
    """(the compiled step for args' shapes, dtypes and shardings, seconds it took; 0 if cached)."""
    leaves, tree = jax.tree.flatten(args)
    sig = (tree, tuple((a.shape, a.dtype, getattr(a, 'sharding', None)) for a in leaves))
    if sig in self._compiled:
      return self._compiled[sig], 0.0
    t0 = time.perf_counter()
    fn = self._jitted.lower(*args).compile()
    self._compiled[sig] = fn
    return fn, time.perf_counter() - t0


def likelihood_kind(config, binary_data):
  """(normalized, discrete) of the configured likelihood on this data.

  normalized: p(x|h) is a normalised density or mass of the data as the model sees it. A
  Bernoulli is a mass only on binary data (binarized, thresholded, or 0/1 values); on grey
  values in [0, 1] it is a cross-entropy without a normaliser, so its nll is not -log p(x).
  discrete: a mass over finitely many values (Bernoulli on binary data, the discretized
  logistic on 8-bit integers), the case where bits per dimension compare with the literature.
  """
  name = config.model.likelihood
  if name == 'bernoulli':
    return binary_data, binary_data
  return True, name == 'discretized_logistic'


def _is_binary(batch, preprocess_mode):
  if preprocess_mode in ('dynamic_binarize', 'threshold'):
    return True
  images = batch['image'][batch['mask']]
  return bool(np.all((images == 0) | (images == 255))) if preprocess_mode == 'grey' else False


def estimate(exp, params, split, num_samples, *, chunk_size=None, batch_size=None,
             arrays=None, progress=None, step=None, units=True, data_entropy=None):
  """The evaluation report of `params` over the whole split: ELBO terms, K-sample nll, units.

  Args:
    exp: the Experiment (its mesh splits the batches; its config names the data and seed).
    params: the model parameters (any placement; replicated onto exp.mesh here).
    split: a split or slice of the dataset.
    num_samples: K of the importance-sampled nll; 0 gives the ELBO terms only.
    chunk_size: samples per chunk (None: config.eval_chunk_size, or automatic when that is 0).
      Changes memory and speed, not the numbers.
    batch_size: global examples per batch (None: config.eval_batch_size).
    arrays: load_arrays(config.data, split), to avoid reading the split again.
    progress: called as progress(examples done, examples in the split or None) after each batch.
    step: an EstimateStep of this K and chunk size to reuse across calls (the loop's).
    units: also unit_statistics (kl_per_unit, mean_var, active_units, mutual_info).
    data_entropy: H(P) of the data distribution in nats, on the space p(x|h) lives on (a
      differential entropy for a density). None: exp.data_info.entropy_nats, the entropy of a
      finite population (sprites: log N), used only with a discrete likelihood.

  Returns:
    A dict, nats per example unless named otherwise: recon, kl, neg_elbo and, with K > 0, nll,
    posterior_gap (= neg_elbo - nll; it UNDERESTIMATES E KL(q(h|x) || p(h|x)) because nll is
    biased upward for finite K), neg_elbo_mc and ess, each with `_stderr`; normalized (False
    when p(x|h) is not a normalised density of the data: then nll is not -log p(x));
    bits_per_dim and neg_elbo_bits_per_dim (discrete likelihoods, else None); data_entropy,
    joint_kl = neg_elbo - H(data) and marginal_kl = nll - H(data) (where the data's entropy is
    known, else None); num_examples, num_samples, chunk_size, num_chunks, batch_size,
    num_devices, seconds, compile_s, samples_per_sec (examples x K per second over the
    batches, compile and unit statistics excluded; examples per second when K = 0);
    'per_example' {index, recon, kl, neg_elbo, ...} numpy [N]; and with units the
    unit_statistics fields (from the same pass over the split).
  """
  config = exp.config
  batch_size = batch_size or config.eval_batch_size
  if num_samples < 0:
    raise ValueError(f'num_samples={num_samples} must be >= 0.')
  if num_samples:
    chunk_size = chunk_size or config.get('eval_chunk_size', 0) or default_chunk_size(
        exp, batch_size)
  if step is None:
    step = EstimateStep(exp, num_samples, chunk_size, units)
  elif (step.num_samples, step.chunk_size, step.units) != (num_samples, chunk_size, units):
    raise ValueError('estimate: step was built for another num_samples, chunk_size or units.')
  if arrays is None and config.data.backend == 'memory':
    arrays = data_lib.load_arrays(config.data, split)
  total = len(arrays['image']) if arrays is not None else (
      exp.data_info.split_size(split) if exp.data_info is not None else None)
  params, key = jax.device_put(params, sharding.replicated(exp.mesh)), _eval_root(exp)
  parts, binary, compile_s, pending, done = [], True, 0.0, None, 0
  t0 = None
  for batch, g in _global_batches(exp, split, arrays, batch_size):
    binary = binary and _is_binary(batch, config.data.preprocess)
    fn, seconds = step.compile(params, key, *g)
    compile_s += seconds
    if t0 is None:
      t0 = time.perf_counter()
    out = fn(params, key, *g)  # dispatched: the previous batch is fetched while this one runs
    if pending is not None:
      done = _collect(parts, pending, done, total, progress)
    pending = out
  if pending is not None:
    done = _collect(parts, pending, done, total, progress)
  seconds = time.perf_counter() - t0 if t0 is not None else 0.0
  per_example = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  post = {k: per_example.pop(k) for k in ('post_mean', 'post_var', 'post_kl_units')
          if k in per_example}
  report = _report(exp, split, per_example, num_samples, binary, data_entropy)
  n = report['num_examples']
  report.update(
      chunk_size=chunk_size if num_samples else None,
      num_chunks=chunk_plan(num_samples, chunk_size)[0] if num_samples else None,
      batch_size=batch_size, num_devices=sharding.data_axis_size(exp.mesh),
      seconds=seconds, compile_s=compile_s,
      samples_per_sec=n * max(num_samples, 1) / seconds if seconds > 0 else float('nan'))
  if units:
    stats = _unit_summary(exp, post['post_mean'], post['post_var'], per_example['index'],
                          kl=per_example['kl'], kl_units=post.get('post_kl_units'))
    report.update({k: v for k, v in stats.items() if k != 'num_examples'})
  report['per_example'] = per_example
  return report


def _collect(parts, outputs, done, total, progress):
  parts.append(_kept(outputs))
  done += len(parts[-1]['index'])
  if progress is not None:
    progress(done, total)
  return done


def _report(exp, split, per_example, num_samples, binary_data, data_entropy):
  """Means with standard errors, and the derived quantities, from per-example values [N]."""
  config = exp.config
  out = {'split': split, 'num_examples': int(per_example['index'].size),
         'num_samples': int(num_samples)}
  # The family's other [B] terms: a hierarchy's kl/<group>, the VampPrior's kl_standard.
  groups = tuple(k for k in per_example if k not in _PER_EXAMPLE and k != 'index')
  for name in _PER_EXAMPLE + groups:
    if name in per_example:
      out[name], out[f'{name}_stderr'] = _mean_and_stderr(per_example[name])
    else:
      out[name] = out[f'{name}_stderr'] = None
  normalized, discrete = likelihood_kind(config, binary_data)
  out['likelihood'] = config.model.likelihood
  out['normalized'] = bool(normalized)
  if not normalized:
    out['note'] = (f'model.likelihood={config.model.likelihood!r} on data.preprocess='
                   f'{config.data.preprocess!r} (non-binary values) is not a normalised '
                   'density of the data: nll, neg_elbo and the gap are cross-entropies that '
                   'compare only with runs making the same choice, not -log p(x).')
  num_dims = math.prod(exp.image_shape)
  bits = lambda nats: (None if nats is None or not discrete
                       else likelihoods.nats_to_bits_per_dim(nats, num_dims))
  out['bits_per_dim'], out['bits_per_dim_stderr'] = bits(out['nll']), bits(out['nll_stderr'])
  out['neg_elbo_bits_per_dim'] = bits(out['neg_elbo'])
  entropy = data_entropy
  if entropy is None and discrete and exp.data_info is not None:
    entropy = exp.data_info.entropy_nats  # a finite population's: comparable with a mass
  out['data_entropy'] = entropy
  known = entropy is not None and normalized
  minus_h = lambda nats: None if nats is None or not known else nats - entropy
  out['joint_kl'] = minus_h(out['neg_elbo'])  # KL(P(X) q(h|X) || p(h) p(X|h))
  out['joint_kl_stderr'] = out['neg_elbo_stderr'] if known else None
  out['marginal_kl'] = minus_h(out['nll'])  # KL(P(X) || P_theta(X)), biased upward as nll
  out['marginal_kl_stderr'] = out['nll_stderr'] if known else None
  return out


# ------------------------------------------------------------------------------------------
# A saved run: scripts/evaluate.py.

# Report fields that describe how an evaluation ran, not its result: they may differ between
# two evaluations of the same step, split and K without the file counting as different.
_HOW_IT_RAN = ('seconds', 'compile_s', 'samples_per_sec', 'num_devices', 'batch_size',
               'chunk_size', 'num_chunks')
PARAMS_CHOICES = ('state', 'ema')


def eval_path(workdir, step, split, num_samples, params=None):
  """DIR/eval/step_S_SPLIT_kK.json (a slice's brackets and colons made file-name safe).

  params: None for the run's default parameters (its EMA where it keeps one, else the train
  state's); 'state' for the train state of a run whose default is its EMA, which gets its own
  file, step_S_SPLIT_kK_state.json, beside the EMA's.
  """
  tag = split.replace('[', '_').replace(']', '').replace(':', '-').replace('%', 'pc')
  suffix = f'_{params}' if params else ''
  return os.path.join(workdir, 'eval', f'step_{step}_{tag}_k{num_samples}{suffix}.json')


class ResultNotSavedError(RuntimeError):
  """A reader computed its result but could not write it (a read-only workdir, say).

  `result` holds what was computed: the scripts print it (their last stdout line) before this
  message, and exit with status 2.
  """

  def __init__(self, message, result):
    super().__init__(message)
    self.result = result


class StepDeletedError(Exception):
  """The checkpoint step a reader checked is gone (a live run's checkpoint.keep deleted it)."""


def warn(message):
  """A reader's warning, on stderr as the checkpointer's are."""
  print(f'WARNING: {message}', file=sys.stderr, flush=True)


def read_run_config(workdir):
  """(DIR/config.json as a saved config, '') or (None, why it cannot be read).

  Readers use it only to open the checkpoints: every checkpoint step holds the config it was
  saved with, which is what they evaluate by, so a damaged file need not stop them.
  """
  path = os.path.join(workdir, 'config.json')
  try:
    with open(path) as f:
      saved = json.load(f)
    if not isinstance(saved, dict):
      return None, f'it holds a JSON {type(saved).__name__}, not an object'
    return saved_config(saved), ''
  except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
    # (a JSONDecodeError or UnicodeDecodeError is a ValueError)
    return None, f'{type(e).__name__}: {e}'


def reader_checkpointer(workdir, config):
  """A Checkpointer of the run that changes nothing on disk (create=False).

  config None (config.json damaged): a stand-in, since a reader uses none of the checkpoint
  policy fields the run's config would give.
  """
  from vae_jax import checkpoint as ckpt_lib
  if config is None:
    import ml_collections
    config = ml_collections.ConfigDict({'checkpoint': {'keep': 1, 'async_save': False}})
  return ckpt_lib.Checkpointer(workdir, config, create=False)


def damaged_config_warning(workdir, why, step):
  """The reader's warning that config.json is damaged and checkpoint `step`'s config is used."""
  return (f'{os.path.join(workdir, "config.json")} cannot be read ({why}); using the config '
          f'saved with checkpoint step {step} instead (a scripts/train.py run on this workdir '
          'writes config.json again).')


def live_run_notice(workdir):
  """A line telling a reader that a run is training `workdir` now, or None.

  The workdir lock is probed without taking it (workdir_lock.is_held), so a run starting at
  this moment is never refused.
  """
  from vae_jax import workdir_lock
  if not workdir_lock.is_held(workdir):
    return None
  return (f'NOTE: a run is training {workdir} now: this reads the newest checkpoint step it has '
          'committed at this moment (steps it saves later are not seen); if the run deletes that '
          'step meanwhile (checkpoint.keep), the newest step is checked again.')


def restore_checked(checkpointer, abstract_state, step):
  """(state, meta) of checkpoint `step`, the step a reader checked and took its config from.

  Never a newer step (one a live run committed after the check), and an older one only past a
  damaged `step` (restore_good's fallback, warned; the caller then takes the config of the step
  restored).

  Raises:
    StepDeletedError: `step` is gone (a live run's checkpoint.keep deleted it since the check).
  """
  from vae_jax import checkpoint as ckpt_lib
  gone = lambda: not os.path.isdir(os.path.join(checkpointer.directory, str(step)))
  if step not in checkpointer.all_steps():
    raise StepDeletedError(step)
  try:
    state, meta = checkpointer.restore_good(abstract_state, step=step)
  except ckpt_lib.NoGoodCheckpointError:
    if gone():
      raise StepDeletedError(step) from None
    raise
  if int(meta['step']) != step and gone():
    raise StepDeletedError(step)
  return state, meta


def unwritable(folder):
  """Why `folder` cannot be created and written (probed with a file made and removed at
  once), or '' where it can."""
  if os.path.exists(folder) and not os.path.isdir(folder):
    return 'it is a file, not a folder'
  try:
    os.makedirs(folder, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=folder, prefix='.write_probe_')
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    return e.strerror or str(e)
  return ''


def check_run_request(workdir, *, step=None, split=None, num_samples=1, params=None,
                      chunk_size=0, batch_size=0):
  """Checks what a user asks of a saved run without TensorFlow or a compile (seconds).

  `params`: 'ema', 'state', or None for the EMA where the run keeps one (config.ema_decay > 0
  in the checkpoint's config), else the train state's.

  Returns:
    (the run's config from the checkpoint's metadata (of `step`, else of the newest step), the
    checkpoint steps, the split, the parameters to evaluate: 'ema' or 'state'). A damaged
    DIR/config.json is warned about and passed over: the checkpoint's config is the one used.

  Raises:
    validation.ConfigError: no run in workdir, a step it does not have, K < 1, an unknown
      split or slice, parameters the run does not have, a negative chunk or batch size; a
      damaged config.json without a checkpoint to take the config from.
  """
  from vae_jax import checkpoint as ckpt_lib
  from vae_jax import validation
  workdir = os.path.abspath(os.path.expanduser(workdir or ''))
  if not os.path.isfile(os.path.join(workdir, 'config.json')) or not os.path.isdir(
      ckpt_lib.checkpoint_dir(workdir)):
    raise validation.ConfigError(
        f'--workdir={workdir} holds no vae_jax run (no config.json and checkpoints/ folder). '
        'Point it at the --workdir of a scripts/train.py run.')
  if not isinstance(num_samples, int) or num_samples < 1:
    raise validation.ConfigError(f'--num_samples={num_samples} must be an integer >= 1 (K of '
                                 'the importance-sampled -log p(x)).')
  if chunk_size < 0 or batch_size < 0:
    raise validation.ConfigError('--chunk_size and --batch_size must be >= 0 (0: the '
                                 "config's eval_chunk_size and eval_batch_size).")
  if params is not None and params not in PARAMS_CHOICES:
    raise validation.ConfigError(f'--params={params!r} is not one of {PARAMS_CHOICES}.')
  config, damaged = read_run_config(workdir)
  checkpointer = reader_checkpointer(workdir, config)
  try:
    steps = checkpointer.all_steps()
    if not steps and damaged:
      raise validation.ConfigError(
          f'{os.path.join(workdir, "config.json")} cannot be read ({damaged}), and '
          f'{workdir}/checkpoints holds no checkpoint whose saved config could stand in for it. '
          "Rerun scripts/train.py with the run's --config on this workdir.")
    if not steps:
      raise validation.ConfigError(f'{workdir}/checkpoints holds no checkpoint yet.')
    if step is not None and step not in steps:
      raise validation.ConfigError(f'--step={step}: {workdir} has no checkpoint at that step; '
                                   f'its checkpoints are at steps {steps}.')
    meta = checkpointer.restore_meta(step if step is not None else steps[-1])
  finally:
    checkpointer.close()
  if damaged:
    warn(damaged_config_warning(workdir, damaged, meta['step']))
  config = saved_config(meta['config'])
  has_ema = config.ema_decay > 0
  if params == 'ema' and not has_ema:
    raise validation.ConfigError(
        f'The run in {workdir} has no EMA parameters at step {meta["step"]} (it trained with '
        'config.ema_decay=0); evaluate its train state with --params=state, or train with '
        '--config.ema_decay=0.999.')
  params = params or ('ema' if has_ema else 'state')
  split = split or config.data.eval_split
  _check_split(config.data, split)
  return config, steps, split, params


saved_config = compat.saved_config  # the one loader of saved configs (config/compat.py)


def _check_split(data_cfg, split):
  """The split's syntax, and its size where the dataset is prepared (from its JSON, no TFDS)."""
  from vae_jax import validation
  from vae_jax.data import checks, splits
  try:
    splits.parse(split)
    prepared = checks.prepared_dirs(data_cfg.name, data_cfg.data_dir)
    if prepared:
      with open(os.path.join(prepared[-1], 'dataset_info.json')) as f:
        info = json.load(f)
      sizes = {s['name']: sum(int(n) for n in s.get('shardLengths', [])) for s in info['splits']}
      splits.resolve(split, sizes)
  except ValueError as e:
    raise validation.ConfigError(f'--split={split!r} does not fit {data_cfg.name!r}: {e}') from None


def evaluate_run(workdir, *, step=None, split=None, num_samples=1000, params=None,
                 chunk_size=0, batch_size=0, out_dir=None, progress=None, log=print):
  """Restores a run's checkpoint, estimates everything and writes DIR/eval/ (or out_dir).

  params: 'ema', 'state', or None (the EMA where the run keeps one, else the train state's).
  The run is rebuilt from its checkpoint's config on all local devices (config.mesh.data =
  -1). The report (see estimate, plus step, params and, for the EMA, ema_init_weight and an
  ema_warning while the EMA is dominated by its starting parameters) goes to eval_path(...)
  (the train state of an EMA run to its own _state file) and its per-example values to the
  same name with .npz. An evaluation of one step, split and
  K is deterministic, so an existing file with the same results (up to the fields of _HOW_IT_RAN
  and float32 rounding between device counts) is replaced; a different one (the code or the
  data changed) is kept as NAME.json.1 (.2, ...) beside the new one, with a warning.

  Beside a live run: the step evaluated is the one checked (the newest, or `step`), never one
  committed since; if the run's checkpoint.keep deletes it meanwhile, the newest step is
  checked again once. Past a damaged step the older one restored is evaluated, each field of
  the report from its own config, and the log says so. The step in the log and the report is
  always the step restored.

  Returns:
    The report, without the per-example values.

  Raises:
    ResultNotSavedError: the files could not be written (its `result` is the report); a folder
      that cannot be written is also warned about before the work starts.
  """
  from vae_jax import experiment, validation
  from vae_jax import state as state_lib
  workdir = os.path.abspath(os.path.expanduser(workdir))
  requested_split = split
  for attempt in (1, 2):
    config, steps, split, _ = check_run_request(
        workdir, step=step, split=requested_split, num_samples=num_samples, params=params,
        chunk_size=chunk_size, batch_size=batch_size)
    checked = step if step is not None else steps[-1]
    if attempt == 1:
      notice = live_run_notice(workdir)
      if notice:
        log(notice)
      folder = os.path.abspath(out_dir) if out_dir else os.path.join(workdir, 'eval')
      why = unwritable(folder) if jax.process_index() == 0 else ''
      if why:
        warn(f'{folder} cannot be written ({why}): the evaluation will be printed but not '
              'saved. Pass --out=DIR to save it elsewhere.')
    config = _reader_config(config, batch_size)
    experiment.configure_jax(config)
    exp = experiment.build(config)
    checkpointer = reader_checkpointer(workdir, config)
    try:
      state, meta = restore_checked(
          checkpointer,
          lambda m, exp=exp: state_lib.restore_target(exp.abstract_state,
                                                      saved_config(m['config'])),
          checked)
      break
    except StepDeletedError:
      if step is not None:
        raise validation.ConfigError(
            f'--step={step}: checkpoint step {step} of {workdir} was deleted while it was being '
            'read (the run training this workdir keeps only its newest checkpoint.keep steps). '
            'Choose a step it keeps.') from None
      if attempt == 2:
        raise validation.ConfigError(
            f'The newest checkpoint steps of {workdir} were deleted twice while being read (the '
            'run training it keeps only its newest checkpoint.keep steps). Try again, or pass '
            '--step.') from None
      log(f'Checkpoint step {checked} was deleted while it was being read (the run training '
          'this workdir keeps only its newest checkpoint.keep steps); checking the newest step '
          'again.')
    finally:
      checkpointer.close()
  restored = int(meta['step'])
  if restored != checked:
    log(f'Evaluating step {restored}: step {checked} could not be verified (see the warning).')
    # The older step's own config (a resumed run may have changed its evaluation fields).
    config = _reader_config(saved_config(meta['config']), batch_size)
    if config.to_dict() != exp.config.to_dict():
      exp = experiment.build(config)
    split = requested_split or config.data.eval_split
    _check_split(config.data, split)
  if params == 'ema' and state.ema is None:
    raise validation.ConfigError(
        f'Checkpoint step {restored} of {workdir} holds no EMA parameters; evaluate it with '
        '--params=state.')
  chosen, kind, notes = state_lib.eval_params(state)
  default_kind = kind
  if params == 'state':
    chosen, kind, notes = state.params, 'state', {}
  log(f'Evaluating the {"EMA" if kind == "ema" else "train state"} parameters of step '
      f'{restored} (--params={kind}).')
  if 'ema_warning' in notes:
    log(f'WARNING: {notes["ema_warning"]}')
  report = estimate(exp, chosen, split, num_samples, chunk_size=chunk_size or None,
                    progress=progress)
  per_example = report.pop('per_example')
  report.update(step=restored, params=kind, **notes)
  report = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in report.items()}
  if jax.process_index() == 0:
    path = eval_path(workdir, restored, split, num_samples,
                     params=None if kind == default_kind else kind)
    if out_dir:
      path = os.path.join(os.path.abspath(out_dir), os.path.basename(path))
    try:
      _write_eval(path, report, per_example, log)
    except OSError as e:
      raise ResultNotSavedError(
          f'The evaluation above could not be written to {path} ({e.strerror or e}). Pass '
          '--out=DIR to write it elsewhere (scripts/analyze.py looks for it in DIR/eval/), or '
          'evaluate a copy of the workdir.', report) from None
  return report


def _reader_config(config, batch_size):
  """A checkpoint's config as a reader runs it: on all local devices, its batch size."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.mesh.data = -1
    if batch_size:
      config.eval_batch_size = batch_size
  return config


def _same_result(old, new):
  keys = (set(old) | set(new)) - set(_HOW_IT_RAN)
  for k in keys:
    a, b = old.get(k), new.get(k)
    if isinstance(a, (int, float, list)) and isinstance(b, (int, float, list)) and not (
        isinstance(a, bool) or isinstance(b, bool)):
      a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
      if a.shape != b.shape or not np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True):
        return False
    elif a != b:
      return False
  return True


def _write_eval(path, report, per_example, log):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  stem = path[:-len('.json')]
  if os.path.exists(path):
    try:
      with open(path) as f:
        same = _same_result(json.load(f), report)
    except (OSError, ValueError):
      same = False
    if not same:
      n = 1
      while os.path.exists(f'{path}.{n}'):
        n += 1
      os.replace(path, f'{path}.{n}')
      if os.path.exists(stem + '.npz'):
        os.replace(stem + '.npz', f'{stem}.npz.{n}')
      log(f'WARNING: {path} held different results; kept them as {path}.{n}.')
  with open(path + '.tmp', 'w') as f:
    json.dump(report, f, sort_keys=True, indent=1)
    f.write('\n')
  os.replace(path + '.tmp', path)
  with open(stem + '.npz.tmp', 'wb') as f:
    np.savez(f, **per_example)
  os.replace(stem + '.npz.tmp', stem + '.npz')


def paired_difference(path_a, path_b, key='nll'):
  """The paired comparison of two evaluations of the same split: per-example a - b of `key`.

  Each path is an evaluation's .json or .npz (eval_path's files; the .npz holds the
  per-example values). The examples are matched by their index in the split, so two runs of
  the same data compare image by image: the standard error of the mean difference is then
  the paired one, which is far smaller than either mean's when the runs err on the same
  images.

  Returns:
    {'key', 'num_examples', 'a', 'a_stderr', 'b', 'b_stderr', 'difference',
     'difference_stderr', 'z'} (z = difference / difference_stderr), nats per example.

  Raises:
    validation.ConfigError: a file is missing or lacks `key`, or the two evaluations do not
      cover the same examples.
  """
  from vae_jax import validation
  values = []
  for path in (path_a, path_b):
    stem, ext = os.path.splitext(path)
    stem = stem if ext in ('.json', '.npz') else path
    if not os.path.exists(stem + '.npz'):
      raise validation.ConfigError(
          f'{stem}.npz does not exist: give an evaluation written by scripts/evaluate.py '
          '(DIR/eval/step_S_SPLIT_kK.json or .npz).')
    with np.load(stem + '.npz') as f:
      if key not in f.files:
        raise validation.ConfigError(
            f'{stem}.npz has no per-example {key!r}; it has {sorted(f.files)} (nll needs an '
            'evaluation with --num_samples >= 1).')
      values.append((np.asarray(f['index']), np.asarray(f[key], np.float64)))
  (ia, a), (ib, b) = values
  if ia.shape != ib.shape or not np.array_equal(np.sort(ia), np.sort(ib)):
    raise validation.ConfigError(
        f'{path_a} and {path_b} evaluate different examples ({ia.size} and {ib.size}); a paired '
        'comparison needs the same split.')
  a, b = a[np.argsort(ia)], b[np.argsort(ib)]
  out = {'key': key, 'num_examples': int(a.size)}
  for name, v in (('a', a), ('b', b), ('difference', a - b)):
    out[name], out[f'{name}_stderr'] = _mean_and_stderr(v)
  out['z'] = (out['difference'] / out['difference_stderr'] if out['difference_stderr'] > 0
              else float('inf') if out['difference'] else 0.0)
  return out
