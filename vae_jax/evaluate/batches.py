"""Every example of a split once, over the mesh: padded and masked global batches, the
evaluation key, and the means with standard errors of what they give.

The last batch is padded and masked, and every mean comes with its standard error,
stderr = sqrt(var / n) with var the unbiased per-example variance. Posterior samples are keyed
by (seed, the example's index, the sample's index), so the numbers of one checkpoint do not
depend on the batch size, the padding, the chunking of K or the device count (to float32
rounding).
"""

import math

import jax
import numpy as np

from vae_jax import data as data_lib
from vae_jax import sharding
from vae_jax.data.preprocess import split_id
from vae_jax.maths import streams


def eval_root(exp):
  """The run's evaluation key (streams.eval_root), replicated: every evaluation program takes
  it as a traced argument, so one compile serves the members of a population whatever their
  seeds."""
  return sharding.replicated_value(streams.eval_root, exp.config.seed, exp.mesh)


def global_batches(exp, split, arrays, batch_size):
  """(host batch, its global (images, index, mask, split ids)) for each padded batch of the
  split; the split ids [B] are the base split's preprocess.split_id (static binarization's
  key), traced so that one program serves every split."""
  for batch in data_lib.eval_batches(exp.config.data, split, batch_size=batch_size,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count(), arrays=arrays):
    ids = np.full(batch['index'].shape, split_id(split), np.int32)
    yield batch, sharding.host_to_global((batch['image'], batch['index'], batch['mask'], ids),
                                         exp.mesh)


def jit_batch_fn(exp, fn):
  """fn(params, eval key, images, index, mask, split ids), batch-sharded in, replicated out
  (every process can read every example's values)."""
  rep, bat = sharding.replicated(exp.mesh), sharding.batch_sharding(exp.mesh)
  return jax.jit(fn, in_shardings=(rep, rep, bat, bat, bat, bat), out_shardings=rep)


def kept(outputs):
  """The real examples' rows of replicated per-example outputs (padding dropped)."""
  host = sharding.to_host(outputs)
  mask = host.pop('mask').astype(bool)
  return {k: v[mask] for k, v in host.items()}


def mean_and_stderr(values):
  """(mean, standard error of the mean) of per-example values, in float64."""
  v = np.asarray(values, np.float64)
  n = v.size
  var = float(np.var(v, ddof=1)) if n > 1 else 0.0
  return float(np.mean(v)), math.sqrt(var / n) if n else float('nan')
