"""Shared plumbing of the scripts: config flags, user-error reporting, the final JSON line.

Scripts stay thin: they parse flags, call a library function and print its result.
"""

import difflib
import glob
import json
import os
import sys
import traceback

# The config-file flag every script defines (config_flags.DEFINE_config_file('config', ...)).
CONFIG_FLAG = 'config'
# The repository's configs folder: what a mistyped --config path is told about.
REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            'configs')


def user_errors():
  """The exception types reported without a traceback (imported lazily, all cheap)."""
  from vae_jax.config import compat, validation
  from vae_jax.data import DatasetMissingError
  from vae_jax.storage import checkpoint, disk
  from vae_jax.storage import lock as workdir_lock
  return (validation.ConfigError, DatasetMissingError, compat.IncompatibleCheckpointError,
          checkpoint.NoGoodCheckpointError, disk.DiskFullError,
          workdir_lock.WorkdirLockedError)


def run_reporting_user_errors(fn):
  """Runs fn(); a user mistake exits with status 2 and its message, without a traceback.

  A write that finds the disk full (disk.is_no_space) is reported the same way, naming
  the file and the free space there. A run that diverged (vae_jax.train: FloatingPointError,
  SkippedUpdatesError) ends with its message and status 1: the config is valid, the training
  failed (DIR/FAILED says where).
  """
  try:
    return fn()
  except user_errors() as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except Exception as e:
    from vae_jax.storage import disk
    if disk.is_no_space(e):
      print(f'error: {_no_space_message(e)}', file=sys.stderr)
      sys.exit(2)
    if not _is_divergence(e):
      raise
    print(f'error: the run failed: {e}', file=sys.stderr)
    sys.exit(1)


def _no_space_message(e):
  """One line for a write that found the disk full: the file, the free space where it was."""
  import shutil

  from vae_jax.storage import disk
  where = None
  while e is not None and where is None:  # the OSError that names the file, if one does
    where = getattr(e, 'filename', None) if isinstance(e, OSError) else None
    e = e.__cause__ or e.__context__
  space = ''
  folder = os.path.dirname(os.path.abspath(os.fspath(where))) if where else None
  while folder and not os.path.isdir(folder):
    folder = os.path.dirname(folder)
  if folder:
    try:
      space = f' ({disk.format_bytes(shutil.disk_usage(folder).free)} free in {folder})'
    except OSError:
      pass
  what = f' writing {where}' if where else ''
  return (f'No space left on device{what}{space}. Free space (or use a workdir on a bigger '
          'disk), then rerun the same command: a training run resumes from its last checkpoint.')


def _is_divergence(e):
  loop = sys.modules.get('vae_jax.train.loop')
  return isinstance(e, FloatingPointError) or (
      loop is not None and isinstance(e, loop.SkippedUpdatesError))


def require_config(config):
  """The --config flag's ConfigDict; a missing flag is a user error."""
  if config is None:
    from vae_jax.config import validation
    raise validation.ConfigError('--config=configs/NAME.py is required.')
  return config


def print_json(record):
  """The last stdout line of every script that reports numbers: one JSON object."""
  print(json.dumps(record, sort_keys=True), flush=True)


def check_data_available(data_cfg):
  """data.check_available, with an unknown dataset name reported as a ConfigError; then whether
  data.backend reads the prepared records (data.check_record_format)."""
  from vae_jax import data
  from vae_jax.config import validation
  try:
    data.check_available(data_cfg)
  except ValueError as e:
    raise validation.ConfigError(str(e)) from None
  data.check_record_format(data_cfg)


def parse_flags(argv):
  """absl flag parsing where a user's mistake is a one-line error (exit 2), not a traceback.

  Covers a --config file that does not exist (naming the configs that do), one that fails to
  import or to build its config, and a bad --config.a.b override. Used as
  app.run(main, flags_parser=cli.parse_flags).
  """
  from absl import flags
  path = config_path(argv)
  if path is not None and not os.path.isfile(path):
    _exit_user_error(_missing_config_message(path))
  try:
    remaining = flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - classified below; anything else is re-raised
    _exit_user_error(_parse_error_message(e, path))
  if CONFIG_FLAG in flags.FLAGS:
    try:
      # ml_collections defers an OSError while loading the file (unreadable, or raised by the
      # config itself) to the config's first use, which raises it from any attribute.
      getattr(flags.FLAGS[CONFIG_FLAG].value, 'lock', None)
    except OSError as e:
      where = path or 'the --config file'
      _exit_user_error(f'Config file {where} cannot be loaded: {_one_line(e.__cause__ or e)}')
  return remaining


def _exit_user_error(message):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _one_line(e):
  text = ' '.join(str(e).split())
  return f'{type(e).__name__}: {text}' if text else type(e).__name__


def launch_settings(flags_values, argv):
  """(env, overrides, slurm) of a sweep or search command (scripts/sweep.py, scripts/search.py).

  env: os.environ with each --env=KEY=VALUE applied; overrides: the --config.KEY=VALUE arguments
  of argv, passed on to every run; slurm: the SLURM flags as run_sweep / run_search take them.
  A malformed --env or override is a user error (one line, exit status 2).
  """
  env = dict(os.environ)
  for item in flags_values.env:
    if '=' not in item:
      _exit_user_error(f'--env={item!r} must be KEY=VALUE.')
    key, value = item.split('=', 1)
    env[key] = value
  overrides = [a for a in argv[1:] if a.startswith('--config.')]
  if any('=' not in a for a in overrides):
    _exit_user_error('Write overrides as --config.KEY=VALUE (with "=").')
  slurm = {'partition': flags_values.slurm_partition, 'gpus_per_task': flags_values.gpus_per_task,
           'time_limit_min': flags_values.time_limit_min,
           'array_parallelism': flags_values.array_parallelism,
           'cluster': flags_values.slurm_cluster}
  return env, overrides, slurm


def config_path(argv):
  """The file of the last --config=PATH[:ARGS] (or '--config PATH') in argv, else None.

  Read the way absl reads it (up to a bare '--'), so a missing file is caught before
  ml_collections turns it into an error deferred to the config's first use.
  """
  value = None
  args = list(argv[1:])
  for i, arg in enumerate(args):
    if arg == '--':
      break
    for prefix in (f'--{CONFIG_FLAG}', f'-{CONFIG_FLAG}'):
      if arg.startswith(prefix + '='):
        value = arg[len(prefix) + 1:]
      elif arg == prefix and i + 1 < len(args):
        value = args[i + 1]
  # ml_collections passes what follows the first ':' to get_config.
  return None if value is None else value.split(':', 1)[0]


def _config_choices(path):
  """The configs beside `path` if its folder has any, else the repository's configs."""
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  found = sorted(glob.glob(os.path.join(folder or '.', '[!_]*.py')))
  if found:
    return folder or '.', [os.path.join(folder, os.path.basename(f)) for f in found]
  found = sorted(glob.glob(os.path.join(REPO_CONFIGS, '[!_]*.py')))
  shown = os.path.relpath(REPO_CONFIGS)
  if shown.startswith('..'):
    shown = REPO_CONFIGS
  return shown, [os.path.join(shown, os.path.basename(f)) for f in found]


def _missing_config_message(path):
  what = 'is not a file' if os.path.exists(path) else 'does not exist'
  folder, choices = _config_choices(path)
  if not choices:
    return f'Config file {path} {what}, and {folder} holds no configs (*.py).'
  stems = {os.path.basename(c)[:-3]: c for c in choices}
  close = difflib.get_close_matches(os.path.basename(path).removesuffix('.py'), stems, n=1)
  hint = f' Did you mean --{CONFIG_FLAG}={stems[close[0]]}?' if close else ''
  return f'Config file {path} {what}.{hint} The configs in {folder}: {", ".join(choices)}.'


def _raised_in(e, path):
  """Whether the traceback of e passes through the file at path (the config's own code)."""
  if path is None:
    return False
  target = os.path.realpath(path)
  return any(os.path.realpath(frame.filename) == target
             for frame in traceback.extract_tb(e.__traceback__))


def _parse_error_message(e, path):
  """The one-line message for an exception of flags.FLAGS(argv); re-raises a foreign one."""
  from absl import flags
  if isinstance(e, SyntaxError):
    return (f'Config file {e.filename or path} cannot be loaded: SyntaxError: {e.msg} '
            f'(line {e.lineno}).')
  if isinstance(e, flags.Error) and 'Error whilst parsing config file' in str(e):
    # ml_collections re-raises a TypeError/ValueError of the config as the text of its
    # traceback, whose last line is the error itself.
    last = [line for line in str(e).splitlines() if line.strip()][-1].strip()
    return f'Config file {path} cannot be loaded: {last}'
  if not isinstance(e, flags.Error) and _raised_in(e, path):
    return f'Config file {path} cannot be loaded: {_one_line(e)}'
  if isinstance(e, OSError):  # a deferred load failure, touched while applying overrides
    return f'Config file {path or "(--config)"} cannot be loaded: {_one_line(e.__cause__ or e)}'
  if isinstance(e, flags.Error):
    message = str(e)
  elif isinstance(e, KeyError):
    message = str(e.args[0]) if e.args else str(e)
  elif isinstance(e, (AttributeError, TypeError, ValueError)):
    message = str(e)
  else:
    raise e
  return (f'{message}\nCheck the --config.* override against the fields declared in '
          'configs/default.py (a config is locked: only existing fields can be set).')
