"""A search's study in a real PostgreSQL server (a throwaway cluster started here), shared by
two controllers as on two hosts, and in Optuna's journal file; the stand-in trainer trains."""

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from tests.test_search import FAKE, fake_env, read_rows, run_script, trial_dirs, write_config

pytest.importorskip('optuna', reason="Optuna is not installed (pip install -e '.[search]')")


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def postgres_cluster():
  """A PostgreSQL server on a free local port, as an unprivileged user, in a throwaway folder:
  yields its URL; pytest.skip (naming why) where the server cannot start.

  What a user does by hand (see docs/sweeps.md): initdb -D DIR --auth=trust -U USER, then
  pg_ctl -D DIR -o "-p PORT -k DIR -c listen_addresses=127.0.0.1" -l DIR/log -w start.
  """
  bins = sorted(glob.glob('/usr/lib/postgresql/*/bin'), key=lambda p: int(p.split('/')[-2]))
  if not bins:
    pytest.skip('PostgreSQL is not installed here (Debian: apt-get install postgresql; '
                '.ci/run installs it)')
  pytest.importorskip('psycopg', reason="psycopg is not installed (pip install -e '.[search]')")
  bin_dir = bins[-1]
  # initdb refuses to run as root: root runs the server as the package's postgres user (or
  # nobody); anyone else as themselves.
  as_user = []
  folder = tempfile.mkdtemp(prefix='vae_jax_pg_')
  if os.geteuid() == 0:
    name = 'postgres'
    try:
      user = pwd.getpwnam(name)
    except KeyError:
      name, user = 'nobody', pwd.getpwnam('nobody')
    os.chown(folder, user.pw_uid, user.pw_gid)
    as_user = ['setpriv', f'--reuid={user.pw_uid}', f'--regid={user.pw_gid}', '--clear-groups',
               '--']
  data, port = os.path.join(folder, 'data'), _free_port()

  def call(*command, timeout=120):
    return subprocess.run([*as_user, *command], capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=folder)

  try:
    done = call(os.path.join(bin_dir, 'initdb'), '-D', data, '-U', 'search', '--auth=trust',
                '--no-sync', '-E', 'UTF8')
    if done.returncode:
      pytest.skip(f'the PostgreSQL server cannot start: initdb failed: {done.stderr[-500:]}')
    done = call(os.path.join(bin_dir, 'pg_ctl'), '-D', data, '-l', os.path.join(folder, 'log'),
                '-o', f'-p {port} -k {folder} -c listen_addresses=127.0.0.1 -F', '-w', 'start')
    if done.returncode:
      log = open(os.path.join(folder, 'log')).read()[-500:] if os.path.exists(
          os.path.join(folder, 'log')) else ''
      pytest.skip(f'the PostgreSQL server cannot start: pg_ctl failed: {done.stderr[-300:]} '
                  f'{log}')
    yield f'postgresql://search@127.0.0.1:{port}/postgres'
  finally:
    call(os.path.join(bin_dir, 'pg_ctl'), '-D', data, '-m', 'immediate', 'stop')
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope='module')
def postgres_url():
  with postgres_cluster() as url:
    yield url


@pytest.mark.slow
def test_a_study_in_postgresql_shared_by_two_controllers(postgres_url, tmp_path):
  config = write_config(tmp_path, trials=4, seed=1)
  first, second = str(tmp_path / 'host_a'), str(tmp_path / 'host_b')
  common = [f'--config={config}', f'--train_script={FAKE}', f'--storage={postgres_url}',
            '--study_name=shared', '--parallel=2']
  result = run_script(*common, f'--workdir={first}', env=fake_env('0.02'))
  assert result.returncode == 0, result.stdout + result.stderr
  assert "study 'shared' in postgresql://search@127.0.0.1" in result.stdout
  assert not os.path.exists(os.path.join(first, 'study.db'))  # the server holds the study
  # A second controller (another host, its own folder) grows the same study to 6 trials.
  result = run_script(*common, f'--workdir={second}', '--num_trials=6', env=fake_env('0.02'))
  assert result.returncode == 0, result.stdout + result.stderr
  assert '4 of 6 trials asked (4 by other controllers)' in result.stdout
  rows = read_rows(second)
  assert [int(r['number']) for r in rows] == list(range(6))
  assert [r['dir'] for r in rows] == [first] * 4 + [''] * 2
  assert all(r['state'] in ('complete', 'pruned', 'failed') for r in rows)
  assert len(trial_dirs(first)) == 4 and len(trial_dirs(second)) == 2
  # Both folders' reports read the one study.
  result = run_script(f'--workdir={first}', '--report', f'--storage={postgres_url}', timeout=120)
  assert result.returncode == 0, result.stderr
  assert [r['state'] for r in read_rows(first)] == [r['state'] for r in rows]
  import optuna
  study = optuna.load_study(study_name='shared', storage=postgres_url)
  assert len(study.trials) == 6


def test_a_study_in_a_journal_file(tmp_path):
  config = write_config(tmp_path, trials=3, pruner="'none'")
  journal = str(tmp_path / 'shared_fs' / 'study.log')
  workdir = str(tmp_path / 'out')
  args = [f'--config={config}', f'--workdir={workdir}', f'--train_script={FAKE}',
          f'--storage=journal:{journal}']
  result = run_script(*args, env=fake_env('0'))
  assert result.returncode == 0, result.stdout + result.stderr
  assert os.path.getsize(journal) > 0 and not os.path.exists(os.path.join(workdir, 'study.db'))
  assert [r['state'] for r in read_rows(workdir)] == ['complete'] * 3
  result = run_script(*args, '--num_trials=4', env=fake_env('0'))
  assert result.returncode == 0 and '3 of 4 trials asked' in result.stdout, result.stderr
  assert len(read_rows(workdir)) == 4
  # Another search cannot join that study, from any folder.
  other = write_config(tmp_path, trials=3, pruner="'median'", name='other.py')
  result = run_script(f'--config={other}', f'--workdir={tmp_path / "elsewhere"}',
                      f'--storage=journal:{journal}', '--study_name=out', timeout=60)
  assert result.returncode == 2 and "The study 'out'" in result.stderr, result.stderr
  assert 'holds another search' in result.stderr


def test_a_storage_that_cannot_be_opened_is_one_line(tmp_path):
  config = write_config(tmp_path)
  start = time.time()
  result = run_script(f'--config={config}', f'--workdir={tmp_path / "out"}',
                      '--storage=postgresql://someone:secret@127.0.0.1:1/none', timeout=120)
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
  assert 'cannot be opened' in result.stderr and 'secret' not in result.stderr
  assert 'someone:***@127.0.0.1:1' in result.stderr
  assert time.time() - start < 60
