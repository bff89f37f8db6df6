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
"""

import datetime
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from vae_jax.data import checks, formats, records

PROVENANCE_FILE = 'vae_jax_provenance.json'


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
    'tfds-manual-dir' or 'decoded-local-files': which path prepared it.
  """
  manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
  checks.manual_dir_status(name, manual_dir)  # raises DatasetMissingError with the file list
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
