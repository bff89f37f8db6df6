"""Throughput of a config's training loop (used by scripts/benchmark.py).

It runs the trainer's own pieces (the experiment, the feeder, the compiled fused chunk) the way
the loop does, with the next chunk's inputs prepared while the current one runs, but without
evaluation, checkpoints or a workdir, so the trainer carries no benchmark-only options.
"""

import resource
import statistics
import time

import jax
import jax.numpy as jnp

from vae_jax import experiment, train
from vae_jax.data import synthetic


def matmul_flops_per_sec(n=2048, repeats=30, dtype=jnp.float32):
  """Best n x n matmul rate of the default device in `dtype` over `repeats` (its ceiling)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n**3 / min(times)  # the best of the repeats: the rate the machine can reach


def step_flops(exp):
  """FLOPs of one train step, from XLA's cost analysis of the compiled single step.

  (The fused scan's own analysis counts its loop body once, so the single step is used.)
  """
  c = exp.config
  step = train.make_train_step(exp)
  images = jax.ShapeDtypeStruct((c.batch_size, *exp.image_shape), jnp.uint8)
  index = jax.ShapeDtypeStruct((c.batch_size,), jnp.int32)
  compiled = jax.jit(step).lower(exp.abstract_state, images, index).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float(cost.get('flops', float('nan'))) if cost else float('nan')


def compiled_memory(compiled):
  """Device memory of a compiled program from XLA's memory analysis: {name: MiB}.

  temp is the scratch the program needs beyond its inputs and outputs (the activations a
  rematerialisation saves); arguments and outputs are the state and the data.
  """
  m = compiled.memory_analysis()
  if m is None:
    return {}
  mib = lambda b: b / 2.0**20
  return {'compiled_temp_mb': mib(m.temp_size_in_bytes),
          'compiled_argument_mb': mib(m.argument_size_in_bytes),
          'compiled_output_mb': mib(m.output_size_in_bytes)}


def device_peak_mb():
  """Peak bytes in use on the first local device since start (GPU/TPU), or None (CPU)."""
  stats = jax.local_devices()[0].memory_stats()
  if not stats or 'peak_bytes_in_use' not in stats:
    return None
  return stats['peak_bytes_in_use'] / 2.0**20


def time_chunks(exp, num_chunks, memory=None, arrays=None):
  """(images/s of each timed chunk after one warm-up chunk, compile seconds).

  memory: a dict that receives the compiled chunk's memory analysis.
  arrays: training arrays to hold in place of the dataset's (see train.ChunkFeeder).
  """
  c = exp.config
  state = experiment.init_state(exp)
  feeder = train.ChunkFeeder(exp, 0, arrays=arrays)
  fn, (source, index), compile_s = train.compile_chunk(exp, state, feeder, 0)
  if memory is not None:
    memory.update(compiled_memory(fn))
  rates, step = [], 0
  t0 = time.perf_counter()
  for i in range(num_chunks + 1):
    state, metrics = fn(state, source, index)
    step += c.steps_per_call
    source, index = feeder(step)  # prepared while the chunk runs, as in the loop
    jax.block_until_ready((state, metrics))
    t1 = time.perf_counter()
    if i:  # the first call is a warm-up
      rates.append(c.steps_per_call * c.batch_size / (t1 - t0))
    t0 = t1
  return rates, compile_s


def benchmark(config, num_chunks=5, matmul_size=2048, synthetic_shape=None,
              synthetic_examples=60_000):
  """Times `num_chunks` fused calls of the config's training; returns the report dict.

  synthetic_shape: (H, W, C) to time on uniform random uint8 images of that shape, with
  `synthetic_examples` in each base split, instead of the configured dataset: nothing reads
  TFDS or imports TensorFlow, and the memory back end holds them (config.data.backend must be
  'memory'). The throughput of a fixed-shape step does not depend on the pixels' values.
  """
  experiment.configure_jax(config)
  arrays, info = None, None
  if synthetic_shape is not None:
    info = synthetic.synthetic_info(config.data, synthetic_shape, synthetic_examples)
  exp = experiment.build(config, data_info=info)
  if info is not None:
    arrays = synthetic.synthetic_arrays(info, config.data.train_split)
  memory = {}
  rates, compile_s = time_chunks(exp, num_chunks, memory, arrays)
  ips = statistics.median(rates)
  flops = step_flops(exp)
  steps_per_sec = ips / config.batch_size
  peak = device_peak_mb()  # before the matmul probe allocates its own arrays
  dtype = jnp.dtype(config.model.dtype)
  matmul = matmul_flops_per_sec(matmul_size, dtype=dtype)
  return {
      'config_data': config.data.name,
      'data_source': 'dataset' if info is None else 'synthetic',
      'image_shape': list(exp.image_shape),
      'images_per_sec': ips,
      'images_per_sec_all_chunks': rates,
      'step_ms': 1000.0 / steps_per_sec,
      'compile_s': compile_s,
      'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
      'device_peak_mb': peak,
      **memory,
      'compute_dtype': dtype.name,
      'num_devices': exp.mesh.size,
      'num_processes': jax.process_count(),
      'global_batch_size': config.batch_size,
      'steps_per_call': config.steps_per_call,
      'step_flops': flops,
      'model_flops_per_sec': flops * steps_per_sec,
      'matmul_flops_per_sec': matmul,  # in compute_dtype
      'fraction_of_matmul_rate': flops * steps_per_sec / matmul,
      'backend': jax.default_backend(),
  }
