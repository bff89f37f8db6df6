"""The K-sample importance-sampled estimator of -log p(x) over a whole split, with the ELBO
terms and the unit statistics from the same pass.

`estimate` adds the importance-sampled -log p(x) with K samples from q to the ELBO terms:
  nll(x) = -log (1/K) sum_k exp(log_w_k),  log_w_k = log p(x|h_k) + log p(h_k) - log q(h_k|x),
computed in chunks of Kc samples inside one jitted step (a lax.scan over the chunks, each
chunk's log-sum-exp combined exactly at the end), so memory is bounded by Kc whatever K is.
Its per-example values come back to the host, where means and standard errors are taken in
float64.

The estimator is consistent but biased upward for finite K: E[nll] >= -log p(x) (Jensen), with
the bias shrinking like O(1/K). So `posterior_gap` = neg_elbo - nll, an estimate of
E KL(q(h|x) || p(h|x)), inherits that bias with the opposite sign: it UNDERESTIMATES the gap.
"""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import data as data_lib
from vae_jax import sharding
from vae_jax.data.preprocess import preprocess
from vae_jax.evaluate import batches
from vae_jax.evaluate import units as units_lib
from vae_jax.maths import likelihoods, streams

# The automatic chunk: about this many decoder rows (samples x examples) per device per chunk.
# Measured on the Fashion-MNIST MLP on a 2-core CPU: 2000 to 8000 rows per chunk ran within 5%
# of each other at about 90% of a 2048^2 matmul's FLOP rate; 16000 and 32000 rows ran 15-25%
# slower (the [rows, 784] float32 logits no longer stay in cache). Accelerators want more rows
# (config.eval_chunk_size); never measured there.
ROWS_PER_CHUNK = 8192
# Per-example fields of `estimate` (each [N]) and of its report (mean and `_stderr`).
_PER_EXAMPLE = ('recon', 'kl', 'neg_elbo', 'neg_elbo_mc', 'nll', 'posterior_gap', 'ess')


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
  """(params, eval key (streams.eval_root(seed)), uint8 images [B,...], index [B], mask [B],
  split ids [B]) -> per-example values, each [B].

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

  def step(params, key, images, index, mask, split):
    x = preprocess(images, index, mode=config.data.preprocess, data_seed=config.data_seed,
                   split=split)
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
      stats = model.posterior_stats(params, x, keys)  # [B, U] each (keys: a flow's samples)
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
    self._jitted = batches.jit_batch_fn(
        exp, make_estimate_step(exp, num_samples, chunk_size, units))
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
  if preprocess_mode in ('dynamic_binarize', 'static_binarize', 'threshold'):
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
  params, key = jax.device_put(params, sharding.replicated(exp.mesh)), batches.eval_root(exp)
  parts, binary, compile_s, pending, done = [], True, 0.0, None, 0
  t0 = None
  for batch, g in batches.global_batches(exp, split, arrays, batch_size):
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
    stats = units_lib.unit_summary(exp, post['post_mean'], post['post_var'], per_example['index'],
                          kl=per_example['kl'], kl_units=post.get('post_kl_units'))
    report.update({k: v for k, v in stats.items() if k != 'num_examples'})
  report['per_example'] = per_example
  return report


def _collect(parts, outputs, done, total, progress):
  parts.append(batches.kept(outputs))
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
      out[name], out[f'{name}_stderr'] = batches.mean_and_stderr(per_example[name])
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
