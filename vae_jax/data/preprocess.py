"""Image preprocessing in jnp, usable inside jit (batches are uint8 0..255 throughout).

Dynamic binarization draws every example's pixels from its own key (`vae_jax.maths.streams`): from
the data seed's root, the example's index in its split and (training only) the epoch,
  x = uniform(k, image.shape) < image / 255.
The draw therefore never depends on how a batch is split over devices or processes, and
evaluation draws are the same at every step. Never fold in a device or process index here.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.maths import streams


def example_keys(index, *, data_seed, epoch=None):
  """Binarization keys, one per example: index [...] (and epoch) -> keys [...]."""
  return streams.binarize_keys(index, data_seed=data_seed, epoch=epoch)


def _rotate_left(x, r):
  return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _threefry2x32(k1, k2, x1, x2):
  """Threefry-2x32 (20 rounds), exactly as jax.random's; written unrolled.

  JAX lowers its own threefry on CPU as a rolled fori_loop over whole arrays, which
  materialises every round (measured ~4.6x slower here); unrolled, XLA fuses the hash into a
  single loop.
  """
  ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
  rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
  x1, x2 = x1 + ks[0], x2 + ks[1]
  for i in range(5):
    for r in rotations[i % 2]:
      x1 = x1 + x2
      x2 = x1 ^ _rotate_left(x2, r)
    x1 = x1 + ks[(i + 1) % 3]
    x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x1, x2


def uniform(keys, shape):
  """float32 [*keys.shape, *shape]: jax.random.uniform(k, shape) for every key k.

  Bit-identical to jax.random.uniform with jax_threefry_partitionable=True (the project's
  setting; tested), whatever the flag says here, so draws never depend on it.
  """
  size = math.prod(shape)
  if size >= 2**32:
    raise ValueError(f'{size} values per key: over the 2**32 counter range.')
  data = jax.random.key_data(keys)  # [*keys.shape, 2] uint32
  counts = jnp.arange(size, dtype=jnp.uint32)  # the 64-bit counter's high word is 0
  b1, b2 = _threefry2x32(data[..., 0:1], data[..., 1:2], jnp.zeros_like(counts), counts)
  bits = (b1 ^ b2) >> np.uint32(9)  # 23 mantissa bits, as jax.random.uniform uses
  floats = jax.lax.bitcast_convert_type(bits | np.uint32(0x3F800000), jnp.float32) - 1.0
  return floats.reshape(keys.shape + tuple(shape))


def gather_images(images, index):
  """images[index] for uint8 [N, H, W, C] and int index [...]: [..., H, W, C].

  Gathers rows of the flattened images: XLA's CPU gather of 4-D slices was ~9x slower here.
  """
  flat = images.reshape(images.shape[0], -1)
  return flat[index].reshape(index.shape + images.shape[1:])


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
    u = uniform(keys, images.shape[index.ndim:])
    return (u < images.astype(jnp.float32) / 255.0).astype(jnp.float32)
  raise ValueError(f'Unknown preprocess mode {mode!r}; valid: grey, dynamic_binarize, '
                   'threshold, uint8.')
