"""Resuming with a changed learning rate or beta: the config's values take effect from the
resumed step, and the change is recorded with its step."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from tests.test_train import build, tiny_config
from vae_jax import experiment, train
from vae_jax import state as state_lib
from vae_jax.storage import writers as metrics_lib

CHANGED = {'optim.learning_rate': 3e-3, 'objective.beta': 0.5}


def _config(**overrides):
  # One device and the 16x16 sprites: what a resume applies does not depend on either.
  return tiny_config(**{'mesh.data': 1, 'data.name': 'sprites/small', **overrides})


def _by_hand(first, second, steps_each):
  """steps_each steps with `first`'s hyperparameters, then as many with `second`'s."""
  exp = build(first)
  state = experiment.init_state(exp)
  feeder = train.ChunkFeeder(exp, 0)
  fn = train.jit_train_chunk(exp, 'memory')
  k = first.steps_per_call
  for step in range(0, 2 * steps_each, k):
    if step == steps_each:
      state = state.replace(hparams=state_lib.hparams_from_config(second))
    state, _ = fn(state, *feeder(step))
  return state


@pytest.fixture(scope='module')
def ten_steps(tmp_path_factory):
  """A finished 10-step run's workdir, copied by each test that resumes it."""
  workdir = str(tmp_path_factory.mktemp('ten'))
  train.train_and_evaluate(_config(num_train_steps=10), workdir)
  return workdir


def test_resume_applies_the_new_learning_rate_and_beta_from_the_resumed_step(tmp_path,
                                                                             ten_steps):
  workdir = shutil.copytree(ten_steps, str(tmp_path / 'w'))
  resumed = train.train_and_evaluate(_config(**CHANGED), workdir)
  state = resumed['state']
  assert float(state.hparams['learning_rate']) == np.float32(3e-3)
  assert float(state.hparams['beta']) == 0.5
  want = _by_hand(_config(), _config(**CHANGED), 10)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(want.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # The logs say what was applied, and from which step.
  records = metrics_lib.read_metrics(workdir)
  change = [r for r in records if r['kind'] == 'config_change']
  assert len(change) == 1 and change[0]['step'] == 10
  assert change[0]['optim.learning_rate'] == 3e-3 and change[0]['objective.beta'] == 0.5
  rates = {r['step']: r['learning_rate'] for r in records if r['kind'] == 'train'}
  np.testing.assert_allclose([rates[5], rates[10], rates[15], rates[20]],
                             [1e-3, 1e-3, 3e-3, 3e-3], rtol=1e-6)
  with open(os.path.join(workdir, 'config_history.jsonl')) as f:
    history = [json.loads(line) for line in f]
  assert [h['step'] for h in history] == [0, 10]
  assert history[0]['config']['optim']['learning_rate'] == 1e-3  # the first config is kept
  assert sorted(tuple(c) for c in history[1]['changes']) == [
      ('objective.beta', 1.0, 0.5), ('optim.learning_rate', 1e-3, 3e-3)]
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['optim']['learning_rate'] == 3e-3


def test_an_unchanged_resume_records_no_change(tmp_path, ten_steps):
  workdir = shutil.copytree(ten_steps, str(tmp_path / 'w'))
  train.train_and_evaluate(_config(), workdir)
  assert not metrics_lib.read_metrics(workdir, 'config_change')
