"""Checkpoint faults: a rerun past a damaged step, the newest step's protection, and the config
compatibility rule on resume."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests import test_checkpoint as tc
from tests.test_config import ROOT
from tests.test_train import tiny_config
from vae_jax import train
from vae_jax.config import compat
from vae_jax.storage import checkpoint as ckpt_lib

# The Checkpointer-level tests save plain pytrees: it stores any pytree with its meta.
IMAGE_SHAPE = (8, 8, 1)


def _flip_byte(step_dir):
  """Flips one byte in the middle of the largest file under `step_dir`/state (the array data)."""
  state_dir = os.path.join(step_dir, 'state')
  files = [os.path.join(r, f) for r, _, fs in os.walk(state_dir) for f in fs]
  target = max(files, key=os.path.getsize)
  with open(target, 'r+b') as f:
    f.seek(os.path.getsize(target) // 2)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0xFF]))


def _digest_path(workdir, step):
  return os.path.join(workdir, 'checkpoints', 'digests', f'{step}.json')


def _step_path(workdir, step):
  return os.path.join(workdir, 'checkpoints', str(step))


def _abstract(tree):
  """The restore target of a concrete pytree: shapes, dtypes and shardings."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      tree)


# -- 1. a rerun past a damaged step -----------------------------------------------------------


@pytest.fixture(scope='module')
def twenty_and_thirty(tmp_path_factory):
  """A finished 20-step run's workdir (checkpoints at 10 and 20) and its final state, and a
  straight 30-step run's result."""
  done20 = str(tmp_path_factory.mktemp('run20'))
  state20 = train.train_and_evaluate(tiny_config(), done20)['state']
  straight30 = train.train_and_evaluate(tiny_config(num_train_steps=30),
                                        str(tmp_path_factory.mktemp('run30')))
  return done20, state20, straight30


@pytest.mark.parametrize('damage', ['flip', 'no_digest'])
def test_rerun_past_a_damaged_step_saves_it_again_and_matches_a_straight_run(
    twenty_and_thirty, tmp_path, damage, capfd):
  done20, _, straight30 = twenty_and_thirty
  workdir = tc._copy(done20, tmp_path / 'w')
  if damage == 'flip':
    _flip_byte(_step_path(workdir, 20))
  else:  # a kill between the commit and the digest leaves a committed step without digest
    os.remove(_digest_path(workdir, 20))
  result = train.train_and_evaluate(tiny_config(num_train_steps=30), workdir)
  assert result['step'] == 30 and os.path.exists(os.path.join(workdir, 'DONE'))
  moved = os.path.join(workdir, 'checkpoints', 'damaged', '20')
  assert os.path.isdir(os.path.join(moved, 'state'))  # kept, not deleted
  if damage == 'flip':
    assert os.path.exists(moved + '.json')  # its digest beside it
  err = capfd.readouterr().err
  assert 'checkpoint step 20' in err and moved in err
  tc._assert_bitwise(result['state'].params, straight30['state'].params)
  tc._assert_bitwise(tc._final_state(workdir), straight30['state'])


def test_a_second_set_aside_of_the_same_step_gets_a_new_name(twenty_and_thirty, tmp_path):
  done20, state20, _ = twenty_and_thirty
  workdir = tc._copy(done20, tmp_path / 'w')
  os.makedirs(os.path.join(workdir, 'checkpoints', 'damaged', '20'))  # an earlier one
  _flip_byte(_step_path(workdir, 20))
  checkpointer = ckpt_lib.Checkpointer(workdir, tiny_config())
  _, meta = checkpointer.restore_good(_abstract(state20))
  assert meta['step'] == 10 and checkpointer.all_steps() == [10]
  checkpointer.close()
  damaged = os.path.join(workdir, 'checkpoints', 'damaged')
  assert os.path.isdir(os.path.join(damaged, '20.1', 'state'))
  assert os.path.exists(os.path.join(damaged, '20.1.json'))


def test_a_reader_moves_nothing(twenty_and_thirty, tmp_path):
  done20, state20, _ = twenty_and_thirty
  workdir = tc._copy(done20, tmp_path / 'w')
  _flip_byte(_step_path(workdir, 20))
  checkpointer = ckpt_lib.Checkpointer(workdir, tiny_config(), create=False)
  _, meta = checkpointer.restore_good(_abstract(state20))
  checkpointer.close()
  assert meta['step'] == 10
  assert os.path.isdir(_step_path(workdir, 20))
  assert not os.path.exists(os.path.join(workdir, 'checkpoints', 'damaged'))


# -- 2. the newest step is protected ----------------------------------------------------------


def _two_states():
  """(restore target, a pytree saved as step 10, a different one saved as step 20)."""
  rng = np.random.RandomState(0)
  first = {'w': jax.numpy.asarray(rng.randn(64, 64).astype(np.float32)),
           'b': jax.numpy.asarray(rng.randn(64).astype(np.float32))}
  second = jax.tree.map(lambda x: x + 1, first)
  return _abstract(first), first, second


def _wait_for_commit(workdir, step, timeout=60):
  deadline = time.time() + timeout
  while not os.path.isdir(_step_path(workdir, step)):
    assert time.time() < deadline, f'step {step} never committed'
    time.sleep(0.02)


def test_sync_save_has_its_digest_when_save_returns(tmp_path):
  config = tiny_config()
  _, state, _ = _two_states()
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), config)
  checkpointer.save(10, state, config, IMAGE_SHAPE)
  assert os.path.exists(_digest_path(str(tmp_path), 10))  # no later save, no wait
  assert checkpointer.verify(10) == (True, '')
  checkpointer.close()


def test_async_save_has_its_digest_when_it_commits(tmp_path):
  config = tiny_config(**{'checkpoint.async_save': True})
  _, state, _ = _two_states()
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), config)
  checkpointer.save(10, state, config, IMAGE_SHAPE)
  _wait_for_commit(str(tmp_path), 10)
  assert os.path.exists(_digest_path(str(tmp_path), 10))  # committed: no wait() called
  checkpointer.wait()
  assert checkpointer.verify(10) == (True, '')
  checkpointer.close()


@pytest.mark.parametrize('mode', ['sync', 'async', 'no_digest'])
def test_a_flipped_newest_step_is_never_restored(tmp_path, mode, capfd):
  workdir = str(tmp_path)
  config = tiny_config(**{'checkpoint.async_save': mode == 'async'})
  target, first, second = _two_states()
  writer = ckpt_lib.Checkpointer(workdir, config)
  writer.save(10, first, config, IMAGE_SHAPE)
  writer.save(20, second, config, IMAGE_SHAPE)
  # What a resume after a kill sees: the writer neither waited nor closed.
  _wait_for_commit(workdir, 20)
  if mode == 'no_digest' and os.path.exists(_digest_path(workdir, 20)):
    os.remove(_digest_path(workdir, 20))  # killed between the commit and the digest
  _flip_byte(_step_path(workdir, 20))
  reader = ckpt_lib.Checkpointer(workdir, config, create=False)
  state, meta = reader.restore_good(target)
  reader.close()
  assert meta['step'] == 10
  tc._assert_bitwise(state, first)
  err = capfd.readouterr().err
  assert 'checkpoint step 20' in err and 'falling back' in err
  if mode == 'no_digest':
    assert 'no digest' in err
    assert not os.path.exists(_digest_path(workdir, 20))  # a restore never writes a digest
  writer.close()


def test_a_step_without_digest_is_set_aside_and_saved_again(tmp_path, capfd):
  workdir = str(tmp_path)
  config = tiny_config()
  target, first, second = _two_states()
  writer = ckpt_lib.Checkpointer(workdir, config)
  writer.save(10, first, config, IMAGE_SHAPE)
  writer.save(20, second, config, IMAGE_SHAPE)
  writer.close()
  os.remove(_digest_path(workdir, 20))
  resumer = ckpt_lib.Checkpointer(workdir, config)
  _, meta = resumer.restore_good(target)
  assert meta['step'] == 10 and resumer.all_steps() == [10]
  err = capfd.readouterr().err
  moved = os.path.join(workdir, 'checkpoints', 'damaged', '20')
  assert 'unverified' in err and moved in err
  assert os.path.isdir(os.path.join(moved, 'state'))
  resumer.save(20, second, config, IMAGE_SHAPE)  # no StepAlreadyExistsError
  assert resumer.verify(20) == (True, '')
  resumer.close()


@pytest.fixture(scope='module')
def straight_run_1(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('straight1')
  proc = tc._run(workdir, 1)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return tc._final_state(workdir)


@pytest.mark.slow
def test_sigkill_before_the_digest_leaves_no_committed_step_and_resumes_exactly(
    tmp_path, straight_run_1):
  code, _, _ = tc._run_until_marker_then(
      tmp_path, 1, 'TEST PAUSE before digest of steps [10]', signal.SIGKILL,
      VAE_JAX_TEST_PAUSE_BEFORE_DIGEST=30)
  assert code == -signal.SIGKILL
  # The digest is written inside the commit: killed there, step 10 was never committed.
  assert not os.path.isdir(tmp_path / 'checkpoints' / '10')
  assert not (tmp_path / 'checkpoints' / 'digests' / '10.json').exists()
  proc = tc._run(tmp_path, 1)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Starting from scratch' in proc.stdout
  tc._assert_bitwise(tc._final_state(tmp_path), straight_run_1)


@pytest.mark.slow
def test_two_processes_set_a_damaged_step_aside_once_and_finish(tmp_path):
  """Both processes skip the damaged step, process 0 moves it, both save it again."""
  from tests.test_multiprocess import FLAGS, _free_port
  from tests.test_multiprocess import _env as _multiprocess_env
  fixed = ('--config.num_train_steps', '--config.steps_per_call', '--config.log_every_steps',
           '--config.checkpoint_every_steps')
  flags = [f for f in FLAGS if not f.startswith(fixed)]
  flags += ['--config.steps_per_call=5', '--config.log_every_steps=5',
            '--config.checkpoint_every_steps=10', f'--workdir={tmp_path}']

  def job(num_train_steps):
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, tc.SCRIPT, *flags, f'--config.num_train_steps={num_train_steps}',
         f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}'],
        cwd=ROOT, env=_multiprocess_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
      assert p.returncode == 0, err[-3000:]
    return outs

  # The finished 20-step run to damage is made here, in this process: what is under test is
  # the two-process resume that meets the damage (a checkpoint restores onto another mesh).
  train.train_and_evaluate(tiny_config(**{'data.name': 'sprites/small'}), str(tmp_path))
  _flip_byte(_step_path(str(tmp_path), 20))
  outs = job(30)
  moved = os.path.join(str(tmp_path), 'checkpoints', 'damaged', '20')
  assert f'aside to {moved}' in outs[0][1]
  assert os.path.isdir(os.path.join(moved, 'state'))
  assert not os.path.exists(moved + '.1')  # moved once, by process 0
  steps = sorted(int(d) for d in os.listdir(tmp_path / 'checkpoints') if d.isdigit())
  assert steps == [10, 20, 30] and (tmp_path / 'DONE').exists()
  for step in steps[1:]:
    assert os.path.exists(_digest_path(str(tmp_path), step))


# -- 3. the compatibility rule ----------------------------------------------------------------


def _saved(**overrides):
  return json.loads(tiny_config(**overrides).to_json())


@pytest.mark.parametrize('saved, now, field', [
    ({}, {'optim.schedule': 'warmup_cosine'}, 'optim.schedule'),
    ({}, {'optim.warmup_steps': 5}, 'optim.warmup_steps'),
    ({}, {'optim.weight_decay': 0.1}, 'optim.weight_decay'),
    ({}, {'data.backend': 'stream'}, 'data.backend'),
    ({}, {'data.shuffle_buffer': 100}, 'data.shuffle_buffer'),
    ({'optim.schedule': 'warmup_cosine'},
     {'optim.schedule': 'warmup_cosine', 'num_train_steps': 40}, 'num_train_steps'),
], ids=['schedule', 'warmup_steps', 'weight_decay', 'backend', 'shuffle_buffer',
        'num_train_steps_under_warmup_cosine'])
def test_a_change_of_the_trajectory_is_refused(saved, now, field):
  with pytest.raises(compat.IncompatibleCheckpointError, match='different experiment') as e:
    compat.check_compatible(_saved(**saved), tiny_config(**now), 'W')
  assert field in str(e.value)


def test_num_train_steps_under_warmup_cosine_is_explained():
  saved = _saved(**{'optim.schedule': 'warmup_cosine'})
  now = tiny_config(num_train_steps=40, **{'optim.schedule': 'warmup_cosine'})
  with pytest.raises(compat.IncompatibleCheckpointError, match='decay') as e:
    compat.check_compatible(saved, now, 'W')
  assert 'saved 20' in str(e.value) and 'now 40' in str(e.value)


@pytest.mark.parametrize('now', [
    {'num_train_steps': 40},
    {'log_every_steps': 10, 'eval_every_steps': 10, 'checkpoint_every_steps': 5},
    {'steps_per_call': 10, 'eval_batch_size': 256, 'images.num': 4, 'checkpoint.keep': 1,
     'checkpoint.async_save': True, 'mesh.data': 1, 'compilation_cache': '/x',
     'init_from': '/y', 'max_consecutive_nonfinite': 3, 'data.data_dir': '/d',
     'data.manual_dir': '/m', 'data.download': True, 'data.eval_split': 'train'},
], ids=['num_train_steps_under_constant', 'intervals', 'other_neutral_fields'])
def test_a_change_that_keeps_the_trajectory_is_accepted(now):
  compat.check_compatible(_saved(), tiny_config(**now), 'W')


def test_a_field_added_since_the_checkpoint_is_accepted_at_its_default():
  saved = _saved()
  del saved['model']['logistic_mixtures']  # written before the field existed
  compat.check_compatible(saved, tiny_config(), 'W')
  with pytest.raises(compat.IncompatibleCheckpointError, match='model.logistic_mixtures'):
    compat.check_compatible(saved, tiny_config(**{'model.logistic_mixtures': 3}), 'W')


def test_a_field_removed_since_the_checkpoint_is_ignored():
  saved = _saved()
  saved['model']['retired_option'] = 7
  compat.check_compatible(saved, tiny_config(), 'W')


def test_learning_rate_and_beta_are_applied_on_resume_and_reported():
  assert compat.APPLIED_ON_RESUME == ('optim.learning_rate', 'objective.beta',
                                        'objective.kl_warmup_steps', 'objective.free_bits')
  saved = _saved()
  now = tiny_config(**{'optim.learning_rate': 2e-3, 'objective.beta': 0.5})
  compat.check_compatible(saved, now, 'W')
  assert compat.config_changes(saved, now) == [
      ('optim.learning_rate', 1e-3, 2e-3), ('objective.beta', 1.0, 0.5)]
  assert compat.config_changes(saved, tiny_config()) == []


def test_the_error_lists_every_difference_and_what_to_do():
  now = tiny_config(seed=3, **{'model.latent_dim': 6})
  with pytest.raises(compat.IncompatibleCheckpointError) as e:
    compat.check_compatible(_saved(), now, '/the/workdir')
  message = str(e.value)
  assert 'seed: saved 0, now 3' in message
  assert 'model.latent_dim: saved 4, now 6' in message
  assert '/the/workdir' in message and '--workdir' in message


def test_a_digest_of_the_previous_format_still_verifies(tmp_path):
  # Earlier digests also covered the two files Orbax writes during the commit.
  import hashlib
  workdir = str(tmp_path)
  config = tiny_config()
  _, state, _ = _two_states()
  checkpointer = ckpt_lib.Checkpointer(workdir, config)
  checkpointer.save(10, state, config, IMAGE_SHAPE)
  step_dir = _step_path(workdir, 10)
  files = {}
  for root, _, names in os.walk(step_dir):
    for name in names:
      with open(os.path.join(root, name), 'rb') as f:
        files[os.path.relpath(os.path.join(root, name), step_dir)] = (
            hashlib.sha256(f.read()).hexdigest())
  assert '_CHECKPOINT_METADATA' in files
  with open(_digest_path(workdir, 10), 'w') as f:
    json.dump({'step': 10, 'files': files}, f)
  assert checkpointer.verify(10) == (True, '')
  checkpointer.close()
