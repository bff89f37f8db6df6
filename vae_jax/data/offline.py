"""Offline preparation of TFDS datasets from files in a manual_dir.

Two paths, chosen by the files' digests:
- byte-identical to the official download (TFDS's registered sha256): TFDS's own
  `DownloadConfig(manual_dir=...)` path prepares the standard dataset;
- otherwise (e.g. Debian's Fashion-MNIST .gz files, which differ only in the gzip header; tests'
  tiny files): the content is decoded here (idx, .amat, CIFAR pickles) and written by a subclass
  of TFDS's own builder class that keeps the official name, version, features and split names,
  so the result loads with plain `tfds.builder(name, data_dir=...)`. Split sizes come from the
  files. Either way `vae_jax_provenance.json` beside dataset_info.json records how it was built
  and from which file digests.

The judged datasets (downsampled_imagenet/32x32 and /64x64, celeb_a_64; see `archives`) take a
third path whatever their files' digests: their original archives are read by `archives` and
written by `archive_builder_cls`, a builder of fixed-shape PNG images (method
'decoded-archives'; the record says whether the files match TFDS's registered checksums).
"""

import datetime
import json
import os

import numpy as np
import PIL
import tensorflow_datasets as tfds

from vae_jax.data import archives, checks, formats, records

PROVENANCE_FILE = 'vae_jax_provenance.json'
# Images of an archive decoded and PNG-encoded at once: bounds the memory of a preparation.
_BLOCK = 1024


def _offline_config(manual_dir=None):
  # try_download_gcs=False: TFDS would otherwise ask GCS for a prebuilt copy (network).
  return tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)


def registered_match(manual_dir, url_infos):
  """Digests of the official-named files in manual_dir, and whether all match TFDS's."""
  if not url_infos:
    return {}, False
  digests, match = {}, True
  for info in url_infos.values():
    path = os.path.join(manual_dir, info.filename or '')
    if not info.filename or not os.path.isfile(path):
      return digests, False
    digests[info.filename] = formats.file_digest(path)
    match &= (digests[info.filename]['sha256'] == info.checksum
              and digests[info.filename]['size'] == info.size)
  return digests, match


def prepare_offline(name, manual_dir, data_dir):
  """Prepares `name` into data_dir from manual_dir without any network access.

  Returns:
    'tfds-manual-dir', 'decoded-local-files' or 'decoded-archives': which path prepared it.
  """
  manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
  checks.manual_dir_status(name, manual_dir)  # raises DatasetMissingError with the file list
  archive = archives.find(name)
  if archive is not None:
    return _prepare_archive(archive, manual_dir, data_dir)
  official_cls = tfds.builder_cls(checks.split_name(name)[0])
  url_infos = official_cls.url_infos
  digests, match = registered_match(manual_dir, url_infos)
  record = {
      'dataset': name,
      'manual_dir': manual_dir,
      'registered_checksums': {i.filename: i.checksum for i in (url_infos or {}).values()},
      'tfds_version': tfds.__version__,
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
  }
  if match:
    builder = tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare(download_config=_offline_config(manual_dir))
    record.update(method='tfds-manual-dir', files=digests, matches_registered_checksums=True)
    _write_provenance(builder.data_dir, record)
    return 'tfds-manual-dir'

  fmt, paths = formats.find_format(manual_dir)
  if fmt is None:
    raise checks.DatasetMissingError(
        f'{manual_dir} has the official file names for {name!r} but not their registered '
        f'checksums, and no decodable format ({formats.describe_formats()}).')
  record.update(
      method='decoded-local-files', format=fmt.name, matches_registered_checksums=False,
      files={os.path.basename(p): formats.file_digest(p) for p in paths.values()})
  config = checks.split_name(name)[1]
  local_cls = _local_builder_cls(official_cls, fmt, paths, record)
  local_cls(data_dir=data_dir, config=config).download_and_prepare(
      download_config=_offline_config())
  return 'decoded-local-files'


def _prepare_archive(archive, manual_dir, data_dir):
  """Prepares a judged dataset from its original files (archives.Archive) into data_dir."""
  infos = tfds.builder_cls(archive.official).url_infos or {}
  registered = {i.filename: i.checksum for i in infos.values() if i.filename in archive.files}
  digests = {f: formats.file_digest(os.path.join(manual_dir, f)) for f in archive.files}
  record = {
      'dataset': archive.name,
      'manual_dir': manual_dir,
      'method': 'decoded-archives',
      'files': digests,
      'registered_checksums': registered,
      'matches_registered_checksums': len(registered) == len(archive.files) and all(
          digests[f]['sha256'] == c for f, c in registered.items()),
      'stored_order': archives.ORDER_RULE,
      'image_shape': list(archive.image_shape),
      'pillow_version': PIL.__version__,  # decodes the files (JPEG decoders differ a little)
      'tfds_version': tfds.__version__,
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
  }
  if archive.official == 'celeb_a':
    record['transform'] = (f'Pillow: convert RGB, crop {archives.CELEBA_CROP} (left, upper, '
                           'right, lower), resize (64, 64) bilinear (NVAE\'s CelebA 64)')
  builder = archive_builder_cls(archive, manual_dir, record)(data_dir=data_dir,
                                                             config=archive.config)
  builder.download_and_prepare(download_config=_offline_config())
  return 'decoded-archives'


def archive_builder_cls(archive, manual_dir=None, record=None):
  """The (unregistered) TFDS builder class of a judged dataset (archives.Archive).

  Images only, fixed shape, PNG, in the stored order (archives.stored_order). ImageNet's is a
  subclass of TFDS's downsampled_imagenet builder (its name, configs and versions, hence its
  folders); CelebA 64's a builder of its own name. Without manual_dir it only loads a prepared
  copy.
  """
  base = (tfds.builder_cls(archive.official) if archive.config is not None
          else tfds.core.GeneratorBasedBuilder)

  class ArchiveBuilder(base, skip_registration=True):
    """A judged dataset, prepared from its original files (see vae_jax_provenance.json)."""

    name = archive.tfds_name
    if archive.config is None:
      VERSION = tfds.core.Version(archive.version)
      RELEASE_NOTES = {archive.version: f'Prepared by vae_jax from {archive.files}.'}

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description=f'{archive.name}, prepared by vae_jax from {archives.describe(archive)}.',
          features=tfds.features.FeaturesDict(
              {'image': tfds.features.Image(shape=archive.image_shape)}),
          disable_shuffling=True,  # the stored order is archives.stored_order's
      )

    def _split_generators(self, dl_manager):
      del dl_manager  # the files are read directly
      return {split: self._generate_examples(split) for split in self._reader.splits}

    def _generate_examples(self, split):
      for lo, images in self._reader.blocks(split, _BLOCK):
        for i, png in enumerate(records.encode_images(images)):
          yield lo + i, {'image': png}

    def _download_and_prepare(self, dl_manager, download_config):
      if manual_dir is None:
        raise checks.DatasetMissingError(
            f'{archive.name!r} is prepared only from its original files '
            f'({archives.describe(archive)}):\n  {checks.prepare_command(archive.name, "")}')
      with archives.Reader(archive, manual_dir) as self._reader:
        super()._download_and_prepare(dl_manager, download_config)
      # self.data_dir is TFDS's temporary folder here: the record lands with the data.
      record['split_sizes'] = {k: v.num_examples for k, v in self.info.splits.items()}
      if archive.split_files() is None:  # CelebA: zip images its partition list leaves out
        record['unlisted_images_skipped'] = self._reader.unlisted
      _write_provenance(self.data_dir, record)

  return ArchiveBuilder


def _write_provenance(folder, record):
  with open(os.path.join(os.fspath(folder), PROVENANCE_FILE), 'w') as f:
    json.dump(record, f, indent=2, sort_keys=True)


def _local_builder_cls(official_cls, fmt, paths, record):
  """A subclass of the official builder whose splits come from the decoded local files."""

  class LocalBuilder(official_cls, skip_registration=True):
    """The official dataset, generated from local files (see vae_jax_provenance.json)."""

    name = official_cls.name  # same name, hence same data_dir layout as the official one

    def _split_generators(self, dl_manager):
      del dl_manager  # the files are read directly: nothing to download or verify
      splits, label_names = fmt.read(paths)
      for feature, names in label_names.items():
        if feature in self.info.features:
          self.info.features[feature].names = names
      return {split: self._generate_local(split, arrays) for split, arrays in splits.items()}

    def _generate_local(self, split, arrays):
      features = self.info.features
      images = _fit_images(arrays['image'], features['image'].shape, fmt.name)
      missing = [k for k in features if k not in arrays and k != 'id']
      if missing:
        raise ValueError(f'{fmt.name} files lack features {missing} of {self.name}.')
      encoded = records.encode_images(images, features['image'].encoding_format or 'png')
      for i in range(len(images)):
        example = {k: int(arrays[k][i]) for k in features if k not in ('image', 'id')}
        example['image'] = encoded[i]
        if 'id' in features:
          example['id'] = f'{split}_{i:05d}'  # the official CIFAR builders' id format
        # The key is the index in the file, as the official builders use: same stored order.
        yield i, example

    def _download_and_prepare(self, dl_manager, download_config):
      super()._download_and_prepare(dl_manager, download_config)
      # self.data_dir is TFDS's temporary folder here, renamed into place only on success:
      # the provenance appears atomically with the dataset.
      record['split_sizes'] = {k: v.num_examples for k, v in self.info.splits.items()}
      _write_provenance(self.data_dir, record)

  return LocalBuilder


def _fit_images(images, shape, fmt_name):
  """Reshapes decoded rows to the feature's (H, W, C), checking the sizes agree."""
  if None in shape:
    raise ValueError(f'Variable image shape {shape}: not supported for offline decoding.')
  if images.ndim == 2 and images.shape[1] == np.prod(shape):
    images = images.reshape((-1,) + tuple(shape))
  if tuple(images.shape[1:]) != tuple(shape):
    raise ValueError(f'{fmt_name} images have shape {images.shape[1:]}; the dataset wants '
                     f'{tuple(shape)}.')
  return images.astype(np.uint8)


def read_provenance(folder):
  """The provenance record of a prepared dataset folder, or None."""
  path = os.path.join(os.fspath(folder), PROVENANCE_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
