"""A search's Optuna study: its storage, sampler and pruner, the trials' points and workdirs, and
what a trial's workdir says about it (its intermediate values, its end). Optuna is imported
only here and only when a study is opened; nothing here imports JAX.

Storage (where the study lives; the trials' workdirs are in the search folder either way):
- default: `sqlite:///DIR/study.db`, a file in the search folder (embedded: nothing to start);
- `--storage=postgresql://USER@HOST:PORT/DB` (or `mysql+pymysql://...`): a database server,
  for controllers on several hosts sharing one study;
- `--storage=journal:PATH`: Optuna's journal file, for a shared file system without a server.
"""

import json
import math
import os
import re
import socket

from vae_jax.storage import records as records_lib
from vae_jax.storage import requests
from vae_jax.sweep import hyper
from vae_jax.sweep.hyper import SweepError
from vae_jax.sweep.status import point_status, read_failed

STUDY_DB = 'study.db'
SEARCH_FILE = 'search.json'
NAME_DIGITS = 4  # trial0007_...: names sort by trial number up to 9999 trials


def optuna_module():
  """optuna, quiet (the controller prints its own lines); SweepError saying how to install it."""
  try:
    import optuna
  except ImportError:
    raise SweepError("A search needs Optuna, an optional extra: pip install -e '.[search]' "
                     '(it brings psycopg, the driver of a PostgreSQL --storage).'
                     ) from None
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  return optuna


def default_storage(workdir):
  return 'sqlite:///' + os.path.join(os.path.abspath(workdir), STUDY_DB)


def masked(url):
  """The URL with its password replaced by *** (what search.json and messages show)."""
  return re.sub(r'(://[^:/@]+:)[^@/]*@', r'\1***@', url)


def open_storage(url):
  """An Optuna storage for the URL (see the module docstring); SweepError if it cannot open."""
  optuna = optuna_module()
  if url.startswith('journal:'):
    from optuna.storages.journal import JournalFileBackend
    path = os.path.abspath(url[len('journal:'):])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(path))
  if '://' not in url:
    raise SweepError(f'--storage={masked(url)!r} is not a storage: use a database URL '
                     '(postgresql://USER@HOST:PORT/DB, mysql+pymysql://..., sqlite:///FILE) or '
                     'journal:PATH (a journal file on a shared file system).')
  try:
    return optuna.storages.RDBStorage(url)
  except ImportError as e:
    raise SweepError(f'--storage={masked(url)}: the database driver is not installed ({e}). '
                     "For PostgreSQL: pip install -e '.[search]' (psycopg).") from None
  except Exception as e:  # noqa: BLE001 - a server down, a wrong password: one line
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise SweepError(f'--storage={masked(url)}: the study\'s database cannot be opened: '
                     f'{type(e).__name__}: {first}') from None


def distributions(found):
  """{key: Optuna distribution} of the search's dimensions."""
  optuna = optuna_module()
  d = optuna.distributions
  out = {}
  for p in found.params:
    if p.kind == 'float':
      out[p.key] = d.FloatDistribution(p.low, p.high, log=p.log)
    elif p.kind == 'int':
      out[p.key] = d.IntDistribution(p.low, p.high, log=p.log, step=p.step)
    else:
      out[p.key] = d.CategoricalDistribution(_choices(p))
  return out


def plain_value(value):
  """Whether Optuna takes the value as a categorical choice as it is."""
  return value is None or isinstance(value, (bool, int, float, str))


def _choices(p):
  """Optuna's categorical choices must be plain values: tuples go in as their repr."""
  return [v if plain_value(v) else repr(v) for v in p.values]


def point_of(found, params):
  """The config overrides of a trial's Optuna params (categorical reprs mapped back)."""
  point = {}
  for p in found.params:
    value = params[p.key]
    if p.kind == 'categorical':
      value = p.values[_choices(p).index(value)]
    point[p.key] = value
  return point


def _short(value):
  if isinstance(value, float):
    return float(f'{value:.4g}')
  return value


def trial_name(number, point):
  """The trial's workdir name: its number and its values (floats to 4 significant digits)."""
  body = hyper.point_name({k: _short(v) for k, v in point.items()})
  return f'trial{number:0{NAME_DIGITS}d}_{body}'[:200]


def sampler_for(found, number):
  """TPE seeded by the search's seed and the trial's number: a rerun after a kill asks the
  next trial from the same state as an uninterrupted controller would have (where the trials
  finished in the same order: one at a time)."""
  optuna = optuna_module()
  seed = (found.seed * 1_000_003 + number) % (2 ** 32)
  return optuna.samplers.TPESampler(seed=seed, n_startup_trials=found.startup_trials)


def pruner_of(found, config):
  optuna = optuna_module()
  p = found.pruner
  if p.kind == 'median':
    return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials,
                                       n_warmup_steps=p.warmup_steps)
  if p.kind == 'successive_halving':
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=p.min_steps or config.eval_every_steps,
        reduction_factor=p.reduction_factor)
  return optuna.pruners.NopPruner()


def open_study(storage, study_name, found=None, config=None, create=True):
  """The study (created if `create` and absent); its sampler and pruner are the search's."""
  optuna = optuna_module()
  kwargs = {}
  if found is not None:
    kwargs = {'sampler': sampler_for(found, 0), 'pruner': pruner_of(found, config)}
  if create:
    return optuna.create_study(storage=storage, study_name=study_name, direction='minimize',
                               load_if_exists=True, **kwargs)
  try:
    return optuna.load_study(storage=storage, study_name=study_name, **kwargs)
  except KeyError:
    raise SweepError(f'The storage holds no study named {study_name!r}.') from None


STATES = {'COMPLETE': 'complete', 'PRUNED': 'pruned', 'FAIL': 'failed', 'RUNNING': 'running',
          'WAITING': 'waiting'}


def state_name(trial):
  return STATES.get(trial.state.name, trial.state.name.lower())


def host():
  return socket.gethostname()


# ----------------------------------------------------------------------------------------------
# What a trial's workdir holds.


def read_records(trial_dir):
  return records_lib.read_jsonl(os.path.join(trial_dir, 'metrics.jsonl'), warn=None)


def validation_values(recs, valid_split, field):
  """{step: value} of the objective's field in the validation evaluations."""
  return {r['step']: r[field] for r in recs
          if r.get('kind') == 'eval' and r.get('split') == valid_split
          and isinstance(r.get(field), (int, float))}


def steps_trained(recs):
  """The newest step the run trained to (its train records), 0 where none."""
  return max((r['step'] for r in recs if r.get('kind') == 'train'), default=0)


def selected(recs, valid_split, field):
  """(selected step, the objective there): the step of the lowest validation neg_elbo (the
  run's own selection), or (None, None)."""
  from vae_jax.sweep.results import selected_step
  evals = [r for r in recs if r.get('kind') == 'eval']
  step = selected_step(evals, valid_split)
  if step is None:
    return None, None
  value = validation_values(recs, valid_split, field).get(step)
  return step, value


def trial_end(trial_dir, config, valid_split, field):
  """How a trial's run ended, from its workdir: (state, value, attrs).

  state: 'complete' (DONE for its config; value: the objective at the selected step),
  'failed' (DIR/FAILED, or finished with no finite objective), 'pruned' (DIR/STOP_REQUEST),
  'running' (a live run holds it) or 'unfinished' (partial or new: to be resumed).
  """
  status = point_status(trial_dir, config)
  recs = read_records(trial_dir)
  attrs = {'steps': steps_trained(recs)}
  if status == 'done':
    step, value = selected(recs, valid_split, field)
    attrs['selected_step'] = step
    if value is None or not math.isfinite(value):
      attrs['reason'] = (f'finished without a finite validation {field} at its selected step '
                         f'({value!r})')
      return 'failed', None, attrs
    return 'complete', float(value), attrs
  if status == 'failed':
    failed = read_failed(trial_dir) or {}
    attrs['reason'] = f'at step {failed.get("step")}: {failed.get("reason")}'
    return 'failed', None, attrs
  if status == 'stopped':
    attrs['reason'] = requests.read_stop_request(trial_dir)
    return 'pruned', None, attrs
  if status == 'running':
    return 'running', None, attrs
  return 'unfinished', None, attrs


def search_record(config_path, overrides, found, objective, storage_url, study_name):
  return {'config': os.path.abspath(config_path), 'overrides': list(overrides),
          'search': found.to_json(), 'objective': objective, 'storage': masked(storage_url),
          'study_name': study_name}


def same_storage(recorded, url):
  """Whether two (masked) storage URLs name one study store: equal, or both the default SQLite
  file of a search folder (a folder moved since keeps its own study.db)."""
  default = lambda u: u.startswith('sqlite:///') and u.endswith('/' + STUDY_DB)
  return recorded == url or (default(recorded) and default(url))


def same_search(a, b):
  """Whether two search records describe one study (num_trials may grow; paths may differ
  between hosts)."""
  def core(r):
    s = dict(r.get('search', {}))
    s.pop('num_trials', None)
    return json.dumps([s, r.get('objective'), sorted(r.get('overrides', []))], sort_keys=True)
  return core(a) == core(b)


def read_search(workdir):
  path = os.path.join(workdir, SEARCH_FILE)
  try:
    with open(path) as f:
      record = json.load(f)
  except FileNotFoundError:
    raise SweepError(f'{workdir} holds no {SEARCH_FILE}: not a search folder.') from None
  except (OSError, ValueError) as e:
    raise SweepError(f'{path} cannot be read ({type(e).__name__}: {e}).') from None
  if not isinstance(record, dict) or 'search' not in record:
    raise SweepError(f'{path} holds no search.')
  return record


def write_search(workdir, record):
  path = os.path.join(workdir, SEARCH_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)
