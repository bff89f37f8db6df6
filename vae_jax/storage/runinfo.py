"""DIR/run.json: how a run was made, so that a result can be traced back and re-made.

Every start of a run (fresh or resumed) records the command line, the working folder, the
time, the step it started at, Python and package versions, the git commit of this package's
repository (and whether the tree had changes), the devices and the hosts. The newest start is
the top level of run.json; the earlier starts of the same workdir are kept, newest first, in
its `previous` list, so a resumed run keeps the record of how each part of it was made.

Multi-process jobs: `write_run_info` is called on every process, because it gathers every
process's host name (one small all-gather); process 0 alone writes the file.
"""

import datetime
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys

import jax
import numpy as np

RUN_INFO_FILE = 'run.json'
# Distributions whose versions decide what a run computes. Both TensorFlow wheels are listed:
# a machine has one of them; the other is recorded as None.
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'tensorflow-datasets',
            'tensorflow-cpu', 'tensorflow', 'ml-collections', 'numpy', 'vae_jax')
# Environment variables that change devices or numerics (XLA_FLAGS can fake 8 CPU devices).
_ENV_PREFIXES = ('XLA_', 'JAX_')
_ENV_NAMES = ('CUDA_VISIBLE_DEVICES', 'TFDS_DATA_DIR')
_HOSTNAME_BYTES = 256  # fixed size of one host name in the all-gather (Linux allows 64)
_GIT_TIMEOUT_S = 5
_MAX_GIT_STATUS_LINES = 50


def run_info_path(workdir):
  return os.path.join(os.path.abspath(workdir), RUN_INFO_FILE)


def package_versions():
  """{distribution: installed version, or None where it is not installed}."""
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def _git(folder, *args):
  """git's stdout in folder, or None where git, a repository or an answer within 5 s is absent."""
  try:
    proc = subprocess.run(['git', '-C', folder, *args], capture_output=True, text=True,
                          timeout=_GIT_TIMEOUT_S)
  except (OSError, subprocess.SubprocessError):
    return None
  return proc.stdout if proc.returncode == 0 else None


def git_state():
  """The commit of the repository this package's source files are tracked in, and its changes.

  Returns:
    {'git_commit', 'git_dirty', 'git_status'}: None each where the package does not come from
    a git checkout (an installed wheel, or no git). git_status is `git status --porcelain`
    (untracked files included: a new module changes what runs), at most 50 lines.
  """
  package_dir = os.path.dirname(os.path.abspath(__file__))
  absent = {'git_commit': None, 'git_dirty': None, 'git_status': None}
  # A site-packages copy can sit inside some unrelated repository: require the package's own
  # files to be tracked by the repository found.
  if _git(package_dir, 'ls-files', '--error-unmatch', '__init__.py') is None:
    return absent
  commit = _git(package_dir, 'rev-parse', 'HEAD')
  status = _git(package_dir, 'status', '--porcelain')
  if commit is None or status is None:
    return absent
  lines = status.splitlines()
  return {'git_commit': commit.strip(), 'git_dirty': bool(lines),
          'git_status': lines[:_MAX_GIT_STATUS_LINES]}


def host_names():
  """Every process's host name, in process order (an all-gather where there are several)."""
  name = socket.gethostname()
  if jax.process_count() == 1:
    return [name]
  from jax.experimental import multihost_utils

  encoded = np.zeros(_HOSTNAME_BYTES, np.uint8)
  raw = name.encode()[:_HOSTNAME_BYTES]
  encoded[:len(raw)] = np.frombuffer(raw, np.uint8)
  gathered = np.asarray(multihost_utils.process_allgather(encoded))
  return [bytes(row).rstrip(b'\0').decode(errors='replace') for row in gathered]


def _devices():
  return [{'id': d.id, 'platform': d.platform, 'device_kind': d.device_kind,
           'process_index': d.process_index} for d in jax.devices()]


def _read_earlier(path):
  """The starts recorded in an existing run.json, newest first ([] if none or unreadable)."""
  if not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      earlier = json.load(f)
    previous = earlier.pop('previous', [])
    return [earlier, *previous]
  except (OSError, ValueError, AttributeError, TypeError) as e:
    print(f'WARNING: {path} is unreadable ({type(e).__name__}: {e}); its earlier records are '
          'not carried over.', file=sys.stderr, flush=True)
    return []


def write_run_info(workdir, step):
  """Records this start of the run in DIR/run.json (atomically); call on every process.

  Args:
    workdir: the run's folder.
    step: the step this start begins at (0 for a fresh run, the checkpoint's step on resume).

  Returns:
    The record written (with `previous`), or None on processes other than 0.
  """
  hosts = host_names()  # a collective: every process takes part
  if jax.process_index() != 0:
    return None
  record = {
      'started': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'start_step': int(step),
      'argv': list(sys.argv),
      'executable': sys.executable,
      'cwd': os.getcwd(),
      'python': platform.python_version(),
      'packages': package_versions(),
      **git_state(),
      'env': {k: v for k, v in sorted(os.environ.items())
              if k.startswith(_ENV_PREFIXES) or k in _ENV_NAMES},
      'process_count': jax.process_count(),
      'host': socket.gethostname(),
      'hosts': hosts,
      'num_devices': jax.device_count(),
      'devices': _devices(),
  }
  path = run_info_path(workdir)
  record['previous'] = _read_earlier(path)
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(record, f, indent=1)
    f.write('\n')
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)  # a reader sees the old record or the new one, never half of one
  return record
