"""Config validation and the 'is the dataset there?' check, without importing TensorFlow.

Scripts call these before anything slow, so a mistyped name or a dataset that is not prepared
is reported within a second, with the command that prepares it.
"""

import difflib
import glob
import os
import re

from vae_jax.config import names
from vae_jax.data import formats, splits, sprites

KNOWN_PREPROCESS = names.PREPROCESS
KNOWN_BACKENDS = names.BACKENDS
SPRITES = 'sprites'
# The data.* fields that name a split (or a slice of one).
SPLIT_FIELDS = ('train_split', 'valid_split', 'eval_split')
_VERSION_DIR = re.compile(r'^\d+\.\d+\.\d+$')


class DatasetMissingError(RuntimeError):
  """The dataset is not prepared and may not be downloaded; the message says how to prepare."""


def validate_data_config(data_cfg):
  """Raises ValueError naming the valid values for any unknown data.* setting.

  Split fields are checked for syntax only (their sizes need the dataset: validate_splits).
  """
  _one_of('data.preprocess', data_cfg.preprocess, KNOWN_PREPROCESS)
  _one_of('data.backend', data_cfg.backend, KNOWN_BACKENDS)
  if not data_cfg.name:
    raise ValueError("data.name is empty: use 'sprites', a TFDS dataset name, e.g. 'mnist', or "
                     "your own images, 'folder:DIR' or 'npz:FILE'.")
  base, config, _ = split_name(data_cfg.name)
  if base == SPRITES and config is not None:
    _one_of('sprites config', config, tuple(sprites.SPRITE_SPECS))
  from vae_jax.data import archives  # it imports this module

  archives.find(data_cfg.name)  # an unknown downsampled_imagenet config is a ValueError
  if data_cfg.shuffle_buffer < 1:
    raise ValueError(f'data.shuffle_buffer must be >= 1, got {data_cfg.shuffle_buffer}.')
  for field in SPLIT_FIELDS:
    value = getattr(data_cfg, field)
    if not value:
      raise ValueError(f'data.{field} is empty: use {splits.SYNTAX}.')
    try:
      splits.parse(value)
    except ValueError as e:
      raise ValueError(f'data.{field}: {e}') from None
  train, valid = splits.parse(data_cfg.train_split), splits.parse(data_cfg.valid_split)
  # Decidable without the split sizes; validate_splits checks every other overlap.
  if train.base == valid.base and (train.whole or valid.whole):
    raise ValueError(_overlap_message(data_cfg, None))


def validate_splits(data_cfg, info):
  """Checks data.train_split, valid_split and eval_split against the dataset's splits.

  Call it once the DataInfo is known and before anything compiles.

  Args:
    data_cfg: the data config.
    info: the dataset's DataInfo (only its num_examples is used).

  Raises:
    ValueError: a split (or slice) the dataset does not have, a slice out of range or empty,
      or training and validation splits that share examples.
  """
  for field in SPLIT_FIELDS:
    value = getattr(data_cfg, field)
    try:
      splits.resolve(value, info.num_examples)
    except ValueError as e:
      hint = ''
      if field == 'valid_split' and splits.parse(value).base not in info.num_examples:
        hint = (f' {info.name!r} has no such split to select models on: hold out a slice of '
                f"train instead, e.g. data.train_split='train[:90%]' with "
                f"data.valid_split='train[90%:]'.")
      raise ValueError(f'data.{field}={value!r} does not fit {info.name!r}: {e}{hint}') from None
  shared = splits.overlap(data_cfg.train_split, data_cfg.valid_split, info.num_examples)
  if shared is not None:
    raise ValueError(_overlap_message(data_cfg, shared))


def _overlap_message(data_cfg, shared):
  train, valid = data_cfg.train_split, data_cfg.valid_split
  where = f' (base indices [{shared[0]}, {shared[1]}))' if shared else ''
  rest = splits.complement(valid)
  if rest:
    fix = f'train on the rest, data.train_split={rest!r}'
  else:
    fix = "hold out a slice, e.g. data.train_split='train[:90%]', data.valid_split='train[90%:]'"
  return (f'data.train_split={train!r} and data.valid_split={valid!r} share examples{where}: '
          'model selection on the validation split would read training examples. Use '
          f"disjoint splits: {fix}; or use the dataset's own validation split where it has "
          "one (e.g. data.valid_split='validation').")


def _one_of(what, value, valid):
  if value not in valid:
    close = difflib.get_close_matches(str(value), valid, n=1)
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    raise ValueError(f'Unknown {what} {value!r}{hint}; valid values: {", ".join(valid)}.')


def split_name(name):
  """'name[/config][:version]' -> (name, config or None, version or None).

  Own data ('folder:DIR', 'npz:FILE', whose paths may hold '/' and ':') gives its prepared
  name, (prepared_name, None, None): see own_data.
  """
  from vae_jax.data import own_data  # it imports this module

  source = own_data.parse(name)
  if source is not None:
    return source.prepared_name, None, None
  name, _, version = name.partition(':')
  base, _, config = name.partition('/')
  return base, config or None, version or None


def canonical_name(name):
  """Names the sprites config explicitly ('sprites' -> 'sprites/default'); own data as is."""
  from vae_jax.data import own_data

  if own_data.parse(name) is not None:
    return name
  base, config, version = split_name(name)
  if base == SPRITES and config is None:
    config = sprites.DEFAULT_CONFIG
  return base + (f'/{config}' if config else '') + (f':{version}' if version else '')


def resolve_data_dir(data_dir):
  """The TFDS data_dir: the given one, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  data_dir = data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
  return os.path.abspath(os.path.expanduser(data_dir))


def prepared_dirs(name, data_dir):
  """The prepared {data_dir}/{name}[/{config}]/{version} folders (those with dataset_info.json)."""
  base, config, version = split_name(canonical_name(name))
  root = os.path.join(resolve_data_dir(data_dir), base)
  # Without a config the dataset may still have one (TFDS uses its default): look one deeper.
  patterns = [os.path.join(root, config, '*')] if config else [
      os.path.join(root, '*'), os.path.join(root, '*', '*')]
  found = []
  for pattern in patterns:
    for info in glob.glob(os.path.join(pattern, 'dataset_info.json')):
      folder = os.path.dirname(info)
      # Skips TFDS's 'incomplete.*' folders of a preparation in progress.
      if _VERSION_DIR.match(os.path.basename(folder)) and (
          version is None or os.path.basename(folder) == version):
        found.append(folder)
  return sorted(found)


def prepare_command(name, data_dir, manual_dir='DIR'):
  cmd = f'python scripts/prepare_data.py --dataset={name} --manual_dir={manual_dir}'
  return cmd + (f' --data_dir={data_dir}' if data_dir else '')


def official_filenames(name):
  """File names of the official download as TFDS registers them (imports TFDS, not TF)."""
  import tensorflow_datasets as tfds

  from vae_jax.data import archives

  archive = archives.find(name)
  if archive is not None:  # prepared from these files only (see archives)
    return sorted(archive.files)
  infos = tfds.builder_cls(split_name(name)[0]).url_infos or {}
  return sorted({info.filename for info in infos.values() if info.filename})


def check_tfds_name(name):
  """Raises ValueError if name is not a registered TFDS dataset (imports TFDS, not TF)."""
  import tensorflow_datasets as tfds

  base = split_name(name)[0]
  known = tfds.list_builders(with_community_datasets=False)
  if base not in known:
    close = difflib.get_close_matches(base, known + [SPRITES], n=3)
    hint = f' Did you mean {", ".join(close)}?' if close else ''
    raise ValueError(f"Unknown dataset {base!r}: not 'sprites' and not a TFDS dataset.{hint}")


def manual_dir_status(name, manual_dir):
  """Says what manual_dir offers for name: ('format', Format) / ('official', files) / raises."""
  if not os.path.isdir(manual_dir):
    raise DatasetMissingError(f'data.manual_dir {manual_dir!r} is not a directory.')
  from vae_jax.data import archives

  archive = archives.find(name)
  if archive is not None:
    missing = archives.missing_files(archive, manual_dir)
    if not missing:
      return 'archives', archive
    raise DatasetMissingError(
        f'data.manual_dir {manual_dir} lacks {", ".join(missing)} for {name!r}: expected '
        f'{archives.describe(archive)}. Found: {sorted(os.listdir(manual_dir))[:20]}.')
  official = official_filenames(name)
  if official and all(os.path.exists(os.path.join(manual_dir, f)) for f in official):
    return 'official', official
  fmt, _ = formats.find_format(manual_dir)
  if fmt is not None:
    return 'format', fmt
  raise DatasetMissingError(
      f'data.manual_dir {manual_dir} holds no complete set of files for {name!r}. Expected '
      f'either the official download files ({", ".join(official) or "none registered"}) or '
      f'{formats.describe_formats()}. Found: {sorted(os.listdir(manual_dir))[:20]}.')


def check_available(data_cfg):
  """Raises unless the dataset is prepared or can be prepared as configured.

  Never imports TensorFlow: looks for {data_dir}/{name}/*/dataset_info.json, then at the
  manual_dir's files. Sprites are always available (generated on demand). Own data
  ('folder:DIR', 'npz:FILE') is available when its prepared copy matches the source, or when
  the source fits the layout (own_data.check).

  Raises:
    ValueError: an unknown setting or dataset name.
    DatasetMissingError: not prepared, data.download=False and no usable manual_dir; the
      message gives the command and the files that prepare it. Own data: own_data.SourceError
      (a source that does not fit the layout) or own_data.StaleSourceError (it changed since
      it was prepared), both DatasetMissingErrors.
  """
  from vae_jax.data import archives, own_data

  validate_data_config(data_cfg)
  name = data_cfg.name
  if own_data.parse(name) is not None:
    own_data.check(data_cfg)
    return
  if split_name(name)[0] == SPRITES or prepared_dirs(name, data_cfg.data_dir):
    return
  archive = archives.find(name)
  if archive is None:
    check_tfds_name(name)
  if data_cfg.manual_dir:
    manual_dir_status(name, data_cfg.manual_dir)
    return
  data_dir = resolve_data_dir(data_cfg.data_dir)
  if archive is not None:  # never downloaded: TFDS's own builder would store other features
    raise DatasetMissingError(
        f'Dataset {name!r} is not prepared in {data_dir}, and it is prepared only from its '
        f'original files (data.download does not fetch it). With '
        f'{archives.describe(archive)} in a folder DIR, prepare it:\n'
        f'  {prepare_command(name, data_cfg.data_dir)}\n'
        f'or pass --config.data.manual_dir=DIR to prepare it at startup.')
  if data_cfg.download:
    return
  try:
    official = official_filenames(name)
  except Exception:  # only improves the message
    official = []
  files = ', '.join(official) if official else 'the files of the official download'
  raise DatasetMissingError(
      f'Dataset {name!r} is not prepared in {data_dir} (no {split_name(name)[0]}/*/'
      f'dataset_info.json) and data.download=False, so nothing will be fetched.\n'
      f'Prepare it offline from a folder DIR holding {files} (or {formats.describe_formats()}):\n'
      f'  {prepare_command(name, data_cfg.data_dir)}\n'
      f'or pass --config.data.manual_dir=DIR to prepare it at startup, or '
      f'--config.data.download=True to let TFDS download it (needs network).')
