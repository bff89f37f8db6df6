"""Preparing, describing and reading whole datasets (TFDS records -> uint8 numpy arrays).

Every dataset comes out as uint8 0..255 [N, H, W, C]: datasets stored as 0/1 (binarized_mnist)
are scaled to {0, 255} when read, so preprocessing is the same for all. The order of a split is
its canonical TFDS order (shard files in order, records in order): an example's index in it is
what binarization keys and evaluation use, for both back ends.
"""

import dataclasses
import os

from vae_jax.data import checks

# Rows sampled to tell a 0/1-valued dataset from a 0..255 one. Decided from the first split's
# first rows, never per split or per batch, so all splits and both back ends scale alike.
_SCALE_SAMPLE = 1024
_scale_cache = {}


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What the model and the trainer need to know about a dataset.

  Attributes:
    name: the dataset name as configured.
    image_shape: (H, W, C).
    num_examples: {split: number of examples}.
    entropy_nats: entropy of the data population where known exactly (sprites: log N), else None.
    num_distinct: number of distinct images where known (sprites), else None.
  """

  name: str
  image_shape: tuple
  num_examples: dict
  entropy_nats: float | None = None
  num_distinct: int | None = None


def _load_builder(name, data_dir):
  import tensorflow_datasets as tfds

  if checks.split_name(name)[0] == checks.SPRITES:
    from vae_jax.data import sprites_builder  # noqa: F401  (registers the 'sprites' builder)
  return tfds.builder(name, data_dir=data_dir)


def _is_prepared(builder):
  return os.path.exists(os.path.join(os.fspath(builder.data_dir), 'dataset_info.json'))


def ensure_prepared(data_cfg):
  """Prepares the dataset if it is missing.

  Returns:
    (tfds builder of the prepared dataset, how): how is 'prepared' (found), 'generated'
    (sprites), 'tfds-manual-dir' / 'decoded-local-files' (offline) or 'downloaded'.
  """
  checks.check_available(data_cfg)  # fails fast, before TensorFlow, with the prepare command
  import tensorflow_datasets as tfds

  name = checks.canonical_name(data_cfg.name)
  data_dir = checks.resolve_data_dir(data_cfg.data_dir)
  builder = _load_builder(name, data_dir)
  if _is_prepared(builder):
    return builder, 'prepared'
  try:
    if checks.split_name(name)[0] == checks.SPRITES:
      how = 'generated'
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    elif data_cfg.manual_dir:
      from vae_jax.data import offline

      how = offline.prepare_offline(name, data_cfg.manual_dir, data_dir)
    elif data_cfg.download:
      how = 'downloaded'
      builder.download_and_prepare()
    else:
      # check_available saw some prepared version, but not the one this TFDS builds.
      raise checks.DatasetMissingError(
          f'{name} {builder.version} is not prepared in {data_dir} (found '
          f'{checks.prepared_dirs(name, data_dir)}) and data.download=False. Prepare it '
          f'with\n  {checks.prepare_command(data_cfg.name, data_cfg.data_dir)}')
  except OSError:
    # Processes sharing a data_dir may prepare at once: TFDS writes to a temporary folder
    # and renames it, and only the first rename succeeds. The others use its result.
    if not _is_prepared(builder):
      raise
    how = 'prepared'
  # A fresh builder reads everything (splits, label names, metadata) back from disk.
  return _load_builder(name, data_dir), how


def prepare(data_cfg):
  """Ensures the dataset is prepared (sprites: generated; manual_dir: offline; or download).

  Returns:
    The TFDS builder of the prepared dataset.
  """
  return ensure_prepared(data_cfg)[0]


def dataset_info(data_cfg):
  """DataInfo of the configured dataset (prepares it first if needed)."""
  info = prepare(data_cfg).info
  metadata = info.metadata or {}
  return DataInfo(
      name=data_cfg.name,
      image_shape=tuple(info.features['image'].shape),
      num_examples={k: v.num_examples for k, v in info.splits.items()},
      entropy_nats=metadata.get('entropy_nats'),
      num_distinct=metadata.get('num_distinct'),
  )


# ---------------------------------------------------------------------------------------------
# Reading records


def record_files(builder, split):
  """(paths of the split's TFRecord shards in canonical order, examples per shard)."""
  import tensorflow_datasets as tfds

  splits = builder.info.splits
  if split not in splits:
    raise ValueError(f'{builder.name} has no split {split!r}; it has {sorted(splits)}.')
  if builder.info.file_format != tfds.core.FileFormat.TFRECORD:
    raise ValueError(f'{builder.name} is stored as {builder.info.file_format}; the readers here '
                     'need TFRecord (TFDS\'s default): prepare it again without file_format.')
  info = splits[split]
  return [os.fspath(p) for p in info.filepaths], [int(n) for n in info.shard_lengths]


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
    if key == 'image' or not hasattr(info, 'shape') or None in tuple(info.shape):
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
  import numpy as np
  import tensorflow as tf

  files, _ = record_files(builder, split)
  ds = tf.data.TFRecordDataset(files, buffer_size=8 << 20)
  if limit is not None:
    ds = ds.take(limit)
  decode = make_decoder(builder, with_features=with_features, scale=scale)
  ds = ds.batch(1024).map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  batches = list(ds.prefetch(2).as_numpy_iterator())
  if not batches:
    raise ValueError(f'Split {split!r} of {builder.name} is empty.')
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def value_scale(builder):
  """255 for datasets stored as 0/1 (to make them 0/255), else 1."""
  key = os.fspath(builder.data_dir)
  if key not in _scale_cache:
    splits = builder.info.splits
    first = 'train' if 'train' in splits else sorted(splits)[0]
    sample = _read_records(builder, first, with_features=False, limit=_SCALE_SAMPLE)
    _scale_cache[key] = 255 if int(sample['image'].max()) <= 1 else 1
  return _scale_cache[key]


def read_split(builder, split):
  """{'image': uint8 [N, H, W, C] 0..255, plus numeric features} of a prepared split."""
  return _read_records(builder, split, with_features=True, scale=value_scale(builder))


def load_arrays(data_cfg, split):
  """The whole split as numpy: 'image' uint8 [N, H, W, C] (0..255), plus 'label' / factors."""
  return read_split(prepare(data_cfg), split)
