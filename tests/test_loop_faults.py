"""The one loop's resume and end paths where copies of it once went wrong: a member resumed at a
step it does not verifiably hold, a failed member that pins later resumes, DONE for work not
done, init_from at a common step 0, a stop request during an evaluation, the guard's view of an
interval, the momentum loss's start, and a divergence's message."""

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_checkpoint import RUN_FLAGS, SCRIPT
from tests.test_config import ROOT
from tests.test_population import MEMBERS, leaves, member_config
from tests.test_train import build
from vae_jax import experiment, train
from vae_jax.config import validation
from vae_jax.evaluate import elbo
from vae_jax.train import loop, population
from vae_jax.train import step as step_lib


def records(workdir, kind=None):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    out = [json.loads(line) for line in f if line.strip()]
  return [r for r in out if kind is None or r['kind'] == kind]


def read_json(path):
  with open(path) as f:
    return json.load(f)


def assert_bitwise(a, b):
  for x, y in zip(leaves(a), leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def test_a_member_whose_common_step_is_unverified_resumes_where_every_member_holds_one(tmp_path):
  keep = {'checkpoint.keep': 5}
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  # a alone to 30 (steps 10, 20, 30 saved), b alone to 20: as after a kill between the saves.
  a_alone = train.train_and_evaluate(member_config(MEMBERS[0], num_train_steps=30, **keep), a)
  train.train_and_evaluate(member_config(MEMBERS[1], num_train_steps=20, **keep), b)
  os.remove(os.path.join(a, 'checkpoints', 'digests', '20.json'))  # a failed digest write
  result = train.train_population([member_config(MEMBERS[0], num_train_steps=30, **keep),
                                   member_config(MEMBERS[1], num_train_steps=30, **keep)],
                                  [a, b], mode='loop')
  assert result['step'] == 30
  got = [population.member(result['states'], i) for i in range(2)]
  assert [int(s.step) for s in got] == [30, 30]
  assert_bitwise(got[0], a_alone['state'])  # resumed at 10, trained on its own steps' batches
  steps = [r['step'] for r in records(a, 'train')]
  assert steps == sorted(steps) and len(steps) == len(set(steps)) == 6


def test_a_diverged_member_is_marked_and_left_out_of_a_later_resume(tmp_path):
  good, bad = str(tmp_path / 'c'), str(tmp_path / 'd')
  configs = [member_config({}, max_consecutive_nonfinite=2, **{'checkpoint.keep': 1}),
             member_config({'optim.learning_rate': 1e30}, max_consecutive_nonfinite=2,
                           **{'checkpoint.keep': 1})]
  first = train.train_population(configs, [good, bad], mode='loop')
  assert [m['status'] for m in first['members']] == ['done', 'failed']
  failed = read_json(os.path.join(bad, 'FAILED'))
  assert failed['step'] == 5 and 'non-finite' in failed['reason']
  assert failed['config_sha256'] == train.done_record(configs[1], 0)['config_sha256']
  # num_train_steps raised (under a constant schedule it cannot undo the divergence).
  longer = [member_config({}, num_train_steps=30, max_consecutive_nonfinite=2,
                          **{'checkpoint.keep': 1}),
            member_config({'optim.learning_rate': 1e30}, num_train_steps=30,
                          max_consecutive_nonfinite=2, **{'checkpoint.keep': 1})]
  held = sorted(os.listdir(os.path.join(bad, 'checkpoints')))
  second = train.train_population(longer, [good, bad], mode='loop')
  assert [m['status'] for m in second['members']] == ['done', 'failed']
  assert second['step'] == 30 and 'non-finite' in second['members'][1]['reason']
  assert read_json(os.path.join(good, 'DONE'))['step'] == 30
  assert sorted(os.listdir(os.path.join(bad, 'checkpoints'))) == held  # left out untouched
  assert not os.path.exists(os.path.join(bad, 'DONE'))


def test_a_diverged_single_run_writes_failed_and_its_rerun_is_refused_until_the_config_changes(
    tmp_path):
  workdir = str(tmp_path / 'run')
  bad = member_config({'optim.learning_rate': 1e30}, max_consecutive_nonfinite=2)
  with pytest.raises(FloatingPointError, match='non-finite'):
    train.train_and_evaluate(bad, workdir)
  assert read_json(os.path.join(workdir, 'FAILED'))['step'] == 5
  assert records(workdir, 'failed')[-1]['step'] == 5
  with pytest.raises(validation.ConfigError, match='FAILED'):
    train.train_and_evaluate(bad, workdir)
  fixed = member_config({}, max_consecutive_nonfinite=2)
  assert train.train_and_evaluate(fixed, workdir)['step'] == 20
  assert not os.path.exists(os.path.join(workdir, 'FAILED'))
  assert os.path.exists(os.path.join(workdir, 'DONE'))


def test_a_finished_run_rerun_with_a_new_evaluation_field_evaluates_before_done(tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(member_config({}), workdir)
  before = read_json(os.path.join(workdir, 'DONE'))
  rerun = member_config({}, eval_num_samples=4)
  out = train.train_and_evaluate(rerun, workdir)
  assert out['step'] == 20
  with_nll = [r for r in records(workdir, 'eval') if r['step'] == 20 and 'nll' in r]
  assert {r['split'] for r in with_nll} == {rerun.data.valid_split, rerun.data.eval_split}
  done = read_json(os.path.join(workdir, 'DONE'))
  assert done['config_sha256'] != before['config_sha256']
  assert done == train.done_record(rerun, 20)
  n = len(records(workdir))
  train.train_and_evaluate(rerun, workdir)  # DONE names this config: nothing to do
  assert len([r for r in records(workdir) if r['kind'] == 'eval']) == len(
      [r for r in records(workdir)[:n] if r['kind'] == 'eval'])


def test_a_population_resumed_at_step_0_initialises_from_init_from(tmp_path):
  source = str(tmp_path / 'source')
  train.train_and_evaluate(member_config({}, num_train_steps=10), source)
  tune = member_config({}, init_from=source)
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  train.train_and_evaluate(member_config({}, num_train_steps=10, init_from=source), a)
  other = member_config(MEMBERS[1], init_from=source)  # init_from is shared by a population
  result = train.train_population([tune, other], [a, b], mode='loop')
  alone = train.train_and_evaluate(tune, str(tmp_path / 'alone'))
  assert_bitwise(population.member(result['states'], 0), alone['state'])


def test_a_signal_during_an_evaluation_stops_at_that_boundary(tmp_path, monkeypatch):
  original = elbo.evaluate
  sent = []

  def evaluate_then_signal(*args, **kwargs):
    if not sent:
      sent.append(True)
      os.kill(os.getpid(), signal.SIGTERM)
    return original(*args, **kwargs)

  monkeypatch.setattr(elbo, 'evaluate', evaluate_then_signal)
  workdir = str(tmp_path / 'run')
  out = train.train_and_evaluate(member_config({}, eval_every_steps=10), workdir)
  assert out['stopped'] == 'signal' and out['step'] == 10
  assert records(workdir)[-1]['kind'] == 'stop' and records(workdir)[-1]['step'] == 10
  assert '10' in os.listdir(os.path.join(workdir, 'checkpoints'))
  assert not os.path.exists(os.path.join(workdir, 'DONE'))


def _poisoned_step(exp, first, last):
  """The train step, except that steps first..last-1 (0-based) count as non-finite ones."""
  real = step_lib.make_train_step(exp)

  def step_fn(state, images, index):
    new, metrics = real(state, images, index)
    poison = (state.step >= first) & (state.step < last)
    run = jnp.where(poison, state.nonfinite_run + 1, new.nonfinite_run)
    new = new.replace(nonfinite_run=run)
    metrics = dict(metrics, nonfinite=jnp.where(poison, 1, metrics['nonfinite']),
                   nonfinite_run=run)
    return new, metrics

  return step_fn


def test_the_guard_sees_a_run_that_ended_before_the_boundary():
  config = member_config({}, max_consecutive_nonfinite=2)
  exp = build(config)
  state = experiment.init_state(exp)
  feeder = train.ChunkFeeder(exp, 0)
  chunk = step_lib.jit_train_chunk(exp, 'memory', _poisoned_step(exp, 2, 6))
  sums = loop.IntervalSums()
  for s in (0, 5):  # steps 3..6 (1-based) poisoned, then finite again: run 0 at step 10
    state, out = chunk(state, *feeder(s))
    sums.add(jax.tree.map(lambda v: jnp.asarray(v)[None] if v.ndim == 0 else v, out))
  assert int(state.nonfinite_run) == 0
  why = loop.guard(config, sums.runs(), 0)
  assert '4 consecutive train steps (steps 3 to 6)' in why


def test_the_momentum_loss_starts_at_the_first_applied_step():
  config = member_config({})
  exp = build(config)
  good = experiment.init_state(exp)
  step = jax.jit(step_lib.make_train_step(exp))
  feeder = train.ChunkFeeder(exp, 0)
  source, (positions, index) = feeder(0)
  images = lambda i: jnp.asarray(source)[jnp.asarray(positions)[i]]
  poisoned = good.replace(params=jax.tree.map(lambda p: p * jnp.nan, good.params))
  after0, m0 = step(poisoned, images(0), jnp.asarray(index)[0])
  assert int(m0['nonfinite']) == 1  # step 0 not applied
  after1, m1 = step(after0.replace(params=good.params), images(1), jnp.asarray(index)[1])
  assert int(m1['nonfinite']) == 0
  np.testing.assert_allclose(float(after1.loss_momentum), float(m1['loss']), rtol=1e-6)


def test_a_diverging_run_ends_in_its_message_not_a_traceback(tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  proc = subprocess.run(
      [sys.executable, SCRIPT, *RUN_FLAGS, '--config.optim.learning_rate=1e30',
       '--config.max_consecutive_nonfinite=2', '--config.mesh.data=1',
       '--config.data.name=sprites/small',  # any data diverges at this rate: the small sprites
       f'--workdir={tmp_path / "run"}'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert 'error: the run failed: ' in proc.stderr and 'non-finite' in proc.stderr
  assert os.path.exists(tmp_path / 'run' / 'FAILED')
