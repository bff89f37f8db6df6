r"""Measures the data layer: preparation times and batch throughput of the three back ends.

  python scripts/benchmark_data.py [--manual_dir=/usr/share/datasets/fashion-mnist] \
      [--data_dir=DIR] [--steps=2000] [--steps_per_call=10,50,100] [--grain_workers=0,1,2]

Prepares Fashion-MNIST from --manual_dir (Debian's package by default), the default sprites
and a 32x32x3 set (cifar10 made from Fashion-MNIST's images: see _write_rgb), each in a fresh
process through scripts/prepare_data.py (wall time, TensorFlow import included), into a
temporary data_dir unless --data_dir is given. Then times:
- memory: uint8 train images on device (jax.device_put), rows and keys from
  memory_train_indices (the trainer's feeder's), gather + preprocess jitted over
  k = steps_per_call steps at once (the [k, B, H, W, C] batches are the output),
  block_until_ready; per mode and k (keys memory_MODE_kK_images_per_sec);
- stream: make_train_iterator(backend='stream') batches on the host (stream_images_per_sec);
- stream and grain with W workers, 28x28 grey (fashion_mnist) and 32x32x3 (cifar10): batches
  from make_train_iterator as the trainer's feeder takes them, k = the largest steps_per_call
  stacked into [k, B, H, W, C] and put on the device, block_until_ready (keys
  {stream,grain_wW}_{dataset}_device_images_per_sec); grain_copy_{dataset}_s is the first use's
  ArrayRecord copy of the train split;
- memory on both datasets beside them: the uint8 preprocessing (the 8-bit configs') of the same
  k steps, as above (memory_{dataset}_device_images_per_sec).
Prints one JSON line last.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow (TFDS) start-up chatter

from absl import app, flags  # noqa: E402

from configs import default  # noqa: E402

_MANUAL_DIR = flags.DEFINE_string('manual_dir', '/usr/share/datasets/fashion-mnist',
                                  'Fashion-MNIST idx files (Debian: dataset-fashion-mnist).')
_DATA_DIR = flags.DEFINE_string('data_dir', '', 'TFDS data_dir; default: a new temp folder.')
_STEPS = flags.DEFINE_integer('steps', 2000, 'Training steps timed per measurement.')
_STEPS_PER_CALL = flags.DEFINE_list('steps_per_call', ['10', '50', '100'],
                                    'Steps gathered per jitted call (each is measured).')
_STREAM_STEPS = flags.DEFINE_integer('stream_steps', 1000, 'Stream batches timed.')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Global batch size.')
_GRAIN_WORKERS = flags.DEFINE_list('grain_workers', ['0', '1', '2'],
                                   'data.workers values of the grain back end (each measured).')
_DEVICE_STEPS = flags.DEFINE_integer('device_steps', 1000,
                                     'Steps timed per stream / grain device measurement.')

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _time_prepare(dataset, data_dir, manual_dir=''):
  """Runs prepare_data.py in a fresh process; returns (wall seconds, its JSON line)."""
  cmd = [sys.executable, os.path.join(_ROOT, 'scripts', 'prepare_data.py'),
         f'--dataset={dataset}', f'--data_dir={data_dir}']
  if manual_dir:
    cmd.append(f'--manual_dir={manual_dir}')
  start = time.time()
  out = subprocess.run(cmd, check=True, capture_output=True, text=True)
  return time.time() - start, json.loads(out.stdout.strip().splitlines()[-1])


def _cfg(data_dir, backend='memory', name='fashion_mnist', workers=0):
  """The default data config for a prepared dataset, training on the whole train split."""
  cfg = default.get_config().data
  cfg.update(name=name, data_dir=data_dir, backend=backend, shuffle_buffer=10_000,
             train_split='train', valid_split='test', eval_split='test', workers=workers)
  return cfg


def _write_rgb(manual_dir, folder):
  """A CIFAR-10 python tarball of 32x32x3 images made from Fashion-MNIST's (no CIFAR here).

  Image i's channels are Fashion-MNIST images i, i + 1 and i + 2, each padded to 32x32: real
  photographs' PNGs differ in size, but the records' count and shape are CIFAR-10's train split.
  """
  import numpy as np

  from vae_jax.data import formats

  def rgb(images):
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return np.stack([np.roll(images, -c, axis=0) for c in range(3)], axis=-1)

  splits = {}
  for split, prefix, n in (('train', 'train', 50_000), ('test', 't10k', 10_000)):
    images = formats.read_idx(os.path.join(manual_dir, f'{prefix}-images-idx3-ubyte.gz'))
    splits[split] = {'image': rgb(images[:n]), 'label': np.arange(n) % 10}
  os.makedirs(folder, exist_ok=True)
  formats.write_cifar_python(os.path.join(folder, 'cifar-10-python.tar.gz'), splits,
                             {'label': [f'class{i}' for i in range(10)]})


def _memory_rate(images, base_index, mode, *, batch_size, steps, steps_per_call, data_seed=0):
  """Images/s of device batches: host indices -> device, jitted gather + preprocess."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from vae_jax import data
  from vae_jax.data import preprocess

  n = images.shape[0]

  @jax.jit
  def batches(images, positions, index, epoch):
    # [k, B] -> [k, B, H, W, C], materialised (returned), like a fused train chunk's input.
    return preprocess.preprocess(preprocess.gather_images(images, positions), index, mode=mode,
                                 data_seed=data_seed, epoch=epoch[:, None])

  def call(step):
    positions, index = data.memory_train_indices(
        base_index, data_seed=data_seed, start_step=step, num_steps=steps_per_call,
        batch_size=batch_size)
    epoch = data.epoch_of(np.arange(step, step + steps_per_call), n, batch_size)
    return batches(images, jax.device_put(positions), jax.device_put(index),
                   jax.device_put(epoch.astype(np.int32)))

  call(0).block_until_ready()  # compile
  start = time.perf_counter()
  out = None
  for step in range(0, steps, steps_per_call):
    out = call(step)
  out.block_until_ready()
  seconds = time.perf_counter() - start
  assert out.dtype == (jnp.int32 if mode == 'uint8' else jnp.float32)
  return steps // steps_per_call * steps_per_call * batch_size / seconds


def _stream_rate(cfg, *, batch_size, steps):
  from vae_jax import data

  it = data.make_train_iterator(cfg, batch_size=batch_size, data_seed=0, start_step=0)
  next(it)  # pipeline start-up (first block read) is not throughput
  start = time.perf_counter()
  count = sum(len(next(it)['index']) for _ in range(steps))
  return count / (time.perf_counter() - start)


def _device_rate(cfg, *, batch_size, steps, steps_per_call):
  """Images/s of [k, B, H, W, C] uint8 batches from make_train_iterator put on the device."""
  import jax
  import numpy as np

  from vae_jax import data

  it = data.make_train_iterator(cfg, batch_size=batch_size, data_seed=0, start_step=0)

  def call():
    return jax.device_put(np.stack([next(it)['image'] for _ in range(steps_per_call)]))

  call().block_until_ready()  # start-up (workers, first block) is not throughput
  start = time.perf_counter()
  calls = max(steps // steps_per_call, 1)
  for _ in range(calls):
    out = call()
  out.block_until_ready()
  seconds = time.perf_counter() - start
  if hasattr(it, 'close'):
    it.close()
  return calls * steps_per_call * batch_size / seconds


def main(argv):
  del argv
  tmp = None
  data_dir = _DATA_DIR.value
  if not data_dir:
    tmp = tempfile.TemporaryDirectory(prefix='vae_jax_bench_data_')
    data_dir = tmp.name
  result = {}
  seconds, info = _time_prepare('fashion_mnist', data_dir, _MANUAL_DIR.value)
  result['prepare_fashion_mnist_s'] = round(seconds, 1)
  result['prepare_fashion_mnist_how'] = info['how']
  seconds, info = _time_prepare('sprites', data_dir)
  result['prepare_sprites_s'] = round(seconds, 1)
  result['prepare_sprites_how'] = info['how']
  rgb_dir = os.path.join(data_dir, 'rgb_manual')
  _write_rgb(_MANUAL_DIR.value, rgb_dir)
  seconds, info = _time_prepare('cifar10', data_dir, rgb_dir)
  result['prepare_cifar10_s'] = round(seconds, 1)

  import jax
  import tensorflow  # noqa: F401  (imported before timing load_arrays: ~5 s here)

  from vae_jax import data

  start = time.perf_counter()
  arrays = data.load_arrays(_cfg(data_dir), 'train')
  result['load_arrays_train_s'] = round(time.perf_counter() - start, 2)
  images = jax.device_put(arrays['image'])
  on_device = {'fashion_mnist': (images, arrays['index'])}  # the other datasets: loaded below
  for mode in ('grey', 'dynamic_binarize', 'threshold', 'uint8'):
    for k in map(int, _STEPS_PER_CALL.value):
      rate = _memory_rate(images, arrays['index'], mode, batch_size=_BATCH.value,
                          steps=_STEPS.value, steps_per_call=k)
      result[f'memory_{mode}_k{k}_images_per_sec'] = round(rate)
  rate = _stream_rate(_cfg(data_dir, 'stream'), batch_size=_BATCH.value,
                      steps=_STREAM_STEPS.value)
  result['stream_images_per_sec'] = round(rate)
  k = max(map(int, _STEPS_PER_CALL.value))
  for name in ('fashion_mnist', 'cifar10'):
    start = time.perf_counter()
    next(data.eval_batches(_cfg(data_dir, 'grain', name), 'train', batch_size=1))  # the copy
    result[f'grain_copy_{name}_s'] = round(time.perf_counter() - start, 1)
    if name not in on_device:
      arrays = data.load_arrays(_cfg(data_dir, name=name), 'train')
      on_device[name] = (jax.device_put(arrays['image']), arrays['index'])
    rate = _memory_rate(*on_device[name], 'uint8', batch_size=_BATCH.value,
                        steps=_DEVICE_STEPS.value, steps_per_call=k)
    result[f'memory_{name}_device_images_per_sec'] = round(rate)
    runs = [('stream', _cfg(data_dir, 'stream', name))] + [
        (f'grain_w{w}', _cfg(data_dir, 'grain', name, int(w))) for w in _GRAIN_WORKERS.value]
    for key, cfg in runs:
      rate = _device_rate(cfg, batch_size=_BATCH.value, steps=_DEVICE_STEPS.value,
                          steps_per_call=k)
      result[f'{key}_{name}_device_images_per_sec'] = round(rate)
  result.update(batch_size=_BATCH.value, steps=_STEPS.value, device=str(jax.devices()[0]),
                cpu_count=os.cpu_count(), loadavg_1min=os.getloadavg()[0])
  print(json.dumps(result))
  if tmp is not None:
    tmp.cleanup()


if __name__ == '__main__':
  app.run(main)
