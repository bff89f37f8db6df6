"""The benchmark reports throughput, memory and a matmul rate in the run's compute dtype."""

import math

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
