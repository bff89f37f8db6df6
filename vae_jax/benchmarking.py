"""Throughput measurement of the real training loop (used by scripts/benchmark.py)."""

import resource
import statistics
import time

import jax
import jax.numpy as jnp

from vae_jax import metrics as metrics_lib
from vae_jax import train


def matmul_flops_per_sec(n=2048, repeats=30):
  """Best float32 n x n matmul rate of the default device over `repeats` (its ceiling)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n**3 / min(times)  # the best of the repeats: the rate the machine can reach


def step_flops(setup):
  """FLOPs of one train step, from XLA's cost analysis of the compiled single step.

  (The fused scan's own analysis counts its loop body once, so the single step is used.)
  """
  c = setup.config
  step = train.make_train_step(setup)
  shape = (c.batch_size, *setup.image_shape)
  images = jax.ShapeDtypeStruct(shape, jnp.uint8)
  index = jax.ShapeDtypeStruct((c.batch_size,), jnp.int32)
  compiled = jax.jit(step).lower(setup.abstract_state, images, index).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float(cost.get('flops', float('nan'))) if cost else float('nan')


def benchmark(config, workdir, matmul_size=2048):
  """Runs the training loop with evaluation and checkpoints off; returns the report dict."""
  result = train.train_and_evaluate(config, workdir, run_eval=False, save_checkpoints=False)
  records = metrics_lib.read_metrics(workdir, 'train')
  rates = [r['images_per_sec'] for r in records[1:]] or [records[0]['images_per_sec']]
  ips = statistics.median(rates)
  flops = step_flops(result['setup'])
  steps_per_sec = ips / config.batch_size
  matmul = matmul_flops_per_sec(matmul_size)
  return {
      'config_data': config.data.name,
      'images_per_sec': ips,
      'images_per_sec_all_chunks': rates,
      'step_ms': 1000.0 / steps_per_sec,
      'compile_s': result['compile_s'],
      'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
      'num_devices': result['num_devices'],
      'num_processes': jax.process_count(),
      'global_batch_size': config.batch_size,
      'steps_per_call': config.steps_per_call,
      'step_flops': flops,
      'model_flops_per_sec': flops * steps_per_sec,
      'matmul_flops_per_sec': matmul,
      'fraction_of_matmul_rate': flops * steps_per_sec / matmul,
      'backend': jax.default_backend(),
  }
