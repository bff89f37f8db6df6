"""Sweeps as data: lists of points, each a dict of dotted-key config overrides.

The shape of the `hyper` API of big_vision / XManager configs. A config file may define
`get_sweep(h)`, given this module as `h`, returning the list of points:

  def get_sweep(h):
    return h.product(h.sweep('objective.beta', [0.5, 1.0, 2.0]), h.sweep('seed', [0, 1]))

Nothing here imports JAX: the sweep runner builds, checks and names every point in a parent
process that never initialises a device.
"""

import builtins
import copy
import hashlib
import itertools
import re


class SweepError(ValueError):
  """A user mistake in a sweep (its points, its config, its workdir); reported without a
  traceback, as vae_jax.config.validation.ConfigError is."""


def sweep(key, values):
  """One point per value: [{key: v} for v in values]."""
  if not isinstance(key, str) or not key:
    raise SweepError(f'sweep: the key must be a dotted config key, got {key!r}.')
  values = list(values)
  if not values:
    raise SweepError(f'sweep({key!r}, ...): no values.')
  return [{key: v} for v in values]


def _merge(parts):
  point = {}
  for part in parts:
    overlap = set(point) & set(part)
    if overlap:
      raise SweepError(f'A sweep sets {sorted(overlap)} twice in one point: combine sweeps '
                       'of different keys.')
    point.update(part)
  return point


def product(*sweeps):
  """The Cartesian product: every combination of one point of each sweep (last varies fastest)."""
  return [_merge(parts) for parts in itertools.product(*sweeps)]


def zip(*sweeps):  # noqa: A001 - the name of the hyper API
  """Points merged element-wise; the sweeps must have equal lengths."""
  lengths = [len(s) for s in sweeps]
  if len(set(lengths)) > 1:
    raise SweepError(f'zip: the sweeps have different lengths {lengths}; zip needs equal ones.')
  return [_merge(parts) for parts in builtins.zip(*sweeps, strict=True)]


def chain(*sweeps):
  """The points of each sweep, one sweep after the other."""
  return [dict(p) for s in sweeps for p in s]


def fixed(key, value):
  """One point setting one key: product(fixed('seed', 1), ...) sets it in every point."""
  return [{key: value}]


UNSAFE_NAME_CHARS = re.compile(r'[^A-Za-z0-9._=+-]+')


def _render_name_value(v):
  if isinstance(v, (tuple, list)):
    return '-'.join(_render_name_value(x) for x in v) or 'empty'
  return str(v)


def point_name(point):
  """A readable, filesystem-safe, deterministic name of a point from its overrides.

  `{'objective.beta': 0.5, 'seed': 1}` -> 'beta=0.5_seed=1': keys in sorted order, each
  shortened to its last component, characters outside [A-Za-z0-9._=+-] replaced by '-'.
  Shortening can make two points' names equal (model.hidden and other.hidden);
  `point_names` resolves that with full keys and, failing that, a hash suffix.
  """
  return _name(point, short=True)


def _name(point, short):
  if not point:
    return 'base'
  parts = []
  for key in sorted(point):
    shown = key.rsplit('.', 1)[-1] if short else key
    parts.append(f'{shown}={_render_name_value(point[key])}')
  name = UNSAFE_NAME_CHARS.sub('-', '_'.join(parts)).strip('.')
  return name[:200] or 'point'


def _digest(point):
  return hashlib.sha256(repr(sorted(point.items())).encode()).hexdigest()[:8]


def point_names(points):
  """Unique names of a list of points: point_name, else full keys, else a hash suffix."""
  names = [point_name(p) for p in points]
  if len(set(names)) < len(names):
    names = [_name(p, short=False) for p in points]
  if len(set(names)) < len(names):
    names = [f'{_name(p, short=False)[:180]}_{_digest(p)}' for p in points]
  if len(set(names)) < len(names):
    twice = next(p for p, n in builtins.zip(points, names, strict=True) if names.count(n) > 1)
    raise SweepError(f'The sweep lists the same point more than once: {twice!r}. Drop the '
                     'repeat (h.chain of sweeps that share a value, say).')
  return names


def check_points(points):
  """The list of points a get_sweep returned: a list of dicts of str keys."""
  if not isinstance(points, (list, tuple)) or not points:
    got = 'an empty list' if isinstance(points, (list, tuple)) else type(points).__name__
    raise SweepError(f'get_sweep must return a non-empty list of points (dicts), got {got}.')
  for p in points:
    if not isinstance(p, dict) or not all(isinstance(k, str) and k for k in p):
      raise SweepError(f'Each sweep point must be a dict of dotted config keys, got {p!r}.')
  return [dict(p) for p in points]


def _coerce(old, value, where):
  """The value to assign over `old`, or SweepError; int is fine for float, not str."""
  if isinstance(old, bool):
    if isinstance(value, bool):
      return value
  elif isinstance(old, int):
    if isinstance(value, int) and not isinstance(value, bool):
      return value
  elif isinstance(old, float):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
  elif isinstance(old, str):
    if isinstance(value, str):
      return value
  elif isinstance(old, tuple):
    if isinstance(value, (tuple, list)):
      return tuple(value)
  elif old is None:
    return value
  else:
    return value
  raise SweepError(f'{where}: {value!r} ({type(value).__name__}) does not fit the field, '
                   f'a {type(old).__name__} (its default is {old!r}).')


def apply_point(config, point, what='sweep point'):
  """A locked copy of `config` with the point's overrides; SweepError names point and key."""
  config = copy.deepcopy(config)
  config.lock()
  for key, value in point.items():
    where = f'{what} {point!r}, key {key!r}'
    *parents, leaf = key.split('.')
    node = config
    for i, part in enumerate(parents):
      if part not in node or not hasattr(node[part], 'keys'):
        raise SweepError(f'{where}: config.{".".join(parents[:i + 1])} is not a config '
                         'section. Check the key against configs/default.py.')
      node = node[part]
    if leaf not in node:
      raise SweepError(f'{where}: the config has no field {key!r} (a config is locked: only '
                       'fields declared in configs/default.py can be set).')
    if hasattr(node[leaf], 'keys'):
      raise SweepError(f'{where}: config.{key} is a section, not a field.')
    node[leaf] = _coerce(node[leaf], value, where)
  return config


def render_value(value):
  """The text of --config.KEY=TEXT that ml_collections parses back to `value`."""
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  return str(value)


def config_flags(point):
  """The --config.KEY=VALUE flags that apply a point on a script's command line."""
  return [f'--config.{k}={render_value(v)}' for k, v in sorted(point.items())]


def config_digest(config):
  """SHA-256 of the resolved config's sorted JSON, without JAX.

  Equals vae_jax.storage.writers.config_digest, which names the config a run finished with in DONE.
  """
  return hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()
