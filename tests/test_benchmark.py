"""The benchmark reports throughput, memory and a matmul rate in the run's compute dtype."""

import json
import math
import subprocess
import sys

import pytest

from tests.test_checkpoint import _env
from tests.test_config import ROOT
from tests.test_train import tiny_config
from vae_jax import benchmarking


def test_benchmark_reports_memory_and_the_matmul_rate_in_the_compute_dtype():
  c = tiny_config(**{'mesh.data': 1, 'model.dtype': 'bfloat16'})
  report = benchmarking.benchmark(c, num_chunks=1, matmul_size=128)
  assert report['compute_dtype'] == 'bfloat16'
  assert report['images_per_sec'] > 0 and math.isfinite(report['step_flops'])
  assert report['matmul_flops_per_sec'] > 0
  # The arguments are the state and the sprites' uint8 training split held on device.
  assert report['compiled_argument_mb'] > 19_000 * 32 * 32 / 2**20
  assert report['compiled_temp_mb'] > 0
  assert report['device_peak_mb'] is None  # a CPU keeps no device memory statistics


# Runs scripts/benchmark.py in a process where importing TensorFlow or TFDS fails, as on an
# accelerator image that has neither.
_NO_TENSORFLOW = '''
import runpy, sys
for name in ('tensorflow', 'tensorflow_datasets'):
  sys.modules[name] = None  # any import of it now raises ImportError
sys.argv = ['scripts/benchmark.py'] + sys.argv[1:]
runpy.run_path('scripts/benchmark.py', run_name='__main__')
'''


def _benchmark_without_tensorflow(*args):
  env = _env(1, TFDS_DATA_DIR='/nonexistent/tfds')  # no prepared data either
  return subprocess.run([sys.executable, '-c', _NO_TENSORFLOW, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_synthetic_benchmark_runs_where_tensorflow_cannot_be_imported():
  # The cifar10 config's code path (conv hierarchy, discretized logistic mixture, adamw) at its
  # smallest: two stages with one group each (a 3-level hierarchy only adds compile time; what
  # this checks is that nothing on the path needs TensorFlow).
  proc = _benchmark_without_tensorflow(
      '--config=configs/cifar10.py', '--synthetic=32,32,3', '--synthetic_examples=512',
      '--config.data.train_split=train[:460]', '--config.data.valid_split=train[460:]',
      '--chunks=1', '--matmul_size=64', '--config.batch_size=8', '--config.steps_per_call=2',
      '--config.model.conv_channels=(8,8)', '--config.model.conv_blocks=1',
      '--config.model.hvae.groups=(1,1)', '--config.model.latent_dim=2')
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report['data_source'] == 'synthetic'
  assert report['image_shape'] == [32, 32, 3]
  assert report['images_per_sec'] > 0
  # The held training split: 460 synthetic examples of 32 * 32 * 3 bytes.
  assert report['compiled_argument_mb'] > 460 * 3072 / 2**20


@pytest.mark.parametrize('args, match', [
    (['--synthetic=32,32'], 'H,W,C of three positive integers'),
    (['--synthetic=28,28,1', '--config.data.backend=stream'], 'add --config.data.backend=memory'),
    (['--synthetic=28,28,1', '--synthetic_examples=10'], 'fewer than one batch'),
])
def test_synthetic_benchmark_rejects_bad_flags_before_compiling(args, match):
  proc = _benchmark_without_tensorflow('--config=configs/fashion_mnist.py', *args)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  assert match in proc.stderr
