"""Model selection and early stopping: the step selected on validation is what readers report by
default (and say so), it survives rotation and damage, and early stopping ends a run cleanly and
resumes with its count."""

import json
import math
import os

import numpy as np
import pytest

from tests.test_population import leaves, member_config
from vae_jax import evaluate, train
from vae_jax.config import validation
from vae_jax.evaluate import selection
from vae_jax.storage import checkpoint as ckpt_lib


def records(workdir, kind):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    out = [json.loads(line) for line in f if line.strip()]
  return [r for r in out if r['kind'] == kind]


def valid_values(workdir, config):
  """{step: validation neg_elbo} of the loop's evaluations."""
  return {r['step']: r['neg_elbo'] for r in records(workdir, 'eval')
          if r['split'] == config.data.valid_split}


# -- the tracker -------------------------------------------------------------------------------


def test_tracker_counts_evaluations_without_an_improvement_of_min_delta():
  t = selection.Tracker()
  assert t.update(10, 50.0, 1.0)             # the first evaluation is the best so far
  assert t.update(20, 49.5, 1.0)             # a new best, but not by min_delta: counts
  assert (t.best_step, t.since_improvement, t.reference) == (20, 1, 50.0)
  assert not t.update(30, 49.9, 1.0)
  assert t.since_improvement == 2 and t.exhausted(2) and not t.exhausted(3)
  assert not t.exhausted(0)                  # patience 0: never
  assert t.update(40, 48.0, 1.0)             # 2 nats under the reference: an improvement
  assert (t.best_step, t.since_improvement, t.reference) == (40, 0, 48.0)
  assert not t.update(50, math.nan, 1.0) and t.since_improvement == 1
  assert selection.Tracker.from_json(json.loads(json.dumps(t.to_json()))) == t
  assert selection.Tracker.from_json(None) == selection.Tracker()


def test_step_flag_takes_best_last_or_a_number_and_refuses_the_rest():
  assert selection.parse_step(None) == 'best'
  assert selection.parse_step('Last') == 'last'
  assert selection.parse_step('120') == 120 and selection.parse_step(7) == 7
  with pytest.raises(validation.ConfigError, match='best .*last'):
    selection.parse_step('newest')


@pytest.mark.parametrize('overrides, match', [
    ({'early_stopping.patience': -1}, 'patience'),
    ({'early_stopping.min_delta': float('nan')}, 'min_delta'),
    ({'early_stopping.min_delta': -0.1}, 'min_delta'),
])
def test_bad_early_stopping_fields_are_config_errors(overrides, match):
  with pytest.raises(validation.ConfigError, match=match):
    validation.validate_config(member_config(overrides))


# -- the loop ----------------------------------------------------------------------------------

# Evaluations every 10 steps, checkpoints every 30: the best evaluation must be saved anyway.
SELECT = {'num_train_steps': 60, 'eval_every_steps': 10, 'checkpoint_every_steps': 30,
          'checkpoint.keep': 1}


@pytest.fixture(scope='module')
def bumped_run(tmp_path_factory):
  """A run whose newest step is not its best: 30 good steps, then 30 at a learning rate that
  makes the validation bound worse."""
  workdir = str(tmp_path_factory.mktemp('selection') / 'run')
  config = member_config({}, **{**SELECT, 'num_train_steps': 30})
  train.train_and_evaluate(config, workdir)
  config = member_config({}, **{**SELECT, 'optim.learning_rate': 0.2})
  train.train_and_evaluate(config, workdir)
  values = valid_values(workdir, config)
  best = min(values, key=values.get)
  assert best != 60 and best % 30, ('the test needs a best step that is neither the newest nor '
                                    f'a checkpoint_every_steps step: {values}')
  return workdir, config, values, best


def test_the_best_evaluation_is_saved_beside_the_newest_and_ranked_first(bumped_run):
  workdir, config, values, best = bumped_run
  checkpointer = ckpt_lib.Checkpointer(workdir, config, create=False)
  try:
    assert checkpointer.all_steps() == [best, 60]  # keep=1: the newest, and the best kept
    ranked = checkpointer.ranked_steps()
    assert [s for _, s in ranked] == [best, 60]
    assert ranked[0][0] == pytest.approx(values[best])
    meta = checkpointer.restore_meta(60)
  finally:
    checkpointer.close()
  assert meta['selection']['best_step'] == best
  assert meta['selection']['best_value'] == pytest.approx(values[best])


def test_evaluate_reports_the_selected_step_by_default_and_says_why(bumped_run, tmp_path):
  workdir, _, values, best = bumped_run
  report = evaluate.evaluate_run(workdir, num_samples=2, out_dir=str(tmp_path / 'a'))
  assert report['step'] == best
  assert report['selected'] == f'best validation neg_elbo {values[best]:.2f} at step {best}'
  last = evaluate.evaluate_run(workdir, step='last', num_samples=2, out_dir=str(tmp_path / 'b'))
  assert last['step'] == 60 and last['selected'] == 'the newest step 60 (--step=last)'
  assert last['neg_elbo'] != report['neg_elbo']


def test_a_damaged_selected_step_falls_back_to_the_next_best_with_a_warning(
    bumped_run, tmp_path, capsys):
  import shutil
  workdir, _, values, best = bumped_run
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy)
  state_dir = os.path.join(copy, 'checkpoints', str(best), 'state')
  victim = max((os.path.join(root, f) for root, _, files in os.walk(state_dir) for f in files),
               key=os.path.getsize)
  with open(victim, 'r+b') as f:
    byte = f.read(1)
    f.seek(0)
    f.write(bytes([byte[0] ^ 0xFF]))
  report = evaluate.evaluate_run(copy, num_samples=2)
  assert report['step'] == 60
  assert report['selected'] == f'best validation neg_elbo {values[60]:.2f} at step 60'
  err = capsys.readouterr().err
  assert f'checkpoint step {best}, the best on validation' in err and 'next best' in err


# Patience 2 with a min_delta no evaluation can reach: the first evaluation sets the reference,
# the next two count, so the run stops at its third evaluation (step 30 of 60).
EARLY = {'num_train_steps': 60, 'eval_every_steps': 10, 'checkpoint_every_steps': 20,
         'early_stopping.patience': 2, 'early_stopping.min_delta': 1e9}


def test_early_stopping_ends_the_run_cleanly_and_a_rerun_does_nothing(tmp_path):
  workdir = str(tmp_path / 'run')
  config = member_config({}, **EARLY)
  out = train.train_and_evaluate(config, workdir)
  assert out['stopped'] == 'early_stopping' and not out['preempted'] and out['step'] == 30
  values = valid_values(workdir, config)
  assert sorted(values) == [10, 20, 30]
  best = min(values, key=values.get)
  stop, = records(workdir, 'stop')
  assert stop['step'] == 30 and stop['reason'] == 'early_stopping'
  assert stop['selected_step'] == best and stop['evaluations_without_improvement'] == 2
  assert stop['selected'].endswith(f'{values[best]:.2f} at step {best}')
  with open(os.path.join(workdir, 'DONE')) as f:
    assert json.load(f)['step'] == 30
  checkpointer = ckpt_lib.Checkpointer(workdir, config, create=False)
  try:
    assert {best, 30} <= set(checkpointer.all_steps())
  finally:
    checkpointer.close()
  before = os.path.getsize(os.path.join(workdir, 'metrics.jsonl'))
  again = train.train_and_evaluate(config, workdir)
  assert again['step'] == 30
  assert os.path.getsize(os.path.join(workdir, 'metrics.jsonl')) == before  # nothing trained


def test_a_resumed_run_keeps_its_patience_count_and_stops_at_the_same_step_bitwise(tmp_path):
  straight = train.train_and_evaluate(
      member_config({}, **{**EARLY, 'early_stopping.patience': 3}), str(tmp_path / 'a'))
  assert straight['stopped'] == 'early_stopping' and straight['step'] == 40
  # The same run in two invocations: to step 20 (evaluations 10 and 20: one counted), then on.
  resumed = str(tmp_path / 'b')
  first = train.train_and_evaluate(
      member_config({}, **{**EARLY, 'early_stopping.patience': 3, 'num_train_steps': 20}),
      resumed)
  assert first['stopped'] is None and first['step'] == 20
  second = train.train_and_evaluate(
      member_config({}, **{**EARLY, 'early_stopping.patience': 3}), resumed)
  assert second['stopped'] == 'early_stopping' and second['step'] == 40
  for x, y in zip(leaves(straight['state']), leaves(second['state']), strict=True):
    np.testing.assert_array_equal(x, y)
  a, b = records(str(tmp_path / 'a'), 'stop')[0], records(resumed, 'stop')[0]
  for key in ('selected_step', 'selected', 'evaluations_without_improvement'):
    assert a[key] == b[key]


def test_a_population_stops_early_when_every_member_has_run_out_of_patience(tmp_path):
  configs = [member_config(o, **EARLY) for o in ({}, {'seed': 3})]
  dirs = [str(tmp_path / 'a'), str(tmp_path / 'b')]
  out = train.train_population(configs, dirs, mode='loop')
  assert out['stopped'] == 'early_stopping' and out['step'] == 30
  assert [m['status'] for m in out['members']] == ['done', 'done']
  for config, workdir in zip(configs, dirs, strict=True):
    values = valid_values(workdir, config)
    stop, = records(workdir, 'stop')
    assert stop['selected_step'] == min(values, key=values.get)
    assert os.path.exists(os.path.join(workdir, 'DONE'))
