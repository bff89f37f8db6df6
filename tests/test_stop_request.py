"""DIR/STOP_REQUEST: a run (or one member of a population) stops cleanly at its next evaluation,
leaves a workdir that stays stopped while the file is there and resumes exactly once it is gone.
"""

import json
import os

import numpy as np
import pytest

from tests.test_population import leaves, member_config
from vae_jax import train
from vae_jax.storage import requests
from vae_jax.storage import writers as metrics_lib

# Evaluations every 10 steps, checkpoints only every 40: the checkpoint of the stop step is the
# stop's own.
STOP = {'num_train_steps': 40, 'eval_every_steps': 10, 'checkpoint_every_steps': 40}


def records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def checkpoint_steps(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())


@pytest.fixture
def request_at_train_step(monkeypatch):
  """request(workdir, step): DIR/STOP_REQUEST appears when the run logs its `train` record of
  `step`, between two evaluations (what a search's pruner does while the run trains)."""
  wanted = {}
  write = metrics_lib.MetricWriter.write

  def spy(self, step, kind, record):
    write(self, step, kind, record)
    where = os.path.dirname(os.path.abspath(self._path))  # DIR/metrics.jsonl
    for workdir, at in wanted.items():
      if kind == 'train' and step == at and where == workdir:
        requests.request_stop(workdir, 'pruned', 'by the test')

  monkeypatch.setattr(metrics_lib.MetricWriter, 'write', spy)
  return lambda workdir, step: wanted.__setitem__(os.path.abspath(workdir), step)


def test_a_stop_request_stops_the_run_at_its_next_evaluation_and_it_resumes_exactly(
    tmp_path, request_at_train_step):
  config = member_config({}, **STOP)
  workdir = str(tmp_path / 'run')
  request_at_train_step(workdir, 15)
  out = train.train_and_evaluate(config, workdir)
  assert out['stopped'] == 'stop_request' and out['step'] == 20
  recs = records(workdir)
  assert max(r['step'] for r in recs if r['kind'] == 'train') == 20
  assert sorted({r['step'] for r in recs if r['kind'] == 'eval'}) == [10, 20]
  stop, = [r for r in recs if r['kind'] == 'stop']
  assert stop['step'] == 20 and stop['reason'] == 'pruned'
  assert stop['request'] == 'STOP_REQUEST' and stop['selected_step'] in (10, 20)
  assert checkpoint_steps(workdir)[-1] == 20  # the stop's checkpoint (every 40 otherwise)
  assert not os.path.exists(os.path.join(workdir, 'DONE'))

  # While the request stays, a rerun trains nothing and writes nothing.
  before = os.path.getsize(os.path.join(workdir, 'metrics.jsonl'))
  again = train.train_and_evaluate(config, workdir)
  assert again['stopped'] == 'stop_request' and again['state'] is None and again['step'] == 20
  assert os.path.getsize(os.path.join(workdir, 'metrics.jsonl')) == before
  assert not os.path.exists(os.path.join(workdir, 'DONE'))

  # Without it, the same command resumes from step 20 and ends where an uninterrupted run does.
  os.remove(requests.stop_request_path(workdir))
  resumed = train.train_and_evaluate(config, workdir)
  assert resumed['stopped'] is None and resumed['step'] == 40
  assert os.path.exists(os.path.join(workdir, 'DONE'))
  straight = train.train_and_evaluate(config, str(tmp_path / 'straight'))
  for a, b in zip(leaves(resumed['state']), leaves(straight['state']), strict=True):
    np.testing.assert_array_equal(a, b)


def test_a_stopped_member_leaves_the_population_and_the_others_finish(
    tmp_path, request_at_train_step):
  configs = [member_config(o, **STOP) for o in ({}, {'objective.beta': 0.5})]
  dirs = [str(tmp_path / 'a'), str(tmp_path / 'b')]
  request_at_train_step(dirs[1], 25)
  out = train.train_population(configs, dirs, mode='loop')
  assert out['stopped'] is None and out['step'] == 40
  assert [m['status'] for m in out['members']] == ['done', 'stop_request']
  assert out['members'][1]['reason'] == 'pruned'
  a, b = records(dirs[0]), records(dirs[1])
  assert max(r['step'] for r in a if r['kind'] == 'train') == 40
  assert max(r['step'] for r in b if r['kind'] == 'train') == 30  # stopped at its evaluation
  assert [(r['step'], r['reason']) for r in b if r['kind'] == 'stop'] == [(30, 'pruned')]
  assert not [r for r in a if r['kind'] == 'stop']
  assert os.path.exists(os.path.join(dirs[0], 'DONE'))
  assert not os.path.exists(os.path.join(dirs[1], 'DONE'))
  assert checkpoint_steps(dirs[1])[-1] == 30
  # Its state is the one of its stop, not trained further in the loop.
  assert int(np.asarray(train.population.member(out['states'], 1).step)) == 30
