"""Evaluation faults, each test-first: the automatic chunk on several processes, masking of
padded rows, and one compiled evaluation for a population of different seeds."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from tests.test_evaluate import (
  LinearGaussian,
  _approximate_posterior,
  _data,
  _decoder,
  _from_input,
  _linear_experiment,
  _params,
)
from tests.test_train import set_fields, tiny_config
from vae_jax import evaluate, sharding, train
from vae_jax.evaluate import periodic

# ------------------------------------------------------------------------------------------
# REVIEW 1.10: default_chunk_size counted the processes twice.


@pytest.mark.parametrize('processes', [1, 4])
def test_default_chunk_size_counts_each_device_once_whatever_the_process_count(
    monkeypatch, processes):
  # The mesh already spans every process's devices: its data axis is the global device count,
  # so the rows per device are batch / that count, whatever jax.process_count() says.
  mesh = Mesh(np.asarray(jax.devices()[:8]), (sharding.DATA_AXIS,))
  exp = type('Exp', (), {'mesh': mesh, 'model': None})()  # a family of one row per sample
  monkeypatch.setattr(jax, 'process_count', lambda: processes)
  per_device = 1024 // 8
  assert evaluate.default_chunk_size(exp, 1024) == evaluate.ROWS_PER_CHUNK // per_device


# ------------------------------------------------------------------------------------------
# REVIEW 2.5: masking by multiplication let a padded row's inf make the sums NaN.


@dataclasses.dataclass(frozen=True)
class InfOnPadding(LinearGaussian):
  """The linear-Gaussian family, except that its recon is +inf on the all-zero input: the
  image of a padded row (no real example of _data is exactly zero)."""

  def terms(self, params, x, keys):
    out = super().terms(params, x, keys)
    padded = jnp.all(_from_input(x) == 0.0, axis=-1)  # [B]
    recon = jnp.where(padded, jnp.inf, out['recon'])
    return {**out, 'recon': recon, 'neg_elbo': recon + out['kl']}


def test_a_non_finite_term_in_a_padded_row_does_not_change_the_result():
  dec = _decoder()
  params = _params(dec, *_approximate_posterior(dec))
  _, arrays = _data(100)  # batches of 64: the second has 28 padded rows
  base = _linear_experiment(full=False, batch=64)
  rep = sharding.replicated(base.mesh)  # the loop's eval step places params as the state does
  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=rep), params)
  base = dataclasses.replace(base, abstract_state=types.SimpleNamespace(params=abstract))
  inf_exp = dataclasses.replace(base, model=InfOnPadding(full=False))
  want = evaluate.evaluate(base, params, 'test', arrays=arrays)
  # The step as written (op by op), and compiled. XLA's CPU simplifier happens to turn a
  # multiplication by a converted mask into a select, so only the first can show 0 * inf; the
  # masking must not rely on that rewrite.
  for step in (evaluate.make_eval_step(inf_exp), None):
    got = evaluate.evaluate(inf_exp, params, 'test', arrays=arrays, eval_step=step)
    assert got['num_examples'] == 100
    for key in ('recon', 'recon_stderr', 'neg_elbo', 'neg_elbo_stderr', 'kl'):
      assert np.isfinite(got[key]), (key, got[key])
      assert got[key] == pytest.approx(want[key], rel=1e-5), key


# ------------------------------------------------------------------------------------------
# REVIEW 2.7: a population compiled its evaluation (and held the eval arrays) once per seed.

SEEDS = (0, 3, 7)


def _seed_config(seed):
  # The 16x16 sprites: compiling once and loading once do not depend on the image size.
  return set_fields(tiny_config(eval_num_samples=2, **{'mesh.data': 1,
                                                      'data.name': 'sprites/small'}), seed=seed)


def test_a_population_of_three_seeds_compiles_one_evaluation_and_loads_the_data_once(
    tmp_path, monkeypatch):
  lowered, loads, calls = [], [], []
  inside = {'member': None}

  def listener(event, duration, **kw):
    if event == '/jax/core/compile/jaxpr_to_mlir_module_duration' and inside['member']:
      lowered.append(inside['member'])

  original_call = periodic.PeriodicEval.__call__

  def spy_call(self, step, *args, **kwargs):
    calls.append(self.workdir)
    inside['member'] = self.workdir
    try:
      return original_call(self, step, *args, **kwargs)
    finally:
      inside['member'] = None

  original_load = periodic.data_lib.load_arrays
  monkeypatch.setattr(periodic.PeriodicEval, '__call__', spy_call)
  monkeypatch.setattr(periodic.data_lib, 'load_arrays',
                      lambda *a, **k: loads.append(a[1]) or original_load(*a, **k))
  dirs = [str(tmp_path / f'seed{s}') for s in SEEDS]
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    result = train.train_population([_seed_config(s) for s in SEEDS], dirs, mode='loop',
                                    log=lambda *a: None)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert [m['status'] for m in result['members']] == ['done'] * 3
  assert calls == dirs  # each member evaluated once (step 20), in order
  # The first member's evaluation compiles the programs; the other seeds reuse them.
  assert lowered and set(lowered) == {dirs[0]}, sorted(set(lowered))
  config = _seed_config(0)
  assert sorted(loads) == sorted({config.data.valid_split, config.data.eval_split})
  # And the numbers are each seed's own: a member's evaluation equals its separate run's.
  alone = train.train_and_evaluate(_seed_config(SEEDS[2]), str(tmp_path / 'alone'))
  for split, want in alone['eval'].items():
    got = result['members'][2]['eval'][split]
    assert set(got) == set(want)
    for key in ('neg_elbo', 'recon', 'kl', 'nll', 'nll_stderr', 'ess', 'active_units'):
      if key in want:
        assert got[key] == want[key], (split, key, got[key], want[key])
  other = result['members'][0]['eval'][config.data.eval_split]
  assert other['nll'] != got['nll']  # another seed, other evaluation draws
