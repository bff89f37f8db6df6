"""Which arrays Orbax splits across their replicas when it saves (replica-parallel writing).

Orbax writes a replicated array by slicing it across the devices that hold it, each writing its
part. Each slice is a dispatched op (the first time of each shape: a compile) and, for the small
arrays of a VAE's state, saves nothing. vae_jax's saves split only arrays whose slices hold at
least checkpoint.MIN_REPLICA_SLICE_BYTES.
"""

import jax
import jax.numpy as jnp
import numpy as np
from orbax.checkpoint._src.serialization import replica_slices

from tests.test_train import tiny_config
from vae_jax import sharding
from vae_jax.storage import checkpoint as ckpt_lib


def _sliced_saves(monkeypatch, tmp_path, state):
  sliced = []
  data = replica_slices.ReplicaSlice.data

  def counting(self):
    if self.slice_args is not None:
      sliced.append(self.unsliced_data.shape)
    return data(self)

  monkeypatch.setattr(replica_slices.ReplicaSlice, 'data', counting)
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), tiny_config())
  checkpointer.save(1, state, tiny_config(), (16, 16, 1))
  checkpointer.close()
  restored = ckpt_lib.Checkpointer(str(tmp_path), tiny_config(), create=False)
  return sliced, restored


def test_small_replicated_arrays_are_written_whole_and_large_ones_split(monkeypatch, tmp_path):
  mesh = sharding.make_mesh(tiny_config(**{'mesh.data': -1}))  # the 8 test devices
  assert mesh.devices.size == 8
  rep = sharding.replicated(mesh)
  small = {'w': jnp.ones((64, 32)), 'b': jnp.arange(32.0)}  # a layer's kernel and bias
  rows = 8 * ckpt_lib.MIN_REPLICA_SLICE_BYTES // 4 // 256  # 8 slices of the threshold each
  large = jnp.arange(rows * 256, dtype=jnp.float32).reshape(rows, 256)
  state = jax.device_put({'small': small, 'large': large}, rep)
  sliced, _ = _sliced_saves(monkeypatch, tmp_path, state)
  assert sliced and set(sliced) == {large.shape}, sliced  # only the large one, by 8 replicas
  assert len(sliced) == 8


def test_a_state_saved_unsplit_restores_bitwise(monkeypatch, tmp_path):
  mesh = sharding.make_mesh(tiny_config(**{'mesh.data': -1}))
  state = jax.device_put({'w': jnp.linspace(-1.0, 1.0, 96).reshape(12, 8),
                          'step': jnp.int32(7)}, sharding.replicated(mesh))
  sliced, reader = _sliced_saves(monkeypatch, tmp_path, state)
  assert sliced == []
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                          state)
  restored, _ = reader.restore(1, abstract)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.sharding == b.sharding
  reader.close()
