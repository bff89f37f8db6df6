"""Data: TFDS datasets by name, offline preparation, the embedded sprites, and batches.

Importing this package does not import TensorFlow or TFDS: they are imported inside the
functions that need them, so configs can be checked within a second. Preprocessing (jnp, for
inside jit) is `vae_jax.data.preprocess.preprocess`; the submodule is deliberately not shadowed
by a re-export of the function.
"""

from vae_jax.data.checks import (
    KNOWN_BACKENDS,
    KNOWN_PREPROCESS,
    DatasetMissingError,
    check_available,
    validate_data_config,
)
from vae_jax.data.datasets import DataInfo, dataset_info, load_arrays, prepare
from vae_jax.data.order import epoch_permutation, train_indices
from vae_jax.data.pipeline import eval_batches, make_train_iterator, process_rows

__all__ = [
    'KNOWN_BACKENDS',
    'KNOWN_PREPROCESS',
    'DataInfo',
    'DatasetMissingError',
    'check_available',
    'dataset_info',
    'epoch_permutation',
    'eval_batches',
    'load_arrays',
    'make_train_iterator',
    'prepare',
    'process_rows',
    'train_indices',
    'validate_data_config',
]
