"""A sweep's plan: its points read from the config file, resolved, checked and recorded in
DIR/sweep.json, with nothing run.

Each point becomes the command a user would type,
`python scripts/train.py --config=FILE --workdir=DIR/NAME --config.k=v ...`, so nothing is
pickled but command lines and JAX is never imported here.
"""

import importlib.util
import json
import os
import sys
import traceback

from vae_jax.config import validation
from vae_jax.sweep import hyper
from vae_jax.sweep.executors import REPO, TRAIN_SCRIPT
from vae_jax.sweep.hyper import SweepError

SWEEP_FILE = 'sweep.json'


def load_config_file(path):
  """The module of a config file (with the repository importable, as scripts/train.py has)."""
  if not os.path.isfile(path):
    raise SweepError(f'Config file {path} does not exist.')
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  spec = importlib.util.spec_from_file_location('_sweep_config', path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # noqa: BLE001 - the user's file: one line, not a traceback
    raise SweepError(f'Config file {path} cannot be loaded: {type(e).__name__}: {e}') from None
  return module


def sweep_points(module, path):
  """The points of the config file's get_sweep(h)."""
  if not hasattr(module, 'get_sweep'):
    raise SweepError(f'Config file {path} defines no get_sweep(h): nothing to sweep.')
  try:
    points = module.get_sweep(hyper)
  except SweepError:
    raise  # hyper's own message names the combinator and what to change
  except Exception as e:  # noqa: BLE001 - the user's code: one line, not a traceback
    raise SweepError(f'Config file {path}: get_sweep(h) raised {type(e).__name__}: {e}'
                     f'{_user_line(e, path)}.') from None
  return hyper.check_points(points)


def _user_line(error, path):
  """' (line N)' of the config file's last frame in the error's traceback, or ''."""
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if os.path.abspath(f.filename) == os.path.abspath(path)]
  return f' (line {frames[-1].lineno})' if frames else ''


def override_keys(overrides):
  """The keys of '--config.KEY=VALUE' flags."""
  return [o.split('=', 1)[0][len('--config.'):] for o in overrides]


def plan(config_path, config, overrides, workdir, train_script=None):
  """The sweep's points: name, overrides, resolved config, command; checked, nothing run.

  Args:
    config_path: the config file (defines get_config and get_sweep).
    config: its config with the command line's overrides applied (locked ConfigDict).
    overrides: those overrides as '--config.KEY=VALUE' flags, passed on to every point.
    workdir: the sweep's folder.
    train_script: the program each point's command runs (None: scripts/train.py).

  Returns:
    A list of dicts {'name', 'point', 'config', 'workdir', 'command'}.

  Raises:
    SweepError: a point names a field that does not exist, has a value of the wrong type,
      or sets a key the command line sets too.
  """
  module = load_config_file(config_path)
  points = sweep_points(module, config_path)
  return plan_points(config_path, config, overrides, workdir, hyper.point_names(points), points,
                     train_script=train_script or TRAIN_SCRIPT)


def plan_points(config_path, config, overrides, workdir, names, points,
                train_script=TRAIN_SCRIPT, what='sweep point'):
  """plan's dict of each named point (a sweep's, or a search's trials); checked, nothing run.

  train_script: the program each command runs (tests put a stand-in here).
  """
  fixed = set(override_keys(overrides))
  planned = []
  seen = {}  # resolved config digest -> the point that resolved to it
  for name, point in zip(names, points, strict=True):
    both = fixed & set(point)
    if both:
      raise SweepError(f'Sweep point {point!r} sets {sorted(both)}, which the command line '
                       'sets too: drop the --config flag or the swept key.')
    resolved = hyper.apply_point(config, point, what=what)
    digest = hyper.config_digest(resolved)
    if digest in seen:
      raise SweepError(f'The sweep points {seen[digest]!r} and {point!r} set the same config '
                       '(once each field has its type), so they would train the same run twice. '
                       'Drop one of them.')
    seen[digest] = point
    point_dir = os.path.join(os.path.abspath(workdir), name)
    command = [sys.executable, train_script, f'--config={os.path.abspath(config_path)}',
               f'--workdir={point_dir}', *overrides, *hyper.config_flags(point)]
    planned.append({'name': name, 'point': point, 'config': resolved, 'workdir': point_dir,
                    'command': command})
  return planned


def validate_points(planned):
  """validation.validate_config of every point, in this JAX-free process.

  Raises:
    SweepError: naming the first point whose config is invalid.
  """
  for p in planned:
    try:
      validation.validate_config(p['config'])
    except validation.ConfigError as e:
      raise SweepError(f'sweep point {p["name"]}: {e}') from None


def sweep_record(config_path, overrides, planned):
  return {'config': os.path.abspath(config_path), 'overrides': list(overrides),
          'points': [{'name': p['name'], 'overrides': p['point']} for p in planned]}


def record_sweep(workdir, record, subset=None):
  """Writes DIR/sweep.json; refuses a DIR that holds a sweep of different points.

  The command line's overrides may change between invocations (raising num_train_steps
  extends every point: finished ones no longer match their DONE and resume). A sweep that keeps
  every recorded point and adds others grows the folder in place. subset: the names a
  `--points` run chose, appended to the record's `subsets`.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, SWEEP_FILE)
  record = dict(record)
  if os.path.exists(path):
    old = _load_sweep_file(path)
    new = json.loads(json.dumps(record['points']))
    if any(p not in new for p in old.get('points')):
      names = [p['name'] for p in old.get('points', [])]
      raise SweepError(
          f'{path} holds a different sweep (config {old.get("config")}, points '
          f'{", ".join(names)}). Use a new --workdir for a different sweep, or delete that '
          'one. (A sweep that keeps every one of those points and adds others may grow this '
          'folder.)')
    record['subsets'] = list(old.get('subsets', []))
  if subset:
    record['subsets'] = [*record.get('subsets', []), list(subset)]
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(record, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def read_sweep(workdir):
  path = os.path.join(workdir, SWEEP_FILE)
  if not os.path.exists(path):
    raise SweepError(f'{workdir} holds no {SWEEP_FILE}: not a sweep folder.')
  return _load_sweep_file(path)


def _load_sweep_file(path):
  """DIR/sweep.json's record; SweepError naming the file if it is damaged."""
  try:
    with open(path) as f:
      record = json.load(f)
  except (OSError, ValueError) as e:
    record, why = None, f'{type(e).__name__}: {e}'
  else:
    why = 'it holds no list of points'
  if not isinstance(record, dict) or not isinstance(record.get('points'), list):
    raise SweepError(
        f'{path} cannot be read ({why}). It is written whole or not at all, so something '
        'else damaged it. Rerun the sweep with its config into a new --workdir, or delete '
        'this file and rerun the same command here: the points\' workdirs are kept and done '
        'points are not run again.')
  return record
