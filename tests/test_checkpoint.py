"""Checkpoints you can trust: real Orbax round trips, kills at the hard moments, damaged steps,
preemption, non-finite steps, bad input, and reloading a run for analysis."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import vae_jax
from tests.test_config import ROOT
from tests.test_train import run_chunks, tiny_config
from vae_jax import experiment, train
from vae_jax.config import compat
from vae_jax.storage import checkpoint as ckpt_lib
from vae_jax.storage import writers as metrics_lib

SCRIPT = os.path.join(ROOT, 'scripts', 'train.py')
# 40 steps in chunks of 5, a checkpoint every 10: small enough for subprocesses to be quick.
RUN_FLAGS = ['--config=configs/default.py', '--config.batch_size=32',
             '--config.eval_batch_size=512', '--config.num_train_steps=40',
             '--config.steps_per_call=5', '--config.log_every_steps=5',
             '--config.eval_every_steps=20', '--config.checkpoint_every_steps=10',
             '--config.model.hidden=(64,)', '--config.model.latent_dim=4',
             '--config.compilation_cache=']


# The kill, signal and resume runs train on the 16x16 sprites: the moments they probe (a kill
# inside a save, a signal at a boundary, a bitwise resume) do not depend on the image size, and
# their evaluations of the small splits take a fraction of the time.
KILL_FLAGS = [*RUN_FLAGS, '--config.data.name=sprites/small']


def _env(devices, **extra):
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env.update({k: str(v) for k, v in extra.items()})
  return env


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(state)]


def _assert_bitwise(a, b):
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def _final_state(workdir):
  return vae_jax.load_run(str(workdir)).state


def _run(workdir, devices, timeout=300, **env):
  return subprocess.run([sys.executable, SCRIPT, *KILL_FLAGS, f'--workdir={workdir}'],
                        cwd=ROOT, env=_env(devices, **env), capture_output=True, text=True,
                        timeout=timeout)


def _run_until_marker_then(workdir, devices, marker, sig, **env):
  """Starts a run, waits for a line containing `marker` on stdout, then sends `sig`."""
  proc = subprocess.Popen([sys.executable, SCRIPT, *KILL_FLAGS, f'--workdir={workdir}'],
                          cwd=ROOT, env=_env(devices, **env), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  for line in proc.stdout:
    if marker in line:
      proc.send_signal(sig)
      break
    assert time.time() < deadline
  out, err = proc.communicate(timeout=300)
  return proc.returncode, out, err


@pytest.fixture(scope='module')
def straight_runs(tmp_path_factory):
  """The uninterrupted reference runs on 1 and 8 devices."""
  out = {}
  for devices in (1, 8):
    workdir = tmp_path_factory.mktemp(f'straight{devices}')
    proc = _run(workdir, devices)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out[devices] = _final_state(workdir)
  return out


# The kill lands between Orbax's async write and its commit: on one device, and on 8, where
# every array of the state is written by several devices' shards.
@pytest.mark.slow
@pytest.mark.parametrize('devices', [1, 8])
def test_sigkill_during_async_save_then_resume_is_bit_identical(tmp_path, devices,
                                                                straight_runs):
  code, _, _ = _run_until_marker_then(
      tmp_path, devices, 'TEST PAUSE after save start of step 20', signal.SIGKILL,
      VAE_JAX_TEST_PAUSE_AFTER_SAVE_START=5)
  assert code == -signal.SIGKILL
  assert not (tmp_path / 'DONE').exists()
  proc = _run(tmp_path, devices)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Resuming from the workdir checkpoint at step' in proc.stdout
  _assert_bitwise(_final_state(tmp_path), straight_runs[devices])


@pytest.mark.slow
def test_sigterm_saves_and_exits_then_resumes_exactly(tmp_path, straight_runs):
  code, out, err = _run_until_marker_then(
      tmp_path, 1, 'TEST PAUSE after save start of step 10', signal.SIGTERM,
      VAE_JAX_TEST_PAUSE_AFTER_SAVE_START=1)
  assert code == 0, err[-3000:]
  assert 'Stopped by a signal at step' in out
  assert not (tmp_path / 'DONE').exists()
  saved = ckpt_lib.Checkpointer(str(tmp_path), tiny_config(), create=False)
  last = saved.latest_step()
  saved.close()
  # The signal came during step 10's save: honoured at that boundary, no chunk after it.
  assert last == 10
  proc = _run(tmp_path, 1)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'Resuming from the workdir checkpoint at step {last}' in proc.stdout
  _assert_bitwise(_final_state(tmp_path), straight_runs[1])


@pytest.fixture(scope='module')
def run_with_checkpoints(tmp_path_factory):
  """A 20-step run on 8 devices keeping checkpoints at 10 and 20."""
  workdir = tmp_path_factory.mktemp('ckpts')
  result = train.train_and_evaluate(tiny_config(), str(workdir))
  return str(workdir), result


def _copy(src, dst):
  import shutil
  shutil.copytree(src, dst)
  return str(dst)


def test_round_trip_is_bitwise_and_onto_another_mesh(run_with_checkpoints):
  workdir, result = run_with_checkpoints
  for mesh_data in (1, -1):  # saved on 8 devices; restored on 1 and on 8
    config = tiny_config(**{'mesh.data': mesh_data})
    setup = experiment.build(config)
    checkpointer = ckpt_lib.Checkpointer(workdir, config, create=False)
    state, meta = checkpointer.restore_good(setup.abstract_state)
    checkpointer.close()
    assert meta['step'] == 20
    _assert_bitwise(state, result['state'])
    leaf = jax.tree.leaves(state.params)[0]
    assert len(leaf.sharding.device_set) == (1 if mesh_data == 1 else 8)


def test_saved_on_one_device_restores_on_eight(tmp_path):
  result = train.train_and_evaluate(tiny_config(num_train_steps=10, **{'mesh.data': 1}),
                                    str(tmp_path))
  config = tiny_config(num_train_steps=10, **{'mesh.data': -1})
  setup = experiment.build(config)
  assert setup.mesh.size == 8
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), config, create=False)
  state, _ = checkpointer.restore_good(setup.abstract_state)
  checkpointer.close()
  _assert_bitwise(state, result['state'])
  assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == 8


def test_resume_on_another_device_count_stays_within_1e_4(tmp_path):
  straight = train.train_and_evaluate(tiny_config(**{'mesh.data': 1}), str(tmp_path / 'a'))
  train.train_and_evaluate(tiny_config(num_train_steps=10, **{'mesh.data': 1}),
                           str(tmp_path / 'b'))
  resumed = train.train_and_evaluate(tiny_config(**{'mesh.data': -1}), str(tmp_path / 'b'))  # on 8
  assert resumed['num_devices'] == 8 and resumed['step'] == 20
  pairs = zip(_leaves(straight['state'].params), _leaves(resumed['state'].params), strict=True)
  for a, b in pairs:
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('damage', ['flip', 'truncate'])
def test_damaged_step_falls_back_to_the_previous_one(run_with_checkpoints, tmp_path, damage,
                                                     capfd):
  workdir = _copy(run_with_checkpoints[0], tmp_path / 'w')
  step_dir = os.path.join(workdir, 'checkpoints', '20', 'state')
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
  target = max(files, key=os.path.getsize)  # the array data
  with open(target, 'r+b') as f:
    if damage == 'flip':
      f.seek(os.path.getsize(target) // 2)
      byte = f.read(1)
      f.seek(-1, 1)
      f.write(bytes([byte[0] ^ 0xFF]))
    else:
      f.truncate(os.path.getsize(target) // 2)
  config = tiny_config()
  setup = experiment.build(config)
  checkpointer = ckpt_lib.Checkpointer(workdir, config, create=False)
  state, meta = checkpointer.restore_good(setup.abstract_state)
  checkpointer.close()
  assert meta['step'] == 10 and int(state.step) == 10
  err = capfd.readouterr().err
  assert 'checkpoint step 20' in err and 'falling back' in err


def _valid_neg_elbo(workdir, config):
  return {r['step']: r['neg_elbo'] for r in metrics_lib.read_metrics(workdir, 'eval')
          if r['split'] == config.data.valid_split}


def _steps(workdir, config):
  checkpointer = ckpt_lib.Checkpointer(workdir, config, create=False)
  steps = checkpointer.all_steps()
  checkpointer.close()
  return steps


def test_best_checkpoint_by_validation_is_kept_beside_the_latest(tmp_path):
  config = tiny_config(num_train_steps=40, eval_every_steps=10, checkpoint_every_steps=10,
                       **{'checkpoint.keep': 1})
  train.train_and_evaluate(config, str(tmp_path))
  evals = _valid_neg_elbo(str(tmp_path), config)
  assert sorted(evals) == [10, 20, 30, 40]
  best = min(evals, key=evals.get)
  assert _steps(str(tmp_path), config) == sorted({best, 40})


def test_the_best_checkpoint_survives_a_resume(tmp_path):
  # 20 good steps, then a resume at a learning rate of 1.0 makes the later steps worse on the
  # validation split: step 20 stays the best and must still be kept after the resume, when
  # only the preservation policy's metrics written to disk can say so.
  workdir = str(tmp_path)
  config = tiny_config(eval_every_steps=10, checkpoint_every_steps=10,
                       **{'checkpoint.keep': 1})
  train.train_and_evaluate(config, workdir)
  worse = tiny_config(num_train_steps=40, eval_every_steps=10, checkpoint_every_steps=10,
                      max_consecutive_nonfinite=100,
                      **{'checkpoint.keep': 1, 'optim.learning_rate': 1.0})
  train.train_and_evaluate(worse, workdir)
  evals = _valid_neg_elbo(workdir, config)
  assert min(evals, key=evals.get) == 20, evals
  assert _steps(workdir, config) == [20, 40]


def test_non_finite_steps_stop_the_run_before_anything_new_is_saved(tmp_path):
  # A good checkpoint at step 10; then the resumed run diverges (an absurd learning rate,
  # applied from the resumed step). Its steps are skipped, and the run stops at its next
  # check, which falls on the save at step 20: that save must not happen.
  workdir = str(tmp_path)
  good = train.train_and_evaluate(tiny_config(num_train_steps=10), workdir)['state']
  config = tiny_config(num_train_steps=40, log_every_steps=10, checkpoint_every_steps=10,
                       max_consecutive_nonfinite=3, **{'optim.learning_rate': 1e38})
  with pytest.raises(FloatingPointError, match=r'steps \d+ to 20'):
    train.train_and_evaluate(config, workdir)
  records = metrics_lib.read_metrics(workdir, 'train')
  assert records[-1]['step'] == 20 and records[-1]['nonfinite_steps'] > 3
  checkpointer = ckpt_lib.Checkpointer(workdir, config, create=False)
  steps = checkpointer.all_steps()
  checkpointer.close()
  assert steps == [10]
  _assert_bitwise(_final_state(workdir), good)
  assert json.load(open(tmp_path / 'DONE'))['step'] == 10  # the earlier finished run's


def test_a_skipped_non_finite_step_changes_nothing_but_the_counters():
  # With lr = 1e38 the first step sends the parameters to about +-1e38 (finite); every later
  # step has an infinite loss and is skipped.
  config = tiny_config(steps_per_call=1, **{'mesh.data': 1, 'optim.learning_rate': 1e38})
  after_one, _, _ = run_chunks(config, 1)
  after_ten, _, _ = run_chunks(config, 10)
  assert int(after_one.nonfinite_total) == 0
  assert int(after_ten.nonfinite_total) == 9 and int(after_ten.step) == 10
  _assert_bitwise((after_ten.params, after_ten.opt_state), (after_one.params, after_one.opt_state))
  assert float(after_ten.loss_momentum) == float(after_one.loss_momentum)


def test_load_run_gives_a_cpu_model_whatever_trained_it(run_with_checkpoints):
  workdir, result = run_with_checkpoints
  run = vae_jax.load_run(workdir)
  assert run.step == 20 and run.config.model.latent_dim == 4
  _assert_bitwise(run.state, result['state'])
  leaf = jax.tree.leaves(run.state.params)[0]
  assert len(leaf.sharding.device_set) == 1
  x = np.zeros((3, *run.image_shape), np.float32)
  terms = run.model.terms(run.state.params, x, jax.random.key(0))
  assert terms['neg_elbo'].shape == (3,) and np.all(np.isfinite(terms['neg_elbo']))
  assert run.model.posterior_stats(run.state.params, x)['mean'].shape == (3, 4)
  earlier = vae_jax.load_run(workdir, step=10)
  assert earlier.step == 10 and int(earlier.state.step) == 10


@pytest.mark.parametrize('overrides', [
    {},
    # Fine-tuning: another optimizer chain (clipping changes the optax state's structure),
    # batch, data order and split; only the model must match.
    {'optim.name': 'adamw', 'optim.clip_norm': 1.0, 'batch_size': 64, 'data_seed': 3,
     'data.train_split': 'train[:50%]'},
], ids=['same', 'fine_tune'])
def test_init_from_copies_parameters_only(run_with_checkpoints, tmp_path, overrides):
  workdir, result = run_with_checkpoints
  config = tiny_config(num_train_steps=5, steps_per_call=5, init_from=workdir, **overrides)
  exp = experiment.build(config)
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), config)
  state, _ = train.restore_or_init(exp, checkpointer, log=lambda *a: None)
  checkpointer.close()
  assert int(state.step) == 0
  _assert_bitwise(state.params, result['state'].params)
  fresh = experiment.init_state(exp)
  _assert_bitwise(state.opt_state, fresh.opt_state)


def test_init_from_another_model_is_refused(run_with_checkpoints, tmp_path):
  workdir, _ = run_with_checkpoints
  config = tiny_config(init_from=workdir, **{'model.latent_dim': 6})
  exp = experiment.build(config)
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), config)
  with pytest.raises(compat.IncompatibleCheckpointError, match='model.latent_dim: saved 4'):
    train.restore_or_init(exp, checkpointer, log=lambda *a: None)
  checkpointer.close()


# -- bad input: each a clear one-paragraph error, no traceback, within seconds ---------------


def _script_error(*flags, env=None):
  t0 = time.perf_counter()
  proc = subprocess.run([sys.executable, SCRIPT, *flags], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, env=env)
  return proc, time.perf_counter() - t0


def test_missing_dataset_offline_is_a_clear_error(tmp_path):
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / 'empty'))
  proc, seconds = _script_error('--config=configs/fashion_mnist.py', f'--workdir={tmp_path}/w',
                                '--config.data.download=False', env=env)
  assert proc.returncode == 2
  assert 'prepare_data.py' in proc.stderr and 'Traceback' not in proc.stderr
  assert seconds < 10


def test_incompatible_checkpoint_via_the_script(run_with_checkpoints, tmp_path):
  workdir = _copy(run_with_checkpoints[0], tmp_path / 'w')
  proc, _ = _script_error(*RUN_FLAGS, '--config.model.latent_dim=6', f'--workdir={workdir}')
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'different experiment' in proc.stderr and 'Traceback' not in proc.stderr


def test_batch_the_devices_cannot_split(tmp_path):
  proc, seconds = _script_error(*RUN_FLAGS, '--config.batch_size=30', f'--workdir={tmp_path}',
                                env=_env(8))
  assert proc.returncode == 2
  assert 'cannot be split evenly over 8 devices' in proc.stderr
  assert 'Traceback' not in proc.stderr and seconds < 10
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_unwritable_workdir(tmp_path):
  # A path through a regular file cannot be created, even by root.
  blocker = tmp_path / 'afile'
  blocker.write_text('x')
  target = str(blocker / 'w')
  proc, _ = _script_error(*RUN_FLAGS, f'--workdir={target}')
  assert proc.returncode == 2 and 'cannot be written' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_missing_config_flag(tmp_path):
  proc, _ = _script_error(f'--workdir={tmp_path / "w"}')
  assert proc.returncode == 2 and '--config=configs/NAME.py is required' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_json_config_is_kept(run_with_checkpoints):
  workdir, _ = run_with_checkpoints
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['latent_dim'] == 4
