"""The grain back end: the memory back end's batches bitwise, from ArrayRecord copies, without
TensorFlow; any step recreated, rows split over processes, workers, and a killed run resumed."""

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import psutil
import pytest

from tests.test_checkpoint import _assert_bitwise, _final_state
from tests.test_config import ROOT
from tests.test_data_checks import data_config
from tests.test_data_no_tensorflow import NO_TENSORFLOW
from vae_jax import data
from vae_jax.data import arrayrecords, datasets, formats, preprocess

N_TRAIN, N_TEST = 300, 70
BATCH = 32
SPLIT = 'train[:250]'  # a slice: 7 steps per epoch, 26 examples of each epoch skipped
SPE = 250 // BATCH


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """A tiny 'mnist' (300 / 70 grey images) prepared offline from idx files, in its own
  data_dir (the grain back end writes its ArrayRecord copies into the prepared folder)."""
  root = tmp_path_factory.mktemp('grain')
  rng = np.random.default_rng(0)
  manual = root / 'manual'
  manual.mkdir()
  for prefix, n in (('train', N_TRAIN), ('t10k', N_TEST)):
    formats.write_idx(str(manual / f'{prefix}-images-idx3-ubyte.gz'),
                      rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    formats.write_idx(str(manual / f'{prefix}-labels-idx1-ubyte.gz'), np.arange(n) % 10)
  data.prepare(cfg(root / 'tfds', manual_dir=str(manual)))
  return root / 'tfds'


def cfg(data_dir, **overrides):
  return data_config(**{'name': 'mnist', 'data_dir': str(data_dir), 'backend': 'grain',
                        'train_split': SPLIT, 'valid_split': 'train[250:]',
                        'eval_split': 'test', 'preprocess': 'dynamic_binarize', **overrides})


def prepared_copy(data_dir, new_data_dir):
  """The module's prepared mnist copied into new_data_dir without its ArrayRecord copies;
  returns the new prepared folder."""
  folder, = [r for r, _, f in os.walk(data_dir) if 'dataset_info.json' in f]
  copy = new_data_dir / 'mnist' / '3.0.1'
  shutil.copytree(folder, copy, ignore=shutil.ignore_patterns('array_record'))
  return copy


def train_batches(c, steps, start_step=0, **kw):
  it = data.make_train_iterator(c, batch_size=BATCH, data_seed=5, start_step=start_step, **kw)
  return list(itertools.islice(it, steps))


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for key in x:
      assert x[key].dtype == y[key].dtype, key
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def binarized(batch):
  return np.asarray(preprocess.preprocess(
      jnp.asarray(batch['image']), batch['index'], mode='dynamic_binarize', data_seed=5,
      epoch=batch['epoch']))


def test_train_batches_are_the_memory_back_ends_over_two_epochs(data_dir):
  grain = train_batches(cfg(data_dir), 2 * SPE + 2)
  memory = train_batches(cfg(data_dir, backend='memory'), 2 * SPE + 2)
  assert_batches_equal(grain, memory)
  assert [int(b['epoch'][0]) for b in grain] == [s // SPE for s in range(2 * SPE + 2)]
  # What the train step sees: the binarization keyed by (data_seed, index, epoch).
  for g, m in zip(grain[SPE - 1:SPE + 1], memory[SPE - 1:SPE + 1], strict=True):
    np.testing.assert_array_equal(binarized(g), binarized(m))
  assert {b['image'].shape for b in grain} == {(BATCH, 28, 28, 1)}


@pytest.mark.parametrize('split', ['test', 'train[250:]'])
@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_batches_are_the_memory_back_ends(data_dir, split, process_count):
  last_masks = []
  for p in range(process_count):
    kw = dict(batch_size=BATCH, process_index=p, process_count=process_count)
    grain = list(data.eval_batches(cfg(data_dir), split, **kw))
    memory = list(data.eval_batches(cfg(data_dir, backend='memory'), split, **kw))
    assert_batches_equal(grain, memory)
    last_masks.append(grain[-1]['mask'])
  assert not np.concatenate(last_masks).all()  # the last global batch is padded


def test_recreated_mid_epoch_continues_the_run(data_dir):
  c = cfg(data_dir)
  whole = train_batches(c, 2 * SPE + 1)
  for s in (3, SPE + 2):
    assert_batches_equal(train_batches(c, 2 * SPE + 1 - s, start_step=s), whole[s:])


def test_each_process_reads_its_rows_of_the_global_batch(data_dir):
  c = cfg(data_dir)
  whole = train_batches(c, SPE + 2, start_step=4)
  parts = [train_batches(c, SPE + 2, start_step=4, process_index=p, process_count=2)
           for p in range(2)]
  for step, x in enumerate(whole):
    assert not set(parts[0][step]['index']) & set(parts[1][step]['index'])
    for key in x:
      np.testing.assert_array_equal(np.concatenate([p[step][key] for p in parts]), x[key])


def test_worker_processes_give_the_same_batches(data_dir):
  c = cfg(data_dir)
  # Two workers: each reads every other step, and grain interleaves them back in order.
  assert_batches_equal(train_batches(cfg(data_dir, workers=2), SPE + 3, start_step=2),
                       train_batches(c, SPE + 3, start_step=2))


def test_the_copy_is_written_once_and_a_mismatching_one_is_an_error(data_dir, tmp_path):
  copy = prepared_copy(data_dir, tmp_path)
  c = cfg(tmp_path)
  first = train_batches(c, 2)
  target = copy / 'array_record' / 'train'
  assert sorted(os.listdir(copy / 'array_record')) == ['train']  # no temporary folder left
  stamp = os.stat(target / 'images.array_record').st_mtime_ns
  assert_batches_equal(train_batches(c, 2), first)
  assert os.stat(target / 'images.array_record').st_mtime_ns == stamp  # read, not rewritten
  # Another process's copy landing first: this one's rename fails, and the first is kept.
  prepared = datasets.prepared_records(c)
  arrayrecords._write(prepared, 'train', str(target), arrayrecords._expected_info(prepared,
                                                                                  'train'))
  assert sorted(os.listdir(copy / 'array_record')) == ['train']
  assert os.stat(target / 'images.array_record').st_mtime_ns == stamp
  info = json.loads((target / 'info.json').read_text())
  (target / 'info.json').write_text(json.dumps(dict(info, num_records=299)))
  with pytest.raises(data.DatasetMissingError, match=rf'{target} is not an ArrayRecord copy'):
    train_batches(c, 1)
  assert json.loads((target / 'info.json').read_text())['num_records'] == 299  # left alone


def test_an_unwritable_prepared_folder_says_how_to_write_the_copies_once(data_dir, tmp_path):
  copy = prepared_copy(data_dir, tmp_path / 'tfds')
  # A file where the copies' folder goes: creating it fails as on a read-only mount (root
  # ignores permission bits).
  (copy / 'array_record').write_text('')
  with pytest.raises(data.DatasetMissingError,
                     match=r'(?s)cannot be written.*prepare_data\.py --dataset=NAME '
                           rf'--data_dir={tmp_path / "tfds"} --array_record.*'
                           r'data\.backend=memory or stream\.'):
    train_batches(cfg(tmp_path / 'tfds'), 1)


def test_prepare_data_writes_every_splits_copy_ahead(data_dir, tmp_path):
  """scripts/prepare_data.py --array_record: the copies exist before any grain run, which then
  reads them as they are and gets the memory back end's batches."""
  copy = prepared_copy(data_dir, tmp_path)
  proc = subprocess.run([sys.executable, 'scripts/prepare_data.py', '--dataset=mnist',
                         f'--data_dir={tmp_path}', '--array_record'],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert sorted(report['array_record']) == sorted(report['splits']) == ['test', 'train']
  for split, path in report['array_record'].items():
    assert path == str(copy / 'array_record' / split / 'images.array_record')
  stamps = {p: os.stat(p).st_mtime_ns for p in report['array_record'].values()}
  c = cfg(tmp_path)
  assert_batches_equal(train_batches(c, 3), train_batches(cfg(tmp_path, backend='memory'), 3))
  assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps  # read, not written again


def test_grain_missing_is_a_config_error_before_anything_runs(monkeypatch):
  import importlib.util

  from configs import default
  from vae_jax.config.validation import ConfigError, validate_config
  config = default.get_config()
  config.data.backend = 'grain'
  validate_config(config)
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'grain' else find_spec(name, *a))
  with pytest.raises(ConfigError, match=r"needs grain .*pip install -e '\.\[grain\]'"):
    validate_config(config)
  config.data.update(backend='memory', workers=-1)
  with pytest.raises(ConfigError, match='data.workers=-1'):
    validate_config(config)
  assert arrayrecords.Rows  # the module imports without grain


def test_a_run_switches_between_grain_and_memory_on_resume_bitwise(data_dir, tmp_path):
  """Both back ends give every step the same batch, so a run may resume on either (data that
  outgrows one machine's memory); the stream back end's order is another, and stays refused."""
  from tests.test_train import tiny_config
  from vae_jax import train
  from vae_jax.config.compat import IncompatibleCheckpointError

  def run(workdir, steps, backend):
    data_fields = {f'data.{k}': v for k, v in cfg(data_dir, backend=backend).items()}
    train.train_and_evaluate(tiny_config(**{
        **data_fields, 'num_train_steps': steps, 'checkpoint_every_steps': 5,
        'eval_every_steps': 10, 'eval_num_samples': 0}), str(workdir))

  run(tmp_path / 'straight', 10, 'memory')  # 7 steps an epoch: the switch is in epoch 0
  run(tmp_path / 'switched', 5, 'grain')
  run(tmp_path / 'switched', 10, 'memory')
  _assert_bitwise(_final_state(tmp_path / 'switched'), _final_state(tmp_path / 'straight'))
  with pytest.raises(IncompatibleCheckpointError, match="data.backend: saved 'memory', now "
                                                        "'stream'"):
    run(tmp_path / 'switched', 15, 'stream')


# ---------------------------------------------------------------------------------------------
# The scripts, in processes where importing TensorFlow raises


# runpy only as the main module: grain's worker processes (multiprocessing's spawn) run this
# file again as __mp_main__, which installs the import block in them too and stops there.
WRAPPER = NO_TENSORFLOW + '''
import runpy
if __name__ == '__main__':
  sys.argv = sys.argv[1:]
  runpy.run_path(sys.argv[0], run_name='__main__')
'''
RUN_FLAGS = ['--config=configs/default.py', '--config.data.name=mnist',
             '--config.data.backend=grain', '--config.data.workers=1',
             '--config.batch_size=32', '--config.num_train_steps=20', '--config.steps_per_call=5',
             '--config.log_every_steps=5', '--config.checkpoint_every_steps=10',
             '--config.eval_every_steps=20', '--config.eval_batch_size=64',
             '--config.model.hidden=(8,)', '--config.model.latent_dim=2',
             '--config.eval_num_samples=0', '--config.images.num=4', '--config.mesh.data=1',
             '--config.compilation_cache=', '--config.checkpoint.async_save=False']


def _script(tmp_path, script, *flags, **env):
  wrapper = tmp_path / 'no_tensorflow.py'
  wrapper.write_text(WRAPPER)
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
             PYTHONPATH=ROOT, **{k: str(v) for k, v in env.items()})
  return subprocess.Popen([sys.executable, str(wrapper), f'scripts/{script}', *flags], cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc):
  out, err = proc.communicate(timeout=300)
  assert 'BLOCKED import tensorflow' not in err, err[-3000:]
  assert proc.returncode == 0, err[-3000:]
  return out


@pytest.mark.slow
def test_scripts_without_tensorflow_and_a_killed_run_resumes_bitwise(data_dir, tmp_path):
  """train.py (a grain worker, the first ArrayRecord copy) and evaluate.py run where TensorFlow
  cannot be imported; a run SIGKILLed mid-epoch, resumed, ends bitwise where an uninterrupted
  one does, and its worker process does not outlive it."""
  prepared_copy(data_dir, tmp_path / 'tfds')
  flags = [*RUN_FLAGS, f'--config.data.data_dir={tmp_path / "tfds"}']
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  _finish(_script(tmp_path, 'train.py', *flags, f'--workdir={straight}'))
  # 270 training examples: 8 steps an epoch; the pause comes in step 10's save (epoch 1).
  proc = _script(tmp_path, 'train.py', *flags, f'--workdir={killed}',
                 VAE_JAX_TEST_PAUSE_AFTER_SAVE_START=5)
  deadline, workers = time.time() + 300, []
  for line in proc.stdout:
    if 'TEST PAUSE after save start of step 10' in line:
      workers = psutil.Process(proc.pid).children(recursive=True)
      proc.send_signal(signal.SIGKILL)
      break
    assert time.time() < deadline
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL and workers
  _, alive = psutil.wait_procs(workers, timeout=20)
  assert not alive, alive
  out = _finish(_script(tmp_path, 'train.py', *flags, f'--workdir={killed}'))
  assert 'Resuming from the workdir checkpoint at step' in out
  _assert_bitwise(_final_state(killed), _final_state(straight))
  out = _finish(_script(tmp_path, 'evaluate.py', f'--workdir={straight}', '--num_samples=2'))
  last = json.loads(out.strip().splitlines()[-1])
  assert last['split'] == 'test' and last['num_examples'] == N_TEST
  assert np.isfinite(last['nll'])
