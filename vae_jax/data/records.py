"""Reading and writing a prepared dataset's TFRecords: splits and slices -> uint8 numpy arrays.

The lowest layer that touches TensorFlow (imported inside the functions, so importing this
module stays cheap). `datasets`, `offline`, `sprites_builder` and `pipeline` build on it; it
imports none of them.

Every dataset comes out as uint8 0..255 [N, H, W, C]: datasets stored as 0/1 (binarized_mnist)
are scaled to {0, 255} when read, so preprocessing is the same for all. A split's order is its
canonical TFDS order (shard files in order, records in order); a slice ('train[55000:]', see
`splits`) is a contiguous range of it, and an example's index is its index in the base split.
"""

import os

import numpy as np

from vae_jax.data import order, splits

# Rows sampled to tell a 0/1-valued dataset from a 0..255 one. Decided from the first split's
# first rows, never per split or per batch, so all splits and both back ends scale alike.
_SCALE_SAMPLE = 1024
_scale_cache = {}
# Read-ahead per TFRecord file, bytes.
_READ_BUFFER = 8 << 20


def split_sizes(builder):
  """{base split name: number of examples} of a prepared builder."""
  return {k: int(v.num_examples) for k, v in builder.info.splits.items()}


def resolve(builder, split):
  """(base, start, stop) of a split or slice of the builder (ValueError if it has none)."""
  try:
    return splits.resolve(split, split_sizes(builder))
  except ValueError as e:
    raise ValueError(f'{builder.name}: {e}') from None


def record_files(builder, split):
  """(paths of a base split's TFRecord shards in canonical order, examples per shard)."""
  import tensorflow_datasets as tfds

  base_splits = builder.info.splits
  if split not in base_splits:
    what = 'is a slice: pass its base split (see resolve)' if '[' in split else 'is unknown'
    raise ValueError(f'{builder.name}: split {split!r} {what}; it has {sorted(base_splits)}.')
  if builder.info.file_format != tfds.core.FileFormat.TFRECORD:
    raise ValueError(f'{builder.name} is stored as {builder.info.file_format}; the readers here '
                     'need TFRecord (TFDS\'s default): prepare it again without file_format.')
  info = base_splits[split]
  return [os.fspath(p) for p in info.filepaths], [int(n) for n in info.shard_lengths]


def slice_records(files, lengths, start, size, buffer_size=_READ_BUFFER):
  """tf.data.Dataset of the serialized records [start, start + size) of the shards, in order."""
  import tensorflow as tf

  if start == 0 and size == sum(lengths):
    return tf.data.TFRecordDataset(files, buffer_size=buffer_size)
  pieces = [tf.data.TFRecordDataset(files[shard], buffer_size=buffer_size).skip(skip).take(take)
            for shard, skip, take in order.shard_pieces(start, size, lengths)]
  ds = pieces[0]
  for piece in pieces[1:]:
    ds = ds.concatenate(piece)
  return ds


def _image_feature(builder):
  image = builder.info.features['image']
  if None in image.shape:
    raise ValueError(f'{builder.name} images have variable shape {image.shape}: only '
                     'fixed-size image datasets are supported.')
  return image


def _numeric_specs(builder):
  """tf.io parse specs of the scalar / fixed-shape numeric features besides the image."""
  import tensorflow as tf

  specs = {}
  serialized = builder.info.features.get_serialized_info()
  for key, info in serialized.items():
    # 'index' is the name of the example's index that the readers add.
    if key in ('image', 'index') or not hasattr(info, 'shape') or None in tuple(info.shape):
      continue
    dtype = tf.as_dtype(info.np_dtype)
    if dtype.is_integer or dtype.is_floating:
      specs[key] = tf.io.FixedLenFeature(tuple(info.shape), dtype)
  return specs


def make_decoder(builder, *, with_features, scale=1):
  """A tf function: serialized records [b] -> {'image': uint8 [b, H, W, C], ...features}."""
  import tensorflow as tf

  image = _image_feature(builder)
  shape = tuple(image.shape)
  specs = {'image': tf.io.FixedLenFeature([], tf.string)}
  if with_features:
    specs.update(_numeric_specs(builder))

  def decode_one(data):
    img = tf.io.decode_image(data, channels=shape[-1], expand_animations=False)
    return tf.ensure_shape(img, shape)

  def decode(serialized):
    parsed = tf.io.parse_example(serialized, specs)
    # Batched parse, per-image decode: about 2x the per-record map rate here.
    images = tf.map_fn(decode_one, parsed.pop('image'),
                       fn_output_signature=tf.TensorSpec(shape, tf.uint8))
    if scale != 1:
      images = images * tf.constant(scale, tf.uint8)
    return {'image': images, **parsed}

  return decode


def encode_images(images, encoding='png'):
  """uint8 [N, H, W, C] -> list of N encoded images (bytes), encoded in parallel by tf.data.

  TFDS accepts encoded bytes for Image features; encoding here in one pipeline avoids its
  per-example eager call (about 0.4 ms each: 27 s of Fashion-MNIST's preparation).
  """
  import tensorflow as tf

  encode = {'png': tf.io.encode_png, 'jpeg': tf.io.encode_jpeg}[encoding]
  ds = tf.data.Dataset.from_tensor_slices(images).batch(256).map(
      lambda x: tf.map_fn(encode, x, fn_output_signature=tf.string),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return [png for batch in ds.as_numpy_iterator() for png in batch.tolist()]


def _read_records(builder, split, *, with_features, scale=1, limit=None):
  import tensorflow as tf

  base, start, stop = resolve(builder, split)
  files, lengths = record_files(builder, base)
  ds = slice_records(files, lengths, start, stop - start)
  if limit is not None:
    ds = ds.take(limit)
  decode = make_decoder(builder, with_features=with_features, scale=scale)
  ds = ds.batch(1024).map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  batches = list(ds.prefetch(2).as_numpy_iterator())
  if not batches:
    raise ValueError(f'Split {split!r} of {builder.name} is empty.')
  out = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  out['index'] = np.arange(start, start + len(out['image']), dtype=np.int32)
  return out


def value_scale(builder):
  """255 for datasets stored as 0/1 (to make them 0/255), else 1."""
  key = os.fspath(builder.data_dir)
  if key not in _scale_cache:
    base_splits = builder.info.splits
    first = 'train' if 'train' in base_splits else sorted(base_splits)[0]
    sample = _read_records(builder, first, with_features=False, limit=_SCALE_SAMPLE)
    _scale_cache[key] = 255 if int(sample['image'].max()) <= 1 else 1
  return _scale_cache[key]


def read_split(builder, split):
  """A prepared split or slice as numpy arrays.

  Returns:
    {'image': uint8 [N, H, W, C] 0..255, 'index': int32 [N] (indices in the base split),
    plus the numeric features (e.g. 'label', sprite factors), each [N, ...]}.
  """
  return _read_records(builder, split, with_features=True, scale=value_scale(builder))
