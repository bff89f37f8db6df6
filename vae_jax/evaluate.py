"""Exact full-split evaluation through the model contract (used by the loop and scripts).

Every example of the split is seen once: the last batch is padded and masked, sums are divided
by the true count, and every mean comes with its standard error (from per-example sums of
squares: stderr = sqrt(var / n), var the unbiased per-example variance). Posterior samples are
keyed by (seed, the example's index), so the numbers of one checkpoint do not depend on the
batch size, the padding or the device count.
"""

import math

import jax
import jax.numpy as jnp

from vae_jax import data as data_lib
from vae_jax import sharding, streams
from vae_jax.data.preprocess import preprocess


def make_eval_step(exp):
  """(params, uint8 images [B,...], index [B], mask [B]) -> masked sums of every [B] term and
  of its square, and the count."""
  config, model = exp.config, exp.model

  def eval_step(params, images, index, mask):
    x = preprocess(images, index, mode=config.data.preprocess, data_seed=config.data_seed)
    terms = model.terms(params, x, streams.eval_keys(config.seed, index))  # each [B]
    w = mask.astype(jnp.float32)
    sums = {k: jnp.sum(w * v) for k, v in terms.items()}
    sums.update({f'{k}_sq': jnp.sum(w * jnp.square(v)) for k, v in terms.items()})
    sums['count'] = jnp.sum(w)
    return sums

  return eval_step


def jit_eval_step(exp):
  mesh = exp.mesh
  rep, bat = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  params_sh = jax.tree.map(lambda a: a.sharding, exp.abstract_state.params)
  return jax.jit(make_eval_step(exp), in_shardings=(params_sh, bat, bat, bat),
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
  config, mesh = exp.config, exp.mesh
  eval_step = eval_step or jit_eval_step(exp)
  totals = None
  for batch in data_lib.eval_batches(config.data, split, batch_size=config.eval_batch_size,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count(), arrays=arrays):
    g = sharding.host_to_global((batch['image'], batch['index'], batch['mask']), mesh)
    sums = eval_step(params, *g)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return {'split': split, **_means_and_stderrs(sharding.to_host(totals))}
