"""Own images and arrays as datasets (data.name='folder:DIR', 'npz:FILE'): names, checks, freshness.

A researcher's own data is prepared once (`own_builder`, with TFDS) into the same prepared TFDS
layout every other dataset uses, {data_dir}/{prepared_name}/1.0.0/, and read from there like
any dataset. This module needs no TensorFlow: it names the prepared folder, checks the source
before anything slow (one paragraph naming the offending files or arrays) and tells whether a
prepared copy still matches its source.

- The prepared name is 'folder_<stem>_<hash>' or 'npz_<stem>_<hash>': the readable stem of the
  folder or file name, and 10 hex digits of the sha256 of its resolved absolute path (symlinks
  followed), so it is stable for one source and two sources never share one. A relative DIR is
  resolved against the current directory.
- folder:DIR holds DIR/train/ and DIR/test/ (DIR/validation/ optional). A split folder holds
  either its images directly (no label feature) or one subfolder per class and nothing else
  (a 'label' feature: the sorted union of every split's class names gives the ids 0..n-1).
  Files and folders whose names start with '.' are ignored; every other file must be an image
  Pillow reads. All images have one size and one stored mode (MODE_RULE). Images are stored
  in a fixed pseudo-random order, by the sha256 of each file's path relative to DIR, so a
  slice such as 'train[90%:]' draws from every class; the provenance file lists each split's
  files in that order (example i is file i).
- npz:FILE holds arrays 'train', 'test' (and optionally 'validation'), uint8 [N, H, W] (one
  channel) or [N, H, W, C] with C 1 or 3, and optionally integer labels 'train_labels', ... of
  shape [N] for every image array (a 'label' feature with max + 1 classes). Rows keep their
  order: a slice is a range of rows, so shuffle rows that are sorted by class first.
- Freshness: the prepared copy records its source (PROVENANCE_FILE): the folder's file list
  with every file's size and modification time, or the npz's size, modification time and
  sha256. A copy whose source changed is never read: check() raises StaleSourceError naming
  what changed and the command that prepares it again (scripts/prepare_data.py replaces the
  copy). An npz whose modification time alone changed keeps its copy (same sha256). A copy
  whose source no longer exists is still read: nothing newer exists to differ from.
"""

import collections
import dataclasses
import hashlib
import json
import os
import re
import shlex
import zipfile

import numpy as np

from vae_jax.data import checks

KINDS = ('folder', 'npz')
# The base splits of an own source; train and test are required.
SPLITS = ('train', 'test', 'validation')
REQUIRED = ('train', 'test')
VERSION = '1.0.0'
# The provenance record beside dataset_info.json (the name offline.py's records have too).
PROVENANCE_FILE = 'vae_jax_provenance.json'
# Pillow mode of a file -> mode stored (converted losslessly); any other mode is refused.
STORED_MODE = {'L': 'L', '1': 'L', 'RGB': 'RGB', 'P': 'RGB'}
CHANNELS = {'L': 1, 'RGB': 3}
MODE_RULE = (
    'Grey images (Pillow mode L; 1-bit images become 0/255) give 1 channel and colour images '
    '(RGB; palette images P become their RGB colours) give 3. Images with an alpha channel '
    '(RGBA, LA, or a palette with transparency), with more than 8 bits per channel (I;16, I, '
    "F) or in another colour space (CMYK, YCbCr, ...) are refused: convert them first, e.g. "
    "Image.open(f).convert('RGB').save(f), compositing onto a background where transparency "
    'matters.')
LAYOUT = ('DIR/train/ and DIR/test/ (DIR/validation/ optional), each holding its images '
          'directly or in one subfolder per class')
NPZ_LAYOUT = ("arrays 'train' and 'test' (and optionally 'validation'), each uint8 [N, H, W] "
              "or [N, H, W, C] with C 1 or 3, and optionally integer labels 'train_labels', "
              "'test_labels', 'validation_labels' of shape [N]")


class SourceError(checks.DatasetMissingError):
  """Own images or arrays that cannot be prepared as they are; the message says what to fix."""


class StaleSourceError(checks.DatasetMissingError):
  """The source changed since it was prepared; the message says what changed and how to
  prepare it again."""


@dataclasses.dataclass(frozen=True)
class Source:
  """An own dataset: kind 'folder' or 'npz', its resolved path, data.name as given."""

  kind: str
  path: str
  name: str

  @property
  def prepared_name(self):
    stem = os.path.basename(self.path)
    if self.kind == 'npz' and stem.lower().endswith('.npz'):
      stem = stem[:-4]
    stem = re.sub(r'[^a-z0-9]+', '_', stem.lower()).strip('_')[:40].strip('_') or 'data'
    digest = hashlib.sha256(self.path.encode()).hexdigest()[:10]
    return f'{self.kind}_{stem}_{digest}'


@dataclasses.dataclass(frozen=True)
class Scan:
  """A checked source, what preparation needs.

  Attributes:
    source: the Source.
    image_shape: (H, W, C).
    splits: {split: rows}; folder: a tuple of (path relative to DIR, label id or None) in the
      stored order; npz: the number of rows.
    label_names: the class names where the source has labels, else None.
    modes: folder: {path relative to DIR: Pillow mode to convert to}; npz: None.
    files: the listing the freshness check compares (see listing).
    sha256: the npz file's content digest; None for a folder.
  """

  source: Source
  image_shape: tuple
  splits: dict
  label_names: tuple | None
  modes: dict | None
  files: tuple
  sha256: str | None


def parse(name):
  """The Source that data.name names ('folder:DIR', 'npz:FILE'), else None (a TFDS name)."""
  kind, sep, path = str(name).partition(':')
  if not sep or kind not in KINDS:
    return None
  if not path:  # a setting's syntax: ValueError, as validate_data_config raises
    raise ValueError(f"data.name={name!r} names no path: use 'folder:DIR' (a folder of "
                      "images) or 'npz:FILE' (a file of arrays).")
  return Source(kind, os.path.realpath(os.path.expanduser(path)), name)


def prepared_folder(source, data_dir):
  """The prepared {data_dir}/{prepared_name}/{VERSION} folder if it is complete, else None."""
  folder = os.path.join(checks.resolve_data_dir(data_dir), source.prepared_name, VERSION)
  return folder if os.path.exists(os.path.join(folder, 'dataset_info.json')) else None


def prepare_command(source, data_dir):
  cmd = f'python scripts/prepare_data.py {shlex.quote("--dataset=" + source.name)}'
  return cmd + (f' {shlex.quote("--data_dir=" + data_dir)}' if data_dir else '')


def check(data_cfg):
  """Raises unless data.name's own source is prepared and fresh, or can be prepared.

  Without TensorFlow. A prepared copy is compared with its source (file list, sizes and
  modification times; an npz's sha256 where those differ); a source not yet prepared is
  checked whole (every image's header, every array's header and labels).

  Raises:
    SourceError: the source is missing or does not fit the layout (one paragraph naming the
      offending files or arrays and the rule).
    StaleSourceError: the prepared copy no longer matches its source.
  """
  source = parse(data_cfg.name)
  folder = prepared_folder(source, data_cfg.data_dir)
  if folder is None:
    scan(source)
    return
  why = stale_reason(source, folder)
  if why:
    raise stale_error(source, folder, why, data_cfg.data_dir)


def stale_error(source, folder, why, data_dir):
  return StaleSourceError(
      f'{source.name} changed since it was prepared into {folder}: {why}. Training or '
      'evaluating on that copy would silently read other data than the source holds. Prepare '
      f'it again (this replaces the copy):\n  {prepare_command(source, data_dir)}')


# ---------------------------------------------------------------------------------------------
# Freshness


def listing(source):
  """What the freshness check compares: a tuple of [path, size, mtime_ns] rows.

  folder: every file under DIR/train, DIR/test and DIR/validation (paths relative to DIR,
  sorted; names starting with '.' skipped); npz: the file itself. Empty if the source is gone.
  """
  if source.kind == 'npz':
    try:
      st = os.stat(source.path)
    except OSError:
      return ()
    return ((os.path.basename(source.path), st.st_size, st.st_mtime_ns),)
  rows = []
  for split in SPLITS:
    top = os.path.join(source.path, split)
    for parent, dirs, files in os.walk(top, followlinks=True):
      dirs[:] = [d for d in dirs if not d.startswith('.')]
      for f in files:
        if f.startswith('.'):
          continue
        path = os.path.join(parent, f)
        try:
          st = os.stat(path)
        except OSError:  # a dangling link: scan names it
          st = os.lstat(path)
        rows.append((os.path.relpath(path, source.path), st.st_size, st.st_mtime_ns))
  return tuple(sorted(rows))


def read_provenance(folder):
  """The provenance record of a prepared folder, or None."""
  try:
    with open(os.path.join(folder, PROVENANCE_FILE)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def stale_reason(source, folder):
  """Why the prepared copy in folder no longer matches its source, or None if it does."""
  record = read_provenance(folder)
  if not record or record.get('source_path') != source.path or 'files' not in record:
    return f'{PROVENANCE_FILE} there does not record this source'
  if not os.path.exists(source.path):
    return None  # nothing newer to differ from: the copy is all there is
  then = {row[0]: tuple(row[1:]) for row in record['files']}
  now = {row[0]: tuple(row[1:]) for row in listing(source)}
  if then == now:
    return None
  if source.kind == 'npz':
    digest = file_sha256(source.path)
    if digest == record.get('sha256'):
      return None  # touched, not changed
    return (f'its content differs (sha256 {digest[:12]}... now, '
            f'{str(record.get("sha256"))[:12]}... when prepared)')
  added = sorted(set(now) - set(then))
  removed = sorted(set(then) - set(now))
  changed = sorted(k for k in set(now) & set(then) if now[k] != then[k])
  parts = [f'{len(files)} file(s) {what} ({_some(files)})'
           for what, files in (('added', added), ('removed', removed),
                               ('changed size or modification time', changed)) if files]
  return '; '.join(parts)


def _some(items, n=3):
  shown = ', '.join(items[:n])
  return shown + (f', ... {len(items) - n} more' if len(items) > n else '')


def file_sha256(path):
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def stored_order(paths):
  """The order a folder split's files are stored in: by the sha256 of their relative paths."""
  return sorted(paths, key=lambda p: hashlib.sha256(p.encode()).digest())


# ---------------------------------------------------------------------------------------------
# Checking a source (before it is prepared)

# Scans of unchanged sources (by listing) within this process: the checks before a
# preparation and the preparation itself read every header once.
_scans = {}


def scan(source):
  """Checks a source whole and describes it (see Scan); raises SourceError."""
  files = listing(source)
  key = (source, files)
  if key not in _scans:
    _scans.clear()
    _scans[key] = (_scan_npz if source.kind == 'npz' else _scan_folder)(source, files)
  return _scans[key]


def _scan_folder(source, files):
  root = source.path
  if not os.path.isdir(root):
    what = 'is not a folder' if os.path.exists(root) else 'does not exist'
    raise SourceError(f'{source.name}: {root} {what}. Expected a folder with '
                      f'{_layout(root)}.')
  present = [s for s in SPLITS if os.path.isdir(os.path.join(root, s))]
  for split in REQUIRED:
    if split not in present:
      others = _some(sorted(e for e in os.listdir(root) if not e.startswith('.')), 8)
      raise SourceError(f'{source.name}: {root} has no {split}/ folder (it holds '
                        f'{others or "nothing"}). Expected {_layout(root)}.')
  rows, classes = {}, {}
  for split in present:
    rows[split], classes[split] = _split_files(source, split)
  labelled = {s for s in present if classes[s]}
  if labelled and labelled != set(present):
    with_, without = sorted(labelled)[0], sorted(set(present) - labelled)[0]
    raise SourceError(
        f'{source.name}: {os.path.join(root, with_)} holds class subfolders but '
        f'{os.path.join(root, without)} holds its images directly. Every split needs the same '
        'features: put the images of every split in class subfolders (labels), or none.')
  names = tuple(sorted(set().union(*classes.values()))) or None
  ids = {c: i for i, c in enumerate(names or ())}
  headers = {rel: _image_header(source, rel) for split in present for rel, _ in rows[split]}
  shape, modes = _one_size_and_mode(source, headers)
  splits = {}
  for split in present:
    label = dict(rows[split])
    splits[split] = tuple((rel, None if label[rel] is None else ids[label[rel]])
                          for rel in stored_order(list(label)))
  return Scan(source=source, image_shape=shape, splits=splits, label_names=names,
              modes=modes, files=files, sha256=None)


def _layout(root):
  return LAYOUT.replace('DIR', root)


def _visible(folder):
  return sorted(e for e in os.listdir(folder) if not e.startswith('.'))


def _split_files(source, split):
  """([(path relative to DIR, class name or None)], class names) of one split folder."""
  top = os.path.join(source.path, split)
  entries = _visible(top)
  dirs = [e for e in entries if os.path.isdir(os.path.join(top, e))]
  loose = [e for e in entries if e not in dirs]
  if dirs and loose:
    raise SourceError(
        f'{source.name}: {top} holds both image files ({_some(loose)}) and folders '
        f'({_some(dirs)}). A split folder holds its images directly (no labels) or one '
        'subfolder per class (labels) and nothing else: move the files into class folders or '
        'the folders out.')
  out = [(os.path.join(split, f), None) for f in loose]
  for c in dirs:
    inner = _visible(os.path.join(top, c))
    nested = [e for e in inner if os.path.isdir(os.path.join(top, c, e))]
    if nested:
      raise SourceError(
          f'{source.name}: the class folder {os.path.join(top, c)} holds folders '
          f'({_some(nested)}): class folders hold image files only (one level of classes).')
    out += [(os.path.join(split, c, f), c) for f in inner]
  if not out:
    raise SourceError(f'{source.name}: the {split} split is empty: {top} holds no images. '
                      f'Expected {_layout(source.path)}.')
  return out, dirs


def _image_header(source, rel):
  """(width, height, Pillow mode) of one image, from its header."""
  from PIL import Image

  path = os.path.join(source.path, rel)
  try:
    with Image.open(path) as im:
      mode, size = im.mode, im.size
      if mode == 'P' and 'transparency' in im.info:
        mode = 'P with transparency'
  except (OSError, ValueError) as e:
    raise SourceError(
        f'{source.name}: {path} is not an image Pillow can read ({type(e).__name__}: {e}). '
        "Every file of a split folder must be an image (names starting with '.' are "
        'ignored): remove or convert it.') from None
  if mode not in STORED_MODE:
    raise SourceError(f'{source.name}: {path} has mode {mode}, which is not stored. '
                      f'{MODE_RULE}')
  return size[0], size[1], mode


def _one_size_and_mode(source, headers):
  """((H, W, C), {path: mode to convert to}); raises naming two files that differ."""
  size = ('size', lambda h: h[:2], lambda v: f'{v[0]}x{v[1]}',
          'width x height', 'Every image of every split must have one size: resize or crop '
          'them first.')
  mode = ('mode', lambda h: STORED_MODE[h[2]], lambda v: f'{v}', 'stored Pillow mode',
          f'Every image must store one mode: convert them to one first. {MODE_RULE}')
  for what, of, show, unit, fix in (size, mode):
    groups = collections.defaultdict(list)
    for rel, header in headers.items():
      groups[of(header)].append(rel)
    if len(groups) > 1:
      # The most common value first, then the first file of the next.
      ranked = sorted(groups.items(), key=lambda g: (-len(g[1]), g[1][0]))
      (common, a), (other, b) = ranked[:2]
      found = ', '.join(f'{show(v)} in {len(f)} file{"s" * (len(f) > 1)}' for v, f in ranked)
      raise SourceError(
          f'{source.name}: the images in {source.path} differ in {what}: {a[0]} is '
          f'{show(common)} and {b[0]} is {show(other)} ({unit}; found {found}). {fix}')
  (w, h, stored), = {(hd[0], hd[1], STORED_MODE[hd[2]]) for hd in headers.values()}
  return (h, w, CHANNELS[stored]), {rel: STORED_MODE[hd[2]] for rel, hd in headers.items()}


def _scan_npz(source, files):
  path = source.path
  if not os.path.isfile(path):
    what = 'is not a file' if os.path.exists(path) else 'does not exist'
    raise SourceError(f'{source.name}: {path} {what}. Expected an .npz file (np.savez) with '
                      f'{NPZ_LAYOUT}.')
  try:
    with zipfile.ZipFile(path) as zf:
      members = zf.namelist()
      arrays = {m[:-4]: _npy_header(zf, m) for m in members if m.endswith('.npy')}
      _check_npz_names(source, members, arrays)
      shape = _check_npz_images(source, arrays)
      labels = _npz_labels(source, zf, arrays)
  except (zipfile.BadZipFile, OSError, ValueError) as e:
    raise SourceError(f'{source.name}: {path} is not an .npz file numpy reads ({type(e).__name__}'
                      f': {e}). Expected np.savez(FILE, train=..., test=...) with '
                      f'{NPZ_LAYOUT}.') from None
  num_classes = max((int(y.max()) + 1 for y in labels.values()), default=0)
  return Scan(source=source, image_shape=shape,
              splits={s: int(arrays[s][0][0]) for s in SPLITS if s in arrays},
              label_names=tuple(str(i) for i in range(num_classes)) if labels else None,
              modes=None, files=files, sha256=file_sha256(path))


def _check_npz_names(source, members, arrays):
  known = set(SPLITS) | {s + '_labels' for s in SPLITS}
  unknown = sorted(set(arrays) - known) + sorted(m for m in members if not m.endswith('.npy'))
  if unknown:
    raise SourceError(f'{source.name}: {source.path} holds arrays {", ".join(unknown)} of no '
                      f'known name. Expected {NPZ_LAYOUT}.')
  for split in REQUIRED:
    if split not in arrays:
      raise SourceError(f'{source.name}: {source.path} has no array {split!r} (it holds '
                        f'{", ".join(sorted(arrays)) or "none"}). Expected {NPZ_LAYOUT}.')
  for split in SPLITS:
    if split + '_labels' in arrays and split not in arrays:
      raise SourceError(f'{source.name}: {source.path} holds {split + "_labels"!r} but no array '
                        f'{split!r} it would label.')


def _check_npz_images(source, arrays):
  """The (H, W, C) every image array shares; raises naming the array that does not fit."""
  shapes = {}
  for split in (s for s in SPLITS if s in arrays):
    shape, dtype = arrays[split]
    channels = shape[3] if len(shape) == 4 else 1
    if dtype != np.uint8 or len(shape) not in (3, 4) or channels not in (1, 3):
      hint = (' (floats in [0, 1]: (x * 255).round().astype(np.uint8))'
              if dtype.kind == 'f' else '')
      raise SourceError(
          f'{source.name}: array {split!r} has dtype {dtype} and shape {shape}; expected uint8 '
          f'[N, H, W] or [N, H, W, C] with C 1 or 3{hint}.')
    if shape[0] == 0:
      raise SourceError(f'{source.name}: the {split} split is empty: array {split!r} has shape '
                        f'{shape}.')
    shapes[split] = (int(shape[1]), int(shape[2]), int(channels))
  if len(set(shapes.values())) > 1:
    found = ', '.join(f'{s!r} {v}' for s, v in shapes.items())
    raise SourceError(f'{source.name}: the arrays differ in image shape (H, W, C): {found}. '
                      'Every split must have one image shape.')
  return shapes['train']


def _npz_labels(source, zf, arrays):
  """{split: int labels [N]} of a labelled npz ({} without labels), checked."""
  present = [s for s in SPLITS if s in arrays]
  labelled = [s for s in present if s + '_labels' in arrays]
  if labelled and len(labelled) != len(present):
    missing = [s + '_labels' for s in present if s not in labelled]
    raise SourceError(f'{source.name}: {source.path} has labels for {", ".join(labelled)} but '
                      f'no {", ".join(missing)}: every split needs the same features, so label '
                      'every split or none.')
  labels = {}
  for split in labelled:
    name, n = split + '_labels', int(arrays[split][0][0])
    shape, dtype = arrays[name]
    if dtype.kind not in 'iu' or tuple(shape) != (n,):
      raise SourceError(
          f'{source.name}: array {name!r} has dtype {dtype} and shape {tuple(shape)}; expected '
          f'integers of shape ({n},), one label per image of {split!r}.')
    labels[split] = _npy_load(zf, name + '.npy')
    if labels[split].min() < 0:
      raise SourceError(f'{source.name}: array {name!r} holds negative labels '
                        f'({int(labels[split].min())}); labels are class ids 0, 1, ...')
  return labels


def _npy_header(zf, member):
  """(shape, dtype) of one .npy member of an npz, from its header (the data is not read)."""
  with zf.open(member) as f:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
      shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
      array = _npy_load(zf, member)
      return array.shape, array.dtype
  return shape, dtype


def _npy_load(zf, member):
  with zf.open(member) as f:
    return np.lib.format.read_array(f, allow_pickle=False)
