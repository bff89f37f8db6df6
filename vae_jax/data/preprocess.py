"""Image preprocessing in jnp, usable inside jit (batches are uint8 0..255 throughout).

Both binarizations draw every example's pixels from its own key (`vae_jax.maths.streams`),
  x = uniform(k, image.shape) < image / 255,
keyed by the data seed's root and the example's index in its BASE split (what the data layer
hands as 'index' on both back ends, for slices too: example j of 'train[90%:]' of a 60000-row
train split has index 54000 + j, so a slice is keyed as the same example read through the whole
split, and two disjoint slices never share a key):
  dynamic_binarize: training draws also fold in the epoch (fresh every epoch); evaluation draws
    (epoch None) are one fixed draw per example, so evaluations compare across steps.
  static_binarize: one draw per example for the whole run, never keyed by the epoch, so the
    example is the same binary image at every epoch of training, in every evaluation of a split
    that holds it and in the analysis: the fixed-binarization setting of binarized_mnist, from
    any grey-level data. Its key also folds in the base split's id (split_id), so train 5 and
    test 5 draw apart, and it is its own stream, never the dynamic mode's evaluation draws.
The draws therefore never depend on how a batch is split over devices or processes. Never fold
in a device or process index here.
"""

import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.data import splits
from vae_jax.maths import streams


def example_keys(index, *, data_seed, epoch=None):
  """Binarization keys, one per example: index [...] (and epoch) -> keys [...]."""
  return streams.binarize_keys(index, data_seed=data_seed, epoch=epoch)


def split_id(split):
  """The id of a split's base split, for static_binarize's key: a Python int in [0, 2**31).

  A slice has its base split's id ('train[90%:]' -> split_id('train')): the index keys the
  example within the base split. The id is a CRC-32 of the base name, so it is the same in
  every process and every run, and fits the int32 arrays the evaluation programs take.
  """
  return zlib.crc32(splits.parse(split).base.encode()) & 0x7FFFFFFF


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


def preprocess(images, index, *, mode, data_seed, epoch=None, split=None):
  """Maps uint8 images to the model's input.

  Args:
    images: uint8 [*batch, H, W, C], values 0..255.
    index: int [*batch]: each example's index in its base split (the key of its binarization
      draw).
    mode: 'grey' (float32 in [0, 1]), 'dynamic_binarize' (float32 {0, 1}, a fresh Bernoulli
      draw per (example, epoch)), 'static_binarize' (float32 {0, 1}, one Bernoulli draw per
      example for the whole run), 'threshold' (float32, pixel > 127), 'uint8' (int32 0..255).
    data_seed: int seed of the data (not the model seed).
    epoch: int, scalar or [*batch], for training draws; None for evaluation draws. Ignored by
      static_binarize, whose draw never depends on the epoch.
    split: static_binarize only (required there): the examples' split, as a split string
      ('train[:90%]': its base split counts) or its split_id, an int scalar or [*batch]
      (traced, so one compiled evaluation serves every split).

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
  if mode == 'static_binarize':
    if split is None:
      raise ValueError("preprocess mode 'static_binarize' needs split= (the examples' split "
                       'or its split_id): its draw is keyed by the base split and the index.')
    if isinstance(split, str):
      split = split_id(split)
    index = jnp.asarray(index)
    keys = streams.static_binarize_keys(index, split, data_seed=data_seed)
    u = uniform(keys, images.shape[index.ndim:])
    return (u < images.astype(jnp.float32) / 255.0).astype(jnp.float32)
  raise ValueError(f'Unknown preprocess mode {mode!r}; valid: grey, dynamic_binarize, '
                   'static_binarize, threshold, uint8.')
