"""Reading and writing a prepared dataset's records: splits and slices -> uint8 numpy arrays.

A prepared dataset is a TFDS folder ({data_dir}/{name}[/{config}]/{version}) of TFRecord files
(TFDS's default) or ArrayRecord files (prepared with file_format='array_record'), each record a
tf.train.Example. `open_prepared` describes it from its JSON files, and `read_split` (the
memory back end's reader) reads a split or slice into numpy without TensorFlow: the TFRecord
framing and its CRC-32C checksums here (ArrayRecords through array_record's reader, which
checks its own), the tf.train.Example with TFDS's own protobuf module, PNG images with zlib
and Pillow. What still needs TensorFlow imports it inside the function: the stream back end's
tf.data pieces (`slice_records`, `make_decoder`; TFRecords only), image encoding for
preparation (`encode_images`), and images that are not 8-bit PNGs of the feature's channel
count (JPEG above all: Pillow's JPEG decoder differs from TensorFlow's by up to 8 levels, and
both back ends must see the same pixels). No prepared dataset this project makes holds any
of those. `datasets`, `offline`, `sprites_builder` and `pipeline` build on this module; it
imports none of them.

Every dataset comes out as uint8 0..255 [N, H, W, C]: datasets stored as 0/1 (binarized_mnist)
are scaled to {0, 255} when read, so preprocessing is the same for all. A split's order is its
canonical TFDS order (shard files in order, records in order); a slice ('train[55000:]', see
`splits`) is a contiguous range of it, and an example's index is its index in the base split.
"""

import dataclasses
import functools
import json
import mmap
import os
import struct
import zlib

import numpy as np

from vae_jax.data import checks, order, splits

# Rows sampled to tell a 0/1-valued dataset from a 0..255 one. Decided from the first split's
# first rows, never per split or per batch, so all splits and both back ends scale alike.
_SCALE_SAMPLE = 1024
_scale_cache = {}
# Read-ahead per TFRecord file (tf.data), bytes.
_READ_BUFFER = 8 << 20
# Records per block of the vectorised checksum, and images per block of the PNG decoding:
# bounds the temporary memory (a few MB) whatever the split's size.
_BLOCK = 8192
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# The record files TFDS writes that are read here (dataset_info.json's fileFormat): the same
# tf.train.Examples, framed as TFRecords or as ArrayRecords. Only the stream back end (tf.data)
# needs TFRecords.
TFRECORD, ARRAY_RECORD = 'tfrecord', 'array_record'
FILE_FORMATS = (TFRECORD, ARRAY_RECORD)
# PNG colour type and Pillow mode of each channel count (8 bits per channel).
_PNG_COLOR_TYPES = {1: (0, 'L'), 2: (4, 'LA'), 3: (2, 'RGB'), 4: (6, 'RGBA')}


class CorruptRecordsError(checks.DatasetMissingError):
  """A prepared dataset's record file is truncated or damaged; the message names the file."""


class RecordFormatError(checks.DatasetMissingError):
  """The prepared records are in a format not read here, or not by the configured back end."""


@dataclasses.dataclass(frozen=True, eq=False)
class Prepared:
  """A prepared TFDS dataset folder, described from its JSON files (no TensorFlow).

  Attributes:
    name: the dataset's name and config, e.g. 'fashion_mnist', 'sprites/small'.
    folder: the prepared {data_dir}/{name}[/{config}]/{version} folder.
    features: the TFDS FeaturesDict of its examples (features.json).
    splits: {base split: (shard paths in canonical order, examples per shard)}, both tuples.
    metadata: the builder's metadata (metadata.json; {} where it has none).
    file_format: how TFDS stored the records: 'tfrecord' (its default) or 'array_record'
      (prepared with file_format='array_record').
  """

  name: str
  folder: str
  features: object
  splits: dict
  metadata: dict
  file_format: str = TFRECORD


def open_prepared(folder):
  """The Prepared description of a prepared TFDS folder (imports TFDS, not TensorFlow).

  Raises:
    CorruptRecordsError: dataset_info.json or features.json is missing or unreadable.
    RecordFormatError: the records are neither TFRecord nor ArrayRecord files.
  """
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core import naming

  folder = os.fspath(folder)

  def load(name, default=None):
    path = os.path.join(folder, name)
    if default is not None and not os.path.exists(path):
      return default
    try:
      with open(path) as f:
        return json.load(f)
    except (OSError, ValueError) as e:
      raise CorruptRecordsError(
          f'{path}: cannot be read ({type(e).__name__}: {e}). The prepared dataset in '
          f'{folder} is incomplete or damaged: delete that folder and prepare it again '
          '(scripts/prepare_data.py).') from None

  info = load('dataset_info.json')
  name = info['name'] + (f'/{info["configName"]}' if info.get('configName') else '')
  file_format = info.get('fileFormat') or TFRECORD
  if file_format not in FILE_FORMATS:
    raise RecordFormatError(
        f'{name} in {folder} is stored as {file_format}; the readers here take '
        f'{" or ".join(FILE_FORMATS)} (file_format at preparation): prepare it again with one '
        'of those.')
  features = tfds.features.FeatureConnector.from_json(load('features.json'))
  split_files = {}
  for split in info.get('splits', []):
    lengths = tuple(int(n) for n in split.get('shardLengths', []))
    # TFDS's own file naming (SplitInfo.filepaths), without its path layer.
    template = naming.ShardedFileTemplate(
        data_dir=folder, template=split.get('filepathTemplate') or '',
        dataset_name=info['name'], split=split['name'], filetype_suffix=file_format)
    files = tuple(os.path.join(folder, template.relative_filepath(shard_index=i,
                                                                  num_shards=len(lengths)))
                  for i in range(len(lengths)))
    split_files[split['name']] = (files, lengths)
  return Prepared(name=name, folder=folder, features=features, splits=split_files,
                  metadata=load('metadata.json', {}), file_format=file_format)


def split_sizes(prepared):
  """{base split name: number of examples} of a prepared dataset."""
  return {k: sum(lengths) for k, (_, lengths) in prepared.splits.items()}


def resolve(prepared, split):
  """(base, start, stop) of a split or slice of the dataset (ValueError if it has none)."""
  try:
    return splits.resolve(split, split_sizes(prepared))
  except ValueError as e:
    raise ValueError(f'{prepared.name}: {e}') from None


def record_files(prepared, split):
  """(paths of a base split's record shards in canonical order, examples per shard)."""
  if split not in prepared.splits:
    what = 'is a slice: pass its base split (see resolve)' if '[' in split else 'is unknown'
    raise ValueError(f'{prepared.name}: split {split!r} {what}; it has '
                     f'{sorted(prepared.splits)}.')
  files, lengths = prepared.splits[split]
  return list(files), list(lengths)


def require_tfrecord(prepared):
  """Raises RecordFormatError (what to do) unless the records are TFRecords (the stream back
  end's tf.data reads no other)."""
  if prepared.file_format != TFRECORD:
    raise RecordFormatError(
        f'{prepared.name} in {prepared.folder} is stored as {prepared.file_format} records, '
        'and data.backend=stream reads TFRecords through tf.data. Use data.backend=grain '
        '(data beyond memory) or memory, which read both, or prepare the dataset again '
        'without file_format (TFRecords, TFDS\'s default).')


def image_shape(prepared):
  """(H, W, C) of the dataset's images (ValueError for variable-size images)."""
  shape = tuple(prepared.features['image'].shape)
  if None in shape:
    raise ValueError(f'{prepared.name} images have variable shape {shape}: only '
                     'fixed-size image datasets are supported.')
  return shape


def _numeric_features(prepared):
  """{key: (shape, numpy dtype)} of the scalar / fixed-shape numeric features besides the image."""
  out = {}
  for key, info in prepared.features.get_serialized_info().items():
    # 'index' is the name of the example's index that the readers add.
    if key in ('image', 'index') or not hasattr(info, 'shape') or None in tuple(info.shape):
      continue
    dtype = np.dtype(info.np_dtype)
    if dtype.kind in 'iuf':
      out[key] = (tuple(info.shape), dtype)
  return out


# ---------------------------------------------------------------------------------------------
# tf.data pieces (the stream back end)


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


def _tf_decode_image(data, shape):
  """One encoded image -> uint8 [H, W, C] with TensorFlow (any format decode_image reads)."""
  import tensorflow as tf

  img = tf.io.decode_image(data, channels=shape[-1], expand_animations=False)
  return tf.ensure_shape(img, shape)


def make_decoder(prepared, *, with_features, scale=1):
  """A tf function: serialized records [b] -> {'image': uint8 [b, H, W, C], ...features}."""
  import tensorflow as tf

  shape = image_shape(prepared)
  specs = {'image': tf.io.FixedLenFeature([], tf.string)}
  if with_features:
    specs.update({k: tf.io.FixedLenFeature(s, tf.as_dtype(d))
                  for k, (s, d) in _numeric_features(prepared).items()})

  def decode(serialized):
    parsed = tf.io.parse_example(serialized, specs)
    # Batched parse, per-image decode: about 2x the per-record map rate here.
    images = tf.map_fn(lambda data: _tf_decode_image(data, shape), parsed.pop('image'),
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


# ---------------------------------------------------------------------------------------------
# The reader without TensorFlow (the memory back end)


def _damaged(prepared, path, what):
  return CorruptRecordsError(
      f'{path}: {what}. The prepared dataset in {prepared.folder} is damaged: delete that '
      f'folder and prepare {prepared.name} again (scripts/prepare_data.py).')


@functools.lru_cache(maxsize=4)
def _crc_tables(length):
  """CRC-32C (Castagnoli, reflected) tables for messages of up to `length` bytes.

  The register update r -> T[(r ^ byte) & 0xFF] ^ (r >> 8) is linear over GF(2) in (r, byte),
  so a message's CRC is the XOR of each byte's own contribution and of the initial register's:
  by_distance[d][b] is byte b's when d bytes follow it, ones[n] that of the initial 0xFFFFFFFF
  after n bytes. That makes the checksum a gather-and-XOR over many records at once.

  Returns:
    (by_distance uint32 [length, 256], ones uint32 [length + 1]).
  """
  table = np.arange(256, dtype=np.uint32)
  for _ in range(8):
    table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1)
  table = table.astype(np.uint32)
  by_distance = np.empty((max(length, 1), 256), np.uint32)
  by_distance[0] = table
  for d in range(1, length):
    previous = by_distance[d - 1]
    by_distance[d] = table[previous & 0xFF] ^ (previous >> 8)
  ones, register, lookup = np.empty(length + 1, np.uint32), 0xFFFFFFFF, table.tolist()
  for n in range(length + 1):
    ones[n] = register
    register = lookup[register & 0xFF] ^ (register >> 8)
  return by_distance, ones


def _masked_crc32c(messages):
  """uint32 [n]: TFRecord's masked CRC-32C of each bytes object, vectorised over records."""
  out = np.empty(len(messages), np.uint32)
  for lo in range(0, len(messages), _BLOCK):
    block = messages[lo:lo + _BLOCK]
    lengths = np.fromiter(map(len, block), np.int64, len(block))
    width = int(lengths.max(initial=0))
    # Right-aligned rows: leading zero bytes leave a zero register unchanged.
    rows = np.frombuffer(b''.join([bytes(width - len(m)) + m for m in block]),
                         np.uint8).reshape(len(block), width).T.copy()  # [width, n]
    by_distance, ones = _crc_tables(_round_up(width))
    register = np.zeros(len(block), np.uint32)
    for j in range(width):
      register ^= by_distance[width - 1 - j].take(rows[j])
    out[lo:lo + len(block)] = register ^ ones[lengths] ^ np.uint32(0xFFFFFFFF)
  return ((out >> np.uint32(15)) | (out << np.uint32(17))) + np.uint32(0xA282EAD8)


def _round_up(n):
  """The next power of two >= n (few distinct table sizes to cache)."""
  return 1 << max(int(n) - 1, 0).bit_length()


def _read_shard(prepared, path, skip, take, expected):
  """Serialized records [skip, skip + take) of one TFRecord file, checksums verified.

  A record is uint64 length, uint32 masked CRC-32C of those 8 bytes, the data, uint32 masked
  CRC-32C of the data (little endian). The lengths of the records skipped over are checked
  too; reading up to the last record also checks that nothing follows it.

  Raises:
    CorruptRecordsError: the file is missing, truncated, or a checksum does not match; the
      message names the file and the record.
  """
  try:
    with open(path, 'rb') as f:
      size = os.fstat(f.fileno()).st_size
      # mmap: reading the first rows of a large file (the scale sample) touches only those.
      mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b''
  except OSError as e:
    raise _damaged(prepared, path, f'cannot be read ({type(e).__name__}: {e.strerror})') from None
  offsets, lengths, pos, truncated = [], [], 0, None
  for k in range(skip + take):
    if pos + 12 > size:
      truncated = k
      break
    (length,) = struct.unpack_from('<Q', mapped, pos)
    if pos + 16 + length > size:
      truncated = k
      break
    offsets.append(pos)
    lengths.append(length)
    pos += 16 + length
  if truncated is None:
    buf = mapped[:pos]
  else:  # every header up to the bad one, to tell a damaged length from a cut file
    buf = mapped[:min(pos + 12, size)]
  if size:
    mapped.close()
  raw = np.frombuffer(buf, np.uint8)

  def stored(at):  # uint32 [n]: the little-endian checksums at byte offsets `at`
    return np.ascontiguousarray(raw[np.asarray(at, np.int64)[:, None] + np.arange(4)]).view(
        '<u4')[:, 0]

  headers = offsets + ([pos] if truncated is not None and pos + 12 <= size else [])
  if headers:
    bad = np.flatnonzero(_masked_crc32c([buf[o:o + 8] for o in headers]) !=
                         stored(np.asarray(headers) + 8))
    if bad.size:
      k = int(bad[0])
      raise _damaged(prepared, path, f'record {k} (byte {headers[k]}): the length checksum '
                                     'does not match')
  if truncated is not None:
    raise _damaged(prepared, path, f'truncated at record {truncated} (byte {pos}, file size '
                                   f'{size}): it should hold {expected} records')
  if skip + take == expected and pos != size:
    raise _damaged(prepared, path, f'{size - pos} bytes follow record {expected - 1}, the last '
                                   'of the records dataset_info.json lists')
  records = [buf[o + 12:o + 12 + n] for o, n in zip(offsets[skip:], lengths[skip:], strict=True)]
  if records:
    ends = np.asarray(offsets[skip:]) + 12 + np.asarray(lengths[skip:])
    bad = np.flatnonzero(_masked_crc32c(records) != stored(ends))
    if bad.size:
      k = int(bad[0]) + skip
      raise _damaged(prepared, path, f'record {k} (byte {offsets[k]}): the data checksum '
                                     'does not match')
  return records


def _read_array_record_shard(prepared, path, skip, take, expected):
  """Serialized records [skip, skip + take) of one ArrayRecord file (TFDS's array_record).

  The file's own chunk checksums are verified by its reader as it reads.

  Raises:
    CorruptRecordsError: the file is missing, holds a number of records other than expected,
      or fails to read; the message names the file.
  """
  from array_record.python import array_record_module

  if not os.path.isfile(path):
    raise _damaged(prepared, path, 'the file is missing')
  try:
    reader = array_record_module.ArrayRecordReader(path)
  except (RuntimeError, ValueError, OSError) as e:
    raise _damaged(prepared, path, f'cannot be read ({_one_line(e)})') from None
  try:
    count = reader.num_records()
    got = reader.read(skip, skip + take) if take and count == expected else []
  except (RuntimeError, ValueError) as e:  # array_record's hashes and framing
    raise _damaged(prepared, path, f'records {skip}..{skip + take - 1} cannot be read '
                                   f'({_one_line(e)})') from None
  finally:
    try:
      reader.close()
    except RuntimeError:
      pass  # the reader's failure is the one reported
  if count != expected:
    raise _damaged(prepared, path, f'holds {count} records: it should hold {expected}')
  return got


def _one_line(e, limit=300):
  return f'{type(e).__name__}: {" ".join(str(e).split())[:limit]}'


def _parse_examples(prepared, records, numeric, path, first):
  """tf.train.Examples -> (encoded images [n], {key: numeric feature [n, ...]})."""
  from google.protobuf import message
  from tensorflow_datasets.proto import tf_example_pb2

  example = tf_example_pb2.Example()
  images = []
  values = {k: [] for k in numeric}
  kinds = {k: 'float_list' if d.kind == 'f' else 'int64_list' for k, (_, d) in numeric.items()}
  sizes = {k: int(np.prod(s)) for k, (s, _) in numeric.items()}
  for k, record in enumerate(records, first):
    try:
      example.ParseFromString(record)
    except message.DecodeError:
      raise _damaged(prepared, path, f'record {k} is not a tf.train.Example') from None
    feature = example.features.feature
    try:
      (image,) = feature['image'].bytes_list.value
      for key, out in values.items():
        got = getattr(feature[key], kinds[key]).value
        if len(got) != sizes[key]:
          raise ValueError(key)
        out.extend(got)
    except ValueError as e:
      key = e.args[0] if e.args and e.args[0] in values else 'image'
      raise _damaged(prepared, path, f'record {k} lacks its {key!r} feature or has the wrong '
                                     'number of values') from None
    images.append(image)
  arrays = {k: np.asarray(values[k], d).reshape((len(records),) + s)
            for k, (s, d) in numeric.items()}
  return images, arrays


def _png_header(shape):
  """The first 29 bytes (signature, IHDR) of an 8-bit, non-interlaced PNG of this shape."""
  height, width, channels = shape
  return _PNG_SIGNATURE + struct.pack('>I4sIIBBBBB', 13, b'IHDR', width, height, 8,
                                      _PNG_COLOR_TYPES[channels][0], 0, 0, 0)


def _png_rows(png, header):
  """The zlib-compressed scanlines of a PNG that starts with `header` (see _png_header) and
  holds nothing but image data, else None."""
  if not png.startswith(header):
    return None
  pos, data = len(header) + 4, []  # past the IHDR checksum
  while pos + 8 <= len(png):
    length, kind = struct.unpack_from('>I4s', png, pos)
    if kind == b'IDAT':
      data.append(png[pos + 8:pos + 8 + length])
    elif kind == b'IEND':
      return data[0] if len(data) == 1 else b''.join(data)
    else:  # what TensorFlow's encoder never writes (palette, transparency, gamma, ...)
      return None
    pos += 12 + length
  return None


def _decode_images(prepared, encoded, shape, path, first):
  """Encoded images -> uint8 [n, H, W, C], as tf.io.decode_image(channels=C) gives them.

  8-bit PNGs of the feature's channel count (all that TFDS's encoder writes) are inflated one
  by one with zlib, and their filtered scanlines unfiltered all at once by Pillow's PNG
  decoder: one tall image, each PNG preceded by an all-zero 'None'-filtered row, which is what
  the PNG filters take as the row above an image's first. Others are decoded by TensorFlow.
  """
  from PIL import Image

  height, width, channels = shape
  if channels not in _PNG_COLOR_TYPES:
    raise ValueError(f'{prepared.name}: images with {channels} channels are not supported.')
  mode, row_bytes = _PNG_COLOR_TYPES[channels][1], 1 + width * channels
  out = np.empty((len(encoded),) + tuple(shape), np.uint8)
  separator, header, others = bytes(row_bytes), _png_header(shape), []
  for lo in range(0, len(encoded), _BLOCK):
    rows, block = [], range(lo, min(lo + _BLOCK, len(encoded)))
    for i in block:
      compressed = _png_rows(encoded[i], header)
      try:
        filtered = None if compressed is None else zlib.decompress(compressed,
                                                                    bufsize=height * row_bytes)
      except zlib.error as e:
        raise _damaged(prepared, path, f'record {first + i}: its PNG image is damaged '
                                       f'({e})') from None
      if filtered is None or len(filtered) != height * row_bytes:
        others.append(i)
        filtered = bytes(height * row_bytes)
      rows += [separator, filtered]
    try:
      # A stored (uncompressed) zlib stream: Pillow's 'zip' decoder only does the unfiltering.
      tall = Image.frombytes(mode, (width, len(block) * (height + 1)),
                             zlib.compress(b''.join(rows), 0), 'zip', mode)
    except (OSError, ValueError) as e:
      raise _damaged(prepared, path, f'records {first + lo}..{first + block[-1]}: a PNG image '
                                     f'is damaged ({e})') from None
    out[lo:lo + len(block)] = np.asarray(tall).reshape(
        (len(block), height + 1, width, channels))[:, 1:]
  if others:
    out[others] = _decode_with_tensorflow([encoded[i] for i in others], shape)
  return out


def _decode_with_tensorflow(encoded, shape):
  import tensorflow as tf

  ds = tf.data.Dataset.from_tensor_slices(tf.constant(encoded, tf.string)).batch(256).map(
      lambda batch: tf.map_fn(lambda data: _tf_decode_image(data, shape), batch,
                              fn_output_signature=tf.TensorSpec(shape, tf.uint8)),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return np.concatenate(list(ds.as_numpy_iterator()))


def _read(prepared, split, *, with_features, scale=1, limit=None):
  """The rows of a split or slice (the first `limit` of them) as numpy, without TensorFlow."""
  base, start, stop = resolve(prepared, split)
  if limit is not None:
    stop = min(stop, start + limit)
  if stop <= start:
    raise ValueError(f'Split {split!r} of {prepared.name} is empty.')
  files, lengths = record_files(prepared, base)
  shape = image_shape(prepared)
  numeric = _numeric_features(prepared) if with_features else {}
  out = {'image': np.empty((stop - start,) + shape, np.uint8)}
  parts, row = {k: [] for k in numeric}, 0
  for shard, skip, take in order.shard_pieces(start, stop - start, lengths):
    path = files[shard]
    read = _read_array_record_shard if prepared.file_format == ARRAY_RECORD else _read_shard
    encoded, arrays = _parse_examples(
        prepared, read(prepared, path, skip, take, lengths[shard]), numeric, path, skip)
    out['image'][row:row + take] = _decode_images(prepared, encoded, shape, path, skip)
    for k, v in arrays.items():
      parts[k].append(v)
    row += take
  if scale != 1:
    out['image'] *= np.uint8(scale)
  out.update({k: np.concatenate(v) for k, v in parts.items()})
  out['index'] = np.arange(start, stop, dtype=np.int32)
  return out


def value_scale(prepared):
  """255 for datasets stored as 0/1 (to make them 0/255), else 1."""
  key = prepared.folder
  if key not in _scale_cache:
    first = 'train' if 'train' in prepared.splits else sorted(prepared.splits)[0]
    sample = _read(prepared, first, with_features=False, limit=_SCALE_SAMPLE)
    _scale_cache[key] = 255 if int(sample['image'].max()) <= 1 else 1
  return _scale_cache[key]


def read_split(prepared, split):
  """A prepared split or slice as numpy arrays, without TensorFlow (for PNG-stored images).

  Returns:
    {'image': uint8 [N, H, W, C] 0..255, 'index': int32 [N] (indices in the base split),
    plus the numeric features (e.g. 'label', sprite factors), each [N, ...]}.

  Raises:
    CorruptRecordsError: a record file is missing, truncated or fails its checksum.
  """
  return _read(prepared, split, with_features=True, scale=value_scale(prepared))
