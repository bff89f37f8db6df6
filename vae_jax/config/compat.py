"""How configs relate across runs, without JAX: the one loader of configs/default.py, the renames
that bring a config saved by an older vae_jax to today's field names, and what the members of a
vectorised population may differ in.

Every reader of a saved config (the resume check, evaluation, analysis, init_from) goes through
`upgrade`, so a run saved before a field moved still resumes, evaluates and compares as the
same experiment; and through `default_config` for the fields added since it ran (they ran at
their defaults).
"""

import copy
import functools
import importlib.util
import json
import os

import ml_collections

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'configs', 'default.py')

# Old dotted name -> today's: the family fields moved into each family's sub-config.
RENAMED = {
    'model.hvae_groups': 'model.hvae.groups',
    'model.hvae_width': 'model.hvae.width',
    'model.hvae_residual_posterior': 'model.hvae.residual_posterior',
    'model.prior': 'model.vae.prior',
    'model.num_pseudo_inputs': 'model.vae.num_pseudo_inputs',
}


@functools.lru_cache(maxsize=1)
def _default_json():
  if not os.path.exists(_DEFAULT_CONFIG):
    return None
  spec = importlib.util.spec_from_file_location('_vae_jax_default_config', _DEFAULT_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config().to_json()


def default_config():
  """configs/default.py's get_config() (a fresh copy), or None where the package was installed
  without its configs folder."""
  text = _default_json()
  return None if text is None else ml_collections.ConfigDict(json.loads(text))


def default_values():
  """{dotted key: value} of configs/default.py, or None without it."""
  text = _default_json()
  return None if text is None else flatten(json.loads(text))


def flatten(tree, prefix=''):
  """{dotted key: leaf} of a nested dict (lists and tuples are leaves)."""
  out = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      out.update(flatten(value, name + '.'))
    else:
      out[name] = value
  return out


def upgrade(saved):
  """A copy of a saved config dict with RENAMED fields under today's names (a model saved
  before model.kind existed was a 'vae')."""
  out = copy.deepcopy(dict(saved))
  model = out.get('model')
  if not isinstance(model, dict):
    return out
  model.setdefault('kind', 'vae')
  for old, new in RENAMED.items():
    _, old_leaf = old.split('.', 1)
    if old_leaf not in model:
      continue
    value = model.pop(old_leaf)
    node = out
    *parents, leaf = new.split('.')
    for p in parents:
      node = node.setdefault(p, {})
    node.setdefault(leaf, value)
  return out


def saved_config(saved):
  """A saved run's config dict as a ConfigDict under today's names, with every field added to
  vae_jax since it ran set to its default in configs/default.py (the value that run used, as
  resuming assumes)."""
  config = ml_collections.ConfigDict(upgrade(saved))
  defaults = default_config()
  if defaults is None:  # installed without the configs: nothing to fill in
    return config

  def fill(node, defaults):
    for key, value in defaults.items():
      if key not in node:
        node[key] = value
      elif isinstance(value, ml_collections.ConfigDict) and isinstance(
          node[key], ml_collections.ConfigDict):
        fill(node[key], value)

  fill(config, defaults)
  return config


# ----------------------------------------------------------------------------------------------
# What a vectorised population may vary: one compiled program serves members that differ only
# in traced values, so the rule is the config's (JAX-free), read by the sweep runner before
# anything runs and by vae_jax.train.population.

# Fields a vectorised population may vary between its members: each enters the step as a
# traced value (state.hparams; the seed as the state's key data), so one compiled program
# serves them all.
VECTORIZABLE = ('seed', 'objective.beta', 'objective.kl_warmup_steps', 'objective.free_bits',
                'optim.learning_rate')
# Why the other fields must be equal, by prefix (the first that matches).
_STATIC_REASONS = (
    ('model.', 'it sets the architecture: parameter shapes and the compiled program'),
    ('data_seed', 'the members share one data order and one set of binarization draws'),
    ('data.', 'the members share one data pipeline and one batch per step'),
    ('batch_size', 'it sets the array shapes of the compiled step'),
    ('objective.', 'it selects the objective\'s computation or its shapes at trace time'),
    ('optim.', 'it selects the optimizer or the schedule\'s shape at trace time'),
    ('num_train_steps', 'the members share one loop (and the schedule\'s length)'),
    ('', 'the members share one loop, its intervals and its checkpoint policy'),
)


def vectorize_problem(named_configs):
  """Why these (name, config) pairs cannot train as one vmapped population, or None.

  They can when they differ only in VECTORIZABLE fields; the answer names the first other
  field that differs, the two points and why the field is static.
  """
  if len(named_configs) < 2:
    return None
  (name0, c0), rest = named_configs[0], named_configs[1:]
  flat0 = flatten(c0.to_dict())
  for name, config in rest:
    flat = flatten(config.to_dict())
    for key in sorted(set(flat0) | set(flat)):
      if key in VECTORIZABLE or flat0.get(key) == flat.get(key):
        continue
      why = next(r for prefix, r in _STATIC_REASONS if key.startswith(prefix))
      return (f'points {name0} and {name} differ in {key} ({flat0.get(key)!r} vs '
              f'{flat.get(key)!r}), which cannot vary within a vectorised population: {why}. '
              f'Only {", ".join(VECTORIZABLE)} can. Run without --vectorize, or sweep that '
              'key in separate sweeps.')
  return None


# ------------------------------------------------------------------------------------------
# Resuming: whether a checkpoint may be resumed under the current config.
#
# Compatibility (check_compatible). The saved config is compared with the current one field by
# field; any difference refuses the resume, except the fields that do not change the trajectory
# of training (RESUME_NEUTRAL), the traced hyperparameters the trainer applies from the resumed
# step on (APPLIED_ON_RESUME), the stability options it switches at the resumed step
# (SWITCHED_ON_RESUME), values that give the same batches (SAME_BATCHES: data.backend memory
# <-> grain), and num_train_steps under a schedule that does not depend on it.
# A field the saved config lacks (added to vae_jax since) must have its default value
# (configs/default.py); a field only the saved config has (removed since) is ignored.

# Fields that may differ on resume because they do not change the trajectory of training. A
# name covers its whole subtree; a name may be listed before the field exists.
RESUME_NEUTRAL = (
    'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
    'steps_per_call',  # the trainer checks that it divides the resumed step
    'eval_batch_size', 'eval_num_samples', 'eval_chunk_size', 'images', 'checkpoint',
    'compilation_cache',
    'init_from', 'mesh', 'max_consecutive_nonfinite', 'max_consecutive_skipped',
    'max_train_seconds',  # a budget per invocation: raising it and rerunning continues
    'data.data_dir', 'data.manual_dir', 'data.download',
    'data.eval_split',  # evaluated for reporting only (model selection reads valid_split)
    'data.workers',  # grain: how many processes decode, never which batch a step gets
    'early_stopping',  # when to stop, never what a step computes (the count is in the meta)
)


# Fields whose values within one group give every step the same batch (bitwise: the grain back
# end reads the memory back end's order from disk), so a run may resume under another of them.
SAME_BATCHES = {'data.backend': ('memory', 'grain')}


# Traced hyperparameters (state.hparams): the trainer applies the current value from the
# resumed step on and logs the change (config_changes).
APPLIED_ON_RESUME = ('optim.learning_rate', 'objective.beta', 'objective.kl_warmup_steps',
                     'objective.free_bits')


# Stability options whose part of the state the trainer starts, changes or drops at the resumed
# step (state.adapt), logged like the above: switching gradient skipping on is the remedy for a
# run that has started to spike, and the EMA never feeds back into training. A changed
# ema_decay applies to the saved EMA from the resumed step; an EMA switched on starts at the
# resumed parameters (its warning then counts from there).
SWITCHED_ON_RESUME = ('ema_decay', 'optim.skip_threshold', 'optim.skip_factor',
                      'optim.skip_window')


# Schedules whose learning rate does not depend on num_train_steps.
_LENGTH_FREE_SCHEDULES = ('constant',)


class IncompatibleCheckpointError(ValueError):
  """The workdir's checkpoint was written by a config that defines a different experiment."""


def _covered(key, names):
  return any(key == n or key.startswith(n + '.') for n in names)


_ABSENT = object()


def _saved_value(saved, key):
  """The saved value of `key`; a field added since the checkpoint ran as its default."""
  if key in saved:
    return saved[key]
  defaults = default_values()
  if defaults is None or key not in defaults:
    return _ABSENT  # nothing to compare with: accepted
  return defaults[key]


def check_compatible(saved_config, config, where, only=None):
  """Raises IncompatibleCheckpointError when the saved run defines a different experiment.

  Args:
    saved_config: the config dict stored in the checkpoint's meta.
    config: the current ConfigDict.
    where: the checkpoint's folder, for the message.
    only: compare only the fields under this dotted prefix (config.init_from compares
      'model': fine-tuning may change the data, the optimizer and everything else).
  """
  saved = flatten(upgrade(saved_config))
  now = flatten(json.loads(config.to_json()))
  diffs = []
  for key in sorted(now):
    if _covered(key, RESUME_NEUTRAL + APPLIED_ON_RESUME + SWITCHED_ON_RESUME):
      continue
    if only is not None and not _covered(key, (only,)):
      continue
    before = _saved_value(saved, key)
    if before is _ABSENT or before == now[key]:
      continue
    if key in SAME_BATCHES and {before, now[key]} <= set(SAME_BATCHES[key]):
      continue
    if key == 'num_train_steps':
      schedule = now.get('optim.schedule')
      if schedule in _LENGTH_FREE_SCHEDULES:
        continue
      diffs.append(f'num_train_steps: saved {before!r}, now {now[key]!r} (under '
                   f'optim.schedule={schedule!r} it is the length of the decay, so changing it '
                   'changes the learning rate of every later step)')
    elif key in saved:
      diffs.append(f'{key}: saved {before!r}, now {now[key]!r}')
    else:
      diffs.append(f'{key}: absent from the checkpoint (added to vae_jax since; the run used '
                   f'its default {before!r}), now {now[key]!r}')
  if diffs and only is not None:
    raise IncompatibleCheckpointError(
        f'The checkpoint in {where} has a different {only}: ' + '; '.join(diffs) + '. Its '
        f'parameters do not fit this {only}: set these fields as the checkpoint has them.')
  if diffs:
    raise IncompatibleCheckpointError(
        f'The checkpoint in {where} was written by a different experiment: '
        + '; '.join(diffs) + '. Resuming would mix two runs. Use a new --workdir, or restore '
        'these values (intervals, eval and image settings, checkpointing, the mesh and '
        f'{", ".join(APPLIED_ON_RESUME + SWITCHED_ON_RESUME)} may change on resume).')


def config_changes(saved_config, config):
  """[(dotted key, saved, now)] of the APPLIED_ON_RESUME and SWITCHED_ON_RESUME fields that
  differ, for the log."""
  saved = flatten(upgrade(saved_config))
  now = flatten(json.loads(config.to_json()))
  out = []
  for key in APPLIED_ON_RESUME + SWITCHED_ON_RESUME:
    before = _saved_value(saved, key)
    if key in now and before is not _ABSENT and before != now[key]:
      out.append((key, before, now[key]))
  return out
