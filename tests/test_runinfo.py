"""DIR/run.json records how each start of a run was made, and keeps the earlier starts."""

import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import pytest

from tests.test_config import ROOT
from vae_jax.storage import runinfo


def _read(workdir):
  with open(os.path.join(workdir, 'run.json')) as f:
    return json.load(f)


def test_the_record_says_how_the_run_was_made(tmp_path, monkeypatch):
  argv = ['scripts/train.py', '--config=configs/default.py', f'--workdir={tmp_path}']
  monkeypatch.setattr(sys, 'argv', argv)
  returned = runinfo.write_run_info(str(tmp_path), 0)
  record = _read(tmp_path)
  assert record == returned
  assert record['argv'] == argv and record['executable'] == sys.executable
  assert record['cwd'] == os.getcwd() and record['start_step'] == 0
  assert record['started'].endswith('+00:00')
  assert record['python'] == '.'.join(map(str, sys.version_info[:3]))
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'tensorflow-datasets',
               'ml-collections', 'numpy', 'vae_jax'):
    assert record['packages'][name] == importlib.metadata.version(name)
  assert any(record['packages'][tf] for tf in ('tensorflow-cpu', 'tensorflow'))
  assert record['num_devices'] == len(record['devices']) == jax.device_count() == 8
  assert {d['platform'] for d in record['devices']} == {'cpu'}
  assert sorted(d['id'] for d in record['devices']) == sorted(d.id for d in jax.devices())
  assert record['process_count'] == 1 and record['hosts'] == [socket.gethostname()]
  assert 'XLA_FLAGS' in record['env']
  assert record['previous'] == []
  assert not [f for f in os.listdir(tmp_path) if f != 'run.json']  # no temporary file left


def _git(*args):
  return subprocess.run(['git', '-C', ROOT, *args], capture_output=True, text=True,
                        timeout=30)


@pytest.mark.skipif(shutil.which('git') is None or _git('rev-parse', 'HEAD').returncode,
                    reason='the tests do not run from a git checkout')
def test_the_record_names_the_commit(tmp_path):
  record = runinfo.write_run_info(str(tmp_path), 0)
  assert record['git_commit'] == _git('rev-parse', 'HEAD').stdout.strip()
  status = _git('status', '--porcelain').stdout.splitlines()
  assert record['git_dirty'] == bool(status)
  assert all(isinstance(line, str) for line in record['git_status'])


def test_no_repository_is_none(tmp_path, monkeypatch):
  monkeypatch.setattr(runinfo, '_git', lambda *a: None)
  record = runinfo.write_run_info(str(tmp_path), 0)
  assert record['git_commit'] is None and record['git_dirty'] is None


def test_a_resumed_run_keeps_the_earlier_starts(tmp_path, monkeypatch):
  monkeypatch.setattr(sys, 'argv', ['first'])
  runinfo.write_run_info(str(tmp_path), 0)
  monkeypatch.setattr(sys, 'argv', ['second'])
  runinfo.write_run_info(str(tmp_path), 20)
  monkeypatch.setattr(sys, 'argv', ['third'])
  runinfo.write_run_info(str(tmp_path), 40)
  record = _read(tmp_path)
  assert (record['argv'], record['start_step']) == (['third'], 40)
  earlier = [(r['argv'], r['start_step']) for r in record['previous']]
  assert earlier == [(['second'], 20), (['first'], 0)]  # newest first
  assert all('previous' not in r for r in record['previous'])


def test_an_unreadable_record_is_replaced_with_a_warning(tmp_path, capsys):
  (tmp_path / 'run.json').write_text('{"half')
  record = runinfo.write_run_info(str(tmp_path), 5)
  assert record['previous'] == [] and _read(tmp_path)['start_step'] == 5
  assert 'unreadable' in capsys.readouterr().err


def test_other_processes_write_nothing(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  assert runinfo.write_run_info(str(tmp_path), 0) is None
  assert not os.path.exists(tmp_path / 'run.json')


# One process of a two-process job: locks its own file and takes part in write_run_info.
_JOB_PROCESS = '''
import sys
from vae_jax import sharding
sharding.initialize_distributed(sys.argv[1], 2, int(sys.argv[2]))
import jax
from vae_jax.storage import runinfo, lock as workdir_lock
with workdir_lock.hold(sys.argv[3], jax.process_index()):
  runinfo.write_run_info(sys.argv[3], 0)
'''


@pytest.mark.slow
def test_a_two_process_job_records_every_host(tmp_path):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    address = f'127.0.0.1:{s.getsockname()[1]}'
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['JAX_NUM_CPU_DEVICES'] = '2'
  procs = [subprocess.Popen([sys.executable, '-c', _JOB_PROCESS, address, str(i), str(tmp_path)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  for proc in procs:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
  record = _read(tmp_path)
  assert record['process_count'] == 2 and record['hosts'] == [socket.gethostname()] * 2
  assert sorted(d['process_index'] for d in record['devices']) == [0, 0, 1, 1]
  assert sorted(os.listdir(tmp_path / 'locks')) == ['process_0.lock', 'process_1.lock']
