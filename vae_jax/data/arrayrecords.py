"""A base split's images as raw uint8 ArrayRecords beside its TFRecords: written once, read by rows.

The grain back end reads examples at random (the memory back end's order), which TFRecords
cannot do. The first time it reads a base split of a prepared dataset, the split is copied
from the TFRecords (records.read_split: checksums verified, PNGs decoded, 0/1 data scaled to
0/255, no TensorFlow) into {prepared folder}/array_record/{split}/images.array_record: record i
is the raw bytes of image i (uint8 [H, W, C], C-order) of the base split's canonical order, so
an example's index in the base split is its record number. Nothing else is copied: batches
carry images and indices only. Records are written one per group (group_size:1) and without
compression, so one record is read without decompressing its neighbours.

Why raw and batched (measured on Fashion-MNIST's 60000 28x28 images, batches of 128 random
records, files in the page cache, 2 busy cores): one ArrayRecordReader.read(list) per batch
costs 8 us/record, against ~170 us/record reading the same records one call each and 30 us
through array_record's ArrayRecordDataSource.__getitems__; PNG records (what TFDS stores) add
~36 us/record of Pillow decoding, raw ones a np.frombuffer. Raw is 48 MB against 32 MB of PNG
records; snappy would make it 33 MB at 9 us/record.

The copy is written into a temporary folder and renamed into place, so no reader sees a partial
copy and processes that copy at once keep whichever lands first. An existing copy is never
overwritten: one whose info.json does not match the prepared split is an error naming the
folder to delete.
"""

import json
import os
import shutil
import tempfile
import threading

import numpy as np

from vae_jax.data import records

_FOLDER = 'array_record'
_FILE = 'images.array_record'
_INFO = 'info.json'
_WRITER_OPTIONS = 'group_size:1,uncompressed'
# The reader's own read-ahead serves sequential reads; rows here are read at random.
_READER_OPTIONS = 'readahead_buffer_size:0'
# Examples decoded from the TFRecords and written at a time (bounds the copy's memory).
_CHUNK = 16384
_FORMAT = ('raw uint8 image bytes [H, W, C] per record, record i = example i of the base split; '
           + _WRITER_OPTIONS)


class Rows:
  """Reads images of a base split's ArrayRecord copy by their indices; picklable (grain workers).

  Each thread (grain's prefetch threads, worker processes) opens its own reader on first use.
  """

  def __init__(self, path, shape):
    self.path, self.shape = path, tuple(shape)
    self._local = threading.local()

  def __getstate__(self):
    return {'path': self.path, 'shape': self.shape}

  def __setstate__(self, state):
    self.__init__(**state)

  def read(self, index):
    """int [m] base-split indices -> uint8 [m, H, W, C] (read-only), one batched read."""
    reader = getattr(self._local, 'reader', None)
    if reader is None:
      from array_record.python import array_record_module

      reader = self._local.reader = array_record_module.ArrayRecordReader(
          self.path, _READER_OPTIONS)
    data = b''.join(reader.read(np.asarray(index, np.int64).tolist())) if len(index) else b''
    return np.frombuffer(data, np.uint8).reshape((len(index),) + self.shape)


def _expected_info(prepared, base):
  files, lengths = records.record_files(prepared, base)
  return {'format': _FORMAT, 'image_shape': list(records.image_shape(prepared)),
          'num_records': sum(lengths), 'value_scale': records.value_scale(prepared),
          'tfrecords': [[os.path.basename(f), n] for f, n in zip(files, lengths, strict=True)]}


def _unwritable(prepared, folder, e):
  data_dir = prepared.folder
  for _ in range(len(prepared.name.split('/')) + 1):  # {data_dir}/{name}[/{config}]/{version}
    data_dir = os.path.dirname(data_dir)
  others = 'memory or stream' if prepared.file_format == records.TFRECORD else 'memory'
  return records.CorruptRecordsError(
      f'The grain back end reads a raw ArrayRecord copy of each split, kept beside the prepared '
      f'records, and {folder} cannot be written ({type(e).__name__}: {e}). Write the copies '
      'once where that folder can be written: python scripts/prepare_data.py --dataset=NAME '
      f'--data_dir={data_dir} --array_record (NAME: your data.name); or make it writable, or '
      f'use data.backend={others}.')


def _write(prepared, base, folder, info):
  """Copies the base split into `folder` (temp folder + rename; an existing one is kept)."""
  from array_record.python import array_record_module

  parent = os.path.dirname(folder)
  try:
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{base}.incomplete-', dir=parent)
  except OSError as e:
    raise _unwritable(prepared, parent, e) from None
  try:
    path = os.path.join(tmp, _FILE)
    writer = array_record_module.ArrayRecordWriter(path, _WRITER_OPTIONS)
    lengths, start = records.record_files(prepared, base)[1], 0
    for n in lengths:  # chunks within each shard: the reader scans a shard from its start
      for a in range(start, start + n, _CHUNK):
        b = min(a + _CHUNK, start + n)
        images = records.read_split(prepared, f'{base}[{a}:{b}]')['image']
        for row in images.reshape(len(images), -1):
          writer.write(row.tobytes())
      start += n
    writer.close()
    with open(os.path.join(tmp, _INFO), 'w') as f:
      json.dump(info, f, indent=1)
    for name in (_FILE, _INFO):  # on disk before the rename publishes them
      fd = os.open(os.path.join(tmp, name), os.O_RDONLY)
      try:
        os.fsync(fd)
      finally:
        os.close(fd)
    try:
      os.rename(tmp, folder)
    except OSError:
      if not os.path.exists(os.path.join(folder, _INFO)):  # not another process's copy
        raise
  except OSError as e:
    raise _unwritable(prepared, parent, e) from None
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def split_rows(prepared, base):
  """Rows of the base split's ArrayRecord copy, made first if there is none.

  Raises:
    CorruptRecordsError: the folder cannot be written, or an existing copy does not match the
      prepared split (the message names the folder to delete).
  """
  folder = os.path.join(prepared.folder, _FOLDER, base)
  info = _expected_info(prepared, base)
  if not os.path.exists(folder):
    _write(prepared, base, folder, info)
  try:
    with open(os.path.join(folder, _INFO)) as f:
      found = json.load(f)
  except (OSError, ValueError) as e:
    found = f'unreadable ({type(e).__name__}: {e})'
  if found != info:
    raise records.CorruptRecordsError(
        f'{folder} is not an ArrayRecord copy of {prepared.name} split {base!r} as prepared '
        f'now (its {_INFO}: {found}; expected {info}). Delete that folder: the grain back end '
        'writes it again from the TFRecords.')
  from array_record.python import array_record_module

  reader = array_record_module.ArrayRecordReader(os.path.join(folder, _FILE), _READER_OPTIONS)
  count = reader.num_records()
  reader.close()
  if count != info['num_records']:
    raise records.CorruptRecordsError(
        f'{folder}/{_FILE} holds {count} records, not {info["num_records"]}: delete that '
        'folder; the grain back end writes it again from the TFRecords.')
  return Rows(os.path.join(folder, _FILE), info['image_shape'])
