"""Preparing, describing and loading datasets (TFDS records -> uint8 numpy arrays).

Every dataset comes out as uint8 0..255 [N, H, W, C] (see `records`). Splits may be slices of
a base split ('train[:90%]', see `splits`); an example's index is always its index in the base
split's canonical TFDS order (shard files in order, records in order): it is what binarization
keys and evaluation use, for both back ends.

A prepared dataset is found and read without TensorFlow (`prepared_records`, `dataset_info`,
`load_arrays`: the memory back end); TensorFlow is imported only to prepare one (sprites
generation, offline preparation, downloads) and by the stream back end.

Own images and arrays ('folder:DIR', 'npz:FILE') are prepared by own_builder into the same
layout and then found and read like any dataset (`own_data` checks them without TensorFlow).

Imports go one way: datasets imports offline, sprites_builder and own_builder (inside the
functions that need them: they import TFDS at their top), and all of them import records
(TFRecord reading and image encoding), which imports none of them.
"""

import dataclasses
import json
import os
import re

from vae_jax.data import archives, checks, own_data, records, splits

_VERSION = re.compile(r'^\d+\.\d+\.\d+$')


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

  def split_size(self, split):
    """Number of examples of a split or slice, e.g. 'test', 'train[:55000]', 'train[90%:]'.

    Raises:
      ValueError: an unknown split, bad slice syntax, or a slice out of range or empty; the
        message names the available splits and the slice syntax.
    """
    return splits.size(split, self.num_examples)

  def split_range(self, split):
    """(base split, start, stop): the split's examples are base indices [start, stop)."""
    return splits.resolve(split, self.num_examples)


def _load_builder(name, data_dir):
  import tensorflow_datasets as tfds

  if checks.split_name(name)[0] == checks.SPRITES:
    from vae_jax.data import sprites_builder  # noqa: F401  (registers the 'sprites' builder)
  archive = archives.find(name)
  if archive is not None:  # fixed-shape PNG features, not TFDS's own builder's
    from vae_jax.data import offline

    return offline.archive_builder_cls(archive)(data_dir=data_dir, config=archive.config)
  return tfds.builder(name, data_dir=data_dir)


def _is_prepared(builder):
  return os.path.exists(os.path.join(os.fspath(builder.data_dir), 'dataset_info.json'))


def ensure_prepared(data_cfg, *, refresh=False):
  """Prepares the dataset if it is missing.

  refresh: own data only ('folder:DIR', 'npz:FILE'): a prepared copy whose source changed is
  prepared again (replaced) instead of raising own_data.StaleSourceError.

  Returns:
    (tfds builder of the prepared dataset, how): how is 'prepared' (found), 'generated'
    (sprites), 'tfds-manual-dir' / 'decoded-local-files' (offline), 'downloaded', or for own
    data 'from-folder' / 'from-npz' ('replaced-from-...' where refresh replaced a stale copy).

  Raises:
    DatasetMissingError: not prepared and not preparable as configured; with data.download
      also when a download host is unreachable or the download fails. The message gives the
      offline command.
  """

  def download_or_explain(builder):
    # A download that fails fast, with the offline command instead of a traceback.
    import socket
    import urllib.parse
    import urllib.request

    import requests

    def one_line(e):
      return f'{type(e).__name__}: {" ".join(str(e).split())}'

    def unreachable(url):
      """Why url's host (or the proxy requests would use for it) refuses a connection, or None."""
      parts = urllib.parse.urlsplit(url)
      host, port = parts.hostname, parts.port or {'http': 80, 'https': 443}.get(parts.scheme)
      proxies, via = urllib.request.getproxies(), ''
      proxy = proxies.get(parts.scheme) or proxies.get('all')
      if proxy and not urllib.request.proxy_bypass(host):
        p = urllib.parse.urlsplit(proxy if '//' in proxy else f'//{proxy}')
        host, port, via = p.hostname, p.port or 80, f' (the proxy for {parts.hostname})'
      if not host or not port:
        return None
      try:
        socket.create_connection((host, port), timeout=5).close()
      except OSError as e:
        return f'cannot connect to {host}:{port}{via} ({one_line(e)})'
      return None

    def failed(why):
      # Debian packages holding a dataset's original files (valid input to prepare_data.py).
      package, folder = {'fashion_mnist': ('dataset-fashion-mnist',
                                           '/usr/share/datasets/fashion-mnist')}.get(
                                               checks.split_name(name)[0], (None, None))
      if package and os.path.isdir(folder):
        source, manual_dir = f"Debian's {package} has put the files in {folder}: prepare", folder
      elif package:
        source = f'`apt-get install {package}` puts the original files in {folder}; then prepare'
        manual_dir = folder
      else:
        source, manual_dir = 'With the original files in a folder DIR, prepare', 'DIR'
      return checks.DatasetMissingError(
          f'Downloading {name!r} failed: {why.rstrip(".")}. {source} it offline with\n'
          f'  {checks.prepare_command(data_cfg.name, data_cfg.data_dir, manual_dir)}\n'
          f'and run again, or pass --config.data.manual_dir={manual_dir} to prepare it at start.')

    # On a failure to connect TFDS retries for minutes (10 tries, exponential backoff) and
    # then ends in a requests traceback; a connect to each host of the registered URLs first
    # fails within seconds instead.
    hosts = {urllib.parse.urlsplit(url).netloc: url for url in builder.url_infos or {}}
    for url in hosts.values():
      why = unreachable(url)
      if why:
        raise failed(why)
    try:
      builder.download_and_prepare()
    except (requests.RequestException, tfds.download.DownloadError) as e:
      raise failed(one_line(e)) from None

  if own_data.parse(data_cfg.name) is not None:
    from vae_jax.data import own_builder

    return own_builder.ensure_prepared(data_cfg, refresh=refresh)
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
      download_or_explain(builder)
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


def _prepared_folder(data_cfg):
  """The prepared {data_dir}/{name}[/{config}]/{version} folder to read, or None (no TFDS).

  The version is the one data.name pins ('mnist:3.0.1'), for the sprites the one their
  builder makes, else the newest prepared one (what TFDS prepares, unless the folder also
  holds one prepared by a newer TFDS). Without a config in the name, TFDS's record of the
  default config is followed.
  """
  base, config, version = checks.split_name(checks.canonical_name(data_cfg.name))
  root = os.path.join(checks.resolve_data_dir(data_cfg.data_dir), base)
  if config is None:
    try:
      with open(os.path.join(root, '.config', 'metadata.json')) as f:
        config = json.load(f).get('default_config_name') or None
    except (OSError, ValueError):
      pass
  if base == checks.SPRITES and version is None:
    from vae_jax.data import sprites_builder

    version = str(sprites_builder.Sprites.VERSION)
  parent = os.path.join(root, config) if config else root
  try:
    found = [v for v in os.listdir(parent) if _VERSION.match(v) and (version in (None, v)) and
             os.path.exists(os.path.join(parent, v, 'dataset_info.json'))]
  except OSError:
    return None
  if not found:
    return None
  return os.path.join(parent, max(found, key=lambda v: tuple(int(n) for n in v.split('.'))))


def prepared_records(data_cfg):
  """The configured dataset as records.Prepared (prepares it first if needed).

  A prepared dataset is found and described from its files without TensorFlow; only a
  preparation (ensure_prepared) imports it.

  Raises:
    DatasetMissingError: as for ensure_prepared.
  """
  checks.check_available(data_cfg)  # fails fast, with the prepare command
  folder = _prepared_folder(data_cfg)
  if folder is None:
    folder = ensure_prepared(data_cfg)[0].data_dir
  return records.open_prepared(folder)


def check_record_format(data_cfg):
  """Raises records.RecordFormatError if data.backend cannot read the prepared records.

  The stream back end (tf.data) reads TFRecords only; memory and grain read both formats.
  Checked from the JSON files (no TensorFlow) before a run starts; a dataset not prepared yet
  is prepared as TFRecords.
  """
  if data_cfg.backend != 'stream' or own_data.parse(data_cfg.name) is not None:
    return  # own data is always prepared as TFRecords
  folder = _prepared_folder(data_cfg)
  if folder is not None:
    records.require_tfrecord(records.open_prepared(folder))


def dataset_info(data_cfg):
  """DataInfo of the configured dataset (prepares it first if needed).

  Raises:
    records.RecordFormatError: data.backend=stream on a dataset stored as ArrayRecords.
  """
  prepared = prepared_records(data_cfg)
  if data_cfg.backend == 'stream':
    records.require_tfrecord(prepared)
  return DataInfo(
      name=data_cfg.name,
      image_shape=tuple(prepared.features['image'].shape),
      num_examples=records.split_sizes(prepared),
      entropy_nats=prepared.metadata.get('entropy_nats'),
      num_distinct=prepared.metadata.get('num_distinct'),
  )


def load_arrays(data_cfg, split):
  """A split or slice as numpy arrays (prepares the dataset first if needed).

  Without TensorFlow where the dataset is prepared (see records.read_split).

  Returns:
    {'image': uint8 [N, H, W, C] (0..255), 'index': int32 [N] (each example's index in the base
    split: 'train[55000:]' gives 55000, 55001, ...), plus 'label' / factors, each [N, ...]}.
  """
  return records.read_split(prepared_records(data_cfg), split)
