"""Run a sweep: every point of a config file's get_sweep(h) as a full run in DIR/<point name>/.

  python scripts/sweep.py --config=configs/NAME.py --workdir=DIR [--executor=local|slurm] \
      [--parallel=P] [--vectorize] [--points=NAME,...] [--config.a.b=v ...]
  python scripts/sweep.py --workdir=DIR --report

--points runs only the named points (DIR/sweep.json records the whole sweep: the same command
without --points later runs the rest in the same folder). A search (Optuna, pruning) is
scripts/search.py.

Resumable: run the same command again after any interruption; finished points are skipped
and interrupted ones resume from their checkpoints. Results: DIR/results.csv, DIR/results.md
and DIR/neg_elbo_vs_KEY.png. This process never imports JAX; each point is its own
`python scripts/train.py` process (with --vectorize, the points still to run are one
`python scripts/train_population.py` process).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vae_jax import cli  # noqa: E402
from vae_jax import sweep as sweep_lib  # noqa: E402

config_flags.DEFINE_config_file('config', None, 'Sweep config file (get_config, get_sweep).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Sweep folder: one workdir per point, and the results.')
flags.DEFINE_bool('report', False, 'Only rebuild the results from the workdirs.')
flags.DEFINE_list('points', [], 'Run only these points of the sweep (their names, as in '
                  'DIR/sweep.json); the folder keeps the whole sweep.')
flags.DEFINE_enum('executor', 'local', ['local', 'slurm'], 'Where the points run.')
flags.DEFINE_integer('parallel', 1, 'local: points run at once (GPUs are split among them).')
flags.DEFINE_bool('vectorize', False, 'Train the points as one vmapped population (they may '
                  'differ only in seed, beta, KL warm-up, free bits, learning rate).')
flags.DEFINE_enum('population_mode', 'auto', ['auto', 'vmap', 'loop'],
                  '--vectorize: vmap the step over the members, or loop the one compiled chunk '
                  'over them; auto: vmap on an accelerator, loop on a CPU.')
flags.DEFINE_multi_string('env', [], 'KEY=VALUE set in every point\'s environment.')
flags.DEFINE_string('slurm_partition', '', 'slurm: the partition.')
flags.DEFINE_integer('gpus_per_task', 1, 'slurm: GPUs of each point.')
flags.DEFINE_integer('time_limit_min', 60, 'slurm: time limit of each point (minutes).')
flags.DEFINE_integer('array_parallelism', 8, 'slurm: points of the job array run at once.')
flags.DEFINE_string('slurm_cluster', None, 'Testing: submitit cluster (local | debug).')
FLAGS = flags.FLAGS


def _fail(message):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def main(argv):
  del argv
  if not FLAGS.workdir:
    _fail('--workdir=DIR is required.')
  try:
    if FLAGS.report:
      sweep_lib.report(os.path.abspath(FLAGS.workdir))
      return
    if FLAGS.config is None:
      _fail('--config=configs/NAME.py is required (or --report).')
    env, overrides, slurm = cli.launch_settings(FLAGS, sys.argv)
    config_path = cli.config_path(sys.argv)  # the same reading as the flag's
    code = sweep_lib.run_sweep(config_path, FLAGS.config, overrides, FLAGS.workdir,
                               executor=FLAGS.executor, parallel=FLAGS.parallel, env=env,
                               slurm=slurm, vectorize=FLAGS.vectorize,
                               population_mode=FLAGS.population_mode,
                               points=FLAGS.points or None)
  except sweep_lib.SweepError as e:
    _fail(str(e))
  sys.exit(code)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
