"""Train a VAE: python scripts/train.py --config=configs/NAME.py --workdir=DIR [--config.a.b=v].

Multi-host: add --coordinator_address=HOST:PORT --num_processes=N --process_id=I on every
process (or run under a cluster that sets the standard environment).
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
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics, images (resumed).')
flags.DEFINE_string('coordinator_address', '', 'Multi-host: HOST:PORT of process 0.')
flags.DEFINE_integer('num_processes', 1, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', 0, 'Multi-host: this process.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  config = FLAGS.config

  def run():
    # Everything a user can get wrong is checked before TensorFlow or a compile.
    cli.require_config(config)
    validation.validate_config(config)
    validation.validate_workdir(FLAGS.workdir)
    cli.check_data_available(config.data)
    from vae_jax import sharding
    sharding.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id)
    from vae_jax import train
    return train.train_and_evaluate(config, FLAGS.workdir)

  result = cli.run_reporting_user_errors(run)
  evals = result['eval']
  if evals:  # the test split's numbers (reporting), with the validation split's beside them
    report = dict(evals[config.data.eval_split])
    if config.data.valid_split != config.data.eval_split:
      report['valid'] = evals[config.data.valid_split]
    cli.print_json({'step': result['step'], **report})


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
