"""Throughput of a config's real training loop (evaluation and checkpoints off).

  python scripts/benchmark.py --config=configs/fashion_mnist.py [--chunks=5] [--config.a.b=v]
  python scripts/benchmark.py --config=configs/cifar10.py --synthetic=32,32,3

--synthetic=H,W,C times the same step on uniform random uint8 images of that shape instead of
the configured dataset: nothing reads TFDS or imports TensorFlow, for machines (an accelerator
image) that have neither. The report's data_source says which was used.

Compiles, then runs one warm-up and `--chunks` timed fused calls of config.steps_per_call steps
of the trainer's own compiled chunk, with the next call's inputs prepared while one runs, as in
the training loop (no evaluation, no checkpoints). The last stdout line is one JSON object:
images_per_sec (median over the timed chunks, compile excluded), step_ms, compile_s,
peak_rss_mb (host), device_peak_mb (the accelerator's peak bytes in use; null on a CPU),
compiled_temp_mb / compiled_argument_mb (XLA's memory analysis of the compiled chunk: its
scratch beyond the inputs, and the state plus data), num_devices, global_batch_size, the
model's FLOP/s (from the compiled single step's cost analysis) and a matmul rate in the run's
compute dtype (config.model.dtype) measured in the same process, for a sense of how close to
the machine's peak the step runs.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow (TFDS) start-up chatter

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vae_jax import cli  # noqa: E402
from vae_jax.config import validation

config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
flags.DEFINE_integer('chunks', 5, 'Timed fused calls (after one untimed warm-up call).')
flags.DEFINE_integer('matmul_size', 2048, 'Size n of the n x n matmul rate probe.')
flags.DEFINE_string('synthetic', '', "H,W,C: time on random uint8 images of this shape, not the "
                    "dataset (no TFDS, no TensorFlow); '' = the configured dataset.")
flags.DEFINE_integer('synthetic_examples', 60_000,
                     'With --synthetic: examples in each base split (train, test, ...).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  config = FLAGS.config

  def run():
    cli.require_config(config)
    with config.unlocked():
      config.compilation_cache = ''  # compile time is part of the report
    validation.validate_config(config)
    shape = None
    if FLAGS.synthetic:
      shape = validation.synthetic_benchmark_shape(config, FLAGS.synthetic,
                                                   FLAGS.synthetic_examples)
    else:
      cli.check_data_available(config.data)
    from vae_jax import benchmarking
    return benchmarking.benchmark(config, FLAGS.chunks, FLAGS.matmul_size, shape,
                                  FLAGS.synthetic_examples)

  cli.print_json(cli.run_reporting_user_errors(run))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
