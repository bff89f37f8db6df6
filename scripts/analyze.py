"""Analyse a trained run.

  python scripts/analyze.py --workdir=DIR [--step=best|last|S] [--split=NAME]

The step is the one selected on the run's validation split by default (--step=best, as
scripts/evaluate.py); the page and the JSON say which step and why (selected).

Writes DIR/analysis/ (reconstructions, samples at several temperatures, interpolations, latent
traversals, a scatter of the posterior means, the MIG heatmap for datasets with known factors,
the KL per unit, training curves; index.html and summary.md showing them with the numbers) and
the figures as TensorBoard images at the step. Runs on one device, whatever trained the run.
The last stdout line is one JSON object: the paths and the headline numbers.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow (TFDS) start-up chatter

from absl import app, flags, logging  # noqa: E402

from vae_jax import cli  # noqa: E402

flags.DEFINE_string('workdir', None, 'The run\'s folder (scripts/train.py --workdir).')
flags.DEFINE_string('step', 'best', 'Checkpoint step to analyse: best (selected on the '
                    "run's data.valid_split), last (the newest good one) or a number.")
flags.DEFINE_string('split', None, 'Split or slice to analyse (default: config.data.eval_split).')
flags.DEFINE_string('out', None, 'Output folder (default: DIR/analysis).')
flags.DEFINE_bool('tensorboard', True, 'Also write the figures into DIR/tensorboard.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  if not FLAGS.workdir:
    print('error: --workdir=DIR (a run of scripts/train.py) is required.', file=sys.stderr)
    sys.exit(2)
  from vae_jax import analysis
  try:
    summary = analysis.analyze(FLAGS.workdir, step=FLAGS.step, split=FLAGS.split,
                               out_dir=FLAGS.out, tensorboard=FLAGS.tensorboard)
  except (analysis.RunNotFoundError, *cli.user_errors()) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  cli.print_json(analysis.headline(summary))

if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
