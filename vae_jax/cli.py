"""Shared plumbing of the scripts: config flags, user-error reporting, the final JSON line.

Scripts stay thin: they parse flags, call a library function and print its result.
"""

import json
import sys


def user_errors():
  """The exception types reported without a traceback (imported lazily, all cheap)."""
  from vae_jax import checkpoint, validation
  from vae_jax.data import DatasetMissingError
  return (validation.ConfigError, DatasetMissingError, checkpoint.IncompatibleCheckpointError)


def run_reporting_user_errors(fn):
  """Runs fn(); a user mistake exits with status 2 and its message, without a traceback."""
  try:
    return fn()
  except user_errors() as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def require_config(config):
  """The --config flag's ConfigDict; a missing flag is a user error."""
  if config is None:
    from vae_jax import validation
    raise validation.ConfigError('--config=configs/NAME.py is required.')
  return config


def print_json(record):
  """The last stdout line of every script that reports numbers: one JSON object."""
  print(json.dumps(record, sort_keys=True), flush=True)


def check_data_available(data_cfg):
  """data.check_available, with an unknown dataset name reported as a ConfigError."""
  from vae_jax import data, validation
  try:
    data.check_available(data_cfg)
  except ValueError as e:
    raise validation.ConfigError(str(e)) from None


def parse_flags(argv):
  """absl flag parsing where a bad --config.a.b override is a one-line error, not a traceback.

  Used as app.run(main, flags_parser=cli.parse_flags).
  """
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
  print(f'error: {message}\nCheck the --config.* override against the fields declared in '
        'configs/default.py (a config is locked: only existing fields can be set).',
        file=sys.stderr)
  sys.exit(2)
