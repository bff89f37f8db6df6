"""The loop's cheap full-split pass: single-sample ELBO terms of every example, summed on
device, as means with standard errors."""

import math

import jax
import jax.numpy as jnp

from vae_jax import sharding
from vae_jax.data.preprocess import preprocess
from vae_jax.evaluate import batches
from vae_jax.maths import streams


def make_eval_step(exp):
  """(params, eval key (streams.eval_root(seed)), uint8 images [B,...], index [B], mask [B],
  split ids [B]) -> masked sums of every [B] term and of its square, and the count."""
  config, model = exp.config, exp.model

  def eval_step(params, key, images, index, mask, split):
    x = preprocess(images, index, mode=config.data.preprocess, data_seed=config.data_seed,
                   split=split)
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
  return jax.jit(make_eval_step(exp), in_shardings=(params_sh, rep, bat, bat, bat, bat),
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
  key, totals = batches.eval_root(exp), None
  for _, g in batches.global_batches(exp, split, arrays, exp.config.eval_batch_size):
    sums = eval_step(params, key, *g)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return {'split': split, **_means_and_stderrs(sharding.to_host(totals))}
