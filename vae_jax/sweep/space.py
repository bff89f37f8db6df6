"""Searches as data: the space, objective, trial count and pruner of a config's get_search(s),
checked against the config before anything runs. JAX-free and Optuna-free.

A config file may define `get_search(s)`, given this module as `s`:

  def get_search(s):
    return s.search(
        s.int('model.latent_dim', 2, 16),
        s.float('optim.learning_rate', 1e-4, 1e-2, log=True),
        s.categorical('objective.kl_warmup_steps', [0, 500]),
        num_trials=30, pruner=s.successive_halving(reduction_factor=3))

Keys are dotted config keys, as in a sweep's points; every trial is the config with one value
of each key. The objective is always minimised, always on the validation split
(data.valid_split) at the run's selected step (vae_jax.evaluate.selection); the test split is
only ever reported beside it.
"""

import builtins
import dataclasses
import math
import numbers

from vae_jax.config import validation
from vae_jax.sweep import hyper
from vae_jax.sweep.hyper import SweepError

OBJECTIVES = ('valid_neg_elbo', 'valid_nll')
PRUNERS = ('median', 'successive_halving', 'none')
# Keys a search may not vary, and why: they fix what the objective measures or where the
# pruner compares trials, which must be the same for every trial of a study.
FIXED_KEYS = {
    'num_train_steps': 'the pruner compares trials at the same steps of the same budget',
    'eval_every_steps': 'the pruner\'s rungs are the evaluation steps, the same for every trial',
    'steps_per_call': 'the evaluation steps must be the same for every trial',
    'eval_num_samples': 'it decides what the objective measures',
    'data.valid_split': 'the objective is measured on one validation split',
    'data.eval_split': 'the test split is reported beside the objective, the same for all',
    'data.name': 'the objective must measure the same data in every trial',
}


@dataclasses.dataclass(frozen=True)
class Param:
  """One dimension of the space: kind 'float' | 'int' | 'categorical' over a config key."""
  kind: str
  key: str
  low: object = None
  high: object = None
  log: bool = False
  step: object = None
  values: tuple = ()

  def describe(self):
    if self.kind == 'categorical':
      return f'{self.key} in {list(self.values)!r}'
    scale = ', log' if self.log else ''
    step = f', step {self.step}' if self.step not in (None, 1) else ''
    return f'{self.key} {self.kind} in [{self.low!r}, {self.high!r}]{scale}{step}'

  def to_json(self):
    out = {'kind': self.kind, 'key': self.key}
    if self.kind == 'categorical':
      out['values'] = [list(v) if isinstance(v, tuple) else v for v in self.values]
    else:
      out.update(low=self.low, high=self.high, log=self.log, step=self.step)
    return out


@dataclasses.dataclass(frozen=True)
class Pruner:
  """When a trial stops early: 'median' (below the median of the trials at the same step is
  kept), 'successive_halving' (the best 1/reduction_factor of each rung goes on) or 'none'.

  Rungs are training steps at which the run evaluates: min_steps (default: eval_every_steps)
  times reduction_factor ** k for successive halving; every evaluation after warmup_steps for
  the median pruner, once startup_trials trials have finished.
  """
  kind: str = 'median'
  startup_trials: int = 5
  warmup_steps: int = 0
  min_steps: int = 0          # successive halving's first rung (0: config.eval_every_steps)
  reduction_factor: int = 3

  def to_json(self):
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Search:
  """A search: the space, the objective (None: valid_neg_elbo, or valid_nll when
  config.eval_num_samples > 0), the number of trials, the pruner and the sampler's seed
  (TPE; its first startup_trials trials are drawn at random)."""
  params: tuple
  objective: str = None
  num_trials: int = 20
  pruner: Pruner = Pruner()
  seed: int = 0
  startup_trials: int = 10

  @property
  def keys(self):
    return [p.key for p in self.params]

  def to_json(self):
    return {'params': [p.to_json() for p in self.params], 'objective': self.objective,
            'num_trials': self.num_trials, 'pruner': self.pruner.to_json(), 'seed': self.seed,
            'startup_trials': self.startup_trials}


def _key(key, what):
  if not isinstance(key, str) or not key:
    raise SweepError(f'{what}: the key must be a dotted config key, got {key!r}.')
  return key


def _number(value, what, integer=False):
  kinds = numbers.Integral if integer else numbers.Real
  if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
    raise SweepError(f'{what} must be a finite {"integer" if integer else "number"}, got '
                     f'{value!r}.')
  return builtins.int(value) if integer else builtins.float(value)


def _range(key, low, high, log, what, integer):
  low = _number(low, f'{what}: low', integer)
  high = _number(high, f'{what}: high', integer)
  if not low < high:
    raise SweepError(f'{what}: low {low!r} must be below high {high!r} (for one value, fix the '
                     'key in get_config instead).')
  if log and low <= 0:
    raise SweepError(f'{what}: a log scale needs low > 0, got {low!r}.')
  return low, high


def float(key, low, high, log=False):  # noqa: A001 - the name of the space API
  """A float field searched over [low, high] (log=True: uniformly in its logarithm)."""
  what = f's.float({key!r}, ...)'
  low, high = _range(_key(key, what), low, high, log, what, integer=False)
  return Param('float', key, low, high, bool(log), None)


def int(key, low, high, log=False, step=1):  # noqa: A001 - the name of the space API
  """An integer field searched over low, low + step, ..., high (log=True: log-uniform)."""
  what = f's.int({key!r}, ...)'
  low, high = _range(_key(key, what), low, high, log, what, integer=True)
  step = _number(step, f'{what}: step', integer=True)
  if step < 1 or (log and step != 1):
    raise SweepError(f'{what}: step must be a positive integer (1 with log=True), got {step!r}.')
  if (high - low) % step:
    raise SweepError(f'{what}: high - low = {high - low} is not a multiple of step {step}.')
  return Param('int', key, low, high, bool(log), step)


def categorical(key, values):
  """A field that takes one of `values` (numbers, strings, booleans or tuples)."""
  what = f's.categorical({key!r}, ...)'
  _key(key, what)
  values = tuple(tuple(v) if isinstance(v, list) else v for v in values)
  if not values:
    raise SweepError(f'{what}: no values.')
  if len(set(map(repr, values))) < len(values):
    raise SweepError(f'{what}: a value is listed twice in {list(values)!r}.')
  return Param('categorical', key, values=values)


def median(startup_trials=5, warmup_steps=0):
  """The median pruner: a trial stops where its validation value is worse than the median of
  the other trials' at the same step (after startup_trials have finished and warmup_steps)."""
  return Pruner('median', startup_trials=startup_trials, warmup_steps=warmup_steps)


def successive_halving(min_steps=0, reduction_factor=3):
  """Successive halving (asynchronous): at steps min_steps * reduction_factor ** k only the
  best 1 / reduction_factor of the trials that reached the rung go on."""
  return Pruner('successive_halving', min_steps=min_steps, reduction_factor=reduction_factor)


def no_pruner():
  """Every trial runs to its end (the search then only chooses the points)."""
  return Pruner('none')


def search(*params, objective=None, num_trials=20, pruner='median', seed=0, startup_trials=10):
  """The search get_search(s) returns. pruner: a Pruner, or 'median' | 'successive_halving' |
  'none' with their defaults."""
  for p in params:
    if not isinstance(p, Param):
      raise SweepError(f's.search: {p!r} is not a dimension: use s.float, s.int or '
                       's.categorical.')
  if not params:
    raise SweepError('s.search: no dimension to search (s.float, s.int, s.categorical).')
  keys = [p.key for p in params]
  twice = sorted({k for k in keys if keys.count(k) > 1})
  if twice:
    raise SweepError(f's.search: {twice} searched twice; give each key one dimension.')
  if isinstance(pruner, str):
    if pruner not in PRUNERS:
      raise SweepError(f's.search: pruner={pruner!r} is not one of {", ".join(PRUNERS)}.')
    pruner = Pruner(pruner)
  if not isinstance(pruner, Pruner):
    raise SweepError(f's.search: pruner={pruner!r}: use s.median(...), '
                     's.successive_halving(...), s.no_pruner() or their names.')
  if objective is not None and objective not in OBJECTIVES:
    raise SweepError(f's.search: objective={objective!r} is not one of '
                     f'{", ".join(OBJECTIVES)} (always the validation split, minimised: the '
                     'test split is only reported).')
  num_trials = _number(num_trials, 's.search: num_trials', integer=True)
  if num_trials < 1:
    raise SweepError(f's.search: num_trials must be at least 1, got {num_trials}.')
  seed = _number(seed, 's.search: seed', integer=True)
  startup_trials = _number(startup_trials, 's.search: startup_trials', integer=True)
  return Search(tuple(params), objective, num_trials, pruner, seed, max(0, startup_trials))


def search_of(module, path):
  """The Search of a config file's get_search(s)."""
  from vae_jax.sweep import space
  if not hasattr(module, 'get_search'):
    raise SweepError(f'Config file {path} defines no get_search(s): nothing to search.')
  try:
    found = module.get_search(space)
  except SweepError:
    raise  # the space API's own message names the call and what to change
  except Exception as e:  # noqa: BLE001 - the user's code: one line, not a traceback
    from vae_jax.sweep.planning import _user_line
    raise SweepError(f'Config file {path}: get_search(s) raised {type(e).__name__}: {e}'
                     f'{_user_line(e, path)}.') from None
  if not isinstance(found, Search):
    raise SweepError(f'Config file {path}: get_search(s) must return s.search(...), got '
                     f'{type(found).__name__}.')
  return found


def objective_of(found, config):
  """(objective name, the eval record field it reads): valid_neg_elbo by default, valid_nll
  when config.eval_num_samples > 0."""
  name = found.objective or ('valid_nll' if config.eval_num_samples > 0 else 'valid_neg_elbo')
  if name == 'valid_nll' and config.eval_num_samples <= 0:
    raise SweepError('objective valid_nll needs the K-sample bound at every evaluation: set '
                     'eval_num_samples > 0 in the config, or search on valid_neg_elbo.')
  return name, name[len('valid_'):]


def check(found, config, overrides=(), vectorize=False):
  """Checks a search against its config before anything runs; returns (objective, field).

  Every key must be a field of the config whose type fits the dimension (s.float over a float
  field, s.int over an integer one, every categorical value), may not be one the study holds
  fixed (FIXED_KEYS) nor set on the command line, and the config must validate at each end of
  every dimension. With vectorize, every key must be one a vectorised population may vary.

  Raises:
    SweepError: naming the dimension and what to change.
  """
  fixed = {o.split('=', 1)[0][len('--config.'):] for o in overrides}
  from vae_jax.config.compat import VECTORIZABLE
  for p in found.params:
    what = f'search dimension {p.describe()}'
    if p.key in FIXED_KEYS:
      raise SweepError(f'{what}: {p.key} cannot be searched: {FIXED_KEYS[p.key]}. Set it in '
                       'get_config.')
    if p.key in fixed:
      raise SweepError(f'{what}: --config.{p.key} is set on the command line too: drop the '
                       'flag or the dimension.')
    if vectorize and p.key not in VECTORIZABLE:
      raise SweepError(f'{what}: --vectorize trains a batch of trials as one population, which '
                       f'may differ only in {", ".join(VECTORIZABLE)}. Run without --vectorize.')
    node = config
    for part in p.key.split('.')[:-1]:
      node = node[part] if part in node and hasattr(node[part], 'keys') else None
      if node is None:
        break
    leaf = p.key.rsplit('.', 1)[-1]
    if node is not None and leaf in node and not hasattr(node[leaf], 'keys'):
      old = node[leaf]
      if p.kind == 'float' and not _is_float_field(old):
        raise SweepError(f'{what}: config.{p.key} is not a float field (its default is '
                         f'{old!r}); use s.int or s.categorical.')
      if p.kind == 'int' and not _is_int_field(old):
        raise SweepError(f'{what}: config.{p.key} is not an integer field (its default is '
                         f'{old!r}); use s.float or s.categorical.')
    values = p.values if p.kind == 'categorical' else (p.low, p.high)
    for v in values:
      resolved = hyper.apply_point(config, {p.key: v}, what=what)  # the key and the type
      try:
        validation.validate_config(resolved)
      except validation.ConfigError as e:
        raise SweepError(f'{what}: the config at {p.key}={v!r} is not valid: {e}') from None
  for end in ('low', 'high'):  # every dimension at one end at once
    point = {p.key: (p.values[0] if end == 'low' else p.values[-1]) if p.kind == 'categorical'
             else getattr(p, end) for p in found.params}
    try:
      validation.validate_config(hyper.apply_point(config, point, what='search corner'))
    except validation.ConfigError as e:
      raise SweepError(f'The search\'s corner {point!r} (every dimension at its {end} end) is '
                       f'not a valid config: {e}') from None
  _check_pruner(found.pruner, config)
  return objective_of(found, config)


def _is_float_field(old):
  return isinstance(old, numbers.Real) and not isinstance(old, (bool, numbers.Integral))


def _is_int_field(old):
  return isinstance(old, numbers.Integral) and not isinstance(old, bool)


def _check_pruner(pruner, config):
  every, total = config.eval_every_steps, config.num_train_steps
  if pruner.kind == 'none':
    return
  if every <= 0 or every >= total:
    raise SweepError(f'pruner {pruner.kind}: the runs evaluate only at their end '
                     f'(eval_every_steps={every}, num_train_steps={total}), so there is nothing '
                     'to prune on: lower eval_every_steps, or use pruner=\'none\'.')
  if pruner.kind == 'median':
    for name in ('startup_trials', 'warmup_steps'):
      value = getattr(pruner, name)
      if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise SweepError(f's.median: {name} must be a non-negative integer, got {value!r}.')
    return
  rf, first = pruner.reduction_factor, pruner.min_steps or every
  if isinstance(rf, bool) or not isinstance(rf, numbers.Integral) or rf < 2:
    raise SweepError(f's.successive_halving: reduction_factor must be an integer >= 2, got '
                     f'{rf!r}.')
  if isinstance(first, bool) or not isinstance(first, numbers.Integral) or first <= 0 or (
      first % every):
    raise SweepError(f's.successive_halving: min_steps={first!r} must be a positive multiple of '
                     f'eval_every_steps={every}: the rungs are evaluation steps.')
  if first >= total:
    raise SweepError(f's.successive_halving: min_steps={first} is not before the end '
                     f'(num_train_steps={total}): no rung to prune at.')


def rungs(pruner, config):
  """The steps at which the pruner compares trials (successive halving), or None."""
  if pruner.kind != 'successive_halving':
    return None
  first, out = pruner.min_steps or config.eval_every_steps, []
  while first < config.num_train_steps:
    out.append(first)
    first *= pruner.reduction_factor
  return out
