"""The readers (scripts/evaluate.py, scripts/analyze.py) on a damaged config.json, on a workdir
they cannot write, and beside a live run that saves and deletes checkpoint steps meanwhile.

One small sprites run is trained once per module, in two parts whose checkpoint configs differ
in what a reader takes from them: step 10 trained without an EMA and evaluates in batches of
512; step 20 (resumed) keeps an EMA and evaluates in batches of 256. Each test works on its own
copy of it.

Tests run as root, which ignores permission bits, and cannot mount a folder read-only, so an
unwritable folder is made by putting a regular file where the folder should be: creating it or
writing into it then fails with an OSError, the way a read-only mount (EROFS) fails, through the
same code.
"""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from tests.test_config import ROOT
from tests.test_train import tiny_config
from vae_jax import analysis, evaluate, models, train
from vae_jax.analysis import load as analysis_load
from vae_jax.config import validation
from vae_jax.evaluate import saved_run
from vae_jax.storage import lock as workdir_lock

# One device: these tests are about reading and writing a run, not about the device count.
SMALL = {'data.name': 'sprites/small', 'mesh.data': 1}
ONE_DEVICE = dict(os.environ, XLA_FLAGS=os.environ['XLA_FLAGS'].replace(
    'device_count=8', 'device_count=1'))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('reader_run') / 'run')
  train.train_and_evaluate(tiny_config(num_train_steps=10, **SMALL), workdir)
  train.train_and_evaluate(tiny_config(eval_batch_size=256, ema_decay=0.9, **SMALL), workdir)
  return workdir


@pytest.fixture
def run(trained, tmp_path):
  """A copy of the trained run, the test's own."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained, workdir)
  return workdir


def _script(name, *args, timeout=300):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', name), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout, env=ONE_DEVICE)


def _error_lines(stderr):
  return [line for line in stderr.splitlines() if line.startswith('error: ')]


def _cut_config(workdir):
  """config.json cut in half (HOSTILE 4c): no longer JSON."""
  path = os.path.join(workdir, 'config.json')
  with open(path) as f:
    text = f.read()
  with open(path, 'w') as f:
    f.write(text[:len(text) // 2])
  return path


def _block(path):
  """A regular file where the folder `path` should be: the folder cannot be written."""
  if os.path.isdir(path):
    shutil.rmtree(path)
  with open(path, 'w') as f:
    f.write('not a folder\n')


# ------------------------------------------------------------------------------------------
# A damaged config.json (HOSTILE 4c): every checkpoint step holds its own config.


def test_evaluate_reads_the_checkpoints_config_past_a_damaged_config_json(run, capsys):
  path = _cut_config(run)
  config, steps, split, params = evaluate.check_run_request(run)
  assert steps == [10, 20] and split == 'test'
  assert config.ema_decay == 0.9 and config.eval_batch_size == 256 and params == 'ema'
  err = capsys.readouterr().err
  assert f'{path} cannot be read' in err and 'checkpoint step 20' in err, err


def test_analysis_reads_the_checkpoints_config_past_a_damaged_config_json(run, capsys):
  path = _cut_config(run)
  loaded = analysis.load_run(run)
  assert loaded.step == 20 and loaded.config.ema_decay == 0.9 and loaded.params_kind == 'ema'
  err = capsys.readouterr().err
  assert f'{path} cannot be read' in err and 'checkpoint step 20' in err, err


@pytest.fixture
def config_only(tmp_path):
  """A workdir whose config.json is damaged and whose checkpoints/ is empty."""
  workdir = tmp_path / 'cfg_run'
  (workdir / 'checkpoints').mkdir(parents=True)
  (workdir / 'config.json').write_text('{"seed": 0, "data": {"na')
  return str(workdir)


def test_a_damaged_config_json_without_a_checkpoint_is_an_error_naming_it(config_only):
  path = os.path.join(config_only, 'config.json')
  with pytest.raises(validation.ConfigError, match=f'{path} cannot be read'):
    evaluate.check_run_request(config_only)
  with pytest.raises(analysis.RunNotFoundError, match=f'{path} cannot be read'):
    analysis.check_run(config_only)


@pytest.mark.parametrize('script', ['evaluate.py', 'analyze.py'])
def test_scripts_on_a_damaged_config_json_exit_2_naming_it(config_only, script):
  p = _script(script, f'--workdir={config_only}', timeout=120)
  assert p.returncode == 2, p.stderr[-3000:]
  assert 'Traceback' not in p.stderr, p.stderr[-3000:]
  [line] = _error_lines(p.stderr)
  assert os.path.join(config_only, 'config.json') in line


# ------------------------------------------------------------------------------------------
# A workdir the reader cannot write (HOSTILE 4d).


def test_evaluate_prints_its_numbers_then_names_what_it_could_not_write(run):
  eval_dir = os.path.join(run, 'eval')
  _block(eval_dir)
  p = _script('evaluate.py', f'--workdir={run}', '--num_samples=2')
  assert p.returncode == 2, p.stderr[-3000:]
  assert 'Traceback' not in p.stderr, p.stderr[-3000:]
  result = json.loads(p.stdout.strip().splitlines()[-1])  # the numbers, printed all the same
  assert result['step'] == 20 and result['num_samples'] == 2 and math.isfinite(result['nll'])
  [line] = _error_lines(p.stderr)
  assert os.path.join(eval_dir, 'step_20_test_k2.json') in line and '--out=' in line, line
  # Said before the work, too: the evaluation could be stopped and rerun with --out.
  assert p.stderr.index('WARNING') < p.stderr.index('error: '), p.stderr[-3000:]


def test_evaluate_writes_its_files_to_out(run, tmp_path):
  _block(os.path.join(run, 'eval'))
  out = str(tmp_path / 'elsewhere')
  with pytest.raises(evaluate.ResultNotSavedError) as raised:
    evaluate.evaluate_run(run, num_samples=2, log=lambda *a: None)
  report = evaluate.evaluate_run(run, num_samples=2, out_dir=out, log=lambda *a: None)
  same = lambda r: {k: v for k, v in r.items() if k not in ('seconds', 'compile_s',
                                                           'samples_per_sec')}
  assert same(raised.value.result) == same(report)  # the unsaved result is the saved one's
  with open(os.path.join(out, 'step_20_test_k2.json')) as f:
    assert json.load(f) == report
  assert os.path.exists(os.path.join(out, 'step_20_test_k2.npz'))


def test_analyze_refuses_folders_it_cannot_write_before_loading_the_run(run, tmp_path,
                                                                          monkeypatch):
  monkeypatch.setattr(analysis_load, 'load_run', lambda *a, **k: pytest.fail('loaded the run'))
  _block(os.path.join(run, 'analysis'))
  with pytest.raises(validation.ConfigError, match='--out=DIR'):
    analysis.analyze(run, log=None)
  _block(os.path.join(run, 'tensorboard'))
  with pytest.raises(validation.ConfigError, match='--notensorboard'):
    analysis.analyze(run, out_dir=str(tmp_path / 'out'), log=None)


def test_analyze_script_on_an_unwritable_workdir_exits_2_in_one_line(run):
  _block(os.path.join(run, 'analysis'))
  p = _script('analyze.py', f'--workdir={run}', timeout=120)
  assert p.returncode == 2 and 'Traceback' not in p.stderr, p.stderr[-3000:]
  [line] = _error_lines(p.stderr)
  assert os.path.join(run, 'analysis') in line and '--out=DIR' in line, line


# ------------------------------------------------------------------------------------------
# Beside a live run (REVIEW 2.1): the step checked is the step read, and the log says which.


def _checkpoints(workdir):
  return os.path.join(workdir, 'checkpoints')


def _then(monkeypatch, module, name, action):
  """module.name runs, then `action` (what the live run does meanwhile)."""
  original = getattr(module, name)

  def wrapped(*args, **kwargs):
    out = original(*args, **kwargs)
    action()
    return out

  monkeypatch.setattr(module, name, wrapped)


def _commit_step_20_later(workdir, monkeypatch, module, name):
  """Step 20 is not there when `module.name` checks the run, and is committed right after."""
  aside = os.path.join(workdir, 'step_20_in_flight')
  os.rename(os.path.join(_checkpoints(workdir), '20'), aside)
  _then(monkeypatch, module, name,
        lambda: os.path.exists(aside) and os.rename(aside, os.path.join(_checkpoints(workdir),
                                                                          '20')))


def test_evaluate_reads_the_step_it_checked_not_one_saved_since(run, monkeypatch):
  _commit_step_20_later(run, monkeypatch, saved_run, 'check_run_request')
  logged = []
  report = evaluate.evaluate_run(run, step='last', num_samples=1, log=logged.append)
  assert os.path.isdir(os.path.join(_checkpoints(run), '20'))  # it came meanwhile
  # Step 10, with step 10's own config: its train state, its eval batch size.
  assert (report['step'], report['params'], report['batch_size']) == (10, 'state', 512)
  assert any('parameters of step 10' in line for line in logged), logged
  assert os.path.exists(os.path.join(run, 'eval', 'step_10_test_k1.json'))


def test_analysis_reads_the_step_it_checked_not_one_saved_since(run, monkeypatch):
  _commit_step_20_later(run, monkeypatch, analysis_load, 'check_run')
  loaded = analysis.load_run(run)
  assert os.path.isdir(os.path.join(_checkpoints(run), '20'))
  assert loaded.step == 10 and loaded.params_kind == 'state' and loaded.config.ema_decay == 0


def test_a_checked_step_deleted_meanwhile_is_checked_again_and_the_notice_names_the_live_run(
    run, monkeypatch):
  # The live run's checkpoint.keep deletes step 20 right after the reader checked it.
  _then(monkeypatch, saved_run, 'check_run_request',
        lambda: shutil.rmtree(os.path.join(_checkpoints(run), '20'), ignore_errors=True))
  logged = []
  with workdir_lock.hold(run):  # a live run holds the workdir
    report = evaluate.evaluate_run(run, step='last', num_samples=1, log=logged.append)
  text = '\n'.join(logged)
  assert 'a run is training' in text, text
  assert 'step 20 was deleted' in text, text
  assert (report['step'], report['params'], report['batch_size']) == (10, 'state', 512)
  assert 'parameters of step 10' in text


def test_a_damaged_step_falls_back_with_the_older_steps_own_config(run):
  # A byte flipped in step 20 (HOSTILE 3e): step 10 is evaluated, as step 10's config says.
  data = [os.path.join(d, f) for d, _, files in os.walk(os.path.join(_checkpoints(run), '20'))
          for f in files if '/d/' in os.path.join(d, f)]
  victim = max(data, key=os.path.getsize)
  with open(victim, 'r+b') as f:
    byte = f.read(1)
    f.seek(0)
    f.write(bytes([byte[0] ^ 0xFF]))
  logged = []
  report = evaluate.evaluate_run(run, step='last', num_samples=1, log=logged.append)
  assert (report['step'], report['params'], report['batch_size']) == (10, 'state', 512)
  assert any('Evaluating step 10: step 20 could not be' in line for line in logged), logged


def test_analyze_says_a_live_run_holds_the_workdir(run, monkeypatch):
  class Stop(Exception):
    pass

  def stop(*args, **kwargs):
    raise Stop

  monkeypatch.setattr(analysis_load, 'load_run', stop)
  logged = []
  with workdir_lock.hold(run), pytest.raises(Stop):
    analysis.analyze(run, log=logged.append)
  assert any('a run is training' in line for line in logged), logged
  logged.clear()
  with pytest.raises(Stop):  # no run now: no notice
    analysis.analyze(run, log=logged.append)
  assert not any('a run is training' in line for line in logged), logged


# ------------------------------------------------------------------------------------------
# REVIEW 2.8: the samples caption says what the family samples.


def test_the_samples_caption_says_what_the_model_samples():
  for overrides in ({}, {'model.vae.prior': 'vamp', 'model.vae.num_pseudo_inputs': 3},
                    {'model.kind': 'hvae'}):
    model = models.build_model(tiny_config(**overrides).model, (8, 8, 1))
    caption = analysis.samples_caption(model)
    assert caption.startswith(f'{model.capabilities.prior_description} at each temperature T')
    assert ('N(0, T^2 I)' in caption) == (overrides == {}), caption
    # The figure's own title says the same, not N(0, T^2 I) for every family.
    title = analysis.samples_title(model)
    assert ('N(0, T\u00b2 I)' in title) == (overrides == {}), title
