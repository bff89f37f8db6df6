"""Data: TFDS datasets by name, offline preparation, the embedded sprites, and batches.

Splits are base split names or slices of them ('train[:90%]', 'train[55000:]'; see
`vae_jax.data.splits`); an example's 'index' is always its index in the base split.

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
    validate_splits,
)
from vae_jax.data.datasets import (
    DataInfo,
    check_record_format,
    dataset_info,
    load_arrays,
    prepare,
)
from vae_jax.data.order import epoch_of, epoch_permutation, steps_per_epoch, train_indices
from vae_jax.data.pipeline import (
    eval_batches,
    make_train_iterator,
    memory_train_indices,
    process_rows,
)
from vae_jax.data.splits import SYNTAX as SPLIT_SYNTAX

__all__ = [
    'KNOWN_BACKENDS',
    'KNOWN_PREPROCESS',
    'SPLIT_SYNTAX',
    'DataInfo',
    'DatasetMissingError',
    'check_available',
    'check_record_format',
    'dataset_info',
    'epoch_of',
    'epoch_permutation',
    'eval_batches',
    'load_arrays',
    'make_train_iterator',
    'memory_train_indices',
    'prepare',
    'process_rows',
    'steps_per_epoch',
    'train_indices',
    'validate_data_config',
    'validate_splits',
]
