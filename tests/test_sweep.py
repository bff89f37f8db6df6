"""The sweep runner: points as resumable runs in their own workdirs, checked before running."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from vae_jax import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'scripts', 'sweep.py')
# The points train on one CPU device: 8 fake devices (this session's XLA_FLAGS) are slower.
ONE_DEVICE = '--env=XLA_FLAGS=--xla_force_host_platform_device_count=1'

TINY = '''
from configs import default


def get_config():
  c = default.get_config()
  c.data.name = 'sprites/small'  # 16x16: prepares in a second, evaluates in a blink
  c.batch_size = 32
  c.num_train_steps = {steps}
  c.steps_per_call = 10
  c.log_every_steps = 10
  c.eval_every_steps = 20
  c.checkpoint_every_steps = 10
  c.model.hidden = (32,)
  c.model.latent_dim = 4
  c.compilation_cache = ''
  return c


def get_sweep(h):
  return {sweep}
'''
BETAS = "h.sweep('objective.beta', [0.5, 2.0])"


def write_config(tmp_path, sweep_expr=BETAS, steps=20, name='tiny.py'):
  path = tmp_path / name
  path.write_text(TINY.format(steps=steps, sweep=sweep_expr))
  return str(path)


def run_script(*args, timeout=600):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                        cwd=REPO, timeout=timeout, check=False)


def log_sizes(workdir):
  return {n: os.path.getsize(os.path.join(workdir, n, sweep.LOG_FILE))
          for n in os.listdir(workdir) if os.path.isfile(os.path.join(workdir, n, sweep.LOG_FILE))}


@pytest.mark.parametrize('sweep_expr, match', [
    ("h.sweep('objective.betaa', [0.5])", "no field 'objective.betaa'"),
    ("h.sweep('objective.beta', ['big'])", "key 'objective.beta'.*does not fit"),
    ("h.sweep('num_train_steps', [25])", 'num_train_steps=25'),  # validate_config: intervals
    ("h.sweep('model.encoder', ['mlpp'])", 'model.encoder'),
])
def test_bad_point_exits_2_before_running(tmp_path, sweep_expr, match):
  config = write_config(tmp_path, sweep_expr)
  start = time.time()
  result = run_script(f'--config={config}', f'--workdir={tmp_path / "out"}', timeout=60)
  assert result.returncode == 2, result.stderr
  assert 'Traceback' not in result.stderr
  assert re.search(match, result.stderr), result.stderr
  assert time.time() - start < 30
  assert not list(tmp_path.glob('out/*/sweep.log'))  # no point was started


def test_parent_never_imports_jax(tmp_path):
  """The config package, validation and the sweep runner load neither JAX nor Flax."""
  config = write_config(tmp_path)
  code = f'''
import sys
sys.path.insert(0, {REPO!r})
import vae_jax.config
from vae_jax.config import names
from vae_jax import sweep
from vae_jax.config import validation
from vae_jax.sweep import hyper
module = sweep.load_config_file({config!r})
planned = sweep.plan({config!r}, module.get_config(), [], {str(tmp_path / "out")!r})
print([sweep.point_status(p['workdir'], p['config']) for p in planned])
sweep.validate_points(planned)
validation.validate_config(planned[0]['config'], num_devices=1)
sweep.record_sweep({str(tmp_path / "out")!r}, sweep.sweep_record({config!r}, [], planned))
sweep.report({str(tmp_path / "out")!r}, planned)
import matplotlib
for name in ('jax', 'flax'):
  assert name not in sys.modules, name + ' imported'
print('ok')
'''
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=REPO, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  assert "['new', 'new']" in result.stdout and 'ok' in result.stdout


def test_a_bad_point_is_found_in_process(tmp_path):
  config = write_config(tmp_path, "h.sweep('model.latent_dim', [4, 0])")
  module = sweep.load_config_file(config)
  planned = sweep.plan(config, module.get_config(), [], str(tmp_path / 'out'))
  with pytest.raises(sweep.SweepError, match='sweep point latent_dim=0: .*latent_dim'):
    sweep.validate_points(planned)


@pytest.fixture(scope='module')
def tiny_sweep(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp('sweep')
  # 60 steps: test_sigkill_mid_sweep_then_rerun_completes kills this sweep's first point
  # part-way and compares its rerun with this uninterrupted one.
  config = write_config(tmp_path, steps=60)
  workdir = str(tmp_path / 'out')
  start = time.time()
  result = run_script(f'--config={config}', f'--workdir={workdir}', '--parallel=2', ONE_DEVICE)
  assert result.returncode == 0, result.stdout + result.stderr
  return {'config': config, 'workdir': workdir, 'stdout': result.stdout,
          'seconds': time.time() - start}


def read_rows(workdir):
  with open(os.path.join(workdir, 'results.csv')) as f:
    return list(csv.DictReader(f))


def selected_eval(point_dir, split):
  """The eval record of `split` at the step with the lowest validation neg_elbo."""
  with open(os.path.join(point_dir, 'metrics.jsonl')) as f:
    evals = [r for r in map(json.loads, f) if r['kind'] == 'eval']
  valid = [r for r in evals if r['split'] == 'train[90%:]']
  best = min(valid, key=lambda r: (r['neg_elbo'], r['step']))['step']
  return next(r for r in evals if r['step'] == best and r['split'] == split)


def test_tiny_sweep_results_match_the_runs(tiny_sweep):
  workdir = tiny_sweep['workdir']
  rows = read_rows(workdir)
  assert [r['name'] for r in rows] == ['beta=0.5', 'beta=2.0']
  assert [float(r['objective.beta']) for r in rows] == [0.5, 2.0]
  with open(os.path.join(workdir, 'sweep.json')) as f:
    assert [p['name'] for p in json.load(f)['points']] == ['beta=0.5', 'beta=2.0']
  for row in rows:
    point_dir = os.path.join(workdir, row['name'])
    assert row['status'] == 'done' and row['step'] == '60'
    for tag, split in (('valid', 'train[90%:]'), ('test', 'test')):
      rec = selected_eval(point_dir, split)
      assert int(row['selected_step']) == rec['step']
      for m in ('neg_elbo', 'recon', 'kl'):
        assert float(row[f'{tag}_{m}']) == pytest.approx(rec[m])
        assert float(row[f'{tag}_{m}_stderr']) == pytest.approx(rec[f'{m}_stderr'])
    with open(os.path.join(point_dir, 'config.json')) as f:
      assert json.load(f)['objective']['beta'] == float(row['objective.beta'])
  assert os.path.exists(os.path.join(workdir, 'neg_elbo_vs_objective.beta.png'))
  md = open(os.path.join(workdir, 'results.md')).read()
  assert md.count('**best**') == 1


def test_rerun_skips_done_points(tiny_sweep):
  workdir = tiny_sweep['workdir']
  before = log_sizes(workdir)
  result = run_script(f'--config={tiny_sweep["config"]}', f'--workdir={workdir}', ONE_DEVICE)
  assert result.returncode == 0, result.stderr
  assert '0 to run' in result.stdout and 'started' not in result.stdout
  assert log_sizes(workdir) == before
  os.remove(os.path.join(workdir, 'results.csv'))
  result = run_script(f'--workdir={workdir}', '--report')
  assert result.returncode == 0, result.stderr
  assert [r['status'] for r in read_rows(workdir)] == ['done', 'done']


def test_raised_steps_is_not_done(tiny_sweep):
  module = sweep.load_config_file(tiny_sweep['config'])
  config = module.get_config()
  config.num_train_steps = 80
  planned = sweep.plan(tiny_sweep['config'], config, ['--config.num_train_steps=80'],
                       tiny_sweep['workdir'])
  assert [sweep.point_status(p['workdir'], p['config']) for p in planned] == ['partial'] * 2
  assert all('--config.num_train_steps=80' in p['command'] for p in planned)


def test_different_sweep_in_same_workdir_is_refused(tiny_sweep, tmp_path):
  other = write_config(tmp_path, "h.sweep('objective.beta', [0.5, 3.0])", name='other.py')
  result = run_script(f'--config={other}', f'--workdir={tiny_sweep["workdir"]}', timeout=60)
  assert result.returncode == 2
  assert 'different sweep' in result.stderr and 'Traceback' not in result.stderr


def test_failing_point_is_reported_and_others_finish(tmp_path):
  config = write_config(
      tmp_path, "h.chain(h.sweep('objective.beta', [0.5]), h.sweep('init_from', ['/no/such']))")
  workdir = str(tmp_path / 'out')
  result = run_script(f'--config={config}', f'--workdir={workdir}', '--parallel=2', ONE_DEVICE)
  assert result.returncode == 1
  assert 'FAILED init_from=-no-such' in result.stdout
  assert 'holds no checkpoint' in result.stdout  # the tail of its log
  rows = {r['name']: r for r in read_rows(workdir)}
  assert rows['beta=0.5']['status'] == 'done'
  assert rows['init_from=-no-such']['status'] == 'new'


@pytest.mark.slow
def test_sigkill_mid_sweep_then_rerun_completes(tiny_sweep, tmp_path):
  config = tiny_sweep['config']  # the uninterrupted sweep of these points is tiny_sweep's
  workdir = str(tmp_path / 'out')
  cmd = [sys.executable, SCRIPT, f'--config={config}', f'--workdir={workdir}', ONE_DEVICE]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  first = os.path.join(workdir, 'beta=0.5', 'checkpoints')
  deadline = time.time() + 300
  while time.time() < deadline and not (
      os.path.isdir(first) and any(n.isdigit() for n in os.listdir(first))):
    time.sleep(0.05)
  # The runner and its running point die at once, as with a lost node.
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  # The killed point's process lets go of its workdir lock once the kernel has torn it down.
  deadline = time.time() + 30
  while time.time() < deadline and sweep.is_running(os.path.join(workdir, 'beta=0.5')):
    time.sleep(0.2)
  statuses = [sweep.point_status(os.path.join(workdir, n)) for n in ('beta=0.5', 'beta=2.0')]
  assert statuses[0] == 'partial' and statuses[1] == 'new'
  result = run_script(f'--config={config}', f'--workdir={workdir}', ONE_DEVICE)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'beta=0.5: partial' in result.stdout
  for a, b in zip(read_rows(workdir), read_rows(tiny_sweep['workdir']), strict=True):
    assert a['status'] == b['status'] == 'done'
    for key in ('test_neg_elbo', 'valid_neg_elbo', 'test_kl', 'step'):
      assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5), key


@pytest.mark.slow
def test_submitit_local_executor(tmp_path):
  pytest.importorskip('submitit', reason="submitit is not installed (pip install -e '.[slurm]')")
  config = write_config(tmp_path)
  workdir = str(tmp_path / 'out')
  result = run_script(f'--config={config}', f'--workdir={workdir}', '--executor=slurm',
                      '--slurm_cluster=local', '--time_limit_min=10', '--gpus_per_task=0',
                      ONE_DEVICE)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'submitted 2 jobs' in result.stdout
  assert [r['status'] for r in read_rows(workdir)] == ['done', 'done']
  assert os.path.isdir(os.path.join(workdir, 'submitit'))


# vmap's equality with separate runs is tested in tests/test_population.py; through the
# runner one mode is enough.
@pytest.mark.parametrize('mode', ['loop'])
def test_vectorized_sweep_matches_the_sequential_one(tiny_sweep, tmp_path, mode):
  workdir = str(tmp_path / 'vec')
  result = run_script(f'--config={tiny_sweep["config"]}', f'--workdir={workdir}',
                      '--vectorize', f'--population_mode={mode}', ONE_DEVICE)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'vectorised: population of 2' in result.stdout
  with open(os.path.join(workdir, sweep.LOG_FILE)) as f:
    log = f.read()
  assert 'train_population.py' in log and f'({mode})' in log  # one process trained both
  for a, b in zip(read_rows(workdir), read_rows(tiny_sweep['workdir']), strict=True):
    assert a['name'] == b['name'] and a['status'] == b['status'] == 'done'
    for key in ('test_neg_elbo', 'valid_neg_elbo', 'test_kl', 'valid_recon_stderr'):
      if mode == 'loop':  # the sequential run's own compiled chunk, member by member
        assert float(a[key]) == float(b[key]), key
      else:
        assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4), key
  result = run_script(f'--config={tiny_sweep["config"]}', f'--workdir={workdir}',
                      '--vectorize', ONE_DEVICE)
  assert result.returncode == 0 and '0 to run' in result.stdout


@pytest.mark.parametrize('sweep_expr, key', [
    ("h.sweep('model.latent_dim', [4, 6])", 'model.latent_dim'),
    ("h.product(h.sweep('objective.beta', [0.5, 2.0]), h.sweep('data_seed', [0, 1]))",
     'data_seed'),
])
def test_vectorize_refuses_points_that_differ_in_a_static_key(tmp_path, sweep_expr, key):
  config = write_config(tmp_path, sweep_expr)
  result = run_script(f'--config={config}', f'--workdir={tmp_path / "out"}', '--vectorize',
                      timeout=60)
  assert result.returncode == 2, result.stdout + result.stderr
  assert f'differ in {key}' in result.stderr and 'Traceback' not in result.stderr
  assert not list(tmp_path.glob('out/*/sweep.log'))


@pytest.mark.slow
def test_sigkill_mid_vectorized_sweep_then_rerun_equals_an_uninterrupted_one(tmp_path):
  config = write_config(tmp_path, "h.sweep('objective.beta', [0.5, 2.0])", steps=60)
  workdir = str(tmp_path / 'out')
  cmd = [sys.executable, SCRIPT, f'--config={config}', f'--workdir={workdir}', '--vectorize',
         ONE_DEVICE]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  second = os.path.join(workdir, 'beta=2.0', 'checkpoints')
  deadline = time.time() + 300
  while time.time() < deadline and not (
      os.path.isdir(second) and any(n.isdigit() for n in os.listdir(second))):
    time.sleep(0.2)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  deadline = time.time() + 30
  while time.time() < deadline and sweep.is_running(os.path.join(workdir, 'beta=0.5')):
    time.sleep(0.2)
  assert sweep.point_status(os.path.join(workdir, 'beta=2.0')) == 'partial'
  result = run_script(f'--config={config}', f'--workdir={workdir}', '--vectorize', ONE_DEVICE)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'beta=2.0: partial' in result.stdout
  clean = str(tmp_path / 'clean')
  result = run_script(f'--config={config}', f'--workdir={clean}', '--vectorize', ONE_DEVICE)
  assert result.returncode == 0, result.stderr
  for a, b in zip(read_rows(workdir), read_rows(clean), strict=True):
    assert a['status'] == b['status'] == 'done'
    for key in ('test_neg_elbo', 'valid_neg_elbo', 'test_kl', 'step'):
      assert float(a[key]) == float(b[key]), key  # the population resumes bitwise


@pytest.mark.parametrize('parallel, gpus, want', [
    (4, 8, [('0,1', None), ('2,3', None), ('4,5', None), ('6,7', None)]),
    (2, 2, [('0', None), ('1', None)]),
    (4, 2, [('0', '0.450'), ('1', '0.450'), ('0', '0.450'), ('1', '0.450')]),
    (3, 2, [('0', '0.450'), ('1', '0.450'), ('0', '0.450')]),
    (2, 0, [(None, None), (None, None)]),
])
def test_workers_get_their_own_gpus_or_a_share_of_one(parallel, gpus, want):
  envs = sweep.worker_envs(parallel, gpus, {'KEEP': '1'})
  got = [(e.get('CUDA_VISIBLE_DEVICES'), e.get('XLA_PYTHON_CLIENT_MEM_FRACTION')) for e in envs]
  assert got == want
  assert all(e['KEEP'] == '1' for e in envs)
  for e in envs:  # a worker sharing a GPU must not preallocate 75% of it
    assert (e.get('XLA_PYTHON_CLIENT_PREALLOCATE') == 'false') == (
        e.get('XLA_PYTHON_CLIENT_MEM_FRACTION') is not None)


def test_gpu_count_reads_nvidia_smi(tmp_path, monkeypatch):
  fake = tmp_path / 'nvidia-smi'
  fake.write_text('#!/bin/sh\necho "GPU 0: NVIDIA H200 (UUID: a)"\n'
                  'echo "GPU 1: NVIDIA H200 (UUID: b)"\n')
  fake.chmod(0o755)
  monkeypatch.setenv('PATH', f'{tmp_path}{os.pathsep}{os.environ["PATH"]}')
  assert sweep.gpu_count() == 2
  monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
  assert sweep.gpu_count() == 0
