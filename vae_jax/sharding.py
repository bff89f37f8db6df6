"""Everything that knows about devices: the mesh, shardings, multi-host set-up and the move
from host-local arrays to global ones.

The mesh has one `data` axis over the devices of all processes. Parameters are replicated
(`P()`), batches split on their batch axis. A later parameter-sharding axis is a new mesh axis
plus new specs here; the maths and the models do not change.
"""

import functools
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'


def initialize_distributed(coordinator_address='', num_processes=0, process_id=-1):
  """jax.distributed.initialize from flags, or from a cluster's standard environment.

  With no flags and no cluster environment this is a single-process run and nothing happens.
  Returns True when a multi-process runtime was initialised.
  """
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    return True
  cluster_env = ('SLURM_JOB_ID', 'OMPI_COMM_WORLD_SIZE', 'TPU_WORKER_HOSTNAMES',
                 'JAX_COORDINATOR_ADDRESS')
  if any(os.environ.get(v) for v in cluster_env) and int(
      os.environ.get('SLURM_NTASKS', os.environ.get('OMPI_COMM_WORLD_SIZE', '2'))) > 1:
    jax.distributed.initialize()  # auto-detects the coordinator from the cluster environment
    return True
  return False


def make_mesh(config):
  """A 1-D `data` mesh over config.mesh.data devices (-1: all devices of all processes)."""
  devices = jax.devices()
  n = config.mesh.data
  if n == -1:
    n = len(devices)
  if n <= 0 or n > len(devices) or len(devices) % n:
    raise ValueError(f'config.mesh.data={config.mesh.data} does not fit the {len(devices)} '
                     'available devices; use -1 (all) or a divisor of the device count.')
  if n < len(devices):
    if jax.process_count() > 1:
      raise ValueError('config.mesh.data must be -1 (all devices) in a multi-process job.')
    devices = devices[:n]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh):
  return NamedSharding(mesh, P())


def replicated_value(fn, arg, mesh):
  """fn(arg) (a small value, e.g. a key from a seed) on every device of the mesh, computed
  there by one jitted program per (fn, mesh) with arg traced, so other seeds compile nothing:
  device_put cannot place a host value on another process's devices."""
  return _replicated_fn(fn, mesh)(arg)


@functools.cache
def _replicated_fn(fn, mesh):
  return jax.jit(fn, out_shardings=replicated(mesh))


def batch_sharding(mesh, leading_axes=0):
  """Split the batch axis, after `leading_axes` unsplit axes (e.g. 1 for [k, B, ...])."""
  return NamedSharding(mesh, P(*([None] * leading_axes), DATA_AXIS))


def data_axis_size(mesh):
  return mesh.shape[DATA_AXIS]


def host_to_global(local, mesh, leading_axes=0):
  """Assembles each process's rows of a global batch into one global array.

  `local` holds this process's contiguous share of the batch axis (axis `leading_axes`); the
  processes' shares are in process order, so the global array is the global batch.
  """
  sharding = batch_sharding(mesh, leading_axes)

  def one(x):
    x = np.asarray(x)
    global_shape = list(x.shape)
    global_shape[leading_axes] *= jax.process_count()
    return jax.make_array_from_process_local_data(sharding, x, tuple(global_shape))

  return jax.tree.map(one, local)


def to_host(tree):
  """Fetches a (replicated or fully addressable) global tree as numpy, on every process."""
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def with_shardings(abstract, shardings):
  """ShapeDtypeStructs carrying target shardings: an init target and an Orbax restore target."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
