"""The sweep runner's answers to a user's mistakes and to failures: one clear line, exit 2.

None of these tests trains: points are planned, their on-disk marks (DONE, FAILED) written by
the test, and the runner's commands replaced by small Python programs where a run is needed.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.test_sweep import REPO, SCRIPT, run_script, write_config
from vae_jax import sweep
from vae_jax.sweep import hyper, results


def planned_sweep(tmp_path, sweep_expr="h.sweep('objective.beta', [0.5, 2.0])"):
  """A sweep planned and recorded in tmp_path/out (nothing run): (config path, planned)."""
  config = write_config(tmp_path, sweep_expr)
  module = sweep.load_config_file(config)
  workdir = str(tmp_path / 'out')
  planned = sweep.plan(config, module.get_config(), [], workdir)
  sweep.record_sweep(workdir, sweep.sweep_record(config, [], planned))
  return config, planned


def write_mark(point, name, **fields):
  os.makedirs(point['workdir'], exist_ok=True)
  record = {'step': 20, 'config_sha256': hyper.config_digest(point['config']), **fields}
  with open(os.path.join(point['workdir'], name), 'w') as f:
    f.write(json.dumps(record) + '\n')


def test_get_sweep_that_raises_is_one_line_exit_2(tmp_path):
  config = write_config(tmp_path, "h.sweep('objective.beta', [v / 0 for v in [0.5, 1.0]])")
  result = run_script(f'--config={config}', f'--workdir={tmp_path / "out"}', timeout=60)
  assert result.returncode == 2, result.stderr
  assert 'Traceback' not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  line = next(i for i, text in enumerate(open(config).read().splitlines(), 1)
              if 'v / 0' in text)
  assert f'{config}: get_sweep(h) raised ZeroDivisionError: ' in lines[0]
  assert f'(line {line})' in lines[0]
  assert not os.path.exists(tmp_path / 'out')


def test_an_empty_sweep_says_so():
  with pytest.raises(hyper.SweepError, match='got an empty list'):
    hyper.check_points([])


@pytest.mark.parametrize('sweep_expr, first, second', [
    ("h.chain(h.sweep('objective.beta', [1]), h.sweep('objective.beta', [1.0]))",
     {'objective.beta': 1}, {'objective.beta': 1.0}),
    ("h.chain(h.sweep('model.hidden', [(32,)]), h.sweep('model.hidden', [[32]]))",
     {'model.hidden': (32,)}, {'model.hidden': [32]}),
])
def test_points_equal_after_coercion_are_duplicates(tmp_path, sweep_expr, first, second):
  config = write_config(tmp_path, sweep_expr)
  module = sweep.load_config_file(config)
  with pytest.raises(hyper.SweepError, match='same config') as info:
    sweep.plan(config, module.get_config(), [], str(tmp_path / 'out'))
  assert repr(first) in str(info.value) and repr(second) in str(info.value)


def test_a_duplicate_point_is_named_by_its_overrides():
  with pytest.raises(hyper.SweepError, match='more than once') as info:
    hyper.point_names([{'seed': 1}, {'seed': 1}])
  assert "{'seed': 1}" in str(info.value) and 'seed=1' not in str(info.value)


def test_best_ranks_only_finished_points():
  rows = [{'status': 'partial', 'valid_neg_elbo': 1.0}, {'status': 'done', 'valid_neg_elbo': 2.0},
          {'status': 'failed', 'valid_neg_elbo': 0.5}]
  assert results._best(rows) == 1  # noqa: SLF001
  assert results._best(rows[:1]) is None  # noqa: SLF001


def test_failed_point_is_failed_with_its_reason(tmp_path):
  config, planned = planned_sweep(tmp_path)
  bad, good = planned
  reason = '99 consecutive train steps had a non-finite loss. Lower the learning rate.'
  write_mark(bad, 'FAILED', reason=reason)
  write_mark(good, 'DONE')
  assert sweep.point_status(bad['workdir'], bad['config']) == 'failed'
  assert sweep.point_status(bad['workdir']) == 'failed'  # --report: no config at hand
  # A FAILED of another config (changed since) is retried: the point is new again.
  other = hyper.apply_point(bad['config'], {'optim.learning_rate': 1e-4})
  assert sweep.point_status(bad['workdir'], other) == 'new'
  lines = []
  code = sweep.run_sweep(config, sweep.load_config_file(config).get_config(), [],
                         str(tmp_path / 'out'), log=lines.append)
  text = '\n'.join(lines)
  assert code == 1
  assert 'started' not in text  # a failed point is not rerun with the same config
  assert f'{bad["name"]}: failed at step 20: {reason}' in text
  rows = sweep.report(str(tmp_path / 'out'), log=lines.append)
  assert [(r['status'], r['reason']) for r in rows] == [('failed', reason), ('done', '')]
  with open(tmp_path / 'out' / 'results.md') as f:
    assert reason in f.read()


def test_a_failed_point_stays_failed_when_only_neutral_fields_changed(tmp_path):
  """The loop leaves a member out whose FAILED matches by failure digest (a changed logging
  interval cannot undo a divergence), so the status says failed too, not new."""
  from vae_jax.config import failure
  _, planned = planned_sweep(tmp_path)
  bad = planned[0]
  write_mark(bad, 'FAILED', reason='diverged.', config_sha256='0' * 64,
             failure_sha256=failure.failure_digest(bad['config']))
  logged = hyper.apply_point(bad['config'], {'log_every_steps': 1})
  assert sweep.point_status(bad['workdir'], logged) == 'failed'
  slower = hyper.apply_point(bad['config'], {'optim.learning_rate': 1e-5})
  assert sweep.point_status(bad['workdir'], slower) == 'new'


_FAKE_POPULATION = '''
import json, sys
for name, mark, record in json.loads(sys.argv[1]):
  with open(name + '/' + mark, 'w') as f:
    f.write(json.dumps(record) + '\\n')
print('Traceback (most recent call last):')
print('  File "train_population.py", line 3, in <module>')
print('    main()')
print('RuntimeError: 1 of 3 members failed')
sys.exit(1)
'''


def test_a_population_failure_is_reported_per_member(tmp_path):
  _, planned = planned_sweep(tmp_path, "h.sweep('objective.beta', [0.5, 1.0, 2.0])")
  job = sweep.population_job('c.py', [], str(tmp_path / 'out'), planned)
  marks = []
  for i, p in enumerate(planned):
    os.makedirs(p['workdir'])
    record = {'step': 20, 'config_sha256': hyper.config_digest(p['config'])}
    if i == 1:
      marks.append((p['workdir'], 'FAILED', {**record, 'step': 10, 'reason': 'diverged.'}))
    else:
      marks.append((p['workdir'], 'DONE', record))
  job['command'] = [sys.executable, '-c', _FAKE_POPULATION, json.dumps(marks)]
  lines = []
  codes = sweep.run_local([job], 1, dict(os.environ), log=lines.append)
  text = '\n'.join(lines)
  assert 'FAILED population' not in text, text
  assert f'finished {planned[0]["name"]}' in text and f'finished {planned[2]["name"]}' in text
  assert f'FAILED {planned[1]["name"]} at step 10: diverged.' in text
  assert codes == {planned[0]['name']: 0, planned[1]['name']: 1, planned[2]['name']: 0}


_FAKE_DIVERGED_RUN = '''
import sys
print('I0101 step 100: loss nan')
def main():
  raise FloatingPointError('99 consecutive train steps had a non-finite loss. Lower it.')
try:
  main()
except FloatingPointError:
  import traceback
  traceback.print_exc()
  sys.exit(1)
'''


def test_a_failed_point_shows_its_message_not_a_traceback(tmp_path):
  _, planned = planned_sweep(tmp_path)
  point = dict(planned[0], command=[sys.executable, '-c', _FAKE_DIVERGED_RUN])
  lines = []
  sweep.run_local([point], 1, dict(os.environ), log=lines.append)
  text = '\n'.join(lines)
  assert 'FloatingPointError: 99 consecutive train steps had a non-finite loss.' in text
  assert 'step 100: loss nan' in text  # the lines before the traceback stay
  assert 'Traceback' not in text and 'File "' not in text, text


def test_a_second_runner_is_refused_naming_the_first(tmp_path):
  config, _ = planned_sweep(tmp_path)
  workdir = str(tmp_path / 'out')
  with sweep.runner_lock(workdir):
    result = run_script(f'--config={config}', f'--workdir={workdir}', timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert 'Traceback' not in result.stderr
    assert 'another sweep runner' in result.stderr and f'pid {os.getpid()}' in result.stderr
    assert 'started' not in result.stdout
    # --report only reads the workdirs: it needs no lock.
    result = run_script(f'--workdir={workdir}', '--report', timeout=60)
    assert result.returncode == 0, result.stderr


def test_slurm_without_slurm_is_refused(tmp_path):
  config = write_config(tmp_path)
  empty = tmp_path / 'bin'
  empty.mkdir()
  env = dict(os.environ, PATH=str(empty))
  result = subprocess.run(
      [sys.executable, SCRIPT, f'--config={config}', f'--workdir={tmp_path / "out"}',
       '--executor=slurm'], capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
      check=False)
  assert result.returncode == 2, result.stdout + result.stderr
  assert 'sbatch' in result.stderr and '--executor=local' in result.stderr
  assert 'Traceback' not in result.stderr
  assert not list(tmp_path.glob('out/*/sweep.log'))  # nothing ran
  sweep.check_slurm(cluster='local')  # the test hook for submitit's local executor stays


def test_report_that_cannot_write_prints_the_table_then_exit_2(tmp_path):
  _, planned = planned_sweep(tmp_path)
  workdir = tmp_path / 'out'
  # Root ignores permission bits: a folder where the file should go fails the write for anyone.
  (workdir / 'results.csv').mkdir()
  result = run_script(f'--workdir={workdir}', '--report', timeout=60)
  assert result.returncode == 2, result.stdout + result.stderr
  assert 'Traceback' not in result.stderr
  assert all(f'| {p["name"]} |' in result.stdout for p in planned), result.stdout
  assert str(workdir / 'results.csv') in result.stderr and 'could not' in result.stderr


def test_a_damaged_sweep_json_is_a_clear_error(tmp_path):
  config, _ = planned_sweep(tmp_path)
  path = tmp_path / 'out' / 'sweep.json'
  path.write_text(path.read_text()[:40])  # cut, as outside damage leaves it
  for args in (['--report'], [f'--config={config}']):
    result = run_script(f'--workdir={tmp_path / "out"}', *args, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert 'Traceback' not in result.stderr
    assert str(path) in result.stderr and 'cannot be read' in result.stderr


def test_a_point_is_reported_at_its_step_selected_on_validation(tmp_path):
  # Evaluations at steps 10, 20 and 30; validation is best at 20, the newest step is 30.
  _, planned = planned_sweep(tmp_path)
  point = planned[0]
  write_mark(point, 'DONE', step=30)
  with open(os.path.join(point['workdir'], 'metrics.jsonl'), 'w') as f:
    for step, valid, test in ((10, 9.0, 9.5), (20, 7.0, 7.25), (30, 8.0, 8.5)):
      for split, value in (('train[90%:]', valid), ('test', test)):
        f.write(json.dumps({'step': step, 'kind': 'eval', 'split': split, 'neg_elbo': value,
                            'neg_elbo_stderr': 0.1, 'recon': value - 1, 'kl': 1.0}) + '\n')
  row = results.point_row(point['workdir'], point['name'], point['point'], point['config'])
  assert row['step'] == 30 and row['selected_step'] == 20
  assert (row['valid_neg_elbo'], row['test_neg_elbo'], row['test_recon']) == (7.0, 7.25, 6.25)
  md = results._markdown([row], ['objective.beta'])
  assert 'selected step' in md and 'lowest validation neg_elbo' in md
