"""Config validation and the missing-dataset check, which must never import TensorFlow."""

import os
import subprocess
import sys

import pytest

from configs import default
from vae_jax import data
from vae_jax.data import checks, splits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_config(**overrides):
  """configs/default.py's data config with overrides: the one source of the data fields.

  Imported directly (not through the trainer's config checks), so the data tests need only
  the data package.
  """
  cfg = default.get_config().data
  if 'valid_split' not in cfg:  # a default config from before data.valid_split existed
    with cfg.unlocked():
      cfg.train_split, cfg.valid_split = 'train[:90%]', 'train[90%:]'
  cfg.update(overrides)
  return cfg


def data_cfg(tmp_path, **overrides):
  return data_config(**{'name': 'mnist', 'data_dir': str(tmp_path), **overrides})


@pytest.mark.parametrize('field,value,valid', [
    ('preprocess', 'binarize', 'dynamic_binarize'),
    ('backend', 'streaming', 'stream'),
])
def test_unknown_setting_lists_valid_values(tmp_path, field, value, valid):
  with pytest.raises(ValueError, match=valid) as e:
    data.validate_data_config(data_cfg(tmp_path, **{field: value}))
  assert repr(value) in str(e.value)


def test_known_tuples():
  assert data.KNOWN_PREPROCESS == ('grey', 'dynamic_binarize', 'static_binarize', 'threshold',
                                   'uint8')
  assert data.KNOWN_BACKENDS == ('memory', 'stream', 'grain')


def test_missing_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(data.DatasetMissingError) as e:
    data.check_available(data_cfg(tmp_path))
  message = str(e.value)
  assert 'scripts/prepare_data.py --dataset=mnist --manual_dir=' in message
  assert 'train-images-idx3-ubyte.gz' in message  # the files it needs
  assert 'data.download=True' in message


def test_unknown_dataset_name(tmp_path):
  with pytest.raises(ValueError, match='fashion_mnist'):
    data.check_available(data_cfg(tmp_path, name='fashion_mnst'))


def test_sprites_always_available(tmp_path):
  data.check_available(data_cfg(tmp_path, name='sprites'))
  data.check_available(data_cfg(tmp_path, name='sprites/small'))
  with pytest.raises(ValueError, match='small'):
    data.check_available(data_cfg(tmp_path, name='sprites/smal'))


def test_manual_dir_without_usable_files(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / 'notes.txt').write_text('nothing here')
  with pytest.raises(data.DatasetMissingError, match='notes.txt'):
    data.check_available(data_cfg(tmp_path, manual_dir=str(manual)))


def test_prepared_dataset_found_by_glob(tmp_path):
  folder = tmp_path / 'mnist' / '3.0.1'
  folder.mkdir(parents=True)
  (folder / 'dataset_info.json').write_text('{}')
  (tmp_path / 'mnist' / 'incomplete.abc_3.0.1').mkdir()
  data.check_available(data_cfg(tmp_path))
  assert checks.prepared_dirs('mnist', str(tmp_path)) == [str(folder)]
  assert checks.prepared_dirs('mnist:3.0.0', str(tmp_path)) == []


def test_check_does_not_import_tensorflow(tmp_path):
  code = (
      'import sys\n'
      'from tests.test_data_checks import data_config\n'
      'from vae_jax import data\n'
      f'cfg = data_config(name="mnist", data_dir="{tmp_path}")\n'
      'data.validate_splits(cfg, data.DataInfo("mnist", (28, 28, 1), {"train": 9, "test": 9}))\n'
      'try:\n'
      '  data.check_available(cfg)\n'
      'except data.DatasetMissingError:\n'
      '  pass\n'
      'cfg.name = "sprites"\n'
      'data.check_available(cfg)\n'
      'assert "tensorflow" not in sys.modules, "tensorflow imported"\n')
  env = dict(os.environ, PYTHONPATH=ROOT)
  subprocess.run([sys.executable, '-c', code], check=True, env=env, cwd=ROOT)


# ---------------------------------------------------------------------------------------------
# Split names and slices

SIZES = {'train': 60_000, 'validation': 10_000, 'test': 10_000}


@pytest.mark.parametrize('split,expected', [
    ('train', ('train', 0, 60_000)),
    ('test', ('test', 0, 10_000)),
    ('train[:55000]', ('train', 0, 55_000)),
    ('train[55000:]', ('train', 55_000, 60_000)),
    ('train[-2000:]', ('train', 58_000, 60_000)),
    ('train[:-2000]', ('train', 0, 58_000)),
    ('train[100:-100]', ('train', 100, 59_900)),
    ('train[-60000:]', ('train', 0, 60_000)),
    ('train[:90%]', ('train', 0, 54_000)),
    ('train[90%:]', ('train', 54_000, 60_000)),
    ('train[-10%:]', ('train', 54_000, 60_000)),
    ('train[12.5%:25%]', ('train', 7_500, 15_000)),
    ('validation[:100%]', ('validation', 0, 10_000)),
])
def test_split_resolution(split, expected):
  assert splits.resolve(split, SIZES) == expected
  assert data.DataInfo('d', (28, 28, 1), SIZES).split_size(split) == expected[2] - expected[1]


def test_percent_rounding_is_tfds():
  # int(round(p * n / 100)) with Python's round-half-to-even, as TFDS's 'closest' rounding.
  assert splits.resolve('train[:12.5%]', {'train': 300}) == ('train', 0, 38)  # 37.5 -> 38
  assert splits.resolve('train[:37.5%]', {'train': 300}) == ('train', 0, 112)  # 112.5 -> 112
  assert splits.resolve('train[:33%]', {'train': 10}) == ('train', 0, 3)  # 3.3 -> 3
  assert splits.resolve('train[-25%:]', {'train': 10}) == ('train', 8, 10)  # -2.5 -> -2


@pytest.mark.parametrize('split,match', [
    ('train[]', 'one colon'),
    ('train[:]', 'empty slice'),
    ('train[5]', 'one colon'),
    ('train[1:2:3]', 'one colon'),
    ('train[a:]', 'neither an integer nor a percentage'),
    ('train[1.5:]', 'must be an integer'),
    ('train[10%:500]', 'both bounds'),
    ('train[:10', 'Bad split'),
    ('train+test', 'Bad split'),
    ('', 'Bad split'),
])
def test_bad_split_syntax(split, match):
  with pytest.raises(ValueError, match=match) as e:
    splits.parse(split)
  assert 'train[:55000]' in str(e.value)  # says the syntax


@pytest.mark.parametrize('split,match', [
    ('valid', "Unknown split 'valid'"),
    ('tset[:5]', r"Unknown split 'tset' in 'tset\[:5\]' \(did you mean 'test'\?\)"),
    ('train[:60001]', 'out of range'),
    ('train[-60001:]', 'out of range'),
    ('train[:101%]', 'out of range'),
    ('train[500:500]', 'empty'),
    ('train[-100:100]', 'empty'),
    ('train[90%:10%]', 'empty'),
])
def test_split_not_in_dataset(split, match):
  info = data.DataInfo('d', (28, 28, 1), SIZES)
  with pytest.raises(ValueError, match=match) as e:
    info.split_size(split)
  # Names the available splits and the slice syntax.
  assert "'validation' (10000 examples)" in str(e.value) and 'train[90%:]' in str(e.value)


def test_overlap_and_complement():
  assert splits.overlap('train[:90%]', 'train[90%:]', SIZES) is None
  assert splits.overlap('train', 'test', SIZES) is None
  assert splits.overlap('train[:55000]', 'train[-6000:]', SIZES) == (54_000, 55_000)
  assert splits.complement('train[90%:]') == 'train[:90%]'
  assert splits.complement('train[:-2000]') == 'train[-2000:]'
  assert splits.complement('train[5:10]') is None and splits.complement('train') is None


@pytest.mark.parametrize('field,value,match', [
    ('valid_split', '', 'data.valid_split is empty'),
    ('train_split', 'train[:55k]', 'data.train_split'),
    ('eval_split', 'test[::2]', 'data.eval_split'),
])
def test_config_split_syntax(tmp_path, field, value, match):
  with pytest.raises(ValueError, match=match):
    data.validate_data_config(data_cfg(tmp_path, **{field: value}))


def test_config_refuses_obvious_overlap_without_sizes(tmp_path):
  cfg = data_cfg(tmp_path, train_split='train', valid_split='train[90%:]')
  with pytest.raises(ValueError, match=r"share examples.*data.train_split='train\[:90%\]'"):
    data.validate_data_config(cfg)
  data.validate_data_config(data_cfg(tmp_path, train_split='train[:90%]',
                                     valid_split='train[90%:]'))


def test_validate_splits():
  info = data.DataInfo('mnist', (28, 28, 1), {'train': 60_000, 'test': 10_000})
  good = data_config(train_split='train[:55000]', valid_split='train[55000:]', eval_split='test')
  data.validate_splits(good, info)
  with pytest.raises(ValueError, match=r"data.valid_split='validation'.*Unknown.*hold out"):
    data.validate_splits(data_config(train_split='train', valid_split='validation'), info)
  with pytest.raises(ValueError, match=r'data.train_split.*out of range'):
    data.validate_splits(data_config(train_split='train[:70000]', valid_split='test'), info)
  overlapping = data_config(train_split='train[:55000]', valid_split='train[-6000:]')
  with pytest.raises(ValueError, match=r"\(base indices \[54000, 55000\)\).*'train\[:-6000\]'"):
    data.validate_splits(overlapping, info)
