"""TFDS preparation of own images and arrays (data.name='folder:DIR', 'npz:FILE').

A GeneratorBasedBuilder made for the source (own_data.Scan) writes the standard prepared layout,
{data_dir}/{prepared_name}/1.0.0/ with dataset_info.json and TFRecord shards of PNG-encoded
images (and a 'label' ClassLabel where the source has labels), so records.py, both back ends
and every script read it like any other dataset. Examples are written in the order
own_data.Scan gives (disable_shuffling: TFDS keeps the keys' order), and PROVENANCE_FILE beside
dataset_info.json records the source for the freshness check; TFDS writes into a temporary
folder and renames it into place, so the record appears together with the data.
"""

import datetime
import json
import os
import shutil

import numpy as np
import tensorflow_datasets as tfds

from vae_jax.data import checks, own_data, records

# Images decoded and PNG-encoded at once: bounds the memory of a folder's preparation.
_BLOCK = 1024


def ensure_prepared(data_cfg, *, refresh=False):
  """The prepared copy of data.name's own source, prepared first where needed.

  Returns:
    (read-only TFDS builder of the prepared folder, how): how is 'prepared' (found and fresh),
    'from-folder' / 'from-npz' (prepared now) or 'replaced-from-folder' / 'replaced-from-npz'
    (refresh replaced a copy whose source changed).

  Raises:
    own_data.SourceError: the source does not fit the layout.
    own_data.StaleSourceError: the copy no longer matches its source and refresh is False.
  """
  source = own_data.parse(data_cfg.name)
  data_dir = checks.resolve_data_dir(data_cfg.data_dir)
  folder = own_data.prepared_folder(source, data_dir)
  how = f'from-{source.kind}'
  if folder is not None:
    why = own_data.stale_reason(source, folder)
    if why is None:
      return tfds.builder_from_directory(folder), 'prepared'
    if not refresh:
      raise own_data.stale_error(source, folder, why, data_cfg.data_dir)
    shutil.rmtree(folder)
    how = f'replaced-from-{source.kind}'
  scan = own_data.scan(source)
  builder = builder_cls(scan)(data_dir=data_dir)
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except OSError:
    # Processes sharing a data_dir may prepare at once: only the first rename succeeds, and
    # the others use its result (as datasets.ensure_prepared does).
    if own_data.prepared_folder(source, data_dir) is None:
      raise
    how = 'prepared'
  return tfds.builder_from_directory(own_data.prepared_folder(source, data_dir)), how


def builder_cls(scan):
  """The TFDS builder class of one checked source (not registered: it is found by folder)."""
  source = scan.source

  class OwnData(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Images of a folder or arrays of an npz file (see vae_jax_provenance.json)."""

    name = source.prepared_name
    VERSION = tfds.core.Version(own_data.VERSION)
    RELEASE_NOTES = {own_data.VERSION: f'Prepared from {source.name}.'}

    def _info(self):
      features = {'image': tfds.features.Image(shape=scan.image_shape)}
      if scan.label_names is not None:
        features['label'] = tfds.features.ClassLabel(names=list(scan.label_names))
      return tfds.core.DatasetInfo(
          builder=self,
          description=f'Own {source.kind} {source.path} (data.name={source.name!r}).',
          features=tfds.features.FeaturesDict(features),
          # The order own_data gives: file hashes (folder), rows (npz).
          disable_shuffling=True,
      )

    def _split_generators(self, dl_manager):
      del dl_manager  # nothing to download
      return {split: self._generate_examples(split) for split in scan.splits}

    def _generate_examples(self, split):
      make = _folder_examples if source.kind == 'folder' else _npz_examples
      yield from make(scan, split)

    def _download_and_prepare(self, dl_manager, download_config):
      super()._download_and_prepare(dl_manager, download_config)
      # self.data_dir is TFDS's temporary folder here: the record lands with the data.
      record = {
          'method': f'own-{source.kind}',
          'data_name': source.name,
          'source_path': source.path,
          'files': [list(row) for row in scan.files],
          'sha256': scan.sha256,
          'image_shape': list(scan.image_shape),
          'label_names': None if scan.label_names is None else list(scan.label_names),
          'split_sizes': {k: v.num_examples for k, v in self.info.splits.items()},
          'tfds_version': tfds.__version__,
          'created': datetime.datetime.now(datetime.timezone.utc).isoformat(
              timespec='seconds'),
      }
      if source.kind == 'folder':  # example i of a split is file i of its list
        record['split_files'] = {s: [rel for rel, _ in rows] for s, rows in scan.splits.items()}
      with open(os.path.join(os.fspath(self.data_dir), own_data.PROVENANCE_FILE), 'w') as f:
        json.dump(record, f, indent=1, sort_keys=True)

  return OwnData


def _folder_examples(scan, split):
  """(key, example) of one split folder, in the stored order, decoded block by block."""
  rows = scan.splits[split]
  for lo in range(0, len(rows), _BLOCK):
    block = rows[lo:lo + _BLOCK]
    images = np.stack([read_image(scan, rel) for rel, _ in block])
    for i, (png, (_, label)) in enumerate(zip(records.encode_images(images), block, strict=True)):
      example = {'image': png}
      if label is not None:
        example['label'] = label
      yield lo + i, example


def read_image(scan, rel):
  """One image of a folder source as uint8 [H, W, C], in its stored mode (own_data.MODE_RULE)."""
  from PIL import Image

  path = os.path.join(scan.source.path, rel)
  try:
    with Image.open(path) as im:
      pixels = np.asarray(im.convert(scan.modes[rel]), np.uint8)
  except (OSError, ValueError) as e:
    raise own_data.SourceError(f'{scan.source.name}: {path} cannot be decoded ({type(e).__name__}'
                               f': {e}): repair or remove it.') from None
  pixels = pixels.reshape(pixels.shape[:2] + (-1,))
  if pixels.shape != scan.image_shape:  # changed since it was checked
    raise own_data.SourceError(f'{scan.source.name}: {path} has shape {pixels.shape}, not '
                               f'{scan.image_shape} as when it was checked: it changed during '
                               'preparation. Prepare again once the folder is complete.')
  return pixels


def _npz_examples(scan, split):
  """(row, example) of one npz array, in row order."""
  with np.load(scan.source.path, allow_pickle=False) as npz:
    images = npz[split].reshape((-1,) + tuple(scan.image_shape))
    labels = npz[split + '_labels'] if scan.label_names is not None else None
  for i, png in enumerate(records.encode_images(images)):
    example = {'image': png}
    if labels is not None:
      example['label'] = int(labels[i])
    yield i, example
