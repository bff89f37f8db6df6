"""Config validation and the missing-dataset check, which must never import TensorFlow."""

import os
import subprocess
import sys

import ml_collections
import pytest

from vae_jax import data
from vae_jax.data import checks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_cfg(tmp_path, **overrides):
  cfg = ml_collections.ConfigDict({
      'name': 'mnist', 'preprocess': 'grey', 'manual_dir': '', 'data_dir': str(tmp_path),
      'download': False, 'backend': 'memory', 'shuffle_buffer': 100, 'train_split': 'train',
      'eval_split': 'test'})
  cfg.update(overrides)
  return cfg


@pytest.mark.parametrize('field,value,valid', [
    ('preprocess', 'binarize', 'dynamic_binarize'),
    ('backend', 'streaming', 'stream'),
])
def test_unknown_setting_lists_valid_values(tmp_path, field, value, valid):
  with pytest.raises(ValueError, match=valid) as e:
    data.validate_data_config(data_cfg(tmp_path, **{field: value}))
  assert repr(value) in str(e.value)


def test_known_tuples():
  assert data.KNOWN_PREPROCESS == ('grey', 'dynamic_binarize', 'threshold', 'uint8')
  assert data.KNOWN_BACKENDS == ('memory', 'stream')


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
      'import sys, ml_collections\n'
      'from vae_jax import data\n'
      f'cfg = ml_collections.ConfigDict(dict(name="mnist", preprocess="grey", manual_dir="", '
      f'data_dir="{tmp_path}", download=False, backend="memory", shuffle_buffer=1, '
      'train_split="train", eval_split="test"))\n'
      'try:\n'
      '  data.check_available(cfg)\n'
      'except data.DatasetMissingError:\n'
      '  pass\n'
      'cfg.name = "sprites"\n'
      'data.check_available(cfg)\n'
      'assert "tensorflow" not in sys.modules, "tensorflow imported"\n')
  env = dict(os.environ, PYTHONPATH=ROOT)
  subprocess.run([sys.executable, '-c', code], check=True, env=env, cwd=ROOT)
