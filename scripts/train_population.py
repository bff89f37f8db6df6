"""Train sweep points as one vectorised population (what `scripts/sweep.py --vectorize` runs).

  python scripts/train_population.py --config=configs/NAME.py --workdir=SWEEP_DIR \
      [--points=NAME,NAME,... | --points_json=FILE] [--mode=auto|vmap|loop] [--config.a.b=v ...]

The points are the config file's get_sweep(h) (all of them, or the named ones), or those of
--points_json (a JSON list of {"name", "overrides"}: how a search runs a batch of trials); each
trains into SWEEP_DIR/<point name>/ exactly as `scripts/train.py` would leave it. They must differ
only in seed, objective.beta, objective.kl_warmup_steps, objective.free_bits and
optim.learning_rate; anything else is refused with the field and the reason. Resumable: run
the same command again.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vae_jax import cli  # noqa: E402
from vae_jax import sweep as sweep_lib  # noqa: E402

config_flags.DEFINE_config_file('config', None, 'Sweep config file (get_config, get_sweep).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Sweep folder: the members train into its subfolders.')
flags.DEFINE_list('points', [], 'Point names to train (default: every point of the sweep).')
flags.DEFINE_string('points_json', None, 'A JSON file listing the points to train, '
                    '[{"name": ..., "overrides": {KEY: VALUE}}], instead of get_sweep\'s.')
flags.DEFINE_enum('mode', 'auto', ['auto', 'vmap', 'loop'],
                  'vmap: one vmapped step over all members; loop: the compiled chunk applied '
                  'to each member in turn; auto: vmap on an accelerator, loop on a CPU.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)

  def run():
    from vae_jax.config import validation
    config = cli.require_config(FLAGS.config)
    if not FLAGS.workdir:
      raise validation.ConfigError('--workdir=SWEEP_DIR is required.')
    overrides = [a for a in sys.argv[1:] if a.startswith('--config.')]
    try:
      if FLAGS.points_json:
        listed = _read_points(FLAGS.points_json)
        planned = sweep_lib.plan_points(cli.config_path(sys.argv), config, overrides,
                                        FLAGS.workdir, [p['name'] for p in listed],
                                        [p['overrides'] for p in listed])
      else:
        planned = sweep_lib.plan(cli.config_path(sys.argv), config, overrides, FLAGS.workdir)
    except sweep_lib.SweepError as e:
      raise validation.ConfigError(str(e)) from None
    names = [p['name'] for p in planned]
    unknown = sorted(set(FLAGS.points) - set(names))
    if unknown:
      raise validation.ConfigError(f'--points names {unknown}, which the sweep does not have; '
                                   f'its points are {names}.')
    chosen = [p for p in planned if not FLAGS.points or p['name'] in FLAGS.points]
    for p in chosen:
      validation.validate_config(p['config'])
      validation.validate_workdir(p['workdir'])
    cli.check_data_available(chosen[0]['config'].data)
    from vae_jax import train
    from vae_jax.train import population
    population.check_population([p['config'] for p in chosen], [p['name'] for p in chosen])
    return chosen, train.train_population([p['config'] for p in chosen],
                                          [p['workdir'] for p in chosen], mode=FLAGS.mode)

  chosen, result = cli.run_reporting_user_errors(run)
  members = []
  for p, m in zip(chosen, result['members'], strict=True):
    split = p['config'].data.eval_split
    rec = m['eval'].get(split, {})
    members.append({'name': p['name'], 'status': m['status'], 'step': m['step'],
                    'neg_elbo': rec.get('neg_elbo'), 'neg_elbo_stderr': rec.get('neg_elbo_stderr'),
                    'split': split, 'reason': m['reason']})
  cli.print_json({'step': result['step'], 'compile_s': result['compile_s'],
                  'mode': result['mode'], 'members': members})
  sys.exit(0 if all(m['status'] == 'done' for m in members) else 1)


def _read_points(path):
  """The --points_json list: [{'name': str, 'overrides': {key: value}}]."""
  import json

  from vae_jax.config import validation
  try:
    with open(path) as f:
      listed = json.load(f)
  except (OSError, ValueError) as e:
    raise validation.ConfigError(f'--points_json={path} cannot be read: {e}') from None
  if not isinstance(listed, list) or not listed or not all(
      isinstance(p, dict) and isinstance(p.get('name'), str)
      and isinstance(p.get('overrides'), dict) for p in listed):
    raise validation.ConfigError(f'--points_json={path} must hold a non-empty list of '
                                 '{"name": ..., "overrides": {...}}.')
  return listed


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
