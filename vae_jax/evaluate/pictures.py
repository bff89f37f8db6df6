"""The model's picture grids: reconstructions and prior draws of a few inputs, as the loop
writes them at each evaluation (DIR/images/) and the analysis page shows them."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import data as data_lib
from vae_jax.data.preprocess import preprocess
from vae_jax.maths import streams
from vae_jax.storage import writers as metrics_lib


def make_picture_fn(exp):
  """(params, x [n,...], key) -> {'reconstructions', 'prior_means', 'prior_samples'} [n,H,W,C].

  reconstructions: E[x|h] at the posterior mean of each x; prior_means: E[x|h] at prior draws
  h ~ p(h); prior_samples: x ~ p(x|h) at the same draws (a Bernoulli mean looks far smoother
  than its samples, so both are shown). All in [0, 1]. key: streams.prior_key(seed), an
  argument so that one compile serves every seed of a population.
  """
  model = exp.model

  def pictures(params, x, key):
    prior = model.sample(params, key, x.shape[0])
    return {'reconstructions': model.reconstruct(params, x), 'prior_means': prior['means'],
            'prior_samples': prior['samples']}

  return jax.jit(pictures)


def picture_inputs(exp, arrays=None, split=None):
  """The first config.images.num examples of the split, preprocessed as the model sees them.

  With `arrays` (from data.load_arrays) given, the dataset is not read, so this works on an
  Experiment rebuilt from a checkpoint (whose data_info is None) too.
  """
  config = exp.config
  split = split or config.data.eval_split
  size = len(arrays['image']) if arrays is not None else exp.data_info.split_size(split)
  n = min(config.images.num, size)
  batch = next(iter(data_lib.eval_batches(config.data, split, batch_size=n, arrays=arrays)))
  return preprocess(jnp.asarray(batch['image']), jnp.asarray(batch['index']),
                    mode=config.data.preprocess, data_seed=config.data_seed, split=split)


def write_training_pictures(exp, workdir, step, params, pictures, x=None, arrays=None):
  """The step's PNG grids in DIR/images/ (inputs.png once). Returns the inputs, for next time."""
  d = os.path.join(workdir, 'images')
  if x is None:
    x = picture_inputs(exp, arrays)
    metrics_lib.save_png(os.path.join(d, 'inputs.png'), display(x))
  key = streams.prior_key(exp.config.seed)
  for name, images in pictures(jax.device_get(params), x, key).items():
    metrics_lib.save_png(os.path.join(d, f'{name}_step_{step}.png'), np.asarray(images))
  return x


def display(x):
  """Model inputs as float images in [0, 1] (integer 'uint8' inputs are divided by 255)."""
  x = np.asarray(x)
  return x / 255.0 if np.issubdtype(x.dtype, np.integer) else x.astype(np.float32)
