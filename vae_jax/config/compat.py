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
