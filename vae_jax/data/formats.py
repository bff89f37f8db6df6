"""Original file formats of the supported offline datasets: detection, reading, writing.

Numpy and the standard library only (no TensorFlow), so a config check can say which files it
found. Each format reads a manual_dir into {split: {feature: array}}, with the split and feature
names TFDS uses for the official dataset ('image' uint8 [N, H, W, C], 'label', ...). The writers
make tiny files in the same formats for tests.
"""

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import tarfile

import numpy as np


class Format:
  """A file format a manual_dir may hold.

  Attributes:
    name: short name, recorded in the provenance file.
    description: the expected files, for error messages.
  """

  def __init__(self, name, description):
    self.name = name
    self.description = description

  def find(self, manual_dir):
    """Returns {role: path} of this format's files in manual_dir, or None if incomplete."""
    raise NotImplementedError

  def read(self, paths):
    """Returns ({split: {feature: array}}, {feature: class names}) from find()'s paths."""
    raise NotImplementedError


def _existing(manual_dir, candidates):
  for name in candidates:
    path = os.path.join(manual_dir, name)
    if os.path.exists(path):
      return path
  return None


def _open_maybe_gz(path):
  with open(path, 'rb') as f:
    magic = f.read(2)
  # Decide by content, not suffix: some mirrors store decompressed files under .gz names.
  return gzip.open(path, 'rb') if magic == b'\x1f\x8b' else open(path, 'rb')


# ---------------------------------------------------------------------------------------------
# idx (MNIST, Fashion-MNIST, KMNIST)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}


def read_idx(path):
  """Reads an idx file (plain or gzip) into a numpy array of its stored shape."""
  with _open_maybe_gz(path) as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
    raise ValueError(f'{path} is not an idx file (bad magic number {data[:4]!r}).')
  ndim = data[3]
  dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
  dtype = np.dtype(_IDX_DTYPES[data[2]])
  expected = 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize
  if len(data) != expected:
    raise ValueError(f'{path}: {len(data)} bytes, header {dims} implies {expected}.')
  return np.frombuffer(data, dtype, offset=4 + 4 * ndim).reshape(dims)


def write_idx(path, array):
  """Writes a uint8 array as an idx file (gzip-compressed when path ends in .gz)."""
  array = np.ascontiguousarray(array, np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + b''.join(
      int(d).to_bytes(4, 'big') for d in array.shape)
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'wb') as f:
    f.write(header + array.tobytes())


class IdxFormat(Format):
  """LeCun's idx files: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]."""

  _FILES = {
      ('train', 'image'): 'train-images-idx3-ubyte',
      ('train', 'label'): 'train-labels-idx1-ubyte',
      ('test', 'image'): 't10k-images-idx3-ubyte',
      ('test', 'label'): 't10k-labels-idx1-ubyte',
  }

  def __init__(self):
    super().__init__('idx', 'idx files ' + ', '.join(f'{f}[.gz]' for f in self._FILES.values()))

  def find(self, manual_dir):
    paths = {key: _existing(manual_dir, (f + '.gz', f)) for key, f in self._FILES.items()}
    return None if None in paths.values() else paths

  def read(self, paths):
    splits = {}
    for (split, feature), path in paths.items():
      array = read_idx(path)
      if feature == 'image':
        array = array.reshape(array.shape[:3] + (-1,))  # [N, H, W] -> [N, H, W, C]
      else:
        array = array.astype(np.int64)
      splits.setdefault(split, {})[feature] = array
    return splits, {}


# ---------------------------------------------------------------------------------------------
# amat (Larochelle's binarized MNIST)

_AMAT_SPLITS = {'train': 'train', 'validation': 'valid', 'test': 'test'}


def read_amat(path):
  """Reads a .amat text file of single-digit values into uint8 [rows, values_per_row]."""
  with _open_maybe_gz(path) as f:
    text = f.read()
  raw = np.frombuffer(text, np.uint8)
  # Vectorised parse, ~4x np.loadtxt's speed here (the train file has 39M values): every token
  # must be one digit, separated by whitespace.
  digit = (raw >= ord('0')) & (raw <= ord('9'))
  space = np.isin(raw, np.frombuffer(b' \t\r\n', np.uint8))
  if not np.all(digit | space) or np.any(digit[1:] & digit[:-1]):
    raise ValueError(f'{path}: expected whitespace-separated single digits (binary .amat).')
  lines = [line for line in text.splitlines() if line.strip()]
  values = raw[digit] - ord('0')
  if not lines or len(values) % len(lines):
    raise ValueError(f'{path}: {len(values)} values do not fill {len(lines)} rows.')
  return values.reshape(len(lines), -1)


def write_amat(path, array):
  """Writes [rows, values] of 0/1 as .amat text (one example per line)."""
  with open(path, 'w') as f:
    for row in np.asarray(array).reshape(len(array), -1):
      f.write(' '.join(str(int(v)) for v in row) + '\n')


class AmatFormat(Format):
  """Larochelle's *_{train,valid,test}.amat text files (binarized_mnist)."""

  def __init__(self):
    super().__init__('amat', 'binarized_mnist_{train,valid,test}.amat')

  def find(self, manual_dir):
    paths = {}
    for split, suffix in _AMAT_SPLITS.items():
      matches = sorted(f for f in _listdir(manual_dir) if f.endswith(f'_{suffix}.amat'))
      if len(matches) != 1:
        return None
      paths[(split, 'image')] = os.path.join(manual_dir, matches[0])
    return paths

  def read(self, paths):
    # Rows hold H * W values; the builder's feature shape says how to reshape them.
    return {split: {'image': read_amat(p)} for (split, _), p in paths.items()}, {}


def _listdir(path):
  return os.listdir(path) if os.path.isdir(path) else []


# ---------------------------------------------------------------------------------------------
# CIFAR python pickles


class _CifarUnpickler(pickle.Unpickler):
  """Unpickles only what CIFAR batches hold (dicts, lists, bytes, numpy arrays): never code."""

  _ALLOWED = {
      ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
      ('numpy', 'ndarray'), ('numpy', 'dtype'), ('numpy.core.multiarray', 'scalar'),
      ('numpy._core.multiarray', 'scalar'), ('_codecs', 'encode'),
  }

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f'CIFAR pickle refers to {module}.{name}: refused.')
    return super().find_class(module, name)


def _unpickle(data):
  obj = _CifarUnpickler(io.BytesIO(data), encoding='bytes').load()
  return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


@dataclasses.dataclass(frozen=True)
class _CifarLayout:
  archive: str
  folder: str
  splits: dict  # split -> member file names
  meta: str
  labels: dict  # feature -> (pickle key of labels, meta key of names)


_CIFAR10 = _CifarLayout(
    archive='cifar-10-python.tar.gz', folder='cifar-10-batches-py',
    splits={'train': tuple(f'data_batch_{i}' for i in range(1, 6)), 'test': ('test_batch',)},
    meta='batches.meta', labels={'label': ('labels', 'label_names')})
_CIFAR100 = _CifarLayout(
    archive='cifar-100-python.tar.gz', folder='cifar-100-python',
    splits={'train': ('train',), 'test': ('test',)}, meta='meta',
    labels={'label': ('fine_labels', 'fine_label_names'),
            'coarse_label': ('coarse_labels', 'coarse_label_names')})


class CifarPythonFormat(Format):
  """The python-pickle CIFAR release (tarball, or its extracted folder)."""

  def __init__(self, layout):
    super().__init__(layout.folder, f'{layout.archive} (or its extracted {layout.folder}/)')
    self.layout = layout

  def find(self, manual_dir):
    path = _existing(manual_dir, (self.layout.archive, self.layout.folder))
    return None if path is None else {('all', 'archive'): path}

  def _members(self, path):
    """Yields (member name, bytes) of the pickles the layout names."""
    wanted = {*(m for ms in self.layout.splits.values() for m in ms), self.layout.meta}
    if os.path.isdir(path):
      for name in wanted:
        with open(os.path.join(path, name), 'rb') as f:
          yield name, f.read()
      return
    with tarfile.open(path, 'r:*') as tar:
      for member in tar:
        name = os.path.basename(member.name)
        if member.isfile() and name in wanted:
          yield name, tar.extractfile(member).read()

  def read(self, paths):
    (path,) = paths.values()
    batches = dict(self._members(path))
    names = [m for ms in self.layout.splits.values() for m in ms] + [self.layout.meta]
    missing = [m for m in names if m not in batches]
    if missing:
      raise ValueError(f'{path} lacks {missing}.')
    meta = _unpickle(batches[self.layout.meta])
    splits = {}
    for split, members in self.layout.splits.items():
      parts = [_unpickle(batches[m]) for m in members]
      # Rows are 3072 bytes: the red, green and blue 32x32 planes in turn.
      data = np.concatenate([np.asarray(p['data'], np.uint8) for p in parts])
      arrays = {'image': data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)}
      for feature, (key, _) in self.layout.labels.items():
        arrays[feature] = np.concatenate([np.asarray(p[key], np.int64) for p in parts])
      splits[split] = arrays
    label_names = {
        feature: [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
        for feature, (_, names_key) in self.layout.labels.items()}
    return splits, label_names


def write_cifar_python(path, splits, label_names, layout='cifar10'):
  """Writes a CIFAR python-pickle tarball from {split: {'image', 'label', ...}} arrays.

  Each split goes into one batch file (enough for tests; readers accept any rows per batch
  only in that the layout's member names must exist, so train is cut into 5 batches).
  """
  layout = {'cifar10': _CIFAR10, 'cifar100': _CIFAR100}[layout]
  members = {}
  for split, arrays in splits.items():
    files = layout.splits[split]
    chunks = np.array_split(np.arange(len(arrays['image'])), len(files))
    for name, rows in zip(files, chunks, strict=True):
      batch = {b'data': arrays['image'][rows].transpose(0, 3, 1, 2).reshape(len(rows), -1)}
      for feature, (key, _) in layout.labels.items():
        batch[key.encode()] = [int(v) for v in arrays[feature][rows]]
      members[name] = pickle.dumps(batch, protocol=2)
  members[layout.meta] = pickle.dumps(
      {names_key.encode(): [n.encode() for n in label_names[feature]]
       for feature, (_, names_key) in layout.labels.items()}, protocol=2)
  with tarfile.open(path, 'w:gz') as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(f'{layout.folder}/{name}')
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


# Tried in order; the first whose files are all present is used.
FORMATS = (IdxFormat(), AmatFormat(), CifarPythonFormat(_CIFAR10), CifarPythonFormat(_CIFAR100))


def find_format(manual_dir):
  """Returns (format, paths) for the first format complete in manual_dir, or (None, None)."""
  for fmt in FORMATS:
    paths = fmt.find(manual_dir)
    if paths is not None:
      return fmt, paths
  return None, None


def describe_formats():
  return '; or '.join(f.description for f in FORMATS)


def file_digest(path):
  """sha256 and size of a file, plus the sha256 of its decompressed content if gzipped."""
  if os.path.isdir(path):
    return {name: file_digest(os.path.join(path, name)) for name in sorted(os.listdir(path))}
  sha, size = hashlib.sha256(), 0
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      sha.update(block)
      size += len(block)
  digest = {'sha256': sha.hexdigest(), 'size': size}
  with open(path, 'rb') as f:
    gzipped = f.read(2) == b'\x1f\x8b'
  if gzipped and not path.endswith(('.tar.gz', '.tgz')):
    content = hashlib.sha256()
    with gzip.open(path, 'rb') as f:
      for block in iter(lambda: f.read(1 << 20), b''):
        content.update(block)
    digest['content_sha256'] = content.hexdigest()
  return digest
