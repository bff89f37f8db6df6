"""User mistakes end in exit status 2 and one clear paragraph, never a traceback or a hang."""

import http.server
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.test_checkpoint import RUN_FLAGS, _env
from tests.test_config import ROOT
from tests.test_train import tiny_config
from vae_jax import train

DEBIAN_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'


def _script(name, *args, env=None, timeout=120):
  t0 = time.perf_counter()
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', name), *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
  return proc, time.perf_counter() - t0


def _error_line(stderr):
  lines = [line for line in stderr.splitlines() if line.startswith('error: ')]
  assert len(lines) == 1, stderr[-3000:]
  return lines[0]


# -- the config file -----------------------------------------------------------------------


@pytest.mark.parametrize('script, extra', [
    ('train.py', ['--workdir=WORKDIR']),
    # An override touches the config while the flags are parsed.
    ('train.py', ['--workdir=WORKDIR', '--config.batch_size=32']),
    ('benchmark.py', ['--chunks=1']),
])
def test_missing_config_file_names_the_configs_that_exist(tmp_path, script, extra):
  extra = [arg.replace('WORKDIR', str(tmp_path)) for arg in extra]
  proc, _ = _script(script, '--config=configs/no_such_config.py', *extra)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  assert 'configs/no_such_config.py does not exist' in proc.stderr
  for name in ('default', 'fashion_mnist', 'mnist'):
    assert f'configs/{name}.py' in proc.stderr
  assert '__init__' not in proc.stderr


def test_missing_config_file_lists_its_own_folder(tmp_path):
  for name in ('mine.py', '__init__.py'):
    (tmp_path / name).write_text('def get_config():\n  return None\n')
  proc, _ = _script('train.py', f'--config={tmp_path}/mien.py', f'--workdir={tmp_path}/w')
  assert proc.returncode == 2, proc.stderr[-3000:]
  line = _error_line(proc.stderr)
  assert 'mien.py does not exist' in line and f'{tmp_path}/mine.py' in line
  assert '__init__' not in proc.stderr and 'Traceback' not in proc.stderr


@pytest.mark.parametrize('source, match', [
    ('def get_config(:\n  pass\n', 'SyntaxError'),
    ('import no_such_module_xyz\n', 'no_such_module_xyz'),
    ('def get_config():\n  raise ValueError("bad value 42")\n', 'bad value 42'),
])
def test_config_file_that_fails_to_load(tmp_path, source, match):
  path = tmp_path / 'broken.py'
  path.write_text(source)
  proc, _ = _script('train.py', f'--config={path}', f'--workdir={tmp_path}/w')
  assert proc.returncode == 2, proc.stderr[-3000:]
  line = _error_line(proc.stderr)
  assert str(path) in line and match in line
  assert 'Traceback' not in proc.stderr


# -- a download that cannot succeed ---------------------------------------------------------


@pytest.fixture
def refusing_proxy():
  """A local port bound but not listening: every connection through it is refused at once.

  Sending the download through it makes the failure certain on any machine, online or not.
  """
  sock = socket.socket()
  sock.bind(('127.0.0.1', 0))
  yield f'http://127.0.0.1:{sock.getsockname()[1]}'
  sock.close()


@pytest.fixture
def not_found_proxy():
  """A local HTTP proxy answering 404 to every request: the host is reachable, the files not."""

  class NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # the name http.server calls
      self.send_response(404)
      self.end_headers()

    do_CONNECT = do_GET

    def log_message(self, *args):
      del args

  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), NotFound)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f'http://127.0.0.1:{server.server_address[1]}'
  server.shutdown()
  server.server_close()


def _download_fashion_mnist(tmp_path, proxy):
  env = {k: v for k, v in _env(1).items() if k.lower() not in ('no_proxy', 'all_proxy')}
  for var in ('http_proxy', 'https_proxy'):
    env[var] = env[var.upper()] = proxy
  env['TFDS_DATA_DIR'] = str(tmp_path / 'empty')
  return _script('train.py', '--config=configs/fashion_mnist.py', f'--workdir={tmp_path}/w',
                 '--config.data.download=True', env=env, timeout=60)


@pytest.mark.parametrize('proxy, match', [
    ('refusing_proxy', 'Connection refused'),  # found by the connect before TFDS starts
    ('not_found_proxy', 'HTTP code: 404'),     # TFDS's own download fails
])
def test_failed_download_is_quick_and_names_the_offline_command(tmp_path, request, proxy,
                                                                match):
  proc, seconds = _download_fashion_mnist(tmp_path, request.getfixturevalue(proxy))
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  assert seconds < 30
  assert "Downloading 'fashion_mnist' failed" in proc.stderr and match in proc.stderr
  assert ('python scripts/prepare_data.py --dataset=fashion_mnist '
          f'--manual_dir={DEBIAN_FASHION_MNIST}') in proc.stderr
  if not os.path.isdir(DEBIAN_FASHION_MNIST):
    assert 'apt-get install dataset-fashion-mnist' in proc.stderr


# -- a workdir whose every checkpoint is damaged ---------------------------------------------


@pytest.mark.slow
def test_every_checkpoint_damaged_is_a_user_error(tmp_path):
  workdir = tmp_path / 'w'
  train.train_and_evaluate(tiny_config(num_train_steps=10), str(workdir))
  ckpt_dir = workdir / 'checkpoints'
  steps = [d for d in os.listdir(ckpt_dir) if d.isdigit()]
  assert steps
  for step in steps:
    state_dir = ckpt_dir / step / 'state'
    files = [os.path.join(r, f) for r, _, fs in os.walk(state_dir) for f in fs]
    target = max(files, key=os.path.getsize)  # the array data
    with open(target, 'r+b') as f:
      f.seek(os.path.getsize(target) // 2)
      byte = f.read(1)
      f.seek(-1, 1)
      f.write(bytes([byte[0] ^ 0xFF]))
  proc, _ = _script('train.py', *RUN_FLAGS, f'--workdir={workdir}', env=_env(1))
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  assert str(ckpt_dir) in _error_line(proc.stderr)  # the error names the damaged folder
