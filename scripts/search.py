"""Run a search: an Optuna study over a config file's get_search(s), each trial a full run in
DIR/trial<NUMBER>_<values>/, the clearly worse ones stopped early by the pruner.

  python scripts/search.py --config=configs/NAME.py --workdir=DIR [--num_trials=N] \
      [--storage=URL] [--study_name=NAME] [--executor=local|slurm] [--parallel=P] \
      [--vectorize] [--config.a.b=v ...]
  python scripts/search.py --workdir=DIR --report [--storage=URL]

Resumable: after any interruption (even SIGKILL) run the same command again; the trials it had
asked are told, waited for or resumed, never asked again. The study lives in DIR/study.db
(SQLite) unless --storage names a PostgreSQL / MySQL server (controllers on several hosts, each
with its own --workdir, share one study) or journal:PATH (a journal file on a shared file
system). Results: DIR/results.csv, results.md, results.html and the plots. Needs the search
extra: pip install -e '.[search]'. This process never imports JAX.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vae_jax import cli  # noqa: E402
from vae_jax import sweep as sweep_lib  # noqa: E402

config_flags.DEFINE_config_file('config', None, 'Search config file (get_config, get_search).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Search folder: one workdir per trial, the study, results.')
flags.DEFINE_bool('report', False, 'Only rebuild the results from the study and the workdirs.')
flags.DEFINE_integer('num_trials', None, 'Trials of the study in all (default: get_search\'s).')
flags.DEFINE_string('storage', None, 'Optuna storage: a database URL (postgresql://USER@HOST:'
                    'PORT/DB) or journal:PATH; default: sqlite in the search folder.')
flags.DEFINE_string('study_name', None, 'The study\'s name in the storage (default: the '
                    'search folder\'s name).')
flags.DEFINE_enum('executor', 'local', ['local', 'slurm'], 'Where the trials run.')
flags.DEFINE_integer('parallel', 1, 'local: trials at once (GPUs are split among them); with '
                     '--vectorize: the trials of one population.')
flags.DEFINE_bool('vectorize', False, 'Train batches of --parallel trials as one vmapped '
                  'population (the searched keys must be traced scalars: seed, beta, KL '
                  'warm-up, free bits, learning rate).')
flags.DEFINE_enum('population_mode', 'auto', ['auto', 'vmap', 'loop'],
                  '--vectorize: vmap the step over the members, or loop the one compiled chunk '
                  'over them; auto: vmap on an accelerator, loop on a CPU.')
flags.DEFINE_multi_string('env', [], 'KEY=VALUE set in every trial\'s environment.')
flags.DEFINE_string('slurm_partition', '', 'slurm: the partition.')
flags.DEFINE_integer('gpus_per_task', 1, 'slurm: GPUs of each trial.')
flags.DEFINE_integer('time_limit_min', 60, 'slurm: time limit of each trial (minutes).')
flags.DEFINE_integer('array_parallelism', 8, 'slurm: trials running at once.')
flags.DEFINE_string('slurm_cluster', None, 'Testing: submitit cluster (local | debug).')
flags.DEFINE_string('train_script', None, 'Testing: the program a trial runs instead of '
                    'scripts/train.py.')
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
      sweep_lib.search_report(os.path.abspath(FLAGS.workdir), storage=FLAGS.storage)
      return
    if FLAGS.config is None:
      _fail('--config=configs/NAME.py is required (or --report).')
    env, overrides, slurm = cli.launch_settings(FLAGS, sys.argv)
    code = sweep_lib.run_search(
        cli.config_path(sys.argv), FLAGS.config, overrides, FLAGS.workdir,
        storage=FLAGS.storage, study_name=FLAGS.study_name, num_trials=FLAGS.num_trials,
        executor=FLAGS.executor, parallel=FLAGS.parallel, vectorize=FLAGS.vectorize,
        population_mode=FLAGS.population_mode, env=env, slurm=slurm,
        train_script=FLAGS.train_script or sweep_lib.TRAIN_SCRIPT)
  except sweep_lib.SweepError as e:
    _fail(str(e))
  except KeyboardInterrupt:
    print('Interrupted. Local trials got the same Ctrl-C (they save and exit); run the same '
          'command to continue the study: live trials are waited for, the others resumed.',
          file=sys.stderr)
    sys.exit(130)
  sys.exit(code)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
