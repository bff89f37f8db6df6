"""Own images and arrays (data.name='folder:DIR', 'npz:FILE'): preparation, exact read-back,
freshness, bad input as one paragraph with exit status 2, and end-to-end runs of the scripts."""

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.test_config import ROOT
from tests.test_data_checks import data_config
from vae_jax import data
from vae_jax.data import checks, datasets, own_data

CLASSES = ('cat', 'dog', 'owl')


def _save(path, pixels, mode=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img = Image.fromarray(pixels)
  if mode == 'P':
    img = img.quantize(colors=16)
  elif mode == '1':
    img = img.convert('1')
  img.save(path)


def _pixels(path, mode):
  """What the file holds, decoded by Pillow in the mode stored: the expected read-back."""
  with Image.open(path) as im:
    out = np.asarray(im.convert(mode))
  return out.reshape(out.shape[:2] + (-1,))


def make_folder(root, *, counts=(('train', 12), ('test', 3), ('validation', 3)), shape=(8, 8, 3),
                classes=CLASSES, seed=0):
  """Random images in root/<split>/<class>/ (or root/<split>/ without classes).

  Among the RGB ones a palette (P) PNG and a JPEG; among grey ones a 1-bit PNG; a hidden file
  in train/. Returns {split: {path relative to root: (class or None, expected uint8 [H, W, C])}}.
  """
  rng = np.random.default_rng(seed)
  h, w, c = shape
  mode = 'RGB' if c == 3 else 'L'
  out = {}
  for split, per_class in counts:
    out[split] = {}
    for label in classes or (None,):
      for i in range(per_class):
        pixels = rng.integers(0, 256, (h, w, c) if c == 3 else (h, w), dtype=np.uint8)
        ext, file_mode = '.png', None
        if i == 1:
          ext, file_mode = ('.png', 'P') if c == 3 else ('.png', '1')
        elif i == 2 and c == 3:
          ext = '.jpg'
        rel = os.path.join(split, *([label] if label else []), f'img{i:03d}{ext}')
        _save(os.path.join(root, rel), pixels, file_mode)
        out[split][rel] = (label, _pixels(os.path.join(root, rel), mode))
  with open(os.path.join(root, 'train', '.DS_Store'), 'wb') as f:
    f.write(b'not an image')
  return out


def make_npz(path, *, sizes=(('train', 30), ('test', 6), ('validation', 6)), shape=(8, 8, 3),
             labels=True, seed=0, **extra):
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, n in sizes:
    arrays[split] = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    if labels:
      arrays[f'{split}_labels'] = rng.integers(0, 4, n)
  arrays.update(extra)
  np.savez(path, **arrays)
  return arrays


def own_cfg(name, tmp_path, **overrides):
  return data_config(name=name, data_dir=str(tmp_path / 'tfds'), **overrides)


def prepared_folder(cfg):
  folder, = checks.prepared_dirs(cfg.name, cfg.data_dir)
  return folder


# -- preparing and reading back -----------------------------------------------------------------


def test_folder_with_classes_reads_back_every_pixel_and_label(tmp_path):
  root = tmp_path / 'my images'
  expected = make_folder(root)
  cfg = own_cfg(f'folder:{root}', tmp_path)
  data.check_available(cfg)
  builder, how = datasets.ensure_prepared(cfg)
  assert how == 'from-folder'
  folder = prepared_folder(cfg)
  assert os.path.basename(os.path.dirname(folder)).startswith('folder_my_images_')
  assert list(builder.info.features['label'].names) == list(CLASSES)
  info = data.dataset_info(cfg)
  assert info.image_shape == (8, 8, 3)
  assert info.num_examples == {'train': 36, 'test': 9, 'validation': 9}
  order = own_data.read_provenance(folder)['split_files']
  for split, files in expected.items():
    arrays = data.load_arrays(cfg, split)
    assert sorted(order[split]) == sorted(files)  # every file once, nothing else
    np.testing.assert_array_equal(arrays['image'], np.stack([files[f][1] for f in order[split]]))
    np.testing.assert_array_equal(arrays['label'],
                                  [CLASSES.index(files[f][0]) for f in order[split]])
  # The stored order mixes the classes, so a held-out slice of train holds every class.
  assert set(data.load_arrays(cfg, 'train[75%:]')['label']) == {0, 1, 2}
  assert datasets.ensure_prepared(cfg)[1] == 'prepared'


def test_folder_without_classes_has_no_label_and_grey_images_one_channel(tmp_path):
  root = tmp_path / 'grey'
  expected = make_folder(root, counts=(('train', 10), ('test', 4)), shape=(12, 12, 1),
                         classes=())
  cfg = own_cfg(f'folder:{root}', tmp_path)
  datasets.ensure_prepared(cfg)
  order = own_data.read_provenance(prepared_folder(cfg))['split_files']
  for split, files in expected.items():
    arrays = data.load_arrays(cfg, split)
    assert set(arrays) == {'image', 'index'}
    # The 1-bit image comes back as 0/255 grey, the others exactly.
    np.testing.assert_array_equal(arrays['image'], np.stack([files[f][1] for f in order[split]]))
  assert data.dataset_info(cfg).image_shape == (12, 12, 1)


def test_npz_reads_back_every_row_in_order_with_its_label(tmp_path):
  arrays = make_npz(tmp_path / 'arrays.npz')
  cfg = own_cfg(f'npz:{tmp_path}/arrays.npz', tmp_path)
  assert datasets.ensure_prepared(cfg)[1] == 'from-npz'
  assert data.dataset_info(cfg).num_examples == {'train': 30, 'test': 6, 'validation': 6}
  for split in ('train', 'test', 'validation'):
    got = data.load_arrays(cfg, split)
    np.testing.assert_array_equal(got['image'], arrays[split])
    np.testing.assert_array_equal(got['label'], arrays[f'{split}_labels'])
  sliced = data.load_arrays(cfg, 'train[90%:]')  # a slice is a range of rows
  np.testing.assert_array_equal(sliced['image'], arrays['train'][27:])
  np.testing.assert_array_equal(sliced['index'], np.arange(27, 30))
  # The stream back end (tf.data) reads the same rows.
  cfg.backend = 'stream'
  batches = list(data.eval_batches(cfg, 'train[80%:]', batch_size=4))
  mask = np.concatenate([b['mask'] for b in batches])
  np.testing.assert_array_equal(np.concatenate([b['image'] for b in batches])[mask],
                                arrays['train'][24:])
  np.testing.assert_array_equal(np.concatenate([b['index'] for b in batches])[mask],
                                np.arange(24, 30))
  # [N, H, W] without labels: one channel, no label feature.
  grey = make_npz(tmp_path / 'grey.npz', sizes=(('train', 5), ('test', 2)), shape=(6, 7),
                  labels=False)
  cfg = own_cfg(f'npz:{tmp_path}/grey.npz', tmp_path)
  got = data.load_arrays(cfg, 'train')
  assert set(got) == {'image', 'index'}
  np.testing.assert_array_equal(got['image'], grey['train'][..., None])


def test_prepared_name_is_stable_per_source_and_distinct_between_sources(tmp_path):
  (tmp_path / 'a' / 'images').mkdir(parents=True)
  (tmp_path / 'b' / 'images').mkdir(parents=True)
  os.symlink(tmp_path / 'a' / 'images', tmp_path / 'link')
  name = checks.split_name(f'folder:{tmp_path}/a/images')[0]
  assert name.startswith('folder_images_')
  assert checks.split_name(f'folder:{tmp_path}/a/images/')[0] == name
  assert checks.split_name(f'folder:{tmp_path}/link')[0] == name  # one folder, one copy
  assert checks.split_name(f'folder:{tmp_path}/b/images')[0] != name
  # Paths with ':' and '/' are never read as 'name/config:version'.
  assert checks.split_name('npz:/x/y:z/data.npz') == (
      checks.split_name('npz:/x/y:z/data.npz')[0], None, None)
  assert checks.split_name('npz:/x/y:z/data.npz')[0].startswith('npz_data_')
  assert checks.canonical_name('npz:rel.npz') == 'npz:rel.npz'


# -- a changed source ---------------------------------------------------------------------------


def test_changed_folder_is_never_read_stale(tmp_path):
  root = tmp_path / 'imgs'
  make_folder(root, counts=(('train', 4), ('test', 2)))
  cfg = own_cfg(f'folder:{root}', tmp_path)
  datasets.ensure_prepared(cfg)
  new = np.full((8, 8, 3), 7, np.uint8)
  _save(str(root / 'train' / 'dog' / 'new.png'), new)
  for read in (data.check_available, data.dataset_info, lambda c: data.load_arrays(c, 'train')):
    with pytest.raises(own_data.StaleSourceError) as e:
      read(cfg)
  message = str(e.value)
  assert '1 file(s) added (train/dog/new.png)' in message
  assert f'python scripts/prepare_data.py --dataset=folder:{root}' in message
  # A file rewritten in place is a change too.
  os.remove(root / 'train' / 'dog' / 'new.png')
  data.check_available(cfg)  # the same files again: fresh
  _save(str(root / 'test' / 'cat' / 'img000.png'), new)
  with pytest.raises(own_data.StaleSourceError, match='changed size or modification time'):
    data.check_available(cfg)
  # Prepared again (what scripts/prepare_data.py does), the copy holds the new pixels.
  assert datasets.ensure_prepared(cfg, refresh=True)[1] == 'replaced-from-folder'
  images = data.load_arrays(cfg, 'test')['image']
  assert sum(np.array_equal(image, new) for image in images) == 1
  # A copy whose source is gone is all there is: still read (old runs stay evaluable).
  os.rename(root, tmp_path / 'moved')
  np.testing.assert_array_equal(data.load_arrays(cfg, 'test')['image'], images)


def test_changed_npz_is_never_read_stale_and_touched_one_is_fresh(tmp_path):
  path = tmp_path / 'arrays.npz'
  make_npz(path, labels=False)
  cfg = own_cfg(f'npz:{path}', tmp_path)
  datasets.ensure_prepared(cfg)
  os.utime(path, ns=(1, 1))  # the same content, another modification time
  data.check_available(cfg)
  arrays = make_npz(path, labels=False, seed=1)
  with pytest.raises(own_data.StaleSourceError, match='its content differs'):
    data.load_arrays(cfg, 'train')
  assert datasets.ensure_prepared(cfg, refresh=True)[1] == 'replaced-from-npz'
  np.testing.assert_array_equal(data.load_arrays(cfg, 'train')['image'], arrays['train'])


# -- bad input ----------------------------------------------------------------------------------


def _bad_folder(root, case):
  make_folder(root, counts=(('train', 2), ('test', 1)), shape=(8, 8, 1), classes=())
  grey = np.zeros((8, 8), np.uint8)
  if case == 'size':
    _save(str(root / 'test' / 'wide.png'), np.zeros((8, 12), np.uint8))
  elif case == 'mode':
    _save(str(root / 'test' / 'colour.png'), np.zeros((8, 8, 3), np.uint8))
  elif case == 'alpha':
    _save(str(root / 'test' / 'alpha.png'), np.zeros((8, 8, 4), np.uint8))
  elif case == 'empty':
    for f in os.listdir(root / 'test'):
      os.remove(root / 'test' / f)
  elif case in ('no_train', 'no_test'):
    split = case[3:]
    for f in os.listdir(root / split):
      os.remove(root / split / f)
    os.rmdir(root / split)
  elif case == 'mixed_layout':
    _save(str(root / 'test' / 'cat' / 'a.png'), grey)
  elif case == 'not_image':
    (root / 'train' / 'notes.txt').write_text('hello')


@pytest.mark.parametrize('case, expected', [
    ('size', ['differ in size', 'train/img000.png is 8x8', 'test/wide.png is 12x8',
              'width x height']),
    ('mode', ['differ in mode', 'train/img000.png is L', 'test/colour.png is RGB']),
    ('alpha', ['alpha.png has mode RGBA', 'alpha channel', "convert('RGB')"]),
    ('empty', ['the test split is empty']),
    ('no_train', ['has no train/ folder']),
    ('no_test', ['has no test/ folder']),
    ('mixed_layout', ['both image files', 'folders (cat)']),
    ('not_image', ['notes.txt is not an image Pillow can read']),
])
def test_bad_folder_is_one_paragraph_naming_the_files(tmp_path, case, expected):
  root = tmp_path / 'bad'
  _bad_folder(root, case)
  cfg = own_cfg(f'folder:{root}', tmp_path)
  with pytest.raises(own_data.SourceError) as e:
    data.check_available(cfg)
  message = str(e.value)
  assert isinstance(e.value, data.DatasetMissingError)  # a user error: exit status 2
  assert '\n' not in message and message.startswith(f'folder:{root}: ')
  for part in expected:
    assert part in message, message
  assert not os.path.exists(tmp_path / 'tfds')  # nothing prepared


@pytest.mark.parametrize('arrays, expected', [
    ({'train': np.zeros((3, 8, 8), np.float32)},
     ["array 'train' has dtype float32 and shape (3, 8, 8)", 'expected uint8']),
    ({'train': np.zeros((3, 64), np.uint8)},
     ["array 'train' has dtype uint8 and shape (3, 64)", '[N, H, W] or [N, H, W, C]']),
    ({'train': np.zeros((3, 8, 8, 2), np.uint8)}, ['shape (3, 8, 8, 2)', 'C 1 or 3']),
    ({'train': np.zeros((0, 8, 8), np.uint8)}, ['the train split is empty']),
    ({'train_labels': np.zeros(2, np.int64)},
     ["array 'train_labels' has dtype int64 and shape (2,)", 'shape (3,)']),
    ({'train_labels': np.zeros(3, np.float32)}, ["'train_labels' has dtype float32"]),
    ({'test': None}, ["has no array 'test'"]),
    ({'x_train': np.zeros((3, 8, 8), np.uint8)}, ['x_train of no known name']),
    ({'validation': np.zeros((3, 9, 8), np.uint8)}, ['differ in image shape']),
])
def test_bad_npz_is_one_paragraph_naming_the_array(tmp_path, arrays, expected):
  content = {'train': np.zeros((3, 8, 8), np.uint8), 'test': np.zeros((2, 8, 8), np.uint8)}
  if 'train_labels' in arrays:
    content['test_labels'] = np.zeros(2, np.int64)
  content.update(arrays)
  path = tmp_path / 'bad.npz'
  np.savez(path, **{k: v for k, v in content.items() if v is not None})
  with pytest.raises(own_data.SourceError) as e:
    data.check_available(own_cfg(f'npz:{path}', tmp_path))
  message = str(e.value)
  assert '\n' not in message and message.startswith(f'npz:{path}: ')
  for part in expected:
    assert part in message, message
  assert not os.path.exists(tmp_path / 'tfds')


def test_bad_source_stops_train_with_status_2_before_anything_compiles(tmp_path):
  root = tmp_path / 'bad'
  _bad_folder(root, 'size')
  workdir = tmp_path / 'run'
  env = {**os.environ, 'JAX_LOG_COMPILES': '1',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}
  proc = subprocess.run(
      [sys.executable, 'scripts/train.py', '--config=configs/default.py', f'--workdir={workdir}',
       f'--config.data.name=folder:{root}', f'--config.data.data_dir={tmp_path}/tfds'],
      cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1 and 'differ in size' in errors[0] and 'wide.png' in errors[0]
  assert 'Traceback' not in proc.stderr and 'Compiling' not in proc.stderr
  assert not os.path.exists(workdir / 'checkpoints')


# -- end to end: train, evaluate, analyze -------------------------------------------------------

TINY = ['--config=configs/default.py', '--config.num_train_steps=4', '--config.steps_per_call=2',
        '--config.log_every_steps=2', '--config.eval_every_steps=2',
        '--config.checkpoint_every_steps=2', '--config.batch_size=8',
        '--config.eval_batch_size=32', '--config.model.hidden=(8,)',
        '--config.model.latent_dim=2', '--config.eval_num_samples=2', '--config.images.num=4',
        '--config.mesh.data=1', '--config.compilation_cache=',
        '--config.checkpoint.async_save=False']


def _run(script, *args):
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}
  proc = subprocess.run([sys.executable, f'scripts/{script}', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _evaluate_and_analyze(workdir, num_test):
  report = _run('evaluate.py', f'--workdir={workdir}', '--num_samples=100')
  assert report['split'] == 'test' and report['num_examples'] == num_test
  assert np.isfinite(report['nll']) and 'selected' in report
  summary = _run('analyze.py', f'--workdir={workdir}', '--notensorboard')
  assert os.path.exists(summary['index_html']) and np.isfinite(summary['neg_elbo'])


def _readme_train_args(root, workdir):
  """The arguments of the README's train command on own images, for root and workdir."""
  with open(os.path.join(ROOT, 'README.md')) as f:
    section = f.read().split('## Training on your own images')[1].split('\n## ')[0]
  block = section.split('```bash\n')[1].split('```')[0].replace('\\\n', ' ')
  train, = [line for line in block.splitlines() if line.startswith('python scripts/train.py')]
  train = train.replace('/data/faces', str(root)).replace('/tmp/faces', str(workdir))
  return shlex.split(train)[2:]


@pytest.mark.slow
def test_folder_trains_evaluates_and_analyzes_end_to_end(tmp_path):
  """The README's command (made tiny): training prepares the folder at start and selects on
  its validation folder."""
  root = tmp_path / 'imgs'
  make_folder(root, counts=(('train', 8), ('test', 3), ('validation', 2)))
  workdir = tmp_path / 'run'
  args = _readme_train_args(root, workdir)
  assert f'--config.data.name=folder:{root}' in args
  result = _run('train.py', *args, *TINY[1:], f'--config.data.data_dir={tmp_path}/tfds')
  assert result['step'] == 4 and np.isfinite(result['neg_elbo'])
  assert result['valid']['num_examples'] == 6
  _evaluate_and_analyze(workdir, 9)


@pytest.mark.slow
def test_npz_prepares_trains_evaluates_and_analyzes_end_to_end(tmp_path):
  """scripts/prepare_data.py replaces a stale copy; then training on binarized rows."""
  path = tmp_path / 'arrays.npz'
  make_npz(path, labels=False, seed=1)
  cfg = own_cfg(f'npz:{path}', tmp_path)
  datasets.ensure_prepared(cfg)
  make_npz(path, sizes=(('train', 40), ('test', 10)))
  prepared = _run('prepare_data.py', f'--dataset=npz:{path}', f'--data_dir={tmp_path}/tfds')
  assert prepared['how'] == 'replaced-from-npz' and prepared['provenance'] == 'own-npz'
  assert prepared['splits'] == {'train': 40, 'test': 10}
  workdir = tmp_path / 'run'
  result = _run('train.py', *TINY, f'--workdir={workdir}', f'--config.data.name=npz:{path}',
                f'--config.data.data_dir={tmp_path}/tfds',
                '--config.data.preprocess=dynamic_binarize')
  assert result['step'] == 4 and result['valid']['num_examples'] == 4
  _evaluate_and_analyze(workdir, 10)
