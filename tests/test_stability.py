"""Training stability: gradient skipping that cannot lock, the parameter EMA, and the
wall-clock budget (the step stays traced and vmappable; resumes stay exact)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vae_jax
from tests.test_train import build, tiny_config
from vae_jax import evaluate as eval_lib
from vae_jax import experiment, optim, train
from vae_jax import state as state_lib
from vae_jax.config import compat, validation
from vae_jax.storage import checkpoint as ckpt_lib
from vae_jax.storage import writers as metrics_lib
from vae_jax.train import loop


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_bitwise(a, b):
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def _chunks(config, num_chunks, hparams_at=None, snapshot_at=None):
  """Runs fused chunks from step 0; hparams_at = (step, {name: value}) changes a traced
  hyperparameter there. Returns (state, [chunk sums on the host]), and with snapshot_at = n
  also a host copy of the state after n chunks (the chunk donates the device state)."""
  exp = build(config)
  state = experiment.init_state(exp)
  feeder = train.ChunkFeeder(exp, 0)
  fn = train.jit_train_chunk(exp, 'memory')
  sums, snapshot = [], None
  k = config.steps_per_call
  for i in range(num_chunks):
    if i == snapshot_at:
      snapshot = jax.device_get(state)
    if hparams_at and i * k == hparams_at[0]:
      state = state.replace(hparams={**state.hparams, **{
          n: jnp.asarray(v, jnp.float32) for n, v in hparams_at[1].items()}})
    state, m = fn(state, *feeder(i * k))
    sums.append(jax.device_get(m))
  return (state, sums) if snapshot_at is None else (state, sums, snapshot)


# -- 1. gradient skipping -----------------------------------------------------------------------

# At step 30 beta jumps from 1 to 1000: a lasting change of the gradient norm (about 100 before,
# about 10^4 after, measured on this config), as a KL warm-up or a schedule can make.
JUMP = (30, {'beta': 1000.0})


def _skip_config(**optim_fields):
  return tiny_config(steps_per_call=10, num_train_steps=60, **{
      'mesh.data': 1, 'optim.skip_window': 10,
      **{f'optim.{k}': v for k, v in optim_fields.items()}})


@pytest.fixture(scope='module')
def skip_runs():
  """60 steps with beta jumping at step 30, under the fixed and the adaptive rule."""
  out = {}
  for name, fields in (('fixed', {'skip_threshold': 500.0}),
                       ('adaptive', {'skip_factor': 5.0})):
    config = _skip_config(**fields)
    # `before`: the state at step 30, just before the jump, of the same run.
    after, sums, before = _chunks(config, 6, hparams_at=JUMP, snapshot_at=3)
    out[name] = (before, after, sums)
  return out


def test_a_fixed_threshold_locks_after_a_lasting_rise_of_the_norm(skip_runs):
  before, after, sums = skip_runs['fixed']
  assert [int(s['skipped']) for s in sums] == [0, 0, 0, 10, 10, 10]  # every update from 30 on
  assert int(after.skip['total']) == int(after.skip['run']) == 30
  # Nothing trains any more: the parameters are those of step 30, and the limit never moves.
  _assert_bitwise((after.params, after.opt_state), (before.params, before.opt_state))
  assert float(optim.skip_limit(_skip_config(skip_threshold=500.0), after.skip)) == 500.0
  assert int(before.skip['total']) == 0


def test_the_adaptive_rule_rides_out_the_rise_and_keeps_training(skip_runs):
  _, after, sums = skip_runs['adaptive']
  skipped = [int(s['skipped']) for s in sums]
  assert skipped[:3] == [0, 0, 0]  # ordinary noise and the early rise are left alone
  window = 10
  assert 1 <= sum(skipped) <= window - (window - 1) // 2  # at most half the window in a row
  assert int(after.skip['run']) == 0 and int(after.skip['total']) == sum(skipped)
  losses = [float(s['loss']) / 10 for s in sums]
  assert losses[5] < 0.5 * losses[3], losses  # it trains on in the new regime


def test_skip_counters_are_exact_on_a_hand_made_sequence():
  config = _skip_config(skip_factor=2.0)
  config.optim.skip_window = 4
  nan = float('nan')
  # Window 4 (lower median = 2nd smallest); nothing is skipped until it is full.
  norms = [1.0, 1.0, 9.0, 1.0, 3.0, nan, 1.5, 2.5, 9.0, 9.0, 9.0, 9.0]
  want = [0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 0]
  # 5: the ring holds [1, 1, 9, 1]: limit 2 x 1 = 2, 3 > 2 skipped (and recorded: [3, 1, 9, 1]).
  # 6: not finite: the non-finite guard's; nothing recorded, the run of skips kept.
  # 7: limit 2 x 1 = 2, 1.5 passes (ring [3, 1.5, 9, 1]); 8: limit 2 x 1.5 = 3, 2.5 passes
  # ([3, 1.5, 2.5, 1]); 9: limit 3, 9 skipped ([3, 1.5, 2.5, 9]); 10: limit 2 x 2.5 = 5,
  # skipped ([9, 1.5, 2.5, 9]); 11: limit 5, skipped ([9, 9, 2.5, 9]); 12: limit 2 x 9 = 18,
  # 9 passes: three in a row, the most a window of 4 allows (4 - 3 // 2 = 3).
  skip = optim.init_skip_state(config)
  got, runs = [], []
  for n in norms:
    n = jnp.float32(n)
    finite = jnp.isfinite(n)
    skipped = finite & (n > optim.skip_limit(config, skip))
    skip = optim.update_skip_state(skip, n, finite, skipped)
    got.append(int(skipped))
    runs.append(int(skip['run']))
  assert got == want
  assert runs == [0, 0, 0, 0, 1, 1, 0, 0, 1, 2, 3, 0]
  assert int(skip['total']) == 4 and int(skip['count']) == 11


def test_a_skipped_step_changes_nothing_but_the_counters():
  # A threshold below every norm: all 10 updates are skipped, at exact counts per interval.
  config = tiny_config(steps_per_call=5, num_train_steps=10, ema_decay=0.9, **{
      'mesh.data': 1, 'optim.skip_threshold': 1e-6})
  exp = build(config)
  start = jax.device_get(experiment.init_state(exp))
  state, sums = _chunks(config, 2)
  assert [int(s['skipped']) for s in sums] == [5, 5]
  assert [int(s['skipped_total']) for s in sums] == [5, 10]
  assert int(state.step) == 10 and int(state.skip['run']) == 10
  assert int(state.nonfinite_total) == 0
  _assert_bitwise((state.params, state.opt_state, state.ema, state.loss_momentum),
                  (start.params, start.opt_state, start.ema, start.loss_momentum))
  assert int(state.skip['count']) == 10  # the norms were still recorded
  chunk = {k: v if k == 'steps' else np.asarray(v)[None] for k, v in sums[1].items()}
  rec = loop.IntervalSums.train_record(chunk, 0, config.batch_size, 1.0)
  assert rec['skipped_steps'] == 5 and rec['skipped_total'] == 10


def test_the_step_vmaps_over_a_population_with_skipping_and_ema():
  config = tiny_config(steps_per_call=1, ema_decay=0.9, **{
      'mesh.data': 1, 'optim.skip_factor': 5.0, 'optim.skip_window': 4})
  exp = build(config)
  step = train.make_train_step(exp)
  base = experiment.init_state(exp)
  states = [base.replace(hparams={**base.hparams, 'beta': jnp.float32(b)}) for b in (1.0, 0.5)]
  feeder = train.ChunkFeeder(exp, 0)
  source, (positions, index) = feeder(0)
  from vae_jax.data.preprocess import gather_images
  images, idx = gather_images(source, positions[0]), index[0]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
  together, _ = jax.jit(jax.vmap(step, in_axes=(0, None, None)))(stacked, images, idx)
  for i, s in enumerate(states):
    alone, _ = jax.jit(step)(s, images, idx)
    member = jax.tree.map(lambda x, i=i: x[i], together)
    for a, b in zip(_leaves(alone), _leaves(member), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# -- 2. the EMA of the parameters ----------------------------------------------------------------


def test_ema_equals_the_recursion_by_hand():
  d = 0.9
  config = tiny_config(steps_per_call=1, ema_decay=d, **{'mesh.data': 1})
  exp = build(config)
  state = experiment.init_state(exp)
  feeder = train.ChunkFeeder(exp, 0)
  fn = train.jit_train_chunk(exp, 'memory')
  want = [np.asarray(x, np.float32) for x in _leaves(state.params)]
  for step in range(4):
    state, _ = fn(state, *feeder(step))
    want = [np.float32(d) * e + (np.float32(1) - np.float32(d)) * p
            for e, p in zip(want, _leaves(state.params), strict=True)]
  for a, b in zip(_leaves(state.ema['params']), want, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert float(state.ema['init_weight']) == pytest.approx(d ** 4, rel=1e-6)


def test_checkpoint_round_trip_keeps_the_ema_and_the_guard_bitwise(tmp_path):
  config = tiny_config(steps_per_call=5, ema_decay=0.9, **{'optim.skip_factor': 5.0})
  exp = build(config)
  state, _ = _chunks(config, 2)
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), config)
  checkpointer.save(10, state, config, exp.image_shape)
  restored, _ = checkpointer.restore_good(exp.abstract_state)
  checkpointer.close()
  _assert_bitwise(restored, state)
  assert restored.ema is not None and restored.skip is not None


def test_a_checkpoint_saved_before_the_optional_parts_existed_restores(tmp_path):
  # The earlier layout: the same fields without `ema` and `skip`, and a config without the
  # new fields (they ran at their defaults: off).
  config = tiny_config(steps_per_call=5)
  exp = build(config)
  state, _ = _chunks(config, 2)
  old = {k: v for k, v in vars(state).items() if k not in ('ema', 'skip')}
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), config)
  checkpointer.save(10, old, config, exp.image_shape)
  restored, meta = checkpointer.restore_good(exp.abstract_state)
  checkpointer.close()
  assert restored.ema is None and restored.skip is None
  _assert_bitwise(restored, state)


def _ema_config(**overrides):
  # One device: the EMA, the guard and the budget, not the device count, are what these check.
  return tiny_config(ema_decay=0.8, **{'mesh.data': 1, 'optim.skip_factor': 5.0,
                                       'optim.skip_window': 4, 'max_consecutive_skipped': 10,
                                       **overrides})


@pytest.fixture(scope='module')
def straight_ema(tmp_path_factory):
  """20 steps with the EMA and the adaptive guard on, evaluated every 5 steps."""
  workdir = str(tmp_path_factory.mktemp('ema'))
  result = train.train_and_evaluate(_ema_config(eval_every_steps=5), workdir)
  return workdir, result


def test_the_loop_evaluates_the_ema_and_warns_only_early(straight_ema):
  workdir, result = straight_ema
  records = metrics_lib.read_metrics(workdir, 'eval')
  train_recs = metrics_lib.read_metrics(workdir, 'train')
  assert [r['skipped_total'] for r in train_recs] == [0, 0, 0, 0]  # every update applied
  assert {r['params'] for r in records} == {'ema'}
  warned = sorted({r['step'] for r in records if 'ema_warning' in r})
  # The initial weight 0.8^t: 0.33 at 5, 0.107 at 10 (> 0.1: warned), 0.035 at 15.
  assert warned == [5, 10]
  weights = {r['step']: r['ema_init_weight'] for r in records}
  assert weights[15] == pytest.approx(0.8 ** 15, rel=1e-5)
  # The records are the EMA's numbers (model selection reads them), not the train state's.
  exp, state = result['experiment'], result['state']
  valid = exp.config.data.valid_split
  ema_eval = eval_lib.evaluate(exp, state.ema['params'], valid)
  state_eval = eval_lib.evaluate(exp, state.params, valid)
  assert result['eval'][valid]['neg_elbo'] == pytest.approx(ema_eval['neg_elbo'], rel=1e-5)
  assert ema_eval['neg_elbo'] != pytest.approx(state_eval['neg_elbo'], rel=1e-5)


def test_evaluate_picks_the_ema_by_default_says_so_and_files_the_train_state_apart(straight_ema):
  workdir, result = straight_ema
  logged = []
  report = eval_lib.evaluate_run(workdir, num_samples=2, log=logged.append)
  assert report['params'] == 'ema' and 'ema_warning' not in report
  assert report['ema_init_weight'] == pytest.approx(0.8 ** 20, rel=1e-5)
  assert any('EMA parameters' in line for line in logged)
  assert report['neg_elbo'] == pytest.approx(result['eval']['test']['neg_elbo'], rel=1e-5)
  early = eval_lib.evaluate_run(workdir, step=10, num_samples=2, log=logged.append)
  assert early['params'] == 'ema' and 'dominated' in early['ema_warning']
  state = eval_lib.evaluate_run(workdir, num_samples=2, params='state', log=logged.append)
  assert state['params'] == 'state' and 'ema_init_weight' not in state
  assert state['neg_elbo'] != pytest.approx(report['neg_elbo'], rel=1e-5)
  # The two evaluations of one step, split and K keep their own files: the train state's does
  # not set the EMA's aside as if the code or the data had changed.
  names = sorted(os.listdir(os.path.join(workdir, 'eval')))
  assert names == ['step_10_test_k2.json', 'step_10_test_k2.npz', 'step_20_test_k2.json',
                   'step_20_test_k2.npz', 'step_20_test_k2_state.json',
                   'step_20_test_k2_state.npz'], names
  with open(os.path.join(workdir, 'eval', 'step_20_test_k2.json')) as f:
    assert json.load(f)['params'] == 'ema'
  assert not any('WARNING' in line and 'kept' in line for line in logged), logged
  run = vae_jax.load_run(workdir)
  assert run.params_kind == 'ema'
  _assert_bitwise(run.params, run.state.ema['params'])


def test_resume_with_ema_and_skipping_is_exact(straight_ema, tmp_path):
  _, straight = straight_ema
  workdir = str(tmp_path)
  first = train.train_and_evaluate(_ema_config(num_train_steps=10, eval_every_steps=5), workdir)
  assert first['step'] == 10
  resumed = train.train_and_evaluate(_ema_config(eval_every_steps=5), workdir)
  assert resumed['step'] == 20
  _assert_bitwise(resumed['state'], straight['state'])


def test_ema_and_skipping_switched_on_at_resume_start_there(tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config(num_train_steps=10, **{'mesh.data': 1}), workdir)
  resumed = train.train_and_evaluate(_ema_config(), workdir)['state']
  assert float(resumed.ema['init_weight']) == pytest.approx(0.8 ** 10, rel=1e-5)
  assert int(resumed.skip['count']) == 10  # the guard saw the resumed run's 10 steps
  change = metrics_lib.read_metrics(workdir, 'config_change')
  assert change[0]['step'] == 10 and change[0]['ema_decay'] == 0.8
  assert change[0]['optim.skip_factor'] == 5.0


# -- 3. the wall-clock budget ---------------------------------------------------------------------


def test_a_spent_budget_stops_at_a_chunk_evaluates_saves_and_resumes_exactly(straight_ema,
                                                                           tmp_path):
  _, straight = straight_ema
  workdir = str(tmp_path)
  # 1 ms: spent before the first chunk ends (the budget counts loading and compilation).
  stopped = train.train_and_evaluate(_ema_config(eval_every_steps=5, max_train_seconds=1e-3),
                                     workdir)
  assert stopped['stopped'] == 'max_train_seconds' and stopped['step'] == 5
  assert not os.path.exists(os.path.join(workdir, 'DONE'))
  checkpointer = ckpt_lib.Checkpointer(workdir, _ema_config(), create=False)
  assert checkpointer.all_steps() == [5]
  checkpointer.close()
  assert {r['step'] for r in metrics_lib.read_metrics(workdir, 'eval')} == {5}
  stop = metrics_lib.read_metrics(workdir, 'stop')
  assert stop[0]['step'] == 5 and stop[0]['reason'] == 'max_train_seconds'
  # Raised (it is resume-neutral), the run continues exactly where it stopped.
  resumed = train.train_and_evaluate(_ema_config(eval_every_steps=5, max_train_seconds=600.0),
                                     workdir)
  assert resumed['stopped'] is None and resumed['step'] == 20
  assert json.load(open(os.path.join(workdir, 'DONE')))['step'] == 20
  _assert_bitwise(resumed['state'], straight['state'])


# -- config rules -------------------------------------------------------------------------------


@pytest.mark.parametrize('overrides, match', [
    ({'optim.skip_threshold': -1.0}, 'skip_threshold=-1.0 must be >= 0'),
    ({'optim.skip_factor': 0.5}, 'well above 1'),
    ({'optim.skip_window': 0}, 'skip_window=0 must be a positive int'),
    ({'optim.skip_factor': 5.0, 'max_consecutive_skipped': 20}, 'below 51'),
    ({'ema_decay': 1.0}, r'must be in \[0, 1\)'),
    ({'max_train_seconds': -5.0}, 'max_train_seconds=-5.0 must be >= 0'),
])
def test_bad_stability_fields_are_explained(overrides, match):
  with pytest.raises(validation.ConfigError, match=match):
    validation.validate_config(tiny_config(**overrides))


def test_stability_fields_may_change_on_resume_and_are_reported():
  saved = json.loads(tiny_config().to_json())
  now = tiny_config(ema_decay=0.999, max_train_seconds=60.0, max_consecutive_skipped=7,
                    **{'optim.skip_factor': 10.0})
  compat.check_compatible(saved, now, 'W')
  assert compat.config_changes(saved, now) == [('ema_decay', 0.0, 0.999),
                                                 ('optim.skip_factor', 0.0, 10.0)]
  # A checkpoint from before the fields existed ran with them at their defaults (off).
  for key in ('ema_decay', 'max_train_seconds', 'max_consecutive_skipped'):
    del saved[key]
  for key in ('skip_threshold', 'skip_factor', 'skip_window'):
    del saved['optim'][key]
  compat.check_compatible(saved, tiny_config(), 'W')
  assert compat.config_changes(saved, tiny_config()) == []
  assert eval_lib.saved_config(saved).ema_decay == 0.0
  target = state_lib.restore_target(build(tiny_config()).abstract_state,
                                    eval_lib.saved_config(saved))
  assert target.ema is None and target.skip is None
