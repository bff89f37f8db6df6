"""Test session set-up: 8 simulated CPU devices, a private TFDS data_dir and XLA cache.

Both are set before JAX or TFDS initialise. A test that trains with tests.test_train's
tiny_config runs on a mesh of 2 of the 8 fake devices (sharded, at a quarter of the 8-way
overhead) unless its config says otherwise: config.mesh.data=-1 gives all 8, 1 the 1-device run.
"""

import os
import shutil
import tempfile

# The folders this process made for the session (xdist's workers inherit the controller's);
# removed when the session ends.
_OWN_DIRS = []


def _session_dir(var, prefix):
  if var not in os.environ:
    os.environ[var] = tempfile.mkdtemp(prefix=prefix)
    _OWN_DIRS.append(os.environ[var])


os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
if os.environ.get('PYTEST_XDIST_WORKER') and os.environ.get('VAE_JAX_TEST_THREADS', '1') == '1':
  # One compute thread per xdist worker (and per process it starts): the workers share the
  # machine's cores, and XLA's and BLAS's pools sized for every core only contend.
  if 'intra_op_parallelism_threads' not in os.environ['XLA_FLAGS']:
    os.environ['XLA_FLAGS'] += ' --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1'
  for var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ.setdefault(var, '1')
# XLA's backend at its lowest optimisation level, for the session and the processes it starts:
# the tests' programs are small and run a few steps, so compiling is most of their time, and
# the unoptimised compile is several times quicker (test_iaf.py 123 -> 54 s). The programs
# compute the same maths (compared runs share the setting; recorded references hold to float32
# round-off). A test about what the optimiser does (remat's recomputation) marks itself
# @pytest.mark.xla_optimized; the benchmark scripts, the configs and users' runs are unaffected.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One prepared copy of the generated sprites (and other test datasets) for the whole session,
# shared with the subprocesses tests start; never the user's ~/tensorflow_datasets.
_session_dir('TFDS_DATA_DIR', 'vae_jax_tfds_')
# One persistent XLA compilation cache for the session and the subprocesses it starts: the
# tests compile the same small programs many times over (every tiny run, every restart), and a
# cached executable is the one a fresh compile gives. The thresholds let small programs in.
_session_dir('JAX_COMPILATION_CACHE_DIR', 'vae_jax_xla_')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import jax  # noqa: E402

jax.config.update('jax_threefry_partitionable', True)


import pytest  # noqa: E402


def pytest_unconfigure(config):
  del config
  for path in _OWN_DIRS:
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _xla_optimized(request):
  """Full XLA optimisation for a test marked xla_optimized (see above), restored after it."""
  if request.node.get_closest_marker('xla_optimized') is None:
    yield
    return
  before = jax.config.values['jax_disable_most_optimizations']
  jax.config.update('jax_disable_most_optimizations', False)
  try:
    yield
  finally:
    jax.config.update('jax_disable_most_optimizations', before)
