"""The original download files of the judged datasets: found, listed and decoded (no TensorFlow).

Hierarchical VAEs (VDVAE, NVAE) report bits/dim on downsampled ImageNet and CelebA 64x64. These
are prepared offline from the files a user downloads (scripts/prepare_data.py --manual_dir),
always through this module and `offline`'s archive builder, never TFDS's own builders, whatever
the files' digests:

- 'downsampled_imagenet/32x32', 'downsampled_imagenet/64x64' (TFDS's names, prepared under
  them): van den Oord et al.'s Downsampled ImageNet, train_32x32.tar and valid_32x32.tar
  (train_64x64.tar, valid_64x64.tar), uncompressed tars of RGB PNGs in one folder each, as
  VDVAE's setup_imagenet.sh and NVAE's README fetch them (not Chrabaszcz et al.'s later
  Imagenet32/64 npz batches, a different box-resized set). Splits 'train' and 'validation'.
  TFDS's own builder would store these PNGs under a JPEG, variable-shape feature, which the
  TensorFlow-free reader refuses; here each PNG is decoded (grey and palette PNGs to RGB,
  losslessly) and stored as a fixed-shape (R, R, 3) PNG: every pixel as in the file.
- 'celeb_a_64' (a derived dataset of its own name): CelebA's aligned 178x218 JPEGs,
  img_align_celeba.zip, with list_eval_partition.txt (0 train, 1 validation, 2 test), cropped
  and resized once, at preparation, as NVAE's CelebA 64 (datasets.py, CropCelebA64 then
  torchvision's Resize(64)): decoded by Pillow (the decoder torchvision's loader uses), the box
  (left 15, top 40, right 163, bottom 188) - the central 148 columns and rows 40..187, 5 rows
  below the exact vertical centre as NVAE (after Larsen et al.) cut it - then Pillow's bilinear
  resize to 64x64 (antialiased when shrinking). NVAE flips training images at random; nothing
  here does. Only the images are kept (no attributes, landmarks or identities), so the
  attribute, landmark and identity files TFDS's celeb_a asks for are not needed.

Stored order: in every split, the images sorted by the sha256 of their file names (without the
folder), a fixed pseudo-random order, so a slice such as 'train[-5000:]' draws from every class
or identity whatever order the archive holds; example i of a split is the i-th name of that
sort (`stored_order`).
"""

import dataclasses
import hashlib
import io
import os
import tarfile
import zipfile

import numpy as np

from vae_jax.data import checks

CELEBA_CROP = (15, 40, 163, 188)  # (left, upper, right, lower): NVAE's CropCelebA64
CELEBA_SIZE = (178, 218)  # (width, height) of the aligned images
CELEBA_PARTITIONS = {'0': 'train', '1': 'validation', '2': 'test'}
ORDER_RULE = 'sorted by the sha256 of the file name (without folders) within each split'
# Pillow modes decoded to RGB without loss of any stored value; others (alpha, 16 bits) refused.
_RGB_MODES = ('RGB', 'L', 'P')


class ArchiveError(checks.DatasetMissingError):
  """The original files cannot be prepared as they are; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class Archive:
  """One judged dataset and the original files it is prepared from.

  Attributes:
    name: data.name, e.g. 'downsampled_imagenet/32x32', 'celeb_a_64'.
    tfds_name: the prepared dataset's TFDS name (its folder under data_dir).
    config: its TFDS builder config ('32x32'), or None.
    version: the prepared folder's version.
    official: the TFDS dataset these files are the download of (its registered checksums).
    files: the file names the manual_dir must hold.
    image_shape: (H, W, C) stored.
    source: where the files come from, for messages.
  """

  name: str
  tfds_name: str
  config: str | None
  version: str
  official: str
  files: tuple
  image_shape: tuple
  source: str

  def split_files(self):
    """{split: the file of the split's images} (ImageNet) or None (CelebA: one zip, a list)."""
    if self.official != 'downsampled_imagenet':
      return None
    return {'train': f'train_{self.config}.tar', 'validation': f'valid_{self.config}.tar'}


def _imagenet(size):
  config = f'{size}x{size}'
  return Archive(
      name=f'downsampled_imagenet/{config}', tfds_name='downsampled_imagenet', config=config,
      version='2.0.0', official='downsampled_imagenet',
      files=(f'train_{config}.tar', f'valid_{config}.tar'), image_shape=(size, size, 3),
      source=('the Downsampled ImageNet tars of van den Oord et al. 2016 (image-net.org/small/'
              'download.php; the ones VDVAE and NVAE use)'))


ARCHIVES = {
    a.name: a for a in (
        _imagenet(32), _imagenet(64),
        Archive(name='celeb_a_64', tfds_name='celeb_a_64', config=None, version='1.0.0',
                official='celeb_a', files=('img_align_celeba.zip', 'list_eval_partition.txt'),
                image_shape=(64, 64, 3),
                source=("CelebA's 'Align&Cropped Images' zip and Eval/list_eval_partition.txt "
                        '(mmlab.ie.cuhk.edu.hk/projects/CelebA.html)')))}


def find(name):
  """The Archive of data.name, or None where it is not one of them.

  Raises:
    ValueError: 'downsampled_imagenet' with a config it does not have.
  """
  base, _, config = name.partition(':')[0].partition('/')
  if base == 'downsampled_imagenet':
    key = f'{base}/{config or "32x32"}'  # TFDS's default config is 32x32
    if key not in ARCHIVES:
      raise ValueError(f'Unknown downsampled_imagenet config {config!r}: use '
                       "'downsampled_imagenet/32x32' or 'downsampled_imagenet/64x64'.")
    return ARCHIVES[key]
  return ARCHIVES.get(name.partition(':')[0])


def describe(archive):
  """The files a manual_dir must hold, for messages."""
  return f'{" and ".join(archive.files)}: {archive.source}'


def missing_files(archive, manual_dir):
  return [f for f in archive.files if not os.path.isfile(os.path.join(manual_dir, f))]


def stored_order(names):
  """File names in the stored order (see the module docstring)."""
  return sorted(names, key=lambda n: (hashlib.sha256(n.encode()).hexdigest(), n))


class _Tar:
  """An uncompressed tar's images, read by name (offsets found in one pass over the headers)."""

  def __init__(self, path):
    self.path, self.offsets, ignored = path, {}, []
    try:
      tar = tarfile.open(path, 'r:')  # uncompressed only: members are read at their offsets
    except tarfile.ReadError as e:
      raise ArchiveError(f'{path} is not an uncompressed tar ({e}): use the file as downloaded '
                         '(or `tar -cf` the folder of PNGs again, without compression).') from None
    with tar:
      while (member := tar.next()) is not None:
        tar.members.clear()  # 1.28M TarInfos would take ~0.5 GB; only the offsets are kept
        base = os.path.basename(member.name)
        if not member.isfile() or base.startswith('.'):
          continue
        if not base.lower().endswith('.png'):
          ignored.append(member.name)
          continue
        if base in self.offsets:
          raise ArchiveError(f'{path} holds two images named {base}: one folder of uniquely '
                             'named PNGs is expected.')
        self.offsets[base] = (member.offset_data, member.size, member.name)
    if ignored:
      raise ArchiveError(f'{path} holds files that are not PNG images, e.g. {ignored[:3]}: '
                         'use the file as downloaded.')
    if not self.offsets:
      raise ArchiveError(f'{path} holds no PNG images.')
    self._file = None

  def read(self, name):
    if self._file is None:
      self._file = open(self.path, 'rb')
    offset, size, _ = self.offsets[name]
    self._file.seek(offset)
    return self._file.read(size)

  def close(self):
    if self._file is not None:
      self._file.close()


def _celeba_partition(path):
  """{file name: split} from list_eval_partition.txt ('000001.jpg 0' per line)."""
  out = {}
  with open(path) as f:
    for number, line in enumerate(f, 1):
      fields = line.split()
      if not fields:
        continue
      if len(fields) != 2 or fields[1] not in CELEBA_PARTITIONS:
        raise ArchiveError(f'{path} line {number}: {line.strip()!r} is not "<file name> 0|1|2": '
                           'use the file as downloaded.')
      out[fields[0]] = CELEBA_PARTITIONS[fields[1]]
  if not out:
    raise ArchiveError(f'{path} lists no images.')
  return out


class Reader:
  """The splits of one Archive's files in a manual_dir: their names in stored order, then their
  images as uint8 [n, H, W, C] blocks. Use as a context manager (it holds the files open)."""

  def __init__(self, archive, manual_dir):
    missing = missing_files(archive, manual_dir)
    if missing:
      raise ArchiveError(f'{manual_dir} lacks {", ".join(missing)} for {archive.name!r}: '
                         f'expected {describe(archive)}.')
    self.archive, self.manual_dir = archive, manual_dir
    path = lambda f: os.path.join(manual_dir, f)
    if archive.split_files() is not None:
      self._tars = {s: _Tar(path(f)) for s, f in archive.split_files().items()}
      self.splits = {s: stored_order(t.offsets) for s, t in self._tars.items()}
      self.unlisted = 0
      return
    self._tars = None
    partition = _celeba_partition(path('list_eval_partition.txt'))
    self._zip = zipfile.ZipFile(path('img_align_celeba.zip'))
    self._members = {os.path.basename(m.filename): m.filename for m in self._zip.infolist()
                     if not m.is_dir() and not os.path.basename(m.filename).startswith('.')}
    absent = [n for n in partition if n not in self._members]
    if absent:
      raise ArchiveError(
          f'{path("img_align_celeba.zip")} lacks {len(absent)} of the {len(partition)} images '
          f'list_eval_partition.txt lists, e.g. {absent[:3]}: use the files as downloaded.')
    self.unlisted = len(self._members) - len(partition)  # recorded, not prepared
    self.splits = {s: stored_order(n for n, p in partition.items() if p == s)
                   for s in CELEBA_PARTITIONS.values()}

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    for tar in (self._tars or {}).values():
      tar.close()
    if self._tars is None:
      self._zip.close()

  def blocks(self, split, block_size):
    """Yields (first index, uint8 [n, H, W, C]) over the split in stored order."""
    names = self.splits[split]
    for lo in range(0, len(names), block_size):
      yield lo, np.stack([self.image(split, n) for n in names[lo:lo + block_size]])

  def image(self, split, name):
    """One image as stored: uint8 [H, W, C]."""
    if self._tars is not None:
      tar = self._tars[split]
      return decode_png(tar.read(name), self.archive.image_shape,
                        f'{tar.path}: {tar.offsets[name][2]}')
    member = self._members[name]
    where = f'{self._zip.filename}: {member}'
    return celeba_64(self._zip.read(member), where)


def decode_png(data, shape, where):
  """A downsampled ImageNet PNG as uint8 [H, W, 3]: RGB as stored, grey or palette made RGB."""
  from PIL import Image

  try:
    with Image.open(io.BytesIO(data)) as im:
      if im.mode not in _RGB_MODES or (im.mode == 'P' and 'transparency' in im.info):
        raise ArchiveError(f'{where} is a {im.mode} image (transparency or more than 8 bits): '
                           'RGB PNGs are expected; use the files as downloaded.')
      pixels = np.asarray(im.convert('RGB'), np.uint8)
  except (OSError, ValueError) as e:
    raise ArchiveError(f'{where} cannot be decoded ({type(e).__name__}: {e}): the archive is '
                       'damaged; download it again.') from None
  if pixels.shape != tuple(shape):
    raise ArchiveError(f'{where} is {pixels.shape[1]}x{pixels.shape[0]}, not '
                       f'{shape[1]}x{shape[0]}: this is not the {shape[0]}x{shape[1]} set.')
  return pixels


def celeba_64(data, where='image'):
  """An aligned CelebA JPEG as NVAE's CelebA 64 sees it: uint8 [64, 64, 3] (module docstring)."""
  from PIL import Image

  try:
    with Image.open(io.BytesIO(data)) as im:
      rgb = im.convert('RGB')
  except (OSError, ValueError) as e:
    raise ArchiveError(f'{where} cannot be decoded ({type(e).__name__}: {e}): the archive is '
                       'damaged; download it again.') from None
  if rgb.size != CELEBA_SIZE:
    raise ArchiveError(f'{where} is {rgb.size[0]}x{rgb.size[1]}, not the aligned images\' '
                       f'{CELEBA_SIZE[0]}x{CELEBA_SIZE[1]}: use img_align_celeba.zip.')
  small = rgb.crop(CELEBA_CROP).resize((64, 64), Image.Resampling.BILINEAR)
  return np.asarray(small, np.uint8)
