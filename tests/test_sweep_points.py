"""scripts/sweep.py --points: a subset of a sweep's points in the sweep's own folder, which the
whole sweep (or a larger one) later completes in place. The points run tests/fake_trainer.py."""

import json
import os

import pytest

from tests.test_sweep import run_script, write_config
from vae_jax import sweep

FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fake_trainer.py')
BETAS = "h.sweep('objective.beta', [0.5, 1.0, 2.0])"


def run(config_path, workdir, points=None, sweep_expr=None):
  module = sweep.load_config_file(config_path)
  lines = []
  code = sweep.run_sweep(config_path, module.get_config(), [], workdir, points=points,
                         train_script=FAKE, env={**os.environ, 'FAKE_STEP_SECONDS': '0'},
                         log=lines.append)
  return code, '\n'.join(lines)


def statuses(workdir, names):
  return [sweep.point_status(os.path.join(workdir, n)) for n in names]


def test_points_run_a_subset_and_the_whole_sweep_completes_the_same_folder(tmp_path):
  config = write_config(tmp_path, BETAS)
  workdir = str(tmp_path / 'out')
  names = ['beta=0.5', 'beta=1.0', 'beta=2.0']
  code, out = run(config, workdir, points=['beta=1.0'])
  assert code == 0, out
  assert '--points: 1 of the sweep\'s 3 points' in out
  assert statuses(workdir, names) == ['new', 'done', 'new']
  with open(os.path.join(workdir, 'sweep.json')) as f:
    record = json.load(f)
  assert [p['name'] for p in record['points']] == names  # the whole sweep, recorded
  assert record['subsets'] == [['beta=1.0']]
  code, out = run(config, workdir)
  assert code == 0, out
  assert 'started beta=1.0' not in out and 'started beta=0.5' in out
  assert statuses(workdir, names) == ['done'] * 3
  # A sweep that keeps those points and adds one grows the folder in place.
  bigger = write_config(tmp_path, "h.sweep('objective.beta', [0.5, 1.0, 2.0, 4.0])",
                        name='bigger.py')
  code, out = run(bigger, workdir, points=['beta=4.0'])
  assert code == 0 and statuses(workdir, ['beta=4.0']) == ['done'], out
  with open(os.path.join(workdir, 'sweep.json')) as f:
    assert json.load(f)['subsets'] == [['beta=1.0'], ['beta=4.0']]


def test_an_unknown_point_is_refused_before_anything_runs(tmp_path):
  config = write_config(tmp_path, BETAS)
  with pytest.raises(sweep.SweepError, match=r'--points names beta=3\.0, .*beta=0\.5, beta=1\.0'):
    run(config, str(tmp_path / 'out'), points=['beta=3.0'])
  assert not os.path.exists(tmp_path / 'out')
  result = run_script(f'--config={config}', f'--workdir={tmp_path / "out"}', '--points=beta=3.0',
                      timeout=60)
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert '--points names beta=3.0' in result.stderr


def test_a_sweep_that_drops_a_recorded_point_is_refused(tmp_path):
  config = write_config(tmp_path, BETAS)
  workdir = str(tmp_path / 'out')
  assert run(config, workdir, points=['beta=0.5'])[0] == 0
  smaller = write_config(tmp_path, "h.sweep('objective.beta', [0.5, 1.0])", name='smaller.py')
  with pytest.raises(sweep.SweepError, match='different sweep'):
    run(smaller, workdir)
