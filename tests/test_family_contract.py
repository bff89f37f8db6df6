"""The model contract (vae_jax/models/contract.py): every family satisfies it, its declared
capabilities match its terms, and a family of one's own (tests/toy_family.py, one file, no
library file edited) trains, evaluates with K samples, is analysed and is swept."""

import csv
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import toy_family
from tests.test_train import tiny_config
from vae_jax import analysis, evaluate, models, train
from vae_jax.config import validation
from vae_jax.config.validation import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE, B, K = (8, 8, 1), 4, 6
TOY = 'tests.toy_family'

FAMILIES = {
    'vae': {},
    'vae_full': {'model.posterior': 'full'},
    'vamp': {'model.vae.prior': 'vamp', 'model.vae.num_pseudo_inputs': 3},
    'hvae': {'model.kind': 'hvae', 'model.hvae.groups': (3,), 'model.hvae.width': 16},
    'toy': {'model.kind': TOY},
}


def family_config(name, **overrides):
  config = tiny_config()
  config.model.hidden = (16,)
  config.model.latent_dim = 3
  with config.unlocked():
    config.model.toy = toy_family.get_config()
  for key, value in {**FAMILIES[name], **overrides}.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.mark.parametrize('name', list(FAMILIES))
def test_every_family_provides_the_contract_it_declares(name):
  config = family_config(name)
  validation.validate_config(config)
  caps = models.capabilities(config.model)
  model = models.build_model(config.model, SHAPE)
  assert isinstance(model, models.Model)
  assert model.capabilities == caps
  x = jnp.asarray(np.random.default_rng(0).random((B, *SHAPE)) < 0.4, jnp.float32)
  params = model.init(jax.random.key(0), x)
  terms = jax.jit(model.terms)(params, x, jax.random.key(1))
  for k in ('recon', 'kl', 'neg_elbo'):
    assert terms[k].shape == (B,), k
  np.testing.assert_allclose(terms['neg_elbo'], terms['recon'] + terms['kl'], rtol=1e-6)
  units = sum(model.unit_groups)
  # Declared capabilities are what the terms carry, and each part adds up to the kl term.
  assert ('kl_units' in terms) == caps.kl_units
  if caps.kl_units:
    assert terms['kl_units'].shape == (B, units)
    np.testing.assert_allclose(terms['kl_units'].sum(-1), terms['kl'], rtol=1e-5, atol=1e-5)
  groups = [k for k in terms if k.startswith('kl/')]
  assert bool(groups) == caps.group_kl
  if groups:
    np.testing.assert_allclose(sum(terms[k] for k in groups), terms['kl'], rtol=1e-5, atol=1e-5)
  stats = model.posterior_stats(params, x, jax.random.key(2))
  assert stats['mean'].shape == stats['var'].shape == (B, units)
  # Chunks of the K samples concatenate to the unchunked log-weights.
  keys = jax.random.split(jax.random.key(3), B)
  whole = model.log_weights(params, x, keys, K)
  parts = [model.log_weights(params, x, keys, 2, sample_offset=o, encoded=model.encode(params, x))
           for o in (0, 2, 4)]
  assert whole.shape == (K, B)
  np.testing.assert_allclose(jnp.concatenate(parts), whole, rtol=1e-5, atol=1e-4)
  drawn = model.sample(params, jax.random.key(4), 2)
  assert drawn['means'].shape == drawn['samples'].shape == (2, *SHAPE)
  assert model.reconstruct(params, x).shape == (B, *SHAPE)
  assert model.decode_mean(params, stats['mean']).shape == (B, *SHAPE)


@pytest.mark.parametrize('overrides, match', [
    ({'objective.free_bits_per': 'unit', 'model.vae.prior': 'vamp'}, 'not a sum over units'),
    ({'objective.free_bits_per': 'group'}, 'reports no groups'),
    ({'model.kind': 'tests.no_such_family'}, 'cannot be imported'),
    ({'model.kind': 'tests.test_train'}, 'is not a model family: it lacks NAME'),
    ({'model.kind': 'vea'}, 'not a built-in model family'),
])
def test_cross_family_rules_read_what_the_family_declares(overrides, match):
  with pytest.raises(ConfigError, match=match):
    validation.validate_config(family_config('vae', **overrides))


def test_a_family_without_its_sub_config_is_told_how_to_add_it():
  config = tiny_config(**{'model.kind': TOY})
  with pytest.raises(ConfigError, match=r'config.model.toy.*get_config'):
    validation.validate_config(config)


def test_the_family_validates_its_own_fields():
  with pytest.raises(ConfigError, match='model.toy.width'):
    validation.validate_config(family_config('toy', **{'model.toy.width': 0}))


SWEEP = '''
from configs import default
from tests import toy_family


def get_config():
  c = default.get_config()
  c.batch_size = 32
  c.num_train_steps = 10
  c.steps_per_call = 10
  c.log_every_steps = 10
  c.eval_every_steps = 10
  c.checkpoint_every_steps = 10
  c.data.name = 'sprites/small'
  c.model.kind = 'tests.toy_family'
  c.model.toy = toy_family.get_config()
  c.model.latent_dim = 3
  c.compilation_cache = ''
  return c


def get_sweep(h):
  return h.sweep('objective.beta', [0.5, 1.0])
'''


@pytest.mark.slow
def test_a_family_of_ones_own_trains_evaluates_analyses_and_sweeps(tmp_path):
  # One device, one fused call of 10 steps: the family, not the mesh, is what this checks.
  config = family_config('toy', **{'data.name': 'sprites/small', 'num_train_steps': 10,
                                   'steps_per_call': 10, 'log_every_steps': 10,
                                   'checkpoint_every_steps': 10, 'eval_every_steps': 10,
                                   'eval_num_samples': 3, 'mesh.data': 1})
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  # The loop's periodic evaluation took K samples through the family's log_weights.
  records = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  evals = [r for r in records if r['kind'] == 'eval']
  assert evals and all(np.isfinite(r['nll']) for r in evals)
  out = evaluate.evaluate_run(workdir, num_samples=5, log=lambda *a: None)
  assert out['num_samples'] == 5 and np.isfinite(out['nll']) and out['step'] == 10
  # Its kl_units are the per-unit KL to its own prior.
  assert out['kl_per_unit_to'] == 'prior'
  summary = analysis.analyze(workdir, log=None, tensorboard=False)
  page = open(os.path.join(workdir, 'analysis', 'index.html')).read()
  assert 'learned-prior toy VAE' in page, summary
  # A sweep of it, vectorised as one population of two members (the family is found in the
  # children through PYTHONPATH, as a researcher's module would be).
  path = tmp_path / 'toy_sweep.py'
  path.write_text(SWEEP)
  env = {**os.environ, 'PYTHONPATH': REPO}
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', 'sweep.py'), f'--config={path}',
       f'--workdir={tmp_path / "sweep"}', '--vectorize',
       '--env=XLA_FLAGS=--xla_force_host_platform_device_count=1'],
      capture_output=True, text=True, cwd=REPO, env=env, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp_path / 'sweep' / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 2 and all(r['status'] == 'done' for r in rows), rows


def test_a_config_saved_before_the_family_fields_moved_reads_as_the_same_experiment():
  """config.json and checkpoint metas of older runs name model.hvae_groups, model.prior, ...:
  compat.upgrade reads them under today's names, so they resume, evaluate and compare."""
  from vae_jax.config import compat
  config = family_config('hvae', **{'model.hvae.groups': (4,)})
  old = json.loads(config.to_json())
  hv = old['model'].pop('hvae')
  old['model'].update(hvae_groups=hv['groups'], hvae_width=hv['width'],
                      hvae_residual_posterior=hv['residual_posterior'])
  vae = old['model'].pop('vae')
  old['model'].update(prior=vae['prior'], num_pseudo_inputs=vae['num_pseudo_inputs'])
  compat.check_compatible(old, config, 'old')  # the same experiment: no error
  loaded = compat.saved_config(old)
  assert tuple(loaded.model.hvae.groups) == (4,) and 'hvae_groups' not in loaded.model
  old['model']['hvae_groups'] = [2]
  with pytest.raises(compat.IncompatibleCheckpointError, match='model.hvae.groups'):
    compat.check_compatible(old, config, 'old')
