"""Vectorised populations: one vmapped program equals separate runs, resumes bitwise, and a
diverging member neither stops nor corrupts the others."""

import json
import os

import jax
import numpy as np
import pytest

from tests.test_train import set_fields, tiny_config
from vae_jax import train
from vae_jax.config import validation
from vae_jax.train import population

# Four members that differ in every traced scalar a population may vary.
MEMBERS = [
    {},
    {'objective.beta': 0.5},
    {'seed': 3, 'optim.learning_rate': 3e-3},
    {'objective.kl_warmup_steps': 10, 'objective.free_bits': 0.5},
]


def member_config(overrides, **extra):
  # The 16x16 sprites: every property here is about members and steps, not image size.
  return set_fields(tiny_config(**{'mesh.data': 1, 'data.name': 'sprites/small', **extra}),
                    **overrides)


def train_records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return [r for r in records if r['kind'] == 'train']


def leaves(state):
  return [np.asarray(a) for a in jax.tree.leaves(state)]


@pytest.fixture(scope='module', params=['vmap', 'loop'])
def population_run(request, tmp_path_factory):
  root = tmp_path_factory.mktemp(f'population_{request.param}')
  configs = [member_config(o) for o in MEMBERS]
  dirs = [str(root / f'member{i}') for i in range(len(MEMBERS))]
  result = train.train_population(configs, dirs, mode=request.param)
  assert result['mode'] == request.param
  return configs, dirs, result


@pytest.fixture(scope='module')
def separate_runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('alone')
  out = []
  for i, overrides in enumerate(MEMBERS):
    workdir = str(root / f'alone{i}')
    out.append((workdir, train.train_and_evaluate(member_config(overrides), workdir)))
  return out


def test_population_equals_separate_runs(population_run, separate_runs):
  configs, dirs, result = population_run
  exact = result['mode'] == 'loop'  # the same compiled chunk as a separate run's
  assert [m['status'] for m in result['members']] == ['done'] * len(MEMBERS)
  for i, (config, pop_dir) in enumerate(zip(configs, dirs, strict=True)):
    alone_dir, alone = separate_runs[i]
    got = train_records(pop_dir)
    want = train_records(alone_dir)
    assert [r['step'] for r in got] == [r['step'] for r in want]
    for key in ('loss', 'neg_elbo', 'kl', 'learning_rate'):
      np.testing.assert_allclose([r[key] for r in got], [r[key] for r in want],
                                 rtol=0 if exact else 2e-5, err_msg=f'member {i} {key}')
    for a, b in zip(leaves(population.member(result['states'], i).params),
                    leaves(alone['state'].params), strict=True):
      if exact:
        np.testing.assert_array_equal(a, b)
      else:
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # The member's workdir is a full run: DONE with its own config, checkpoints, evaluations.
    with open(os.path.join(pop_dir, 'DONE')) as f:
      assert json.load(f) == train.done_record(config, 20)
    assert sorted(os.listdir(os.path.join(pop_dir, 'checkpoints'))) >= ['10', '20']
    evals = [r for r in (json.loads(x) for x in open(os.path.join(pop_dir, 'metrics.jsonl')))
             if r['kind'] == 'eval']
    assert {r['split'] for r in evals} == {config.data.valid_split, config.data.eval_split}
    want_eval = alone['eval'][config.data.eval_split]
    np.testing.assert_allclose(result['members'][i]['eval'][config.data.eval_split]['neg_elbo'],
                               want_eval['neg_elbo'], rtol=1e-4)


def test_members_start_from_their_own_seed(population_run):
  _, _, result = population_run
  first = population.member(result['states'], 0)
  other = population.member(result['states'], 2)  # seed 3
  assert not np.array_equal(np.asarray(first.key_data), np.asarray(other.key_data))


def test_population_resumes_bitwise(population_run, tmp_path):
  configs, _, straight = population_run
  mode = straight['mode']
  dirs = [str(tmp_path / f'm{i}') for i in range(len(MEMBERS))]
  half = [member_config(o, num_train_steps=10) for o in MEMBERS]
  first = train.train_population(half, dirs, mode=mode)
  assert first['step'] == 10
  resumed = train.train_population(configs, dirs, mode=mode)
  assert resumed['step'] == 20
  for a, b in zip(leaves(straight['states']), leaves(resumed['states']), strict=True):
    np.testing.assert_array_equal(a, b)


# The resume paths below are mode-independent (train.restore_or_init); loop mode is the cheap one.
@pytest.mark.parametrize('population_run', ['loop'], indirect=True)
def test_a_member_ahead_of_the_others_resumes_at_the_common_step(population_run, tmp_path):
  configs, _, straight = population_run
  dirs = [str(tmp_path / f'm{i}') for i in range(2)]
  mode = straight['mode']
  train.train_population([member_config(MEMBERS[0], num_train_steps=10),
                               member_config(MEMBERS[1], num_train_steps=10)], dirs, mode=mode)
  # Member 0 alone goes on to step 20 (as if a kill had come between the members' saves).
  train.train_and_evaluate(configs[0], dirs[0])
  resumed = train.train_population(configs[:2], dirs, mode=mode)
  assert resumed['step'] == 20
  for i in range(2):
    for a, b in zip(leaves(population.member(straight['states'], i).params),
                    leaves(population.member(resumed['states'], i).params), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_diverging_member_is_reported_and_the_others_finish(tmp_path):
  configs = [member_config({}, max_consecutive_nonfinite=2),
             member_config({'optim.learning_rate': 1e30}, max_consecutive_nonfinite=2)]
  dirs = [str(tmp_path / 'good'), str(tmp_path / 'bad')]
  result = train.train_population(configs, dirs, mode='vmap')
  good, bad = result['members']
  assert good['status'] == 'done' and os.path.exists(os.path.join(dirs[0], 'DONE'))
  assert bad['status'] == 'failed' and 'non-finite' in bad['reason']
  assert not os.path.exists(os.path.join(dirs[1], 'DONE'))
  alone = train.train_and_evaluate(configs[0], str(tmp_path / 'alone'))
  for a, b in zip(leaves(population.member(result['states'], 0).params),
                  leaves(alone['state'].params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert all(np.isfinite(a).all() for a in leaves(population.member(result['states'], 0)))


@pytest.mark.parametrize('overrides, key', [
    ({'model.latent_dim': 6}, 'model.latent_dim'),
    ({'data_seed': 1}, 'data_seed'),
    ({'batch_size': 64}, 'batch_size'),
    ({'optim.schedule': 'warmup_cosine'}, 'optim.schedule'),
])
def test_members_that_differ_in_a_static_field_are_refused(tmp_path, overrides, key):
  configs = [member_config({}), member_config(overrides)]
  with pytest.raises(validation.ConfigError, match=key.replace('.', r'\.')):
    train.train_population(configs, [str(tmp_path / 'a'), str(tmp_path / 'b')])
  assert not os.path.exists(tmp_path / 'a' / 'checkpoints')


def _stability_configs():
  stability = {'ema_decay': 0.9, 'optim.skip_factor': 1.05, 'optim.skip_window': 4,
               'max_consecutive_skipped': 10}
  return [member_config({**stability, **o}) for o in MEMBERS[:2]]


@pytest.fixture(scope='module')
def stability_alone(tmp_path_factory):
  """The two members of the EMA and skipping population, each run alone: the same separate runs
  for both modes, so they are trained once."""
  root = tmp_path_factory.mktemp('stability_alone')
  return [train.train_and_evaluate(config, str(root / f'alone{i}'))
          for i, config in enumerate(_stability_configs())]


@pytest.mark.parametrize('mode', ['loop', 'vmap'])
def test_population_with_ema_and_skipping_equals_separate_runs(tmp_path, mode, stability_alone):
  configs = _stability_configs()
  result = train.train_population(configs, [str(tmp_path / 'a'), str(tmp_path / 'b')],
                                       mode=mode)
  for i, config in enumerate(configs):
    alone = stability_alone[i]
    got = population.member(result['states'], i)
    assert int(got.skip['total']) == int(alone['state'].skip['total']) > 0  # the guard acted
    for a, b in zip(leaves(got), leaves(alone['state']), strict=True):
      np.testing.assert_allclose(a, b, rtol=0 if mode == 'loop' else 1e-4,
                                 atol=0 if mode == 'loop' else 1e-5)
    split = config.data.eval_split
    rec = result['members'][i]['eval'][split]
    assert rec['params'] == 'ema' == alone['eval'][split]['params']
    records = train_records(str(tmp_path / 'ab'[i]))
    assert sum(r['skipped_steps'] for r in records) == int(got.skip['total'])


@pytest.mark.parametrize('population_run', ['loop'], indirect=True)
def test_a_spent_budget_stops_the_population_and_a_rerun_resumes_bitwise(population_run,
                                                                         tmp_path):
  configs, _, straight = population_run
  mode = straight['mode']
  dirs = [str(tmp_path / f'm{i}') for i in range(2)]
  budget = [member_config(o, max_train_seconds=1e-3) for o in MEMBERS[:2]]
  first = train.train_population(budget, dirs, mode=mode)
  assert first['step'] == 5 and [m['status'] for m in first['members']] == ['stopped'] * 2
  for d in dirs:
    assert not os.path.exists(os.path.join(d, 'DONE'))
    assert os.listdir(os.path.join(d, 'checkpoints'))
    kinds = [json.loads(x)['kind'] for x in open(os.path.join(d, 'metrics.jsonl'))]
    assert 'eval' in kinds and kinds[-1] == 'stop'
  resumed = train.train_population(configs[:2], dirs, mode=mode)
  assert resumed['step'] == 20
  for i in range(2):
    for a, b in zip(leaves(population.member(straight['states'], i)),
                    leaves(population.member(resumed['states'], i)), strict=True):
      np.testing.assert_array_equal(a, b)


def test_a_vmapped_population_sharded_over_8_devices_equals_one_device(tmp_path):
  # The member axis is replicated and the batch is split over the mesh's data axis.
  results = []
  for devices in (1, -1):
    configs = [member_config(o, **{'mesh.data': devices, 'num_train_steps': 10})
               for o in MEMBERS[:2]]
    dirs = [str(tmp_path / f'{devices}_{i}') for i in range(2)]
    result = train.train_population(configs, dirs, mode='vmap')
    assert result['num_devices'] == (1 if devices == 1 else jax.device_count())
    results.append(result['states'])
  assert jax.device_count() == 8
  for a, b in zip(leaves(results[0]), leaves(results[1]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
