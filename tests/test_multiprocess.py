"""A real two-process JAX job on 127.0.0.1 (gloo CPU collectives) through scripts/train.py.

2 processes x 2 CPU devices must reproduce a 1-process 4-device run of the same config: each
process reads only its rows of each batch, and the global batch is assembled with
jax.make_array_from_process_local_data.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.test_config import ROOT
from tests.test_train import tiny_config
from vae_jax import train

FLAGS = ['--config=configs/default.py', '--config.batch_size=32', '--config.eval_batch_size=512',
         '--config.num_train_steps=20', '--config.steps_per_call=1',
         '--config.log_every_steps=1', '--config.eval_every_steps=20',
         '--config.checkpoint_every_steps=20', '--config.model.hidden=(64,)',
         '--config.model.latent_dim=4', '--config.compilation_cache=',
         '--config.data.name=sprites/small']


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(num_cpu_devices):
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # the device count comes from JAX_NUM_CPU_DEVICES here
  env['JAX_NUM_CPU_DEVICES'] = str(num_cpu_devices)
  return env


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  train = [r for r in records if r['kind'] == 'train']
  evals = [r for r in records if r['kind'] == 'eval']
  return np.array([r['loss'] for r in train]), evals[-1]


def single_process_config(**overrides):
  """FLAGS as a config for this (one) process, on a mesh of `mesh.data` of its devices."""
  return tiny_config(**{'steps_per_call': 1, 'log_every_steps': 1, 'checkpoint_every_steps': 20,
                        'data.name': 'sprites/small', **overrides})


@pytest.mark.slow
@pytest.mark.parametrize('backend, steps', [('memory', 20), ('grain', 8)])
def test_two_processes_match_one_process_with_as_many_devices(tmp_path, backend, steps):
  """grain: each process reads only its rows of the split's ArrayRecord copy (a process that
  read the whole batch, or the other's rows, would train on other examples)."""
  script = os.path.join(ROOT, 'scripts', 'train.py')
  # The one-process reference runs here, on 4 of this process's devices (no process start).
  single = tmp_path / 'single'
  fields = {'num_train_steps': steps, 'eval_every_steps': steps,
            'checkpoint_every_steps': steps}
  train.train_and_evaluate(single_process_config(**{
      'mesh.data': 4, 'data.backend': backend, **fields}), str(single))

  multi = tmp_path / 'multi'
  port = _free_port()
  flags = [f for f in FLAGS if f.split('=')[0].removeprefix('--config.') not in fields]
  flags += [f'--config.{k}={v}' for k, v in fields.items()] + [f'--config.data.backend={backend}']
  procs = [subprocess.Popen(
      [sys.executable, script, *flags, f'--workdir={multi}',
       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}'],
      cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs, strict=True):
    assert p.returncode == 0, err[-3000:]

  want, want_eval = _losses(single)
  got, got_eval = _losses(multi)
  assert len(got) == len(want) == steps
  np.testing.assert_allclose(got, want, rtol=1e-4)
  np.testing.assert_allclose(got_eval['neg_elbo'], want_eval['neg_elbo'], rtol=1e-4)
  assert got_eval['num_examples'] == want_eval['num_examples']
  # Only process 0 writes logs: one record per step, not two.
  assert json.loads((multi / 'DONE').read_text())['step'] == steps


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
  """Only process 0 gets the signal, during step 10's save; the flag is combined across
  processes at that boundary, so both stop there (no chunk after it), hold one checkpoint
  together and exit cleanly."""
  script = os.path.join(ROOT, 'scripts', 'train.py')
  flags = [f for f in FLAGS if not f.startswith(('--config.num_train_steps',
                                                  '--config.steps_per_call',
                                                  '--config.log_every_steps',
                                                  '--config.checkpoint_every_steps'))]
  flags += ['--config.num_train_steps=400', '--config.steps_per_call=5',
            '--config.log_every_steps=5', '--config.checkpoint_every_steps=10']
  port = _free_port()
  env = dict(_env(2), VAE_JAX_TEST_PAUSE_AFTER_SAVE_START='1')
  logs = [open(tmp_path / f'err{i}.txt', 'w') for i in range(2)]
  procs = [subprocess.Popen(
      [sys.executable, script, *flags, f'--workdir={tmp_path / "w"}',
       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}'],
      cwd=ROOT, env=env, stdout=subprocess.PIPE if i == 0 else subprocess.DEVNULL,
      stderr=logs[i], text=True) for i in range(2)]
  for line in procs[0].stdout:
    if 'TEST PAUSE after save start of step 10' in line:
      procs[0].send_signal(signal.SIGTERM)
      break
  out = procs[0].communicate(timeout=300)[0]
  procs[1].wait(timeout=300)
  for log in logs:
    log.close()
  assert procs[0].returncode == 0, (tmp_path / 'err0.txt').read_text()[-3000:]
  assert procs[1].returncode == 0, (tmp_path / 'err1.txt').read_text()[-3000:]
  assert 'Stopped by a signal at step' in out
  steps = sorted(int(d) for d in os.listdir(tmp_path / 'w' / 'checkpoints') if d.isdigit())
  assert steps[-1] == 10
  assert 'Stopped by a signal at step 10' in out
  assert not (tmp_path / 'w' / 'DONE').exists()
