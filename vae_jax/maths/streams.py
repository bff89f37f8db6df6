"""Every named random stream of a run, derived in one place.

Model randomness comes from `seed`, data randomness from `data_seed`, and the two come from
disjoint roots: each root is the seed's key folded with its own tag, so no model stream and no
data stream share a key for any pair of seeds, equal ones included (tested by enumeration).
Under each root a stream is folded with its own id, then with the step, the example's index,
the epoch or the sample index. No key ever folds in a device or process index, so draws do not
depend on how a batch is split (with `jax_threefry_partitionable`, a sharded draw equals the
unsharded one).

  model root = fold_in(key(seed), MODEL_TAG)
    init:   fold_in(root, INIT)                           parameter initialisation
    train:  fold_in(fold_in(root, TRAIN), step)           one key per train step
    eval:   fold_in(fold_in(root, EVAL), index)           one key per evaluation example;
            sample k of example i is fold_in(that key, k)
    prior:  fold_in(root, PRIOR)                          prior samples of the pictures
  data root = fold_in(key(data_seed), DATA_TAG)
    binarize_train: fold_in(fold_in(fold_in(root, BINARIZE_TRAIN), epoch), index)
    binarize_eval:  fold_in(fold_in(root, BINARIZE_EVAL), index)
    binarize_static: fold_in(fold_in(fold_in(root, BINARIZE_STATIC), split), index)
            split: the id of the example's base split (vae_jax.data.preprocess.split_id)
"""

import jax
import jax.numpy as jnp

# The roots' tags ('MODL' and 'DATA' in ASCII): different, so the two roots differ even when
# seed == data_seed, and under each root the stream ids may then repeat freely.
MODEL_TAG = 0x4D4F444C
DATA_TAG = 0x44415441
# Stream ids under the model root.
INIT, TRAIN, EVAL, PRIOR = 0, 1, 2, 3
# Stream ids under the data root.
BINARIZE_TRAIN, BINARIZE_EVAL, BINARIZE_STATIC = 1, 2, 3


def model_root(seed):
  return jax.random.fold_in(jax.random.key(seed), MODEL_TAG)


def data_root(data_seed):
  return jax.random.fold_in(jax.random.key(data_seed), DATA_TAG)


def init_key(seed):
  return jax.random.fold_in(model_root(seed), INIT)


def train_key(root, step):
  """The key of train step `step`; `root` is model_root(seed) (a key, may be traced)."""
  return jax.random.fold_in(jax.random.fold_in(root, TRAIN), step)


def eval_keys(seed, index):
  """Keys [*index.shape], one per evaluation example, from its index in its split."""
  return eval_keys_at(eval_root(seed), index)


def eval_root(seed):
  """The evaluation stream's key: a compiled evaluation takes it as a traced argument, so one
  program serves every seed (eval_keys_at(eval_root(seed), index) == eval_keys(seed, index))."""
  return jax.random.fold_in(model_root(seed), EVAL)


def eval_keys_at(root, index):
  """eval_keys from the stream's key `root` (eval_root(seed); may be traced)."""
  return jnp.vectorize(lambda i: jax.random.fold_in(root, i))(jnp.asarray(index))


def prior_key(seed):
  return jax.random.fold_in(model_root(seed), PRIOR)


def binarize_keys(index, *, data_seed, epoch=None):
  """Typed keys, one per example: index [...] (and epoch, broadcastable) -> keys [...].

  Training draws (epoch given) are fresh every epoch; evaluation draws (epoch None) are the
  same at every step, so evaluation numbers compare across steps.
  """
  index = jnp.asarray(index)
  root = data_root(data_seed)
  if epoch is None:
    k = jax.random.fold_in(root, BINARIZE_EVAL)
    return jnp.vectorize(lambda i: jax.random.fold_in(k, i))(index)
  k = jax.random.fold_in(root, BINARIZE_TRAIN)
  epoch = jnp.broadcast_to(jnp.asarray(epoch), index.shape)
  fold = jnp.vectorize(lambda e, i: jax.random.fold_in(jax.random.fold_in(k, e), i))
  return fold(epoch, index)


def static_binarize_keys(index, split, *, data_seed):
  """Typed keys, one per example: index [...] and its base split's id (broadcastable) -> keys.

  No epoch: each example has one draw for the whole run (static binarization). The split id
  tells apart examples of different base splits that share an index (train 5 and test 5).
  """
  index = jnp.asarray(index)
  split = jnp.broadcast_to(jnp.asarray(split), index.shape)
  k = jax.random.fold_in(data_root(data_seed), BINARIZE_STATIC)
  fold = jnp.vectorize(lambda s, i: jax.random.fold_in(jax.random.fold_in(k, s), i))
  return fold(split, index)
