"""Datasets TFDS prepared as ArrayRecords (file_format='array_record'): the memory and grain back
ends read them as they read TFRecords (same arrays, same batches); stream refuses them clearly."""

import itertools
import os
import re
import shutil

import numpy as np
import pytest

from tests.test_data_checks import data_config
from vae_jax import cli, data
from vae_jax.data import datasets, records

NAME = 'sprites/small'  # 1175 + 130 16x16 renders with their factors: prepared in a second
BATCH = 64


@pytest.fixture(scope='module')
def data_dirs(tmp_path_factory):
  """sprites/small prepared by TFDS itself twice: as TFRecords (its default) and as ArrayRecords."""
  import tensorflow_datasets as tfds

  from vae_jax.data import sprites_builder  # noqa: F401  (registers 'sprites')

  dirs = {}
  for file_format in ('tfrecord', 'array_record'):
    dirs[file_format] = tmp_path_factory.mktemp(file_format)
    tfds.builder(NAME, data_dir=str(dirs[file_format])).download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False),
        file_format=file_format)
  return dirs


def cfg(data_dir, **overrides):
  return data_config(**{'name': NAME, 'data_dir': str(data_dir), 'train_split': 'train[:1000]',
                        'valid_split': 'train[1000:]', 'eval_split': 'test',
                        'preprocess': 'dynamic_binarize', **overrides})


def test_arrays_equal_the_tfrecord_preparation(data_dirs):
  tf_records = datasets.prepared_records(cfg(data_dirs['tfrecord']))
  prepared = datasets.prepared_records(cfg(data_dirs['array_record']))
  assert (tf_records.file_format, prepared.file_format) == ('tfrecord', 'array_record')
  assert all(f.endswith(f'-of-{len(fs):05d}') and '.array_record-' in os.path.basename(f)
             for fs, _ in prepared.splits.values() for f in fs)
  for split in ('train', 'test', 'train[900:1100]'):
    want, got = records.read_split(tf_records, split), records.read_split(prepared, split)
    assert sorted(got) == sorted(want) and 'shape' in got  # images, index and every factor
    for key in want:
      assert got[key].dtype == want[key].dtype, key
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_grain_and_memory_batches_equal_the_tfrecord_runs(data_dirs):
  def train(c):
    it = data.make_train_iterator(c, batch_size=BATCH, data_seed=3, start_step=14)
    return list(itertools.islice(it, 4))  # across the epoch boundary (15 steps an epoch)

  def evaluate(c):
    return list(data.eval_batches(c, 'train[1000:]', batch_size=BATCH))

  want_train = train(cfg(data_dirs['tfrecord'], backend='memory'))
  want_eval = evaluate(cfg(data_dirs['tfrecord'], backend='memory'))
  for backend in ('memory', 'grain'):
    c = cfg(data_dirs['array_record'], backend=backend)
    for got, want in ((train(c), want_train), (evaluate(c), want_eval)):
      assert len(got) == len(want)
      for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for key in w:
          np.testing.assert_array_equal(g[key], w[key], err_msg=f'{backend} {key}')


def test_stream_back_end_refuses_array_records_before_the_run_starts(data_dirs, capsys):
  c = cfg(data_dirs['array_record'], backend='stream')
  # What the scripts check first (before TensorFlow, a workdir or a compile): one paragraph,
  # exit status 2, what to use instead.
  with pytest.raises(SystemExit) as exit_:
    cli.run_reporting_user_errors(lambda: cli.check_data_available(c))
  err = capsys.readouterr().err
  assert exit_.value.code == 2 and 'Traceback' not in err
  assert re.search(r'stored as array_record records.*data\.backend=grain', err), err
  # And every later entry: what experiment.build reads, the iterator itself.
  with pytest.raises(records.RecordFormatError, match='stored as array_record'):
    data.dataset_info(c)
  with pytest.raises(records.RecordFormatError, match='stored as array_record'):
    next(iter(data.make_train_iterator(c, batch_size=BATCH, data_seed=3, start_step=0)))
  c = cfg(data_dirs['tfrecord'], backend='stream')
  cli.check_data_available(c)
  assert data.dataset_info(c).image_shape == (16, 16, 1)


@pytest.mark.parametrize('damage', ['truncated', 'flipped byte'])
def test_damaged_array_record_file_is_named(data_dirs, tmp_path, damage):
  prepared = datasets.prepared_records(cfg(data_dirs['array_record']))
  copy = tmp_path / 'copy'
  shutil.copytree(prepared.folder, copy)
  prepared = records.open_prepared(copy)
  (path,), _ = prepared.splits['train']
  with open(path, 'rb') as f:
    content = bytearray(f.read())
  if damage == 'truncated':
    content = content[:len(content) // 2]
  else:  # inside the first chunk after the file signature: its header or its data hash fails
    content[200] ^= 0x5A
  with open(path, 'wb') as f:
    f.write(bytes(content))
  with pytest.raises(records.CorruptRecordsError, match=f'{path}: .*delete that folder'):
    records.read_split(prepared, 'train')


def test_an_unwritable_copy_folder_advises_memory_only(data_dirs, tmp_path):
  folder = datasets.prepared_records(cfg(data_dirs['array_record'])).folder
  copy = tmp_path / 'tfds' / NAME / os.path.basename(folder)
  shutil.copytree(folder, copy, ignore=shutil.ignore_patterns('array_record'))
  (copy / 'array_record').write_text('')  # the grain copies' folder cannot be made
  c = cfg(tmp_path / 'tfds', backend='grain')
  with pytest.raises(data.DatasetMissingError,
                     match=rf'(?s)--data_dir={tmp_path / "tfds"} --array_record.*'
                           r'use data\.backend=memory\.$'):
    next(iter(data.make_train_iterator(c, batch_size=BATCH, data_seed=3, start_step=0)))
