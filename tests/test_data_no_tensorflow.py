"""A prepared dataset is read without TensorFlow: the same arrays as tf.data, clear errors."""

import json
import os
import re
import shutil
import subprocess
import sys
import zlib

import numpy as np
import pytest

from tests.test_config import ROOT
from tests.test_data_checks import data_config
from tests.test_data_offline import random_split, write_idx_set
from vae_jax import data
from vae_jax.data import formats

# Makes `import tensorflow` raise in the process that runs it, and says so on stderr (so an
# import that something catches is still seen). find_spec still answers, as where TensorFlow
# is installed: etils (TFDS, orbax) asks it whether TensorFlow is there before touching a path.
NO_TENSORFLOW = '''
import importlib.abc, importlib.machinery, sys

class _NoTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  def find_spec(self, name, path=None, target=None):
    if name == 'tensorflow' or name.startswith('tensorflow.'):
      return importlib.machinery.ModuleSpec(name, self)
    return None

  def create_module(self, spec):
    sys.stderr.write(f'BLOCKED import {spec.name}\\n')
    raise ImportError(f'{spec.name} is blocked in this test')

  def exec_module(self, module):
    pass

sys.meta_path.insert(0, _NoTensorFlow())
'''

SPRITES_SPLITS = ('train', 'test', 'train[90%:]', 'train[:90%]')
FASHION_SPLITS = ('train', 'test', 'train[-25:]', 'test[10:30]')


def run_without_tensorflow(code, *args, env=None, timeout=120):
  """Runs NO_TENSORFLOW + code (or a script, given as code=None and args) in a subprocess."""
  argv = [sys.executable, '-c', NO_TENSORFLOW + code] if code else [sys.executable, *args]
  env = dict(os.environ if env is None else env, PYTHONPATH=ROOT)
  proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
  assert 'BLOCKED import tensorflow' not in proc.stderr, proc.stderr[-3000:]
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.fixture(scope='module')
def sprites_cfg():
  """sprites/small, prepared in the session's TFDS_DATA_DIR (shared with subprocesses)."""
  cfg = data_config(name='sprites/small', data_dir='')
  data.prepare(cfg)
  return cfg


def varied_images(rng, n, shape):
  """uint8 [n, *shape]: half noise, half noisy gradients, so the PNG encoder uses every row
  filter (None, Sub, Up, Average, Paeth), and the decoder is checked on each."""
  images, _ = random_split(rng, n, shape)
  h, w = shape[:2]
  ramp = np.add.outer(np.arange(h) * rng.integers(1, 9, (n, 1)), np.arange(w))
  smooth = ramp[..., None] * (1 + np.arange(shape[-1] if len(shape) == 3 else 1))
  smooth = (smooth + rng.integers(0, 3, smooth.shape)).reshape((n,) + shape) % 256
  images[n // 2:] = smooth[n // 2:]
  return images


@pytest.fixture(scope='module')
def fashion_cfg(tmp_path_factory):
  """A tiny Fashion-MNIST (150 / 40 images) prepared offline from idx files."""
  root = tmp_path_factory.mktemp('fashion')
  rng = np.random.default_rng(1)
  manual = str(root / 'manual')
  write_idx_set(manual, {'train': (varied_images(rng, 150, (28, 28)), np.arange(150) % 10),
                         't10k': (varied_images(rng, 40, (28, 28)), np.arange(40) % 7)}, gz=False)
  data.prepare(data_config(name='fashion_mnist', data_dir=str(root / 'tfds'), manual_dir=manual))
  return data_config(name='fashion_mnist', data_dir=str(root / 'tfds'))


@pytest.fixture(scope='module')
def cifar_cfg(tmp_path_factory):
  """A tiny CIFAR-10 (40 / 12 RGB images, the filters' 3-byte pixels) prepared offline."""
  root = tmp_path_factory.mktemp('cifar')
  rng = np.random.default_rng(2)
  splits = {s: {'image': varied_images(rng, n, (32, 32, 3)), 'label': np.arange(n) % 10}
            for s, n in (('train', 40), ('test', 12))}
  (root / 'manual').mkdir()
  formats.write_cifar_python(str(root / 'manual' / 'cifar-10-python.tar.gz'), splits,
                             {'label': [f'class{i}' for i in range(10)]})
  data.prepare(data_config(name='cifar10', data_dir=str(root / 'tfds'),
                           manual_dir=str(root / 'manual')))
  return data_config(name='cifar10', data_dir=str(root / 'tfds'))


def tfds_arrays(cfg, split):
  """The split as TFDS's own tf.data reader gives it (read-only builder of the folder)."""
  import tensorflow_datasets as tfds

  from vae_jax.data import checks
  folder, = checks.prepared_dirs(cfg.name, cfg.data_dir)
  builder = tfds.builder_from_directory(folder)
  return builder, tfds.as_numpy(builder.as_dataset(split, batch_size=-1, shuffle_files=False))


def test_the_reader_gives_tf_data_arrays_without_tensorflow(sprites_cfg, fashion_cfg, cifar_cfg,
                                                           tmp_path):
  jobs = [(sprites_cfg, SPRITES_SPLITS), (fashion_cfg, FASHION_SPLITS),
          (cifar_cfg, ('train', 'test', 'train[5:17]'))]
  todo = [(c.name, c.data_dir, s) for c, s in jobs]
  code = ('import json, sys\nimport numpy as np\nfrom tests.test_data_checks import data_config\n'
          'from vae_jax import data\n'
          f'out = {str(tmp_path)!r}\n'
          f'for i, (name, data_dir, splits) in enumerate({todo!r}):\n'
          '  cfg = data_config(name=name, data_dir=data_dir)\n'
          '  info = data.dataset_info(cfg)\n'
          '  with open(f"{out}/info{i}.json", "w") as f:\n'
          '    json.dump([info.image_shape, info.num_examples, info.entropy_nats,\n'
          '               info.num_distinct], f)\n'
          '  for j, split in enumerate(splits):\n'
          '    np.savez(f"{out}/{i}_{j}.npz", **data.load_arrays(cfg, split))\n'
          'assert "tensorflow" not in sys.modules\n')
  run_without_tensorflow(code)
  for i, (cfg, splits) in enumerate(jobs):
    for j, split in enumerate(splits):
      builder, theirs = tfds_arrays(cfg, split)
      ours = dict(np.load(tmp_path / f'{i}_{j}.npz'))
      numeric = {k for k, v in theirs.items() if v.dtype != object}
      assert set(ours) == numeric | {'index'}, (cfg.name, split)
      for key in numeric:
        assert ours[key].dtype == theirs[key].dtype, (cfg.name, split, key)
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f'{cfg.name} {split} {key}')
      _, start, stop = data.DataInfo(cfg.name, (), {k: v.num_examples for k, v in
                                                   builder.info.splits.items()}).split_range(split)
      np.testing.assert_array_equal(ours['index'], np.arange(start, stop, dtype=np.int32))
      assert ours['index'].dtype == np.int32
    shape, sizes, entropy, distinct = json.loads((tmp_path / f'info{i}.json').read_text())
    info = builder.info
    assert tuple(shape) == info.features['image'].shape
    assert sizes == {k: v.num_examples for k, v in info.splits.items()}
    assert (entropy, distinct) == ((info.metadata or {}).get('entropy_nats'),
                                   (info.metadata or {}).get('num_distinct'))


@pytest.mark.slow
def test_train_and_evaluate_scripts_run_without_tensorflow(sprites_cfg, tmp_path):
  wrapper = tmp_path / 'no_tensorflow.py'
  wrapper.write_text(NO_TENSORFLOW + 'import runpy\nsys.argv = sys.argv[1:]\n'
                     "runpy.run_path(sys.argv[0], run_name='__main__')\n")
  # One device (the process boundary is the point; conftest's XLA settings are inherited).
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  workdir = str(tmp_path / 'run')
  flags = ['--config=configs/default.py', f'--workdir={workdir}',
           '--config.data.name=sprites/small', '--config.num_train_steps=2',
           '--config.steps_per_call=2', '--config.log_every_steps=2',
           '--config.eval_every_steps=2', '--config.checkpoint_every_steps=2',
           '--config.batch_size=8', '--config.eval_batch_size=32', '--config.model.hidden=(8,)',
           '--config.model.latent_dim=2', '--config.eval_num_samples=2', '--config.images.num=4',
           '--config.compilation_cache=', '--config.checkpoint.async_save=False']
  run_without_tensorflow(None, str(wrapper), 'scripts/train.py', *flags, env=env, timeout=300)
  proc = run_without_tensorflow(None, str(wrapper), 'scripts/evaluate.py', f'--workdir={workdir}',
                                '--num_samples=2', env=env, timeout=300)
  last = json.loads(proc.stdout.strip().splitlines()[-1])
  assert last['split'] == 'test' and last['num_examples'] == 130 and np.isfinite(last['nll'])


@pytest.fixture
def copied_sprites(sprites_cfg, tmp_path):
  """A private copy of the prepared sprites/small: (config, path of its train shard)."""
  from vae_jax.data import checks
  folder, = checks.prepared_dirs(sprites_cfg.name, sprites_cfg.data_dir)
  copy = tmp_path / 'sprites' / 'small' / os.path.basename(folder)
  shutil.copytree(folder, copy)
  shard, = [str(copy / f) for f in os.listdir(copy) if '-train.tfrecord' in f]
  return data_config(name='sprites/small', data_dir=str(tmp_path)), shard


def _patch(path, offset, new):
  with open(path, 'r+b') as f:
    f.seek(offset)
    f.write(new)


def _record_offset(path, k):
  """Byte offset of record k (uint64 length, 4-byte length crc, data, 4-byte data crc)."""
  offset = 0
  with open(path, 'rb') as f:
    for _ in range(k):
      f.seek(offset)
      offset += 16 + int.from_bytes(f.read(8), 'little')
  return offset


def test_a_truncated_shard_is_an_error_naming_the_file(copied_sprites):
  cfg, shard = copied_sprites
  with open(shard, 'r+b') as f:
    f.truncate(os.path.getsize(shard) - 10)
  with pytest.raises(data.DatasetMissingError,
                     match=rf'{re.escape(shard)}: truncated at record 1174'):
    data.load_arrays(cfg, 'train')


@pytest.mark.parametrize('where', ['data', 'length'])
def test_a_corrupt_record_is_an_error_naming_the_file(copied_sprites, where):
  cfg, shard = copied_sprites
  offset = _record_offset(shard, 5)
  if where == 'data':
    with open(shard, 'rb') as f:
      f.seek(offset + 40)
      byte = f.read(1)[0]
    _patch(shard, offset + 40, bytes([byte ^ 0x10]))
  else:  # a length that still fits in the file: only its checksum tells
    with open(shard, 'rb') as f:
      f.seek(offset)
      length = int.from_bytes(f.read(8), 'little')
    _patch(shard, offset, (length - 4).to_bytes(8, 'little'))
  with pytest.raises(data.DatasetMissingError,
                     match=rf'{re.escape(shard)}: record 5 .*the {where} checksum.*prepare'):
    data.load_arrays(cfg, 'train')


def test_the_tensorboard_writers_run_without_tensorflow(tmp_path):
  """The metric writer (train.py) and the analysis images (analyze.py) write TensorBoard
  events through tensorboard's own file layer: tensorboard imports TensorFlow where it can."""
  from PIL import Image
  Image.new('L', (4, 4)).save(tmp_path / 'x.png')
  code = ('from vae_jax.analysis import page\nfrom vae_jax.storage import writers\n'
          f'writer = writers.MetricWriter({str(tmp_path)!r})\n'
          "writer.write(1, 'train', {'loss': 1.0})\nwriter.close()\n"
          f"page.write_tensorboard_images({str(tmp_path / 'tb')!r}, 1, "
          f"{{'x': {str(tmp_path / 'x.png')!r}}})\n"
          "assert 'tensorflow' not in sys.modules\n")
  run_without_tensorflow(code)
  assert os.listdir(tmp_path / 'tensorboard') and os.listdir(tmp_path / 'tb')


def _two_idat_chunks(png):
  """The same PNG with its image data split over two IDAT chunks."""
  pos = 33  # past the signature and IHDR
  length = int.from_bytes(png[pos:pos + 4], 'big')
  assert png[pos + 4:pos + 8] == b'IDAT'
  body = png[pos + 8:pos + 8 + length]
  chunks = b''.join(len(part).to_bytes(4, 'big') + b'IDAT' + part +
                    zlib.crc32(b'IDAT' + part).to_bytes(4, 'big')
                    for part in (body[:length // 2], body[length // 2:]))
  return png[:pos] + chunks + png[pos + 12 + length:]


def test_images_outside_the_png_fast_path_decode_as_tensorflow_does(copied_sprites, monkeypatch):
  """JPEGs and RGB PNGs of a 1-channel feature go to TensorFlow's decoder, PNGs in two IDAT
  chunks stay on the fast path: all pixel for pixel what TFDS's tf.data reader gives."""
  import tensorflow as tf
  from tensorflow_datasets.proto import tf_example_pb2

  from vae_jax.data import records
  cfg, shard = copied_sprites
  test_shard = shard.replace('-train.', '-test.')
  examples = [tf_example_pb2.Example.FromString(r)
              for r in tf.data.TFRecordDataset(test_shard).as_numpy_iterator()]
  for i, example in enumerate(examples[:30]):
    value = example.features.feature['image'].bytes_list.value
    pixels = tf.io.decode_png(value[0])
    value[0] = (tf.io.encode_jpeg(pixels).numpy() if i < 10 else
                tf.io.encode_png(tf.image.grayscale_to_rgb(pixels)).numpy() if i < 20 else
                _two_idat_chunks(value[0]))
  with tf.io.TFRecordWriter(test_shard) as writer:
    for example in examples:
      writer.write(example.SerializeToString())
  sent = []
  decode = records._decode_with_tensorflow
  monkeypatch.setattr(records, '_decode_with_tensorflow',
                      lambda encoded, shape: sent.append(len(encoded)) or decode(encoded, shape))
  ours = data.load_arrays(cfg, 'test')
  assert sent == [20]
  _, theirs = tfds_arrays(cfg, 'test')
  for key in theirs:
    np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
