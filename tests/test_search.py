"""Searches: the space checked before anything runs, the study runner's pruning, results, resume
after SIGKILL and refusals (with tests/fake_trainer.py standing in for the trainer: seconds per
study), and a vectorised batch of real trials equal to the same trials run one by one."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.test_sweep import ONE_DEVICE, REPO
from vae_jax import sweep
from vae_jax.sweep import space
from vae_jax.sweep import study as study_lib

pytest.importorskip('optuna', reason="Optuna is not installed (pip install -e '.[search]')")

SCRIPT = os.path.join(REPO, 'scripts', 'search.py')
FAKE = os.path.join(REPO, 'tests', 'fake_trainer.py')

CONFIG = '''
from configs import default


def get_config():
  c = default.get_config()
  c.data.name = 'sprites/small'  # 16x16
  c.batch_size = 32
  c.num_train_steps = {steps}
  c.steps_per_call = 10
  c.log_every_steps = 10
  c.eval_every_steps = 10
  c.checkpoint_every_steps = 10
  c.model.hidden = (32,)
  c.model.latent_dim = 4
  c.compilation_cache = ''
  c.checkpoint.async_save = False
  return c


def get_search(s):
  return {search}
'''
# The stand-in trainer diverges above beta 7.5: a quarter of this range in the logarithm.
SEARCH = ("s.search(s.float('objective.beta', 0.25, 16.0, log=True), "
          "s.int('model.latent_dim', 2, 8), num_trials={trials}, pruner={pruner}, "
          "startup_trials={startup}, seed={seed})")


def write_config(tmp_path, search=None, steps=60, trials=8, pruner="s.median(startup_trials=2)",
                 startup=3, seed=0, name='search.py'):
  search = search or SEARCH.format(trials=trials, pruner=pruner, startup=startup, seed=seed)
  path = tmp_path / name
  path.write_text(CONFIG.format(steps=steps, search=search))
  return str(path)


def search_of(tmp_path, search):
  path = write_config(tmp_path, search)
  module = sweep.load_config_file(path)
  return space.search_of(module, path), module.get_config()


def run_script(*args, env=None, timeout=300):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                        cwd=REPO, timeout=timeout, check=False, env=env)


def fake_env(seconds='0.1'):
  return {**os.environ, 'FAKE_STEP_SECONDS': seconds}


def read_rows(workdir):
  with open(os.path.join(workdir, 'results.csv')) as f:
    return list(csv.DictReader(f))


def starts(trial_dir):
  with open(os.path.join(trial_dir, 'starts.jsonl')) as f:
    return [json.loads(line)['from'] for line in f if line.strip()]


def trial_dirs(workdir):
  names = os.listdir(workdir) if os.path.isdir(workdir) else []
  return sorted(os.path.join(workdir, n) for n in names if n.startswith('trial'))


# -- the space, checked before anything runs ---------------------------------------------------


@pytest.mark.parametrize('search, match', [
    ("s.search(s.float('objective.betaa', 0.5, 2.0))", "no field 'objective.betaa'"),
    ("s.search(s.float('model.latent_dim', 2, 8))", 'not a float field'),
    ("s.search(s.int('objective.beta', 1, 4))", 'not an integer field'),
    ("s.search(s.categorical('objective.beta', [0.5, 'big']))", 'does not fit'),
    ("s.search(s.categorical('model', [1, 2]))", 'section, not a field'),
    ("s.search(s.int('model.latent_dim', 0, 4))", r'at model.latent_dim=0 is not valid'),
    ("s.search(s.int('num_train_steps', 60, 120))", 'cannot be searched'),
    ("s.search(s.float('objective.beta', 0.5, 2.0), objective='valid_nll')",
     'eval_num_samples > 0'),
    ("s.search(s.float('objective.beta', 0.5, 2.0), "
     "pruner=s.successive_halving(min_steps=15))", 'multiple of eval_every_steps=10'),
])
def test_a_wrong_key_or_type_is_an_error_before_anything_runs(tmp_path, search, match):
  found, config = search_of(tmp_path, search)
  with pytest.raises(sweep.SweepError, match=match):
    space.check(found, config)


@pytest.mark.parametrize('search, match', [
    ("s.search(s.float('objective.beta', 2.0, 0.5))", 'must be below high'),
    ("s.search(s.float('objective.beta', 0.0, 2.0, log=True))", 'needs low > 0'),
    ("s.search(s.float('objective.beta', 0.5, 2.0), s.float('objective.beta', 1, 3))",
     'searched twice'),
    ("s.search(s.float('objective.beta', 0.5, 2.0), objective='test_neg_elbo')",
     'the test split is only reported'),
    ("s.search(s.float('objective.beta', 0.5, 2.0), pruner='hyperband')", 'not one of'),
    ("s.search(s.int('model.latent_dim', 2, 9, step=2))", 'not a multiple of step'),
    ("s.search(s.categorical('objective.beta', []))", 'no values'),
    ("[{'objective.beta': 1.0}]", 'must return s.search'),
    ("s.search(s.float('objective.beta', 0.5, 2.0 / 0))", r'ZeroDivisionError.*\(line \d+\)'),
])
def test_a_malformed_search_says_what_to_change(tmp_path, search, match):
  with pytest.raises(sweep.SweepError, match=match):
    search_of(tmp_path, search)


def test_the_command_line_and_vectorize_are_checked_against_the_space(tmp_path):
  found, config = search_of(tmp_path, "s.search(s.int('model.latent_dim', 2, 8))")
  with pytest.raises(sweep.SweepError, match='set on the command line too'):
    space.check(found, config, ['--config.model.latent_dim=3'])
  with pytest.raises(sweep.SweepError, match='--vectorize .* may differ only in'):
    space.check(found, config, vectorize=True)
  assert space.check(found, config) == ('valid_neg_elbo', 'neg_elbo')
  config.eval_num_samples = 8
  assert space.check(found, config) == ('valid_nll', 'nll')  # the K-sample bound, if measured


def test_a_bad_search_exits_2_in_one_line_and_writes_nothing(tmp_path):
  config = write_config(tmp_path, "s.search(s.float('objective.betaa', 0.5, 2.0))")
  result = run_script(f'--config={config}', f'--workdir={tmp_path / "out"}', timeout=60)
  assert result.returncode == 2, result.stderr
  assert "no field 'objective.betaa'" in result.stderr and 'Traceback' not in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
  assert not os.path.exists(tmp_path / 'out')


def test_without_optuna_the_command_says_how_to_install_it(monkeypatch):
  monkeypatch.setitem(sys.modules, 'optuna', None)  # import optuna raises ImportError
  with pytest.raises(sweep.SweepError, match=r"pip install -e '\.\[search\]'"):
    study_lib.optuna_module()


# -- the study runner (the stand-in trainer) ---------------------------------------------------


@pytest.fixture(scope='module')
def pruned_study(tmp_path_factory):
  """8 trials, the median pruner, two at a time; seed 1 draws a diverging beta among them."""
  tmp_path = tmp_path_factory.mktemp('search')
  config = write_config(tmp_path, seed=1)
  workdir = str(tmp_path / 'out')
  args = [f'--config={config}', f'--workdir={workdir}', f'--train_script={FAKE}', '--parallel=2']
  result = run_script(*args, env=fake_env())
  assert result.returncode == 0, result.stdout + result.stderr
  return {'config': config, 'workdir': workdir, 'args': args, 'stdout': result.stdout}


def test_pruned_trials_stop_at_their_next_evaluation_and_leave_resumable_workdirs(pruned_study):
  workdir = pruned_study['workdir']
  rows = read_rows(workdir)
  assert [int(r['number']) for r in rows] == list(range(8))
  assert {r['state'] for r in rows} == {'complete', 'pruned', 'failed'}, rows
  stopped_at = []
  for row, trial_dir in zip(rows, trial_dirs(workdir), strict=True):
    assert os.path.basename(trial_dir) == row['name']
    assert row['name'].startswith(f'trial{int(row["number"]):04d}_')
    with open(os.path.join(trial_dir, 'metrics.jsonl')) as f:
      recs = [json.loads(line) for line in f]
    if row['state'] == 'pruned':
      with open(os.path.join(trial_dir, 'STOP_REQUEST')) as f:
        request = f.read()
      assert request.startswith('pruned\n') and 'median pruner at step' in request
      decided = int(request.split('at step ')[1].split(':')[0])
      stop, = [r for r in recs if r['kind'] == 'stop']
      # Stopped at the first evaluation after the request (tests/test_stop_request.py: the real
      # trainer); no DONE; its checkpoints are there to resume from. A loaded machine can delay
      # the controller's request until the trainer's last evaluation (then it stops there).
      assert decided <= stop['step'] == int(row['steps']) <= 60
      stopped_at.append(stop['step'])
      assert max(r['step'] for r in recs) == stop['step']
      assert not os.path.exists(os.path.join(trial_dir, 'DONE'))
      assert sweep.point_status(trial_dir) == 'stopped'
      assert str(stop['step']) in os.listdir(os.path.join(trial_dir, 'checkpoints'))
    elif row['state'] == 'complete':
      assert int(row['steps']) == 60 and os.path.exists(os.path.join(trial_dir, 'DONE'))
      valid = {r['step']: r['neg_elbo'] for r in recs
               if r['kind'] == 'eval' and r['split'] == 'train[90%:]'}
      assert float(row['value']) == min(valid.values())  # told at the selected step
      assert float(row['test_neg_elbo']) == valid[int(row['selected_step'])] + 0.5
    else:
      assert 'fake divergence' in row['reason'] and float(row['objective.beta']) > 7.5
  assert min(stopped_at) < 60  # pruning saved steps
  assert 'the study goes on' in pruned_study['stdout']


def test_results_name_the_best_trial_with_its_test_values_and_plot_the_study(pruned_study):
  workdir = pruned_study['workdir']
  rows = read_rows(workdir)
  complete = [r for r in rows if r['state'] == 'complete']
  best = min(complete, key=lambda r: float(r['value']))
  md = open(os.path.join(workdir, 'results.md')).read()
  assert md.count('**best**') == 1
  assert (f'best trial (lowest valid_neg_elbo): {best["number"]} ({best["name"]})' in md
          and f'test neg_elbo {float(best["test_neg_elbo"]):.3f}' in md)
  assert f'train steps spent: {sum(int(r["steps"]) for r in rows)}' in md
  pngs = {'search_history.png', 'search_intermediate.png', 'search_importances.png',
          'objective_vs_objective.beta.png', 'objective_vs_model.latent_dim.png'}
  assert pngs <= set(os.listdir(workdir))
  page = open(os.path.join(workdir, 'results.html')).read()
  assert all(f'src="{p}"' in page for p in pngs)
  os.remove(os.path.join(workdir, 'results.csv'))
  result = run_script(f'--workdir={workdir}', '--report', timeout=120)
  assert result.returncode == 0, result.stderr
  assert read_rows(workdir) == rows


def test_a_rerun_of_a_finished_study_runs_nothing(pruned_study):
  before = {d: starts(d) for d in trial_dirs(pruned_study['workdir'])}
  result = run_script(*pruned_study['args'], env=fake_env())
  assert result.returncode == 0, result.stderr
  assert '8 of 8 trials asked' in result.stdout and 'started' not in result.stdout
  assert {d: starts(d) for d in trial_dirs(pruned_study['workdir'])} == before


def test_a_second_controller_on_the_folder_is_refused_naming_the_first(pruned_study):
  with sweep.runner_lock(pruned_study['workdir']):
    result = run_script(*pruned_study['args'], timeout=60)
  assert result.returncode == 2
  assert 'in use by another search controller' in result.stderr
  assert f'pid {os.getpid()}' in result.stderr and 'Traceback' not in result.stderr


def test_a_different_search_or_storage_in_the_folder_is_refused(pruned_study, tmp_path):
  other = write_config(tmp_path, pruner="'none'", name='other.py')
  result = run_script(f'--config={other}', f'--workdir={pruned_study["workdir"]}',
                      f'--train_script={FAKE}', timeout=60)
  assert result.returncode == 2 and 'holds a different search' in result.stderr, result.stderr
  journal = tmp_path / 'j.log'
  result = run_script(*pruned_study['args'], f'--storage=journal:{journal}', timeout=60)
  assert result.returncode == 2 and 'keeps its study in sqlite' in result.stderr, result.stderr
  assert not journal.exists()  # refused before the storage was touched


def wait_for(condition, what, timeout=120):
  deadline = time.time() + timeout
  while not condition():
    if time.time() > deadline:
      raise AssertionError(f'timed out waiting for {what}')
    time.sleep(0.05)


def checkpointed(workdir, number):
  """Whether trial `number` has saved a step (the stand-in saves at every evaluation)."""
  found = [d for d in trial_dirs(workdir) if os.path.basename(d).startswith(f'trial{number:04d}')]
  ckpts = os.path.join(found[0], 'checkpoints') if found else ''
  return bool(found) and os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts))


# Without pruning and one trial at a time the study is reproducible: TPE after its 2 random
# startup trials sees the same finished trials at every ask, its seed made from the search's
# seed and the trial's number.
REPRO = {'trials': 5, 'pruner': "'none'", 'startup': 2}


@pytest.mark.slow
def test_sigkill_of_the_controller_then_a_rerun_accounts_for_every_trial_and_runs_none_twice(
    tmp_path):
  config = write_config(tmp_path, **REPRO)
  workdir = str(tmp_path / 'out')
  args = [SCRIPT, f'--config={config}', f'--workdir={workdir}', f'--train_script={FAKE}']
  # 1. Only the controller dies: its running trial trains on, and the next controller waits for
  # it instead of starting it again.
  first = subprocess.Popen([sys.executable, *args], cwd=REPO, env=fake_env('0.6'),
                           start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
  wait_for(lambda: checkpointed(workdir, 0), 'trial 0 to save')
  first.kill()
  first.wait()
  # 2. The next controller and its trial die together (a lost node) while it trains trial 1.
  log = open(tmp_path / 'second.log', 'w')  # noqa: SIM115 - closed below
  second = subprocess.Popen([sys.executable, *args], cwd=REPO, env=fake_env('0.3'),
                            start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
  wait_for(lambda: checkpointed(workdir, 1), 'trial 1 to save')
  os.killpg(second.pid, signal.SIGKILL)
  second.wait()
  log.close()
  assert 'a live run holds its workdir: waiting for it' in (tmp_path / 'second.log').read_text()
  wait_for(lambda: not sweep.is_running(trial_dirs(workdir)[1]), 'the killed trial to let go')
  # 3. The third finishes the study: trial 1 resumes from its checkpoint, not from scratch.
  result = subprocess.run([sys.executable, *args], cwd=REPO, env=fake_env('0.05'),
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'trial 1 (' in result.stdout and 'resuming it from its checkpoint' in result.stdout
  rows = read_rows(workdir)
  assert [int(r['number']) for r in rows] == list(range(5))
  assert all(r['state'] in ('complete', 'failed') for r in rows), rows
  dirs = trial_dirs(workdir)
  assert len(dirs) == 5
  assert [starts(d).count(0) for d in dirs] == [1] * 5  # no trial started twice from scratch
  assert starts(dirs[0]) == [0]  # waited for, never relaunched
  assert len(starts(dirs[1])) == 2 and starts(dirs[1])[1] > 0  # resumed where it was saved
  # The same study uninterrupted asks the same trials.
  clean = str(tmp_path / 'clean')
  result = run_script(f'--config={config}', f'--workdir={clean}', f'--train_script={FAKE}',
                      env=fake_env('0.02'))
  assert result.returncode == 0, result.stderr
  for a, b in zip(rows, read_rows(clean), strict=True):
    assert (a['name'], a['state'], a['value']) == (b['name'], b['state'], b['value'])


# -- real trials: a vectorised batch equals the trials run one by one ---------------------------

BATCH = ("s.search(s.float('objective.beta', 0.5, 2.0), "
         "s.float('optim.learning_rate', 1e-3, 1e-2, log=True), num_trials=2, pruner='none')")


@pytest.mark.slow
def test_a_vectorised_batch_of_trials_equals_the_trials_run_one_by_one(tmp_path):
  config = write_config(tmp_path, BATCH, steps=20)
  runs = {}
  for how, extra in (('vectorised', ['--vectorize', '--parallel=2', '--population_mode=loop']),
                     ('one_by_one', [])):
    workdir = str(tmp_path / how)
    result = run_script(f'--config={config}', f'--workdir={workdir}', ONE_DEVICE, *extra,
                        timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    runs[how] = (workdir, result.stdout)
  assert 'started trials 0, 1 as one population' in runs['vectorised'][1]
  a, b = (read_rows(runs[h][0]) for h in ('vectorised', 'one_by_one'))
  assert [r['state'] for r in a] == ['complete', 'complete']
  for x, y in zip(a, b, strict=True):
    assert x['name'] == y['name']  # the same trials asked
    for key in ('value', 'valid_neg_elbo', 'test_neg_elbo', 'test_kl', 'valid_recon_stderr'):
      assert float(x[key]) == float(y[key]), key  # loop mode: the same compiled chunk, bitwise


@pytest.mark.slow
def test_trials_run_as_slurm_jobs_through_submitit(tmp_path):
  pytest.importorskip('submitit', reason="submitit is not installed (pip install -e '.[slurm]')")
  config = write_config(tmp_path, trials=3, pruner="'none'")
  workdir = str(tmp_path / 'out')
  result = run_script(f'--config={config}', f'--workdir={workdir}', f'--train_script={FAKE}',
                      '--executor=slurm', '--slurm_cluster=local', '--gpus_per_task=0',
                      '--time_limit_min=5', '--array_parallelism=2', env=fake_env('0'))
  assert result.returncode == 0, result.stdout + result.stderr
  assert result.stdout.count('(SLURM job ') == 3
  assert [r['state'] for r in read_rows(workdir)] == ['complete'] * 3
  assert os.path.isdir(os.path.join(workdir, 'submitit'))


def test_the_shipped_search_and_its_grid_are_valid():
  path = os.path.join(REPO, 'configs', 'search_sprites.py')
  module = sweep.load_config_file(path)
  config = module.get_config()
  found = space.search_of(module, path)
  assert space.check(found, config) == ('valid_neg_elbo', 'neg_elbo')
  assert sorted(found.keys) == sorted(['model.latent_dim', 'objective.beta', 'optim.learning_rate',
                                       'objective.kl_warmup_steps', 'objective.free_bits'])
  assert space.rungs(found.pruner, config) == [100, 300, 900]
  grid = sweep.plan(path, config, [], '/tmp/unused')
  assert len(grid) == 108 and {k for p in grid for k in p['point']} == set(found.keys)
  sweep.validate_points(grid)


def test_categorical_tuples_reach_optuna_as_text_and_come_back_as_tuples(tmp_path):
  found, config = search_of(tmp_path, "s.search(s.categorical('model.hidden', [(32,), (64, 32)]))")
  space.check(found, config)
  choices = study_lib.distributions(found)['model.hidden'].choices
  assert choices == ('(32,)', '(64, 32)')
  assert study_lib.point_of(found, {'model.hidden': '(64, 32)'}) == {'model.hidden': (64, 32)}
  name = study_lib.trial_name(7, {'model.hidden': (64, 32), 'objective.beta': 0.123456})
  assert name == 'trial0007_hidden=64-32_beta=0.1235'
