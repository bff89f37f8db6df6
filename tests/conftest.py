"""Test session set-up: 8 simulated CPU devices, a private TFDS data_dir and XLA cache.

Both are set before JAX or TFDS initialise. Every test that trains runs on a mesh of the 8
fake devices unless its config says otherwise (config.mesh.data=1 gives the 1-device run).
"""

import os
import tempfile

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One prepared copy of the generated sprites (and other test datasets) for the whole session,
# shared with the subprocesses tests start; never the user's ~/tensorflow_datasets.
os.environ.setdefault('TFDS_DATA_DIR', tempfile.mkdtemp(prefix='vae_jax_tfds_'))
# One persistent XLA compilation cache for the session and the subprocesses it starts: the
# tests compile the same small programs many times over (every tiny run, every restart), and a
# cached executable is the one a fresh compile gives. The thresholds let small programs in.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='vae_jax_xla_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import jax  # noqa: E402

jax.config.update('jax_threefry_partitionable', True)
