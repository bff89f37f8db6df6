"""The device feeder of the fused train chunks: the (source, index) arguments of any step."""

import jax
import numpy as np

from vae_jax import sharding
from vae_jax.data.datasets import load_arrays
from vae_jax.data.pipeline import make_train_iterator, memory_train_indices


class ChunkFeeder:
  """Produces the (source, index) arguments of each fused call, from any step.

  memory: the split's uint8 array lives on device once (replicated); each call gets the
  [k, B] positions of its steps' examples in that array and their indices in the base split
  (the binarization keys); each process builds only its own columns.
  stream, grain: each process reads its rows of each global batch (tf.data over the TFDS
  records; grain over the split's ArrayRecord copy) and they are stacked [k, B/P, ...].
  arrays: the training split's arrays ({'image', 'index'} as data.load_arrays gives them) to
  hold instead of reading the dataset (memory back end only; the benchmark's synthetic data).
  """

  def __init__(self, exp, start_step, arrays=None):
    self.exp = exp
    c = exp.config
    self.backend = c.data.backend
    self.k = c.steps_per_call
    if arrays is not None and self.backend != 'memory':
      raise ValueError('Given arrays need data.backend=memory.')
    if self.backend == 'memory':
      if arrays is None:
        arrays = load_arrays(c.data, c.data.train_split)
      self.base_index = arrays['index']
      self.data = jax.make_array_from_process_local_data(
          sharding.replicated(exp.mesh), arrays['image'], arrays['image'].shape)
    else:
      self.iterator = make_train_iterator(
          c.data, batch_size=c.batch_size, data_seed=c.data_seed, start_step=start_step,
          process_index=jax.process_index(), process_count=jax.process_count())

  def __call__(self, step):
    c, mesh = self.exp.config, self.exp.mesh
    if self.backend == 'memory':
      rows = memory_train_indices(
          self.base_index, data_seed=c.data_seed, start_step=step, num_steps=self.k,
          batch_size=c.batch_size, process_index=jax.process_index(),
          process_count=jax.process_count())
      return self.data, sharding.host_to_global(rows, mesh, leading_axes=1)
    batches = [next(self.iterator) for _ in range(self.k)]
    images = np.stack([b['image'] for b in batches])
    index = np.stack([b['index'] for b in batches])
    return sharding.host_to_global((images, index), mesh, leading_axes=1)
