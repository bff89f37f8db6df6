"""Image preprocessing in jnp, usable inside jit (batches are uint8 0..255 throughout).

Dynamic binarization draws every example's pixels from its own key, made from the data seed,
the example's index in the split and (training only) the epoch. The draw therefore never
depends on how a batch is split over devices or processes, and evaluation draws are the same at
every step. Never fold in a device or process index here.
"""

import jax
import jax.numpy as jnp

_TRAIN_STREAM = 1
_EVAL_STREAM = 2


def example_keys(index, *, data_seed, epoch=None):
  """Typed keys, one per example: index [...] (and epoch, broadcastable) -> keys [...]."""
  index = jnp.asarray(index)
  base = jax.random.key(data_seed)
  if epoch is None:
    k = jax.random.fold_in(base, _EVAL_STREAM)
    fold = jnp.vectorize(lambda i: jax.random.fold_in(k, i))
    return fold(index)
  k = jax.random.fold_in(base, _TRAIN_STREAM)
  epoch = jnp.broadcast_to(jnp.asarray(epoch), index.shape)
  fold = jnp.vectorize(lambda e, i: jax.random.fold_in(jax.random.fold_in(k, e), i))
  return fold(epoch, index)


def preprocess(images, index, *, mode, data_seed, epoch=None):
  """Maps uint8 images to the model's input.

  Args:
    images: uint8 [*batch, H, W, C], values 0..255.
    index: int [*batch]: each example's index in its split (the key of its binarization draw).
    mode: 'grey' (float32 in [0, 1]), 'dynamic_binarize' (float32 {0, 1}, a fresh Bernoulli
      draw per (example, epoch)), 'threshold' (float32, pixel > 127), 'uint8' (int32 0..255).
    data_seed: int seed of the data (not the model seed).
    epoch: int, scalar or [*batch], for training draws; None for evaluation draws.

  Returns:
    [*batch, H, W, C] float32, or int32 for 'uint8'.
  """
  if mode == 'grey':
    return images.astype(jnp.float32) / 255.0
  if mode == 'threshold':
    return (images > 127).astype(jnp.float32)
  if mode == 'uint8':
    return images.astype(jnp.int32)
  if mode == 'dynamic_binarize':
    index = jnp.asarray(index)
    keys = example_keys(index, data_seed=data_seed, epoch=epoch)
    shape = images.shape[index.ndim:]
    flat = keys.reshape(-1)
    u = jax.vmap(lambda k: jax.random.uniform(k, shape))(flat).reshape(images.shape)
    return (u < images.astype(jnp.float32) / 255.0).astype(jnp.float32)
  raise ValueError(f'Unknown preprocess mode {mode!r}; valid: grey, dynamic_binarize, '
                   'threshold, uint8.')
