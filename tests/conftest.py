"""Test session set-up: 8 simulated CPU devices and a private TFDS data_dir.

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

import jax  # noqa: E402

jax.config.update('jax_threefry_partitionable', True)
