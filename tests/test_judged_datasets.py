"""The judged datasets (downsampled_imagenet/32x32 and /64x64, celeb_a_64): prepared from stand-ins
of their original files (tars of PNGs; a zip of 178x218 JPEGs and its partition list) written
here in the same formats, through the code the real files go through; every pixel checked; each
config's data path trained two steps on the grain back end."""

import hashlib
import io
import os
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.test_config import ROOT, load_config
from tests.test_data_checks import data_config
from tests.test_train import set_fields
from vae_jax.data import checks, datasets, offline

# Images per split of the stand-ins: a handful, enough for batches of 4.
IMAGENET_SIZES = {'train': 10, 'valid': 4}
CELEBA_PARTITION = {'train': 8, 'validation': 2, 'test': 2}
IMAGENET_SPLITS = {'train': 'train', 'valid': 'validation'}
# NVAE's CelebA 64 box (datasets.py, CropCelebA64), written out here, not taken from the code.
NVAE_BOX = (15, 40, 178 - 15, 218 - 30)


def _png(pixels, mode=None):
  buf = io.BytesIO()
  image = Image.fromarray(pixels)
  if mode == 'P':  # a palette PNG: the same colours through an adaptive palette
    image = image.convert('P', palette=Image.Palette.ADAPTIVE, colors=16)
  image.save(buf, format='PNG')
  return buf.getvalue()


def write_imagenet_tars(folder, size, seed):
  """train_{R}x{R}.tar and valid_{R}x{R}.tar as image-net.org/small has them: uncompressed, one
  folder of PNGs each (one grey and one palette PNG among the RGB ones).

  Returns:
    {split: {file name: the RGB pixels it decodes to, uint8 [R, R, 3]}}.
  """
  rng = np.random.default_rng(seed)
  out = {}
  for prefix, n in IMAGENET_SIZES.items():
    folder_name = f'{prefix}_{size}x{size}'
    pixels = {}
    with tarfile.open(os.path.join(folder, f'{folder_name}.tar'), 'w') as tar:
      entry = tarfile.TarInfo(folder_name)
      entry.type = tarfile.DIRTYPE
      tar.addfile(entry)
      for i in range(n):
        name = f'{i + 1}.png'
        if i == 1:  # grey: made RGB by repeating the value
          grey = rng.integers(0, 256, (size, size), dtype=np.uint8)
          data, rgb = _png(grey), np.repeat(grey[..., None], 3, axis=-1)
        elif i == 2:  # palette: made RGB by the palette's colours
          data = _png(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode='P')
          rgb = np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))
        else:
          rgb = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
          data = _png(rgb)
        info = tarfile.TarInfo(f'{folder_name}/{name}')
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        pixels[name] = rgb
    out[IMAGENET_SPLITS[prefix]] = pixels
  return out


def celeba_face(rng):
  """A 178x218 RGB image: mid-grey inside NVAE's crop box, black outside, plus mild noise."""
  image = np.zeros((218, 178, 3), np.uint8)
  left, top, right, bottom = NVAE_BOX
  image[top:bottom, left:right] = 128
  return np.clip(image + rng.integers(0, 8, image.shape), 0, 255).astype(np.uint8)


def write_celeba_files(folder, seed):
  """img_align_celeba.zip (img_align_celeba/000001.jpg, ...) and list_eval_partition.txt as
  CelebA has them, plus one image the list leaves out.

  Returns:
    {split: {file name: its JPEG bytes}}.
  """
  rng = np.random.default_rng(seed)
  out, lines, number = {}, [], 0
  with zipfile.ZipFile(os.path.join(folder, 'img_align_celeba.zip'), 'w') as z:
    for split, n in CELEBA_PARTITION.items():
      out[split] = {}
      for _ in range(n):
        number += 1
        name = f'{number:06d}.jpg'
        buf = io.BytesIO()
        Image.fromarray(celeba_face(rng)).save(buf, format='JPEG', quality=95)
        z.writestr(f'img_align_celeba/{name}', buf.getvalue())
        out[split][name] = buf.getvalue()
        lines.append(f'{name} {"0 1 2".split()[list(CELEBA_PARTITION).index(split)]}\n')
    z.writestr(f'img_align_celeba/{number + 1:06d}.jpg', out['train']['000001.jpg'])
  with open(os.path.join(folder, 'list_eval_partition.txt'), 'w') as f:
    f.writelines(lines)
  return out


def in_stored_order(by_name):
  """Values of {file name: value} in the stored order: sorted by the name's sha256."""
  return [by_name[n] for n in sorted(by_name, key=lambda n: hashlib.sha256(n.encode()).digest())]


def nvae_celeba_64(jpeg):
  """NVAE's CelebA 64 transform, written out with Pillow: crop NVAE_BOX, resize to 64x64."""
  image = Image.open(io.BytesIO(jpeg)).convert('RGB')
  return np.asarray(image.crop(NVAE_BOX).resize((64, 64), Image.Resampling.BILINEAR))


def cfg(name, root, **overrides):
  return data_config(name=name, data_dir=str(root / 'tfds'), backend='grain', preprocess='uint8',
                     **overrides)


@pytest.fixture(scope='module')
def judged(tmp_path_factory):
  """The three datasets prepared from their stand-ins in one data_dir, as
  scripts/prepare_data.py --manual_dir does (datasets.ensure_prepared)."""
  root = tmp_path_factory.mktemp('judged')
  expected, how = {}, {}
  for name, write in (
      ('downsampled_imagenet/32x32', lambda d: write_imagenet_tars(d, 32, 0)),
      ('downsampled_imagenet/64x64', lambda d: write_imagenet_tars(d, 64, 1)),
      ('celeb_a_64', lambda d: write_celeba_files(d, 2))):
    manual = root / name.replace('/', '_')
    manual.mkdir()
    expected[name] = write(str(manual))
    how[name] = datasets.ensure_prepared(cfg(name, root, manual_dir=str(manual)),
                                         refresh=True)[1]
  return root, expected, how


@pytest.mark.parametrize('size', [32, 64])
def test_imagenet_is_every_png_pixel_in_the_stored_order(judged, size):
  root, expected, how = judged
  name = f'downsampled_imagenet/{size}x{size}'
  c = cfg(name, root)
  assert how[name] == 'decoded-archives'
  info = datasets.dataset_info(c)
  assert info.image_shape == (size, size, 3)
  assert info.num_examples == {'train': 10, 'validation': 4}
  folder = checks.prepared_dirs(name, c.data_dir)[0]
  assert folder.endswith(f'downsampled_imagenet/{size}x{size}/2.0.0')
  record = offline.read_provenance(folder)
  assert record['method'] == 'decoded-archives' and not record['matches_registered_checksums']
  for split in ('train', 'validation'):
    got = datasets.load_arrays(c, split)['image']
    np.testing.assert_array_equal(got, np.stack(in_stored_order(expected[name][split])))


def test_celeba_64_is_nvaes_crop_and_resize_of_each_listed_jpeg(judged):
  root, expected, how = judged
  c = cfg('celeb_a_64', root)
  assert how['celeb_a_64'] == 'decoded-archives'
  info = datasets.dataset_info(c)
  assert info.image_shape == (64, 64, 3)
  assert info.num_examples == CELEBA_PARTITION  # the unlisted image is left out
  record = offline.read_provenance(checks.prepared_dirs('celeb_a_64', c.data_dir)[0])
  assert record['unlisted_images_skipped'] == 1
  for split in CELEBA_PARTITION:
    got = datasets.load_arrays(c, split)['image']
    want = [nvae_celeba_64(jpeg) for jpeg in in_stored_order(expected['celeb_a_64'][split])]
    np.testing.assert_array_equal(got, np.stack(want))
    # The box, told apart from others: its grey (128..135 before JPEG) reaches every edge of
    # the 64x64 result; a box a few pixels off would bring the black border into an edge.
    for edge in (got[:, 0], got[:, -1], got[:, :, 0], got[:, :, -1]):
      assert edge.mean() > 110, split


def test_missing_files_and_downloads_are_one_paragraph_naming_the_files(tmp_path):
  c = cfg('celeb_a_64', tmp_path, download=True)
  with pytest.raises(checks.DatasetMissingError, match='prepared only from its original') as e:
    checks.check_available(c)
  assert 'img_align_celeba.zip and list_eval_partition.txt' in str(e.value)
  assert 'scripts/prepare_data.py --dataset=celeb_a_64 --manual_dir=DIR' in str(e.value)
  (tmp_path / 'train_32x32.tar').write_bytes(b'')
  c = cfg('downsampled_imagenet/32x32', tmp_path, manual_dir=str(tmp_path))
  with pytest.raises(checks.DatasetMissingError, match='lacks valid_32x32.tar'):
    checks.check_available(c)
  with pytest.raises(ValueError, match='downsampled_imagenet/64x64'):
    checks.validate_data_config(cfg('downsampled_imagenet/128x128', tmp_path))


def _tar(path, members, mode='w'):
  with tarfile.open(path, mode) as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize('case, match', [
    ('wrong_size', r'train_32x32/7.png is 33x33, not 32x32: this is not the 32x32 set'),
    ('compressed', r'train_32x32.tar is not an uncompressed tar'),
    ('not_png', r'holds files that are not PNG images'),
])
def test_bad_archive_is_one_paragraph_naming_the_file(tmp_path, case, match):
  rgb = lambda n: _png(np.zeros((n, n, 3), np.uint8))
  train = {f'train_32x32/{i}.png': rgb(32) for i in range(3)}
  if case == 'wrong_size':
    train['train_32x32/7.png'] = rgb(33)
  if case == 'not_png':
    train['train_32x32/notes.txt'] = b'x'
  _tar(tmp_path / 'train_32x32.tar', train, 'w:gz' if case == 'compressed' else 'w')
  _tar(tmp_path / 'valid_32x32.tar', {'valid_32x32/1.png': rgb(32)})
  c = cfg('downsampled_imagenet/32x32', tmp_path, manual_dir=str(tmp_path))
  with pytest.raises(checks.DatasetMissingError, match=match):
    datasets.ensure_prepared(c)
  assert not checks.prepared_dirs(c.name, c.data_dir)


def test_celeba_image_the_list_names_but_the_zip_lacks_is_named(tmp_path):
  with zipfile.ZipFile(tmp_path / 'img_align_celeba.zip', 'w') as z:
    z.writestr('img_align_celeba/000001.jpg', b'')
  (tmp_path / 'list_eval_partition.txt').write_text('000001.jpg 0\n000002.jpg 1\n')
  c = cfg('celeb_a_64', tmp_path, manual_dir=str(tmp_path))
  with pytest.raises(checks.DatasetMissingError, match=r"lacks 1 of the 2 images .*'000002.jpg'"):
    datasets.ensure_prepared(c)
  assert not checks.prepared_dirs(c.name, c.data_dir)


TINY = {'batch_size': 4, 'eval_batch_size': 4, 'num_train_steps': 2, 'steps_per_call': 2,
        'log_every_steps': 2, 'eval_every_steps': 2, 'checkpoint_every_steps': 2,
        'optim.warmup_steps': 1, 'objective.kl_warmup_steps': 2, 'model.conv_blocks': 1,
        'model.latent_dim': 2, 'model.logistic_mixtures': 2, 'images.num': 4, 'mesh.data': 1,
        'compilation_cache': '', 'checkpoint.async_save': False}


@pytest.mark.parametrize('config_name, resolutions', [
    ('imagenet32', [4] * 4 + [8] * 4 + [16] * 2),
    ('imagenet64', [4] * 2 + [8] * 4 + [16] * 4),
    ('celeba64', [4] * 2 + [8] * 4 + [16] * 4),
])
def test_config_places_its_groups_at_the_resolutions_its_docstring_names(config_name,
                                                                         resolutions):
  from vae_jax.models import hierarchical_networks

  c = load_config(config_name)
  size = 32 if config_name == 'imagenet32' else 64
  shapes = hierarchical_networks.group_shapes('conv', (size, size, 3), c.model.hvae.groups,
                                              c.model.conv_channels, c.model.latent_dim)
  assert [shape for _, shape in shapes] == [(r, r, 16) for r in resolutions]


@pytest.mark.parametrize('config_name', ['imagenet32', 'imagenet64', 'celeba64'])
def test_docstring_smoke_command_is_a_valid_config(config_name):
  """The CPU smoke command of the config's docstring: its overrides validate (no data needed)."""
  import ast
  import shlex

  from vae_jax.config import validation

  with open(os.path.join(ROOT, 'configs', f'{config_name}.py')) as f:
    block = f.read().split('Smoke run on a CPU')[1].split('\n\n')[0]
  command = block[block.index('python scripts/train.py'):].replace('\\\n', ' ')
  args = shlex.split(command)[2:]
  assert args[0] == f'--config=configs/{config_name}.py'
  assert args[1].startswith('--workdir=')
  overrides = {}
  for arg in args[2:]:
    assert arg.startswith('--config.'), arg
    key, value = arg.removeprefix('--config.').split('=', 1)
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value
  assert 'num_train_steps' in overrides and len(overrides) > 10
  config = set_fields(load_config(config_name), **overrides)
  validation.validate_config(config, num_devices=1)


@pytest.mark.slow
@pytest.mark.parametrize('config_name, channels, train_split, valid_split, eval_split, n_eval', [
    ('imagenet32', (4, 8, 8), 'train[:-2]', 'train[-2:]', 'validation', 4),
    ('imagenet64', (4, 4, 8, 8), 'train[:-2]', 'train[-2:]', 'validation', 4),
    ('celeba64', (4, 4, 8, 8), 'train', 'validation', 'test', 2),
])
def test_config_trains_two_steps_on_the_grain_back_end(judged, tmp_path, config_name, channels,
                                                       train_split, valid_split, eval_split,
                                                       n_eval):
  """The config as it is but for tiny widths, one group (at the top: compiling is most of the
  time) and slivers of the splits: its dataset, grain, uint8, its conv stages, the discretized
  logistic. imagenet64's and celeba64's programs are the same: the second is a cache hit."""
  from vae_jax import train

  root, _, _ = judged
  config = set_fields(load_config(config_name), **TINY, **{
      'data.data_dir': str(root / 'tfds'), 'data.train_split': train_split,
      'data.valid_split': valid_split, 'data.eval_split': eval_split,
      'model.conv_channels': channels, 'model.hvae.groups': (1,)})
  assert config.data.backend == 'grain' and config.model.likelihood == 'discretized_logistic'
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result['step'] == 2
  assert result['eval'][valid_split]['num_examples'] == 2
  rec = result['eval'][eval_split]
  assert rec['num_examples'] == n_eval and np.isfinite(rec['neg_elbo'])
  size = 32 if config_name == 'imagenet32' else 64
  assert result['experiment'].data_info.image_shape == (size, size, 3)
