"""Vectorised populations: the members' states side by side, and the chunk that trains them.

Members may differ in the traced scalars of `compat.VECTORIZABLE` (seed, beta, KL warm-up, free
bits, learning rate); everything else (architecture, data, batch, loop) is shared: one process,
one compile, one data order, one batch per step fed to every member, one evaluation program.
The loop (vae_jax.train.loop) is the same for one run and for many; this module only holds the
states and chooses how the members' steps run:
- vmap: the train states are stacked along a leading member axis [P, ...] and the train step
  is vmapped over it, so each step is one program over all members (what fills an accelerator
  that one small VAE leaves idle);
- loop: the single run's compiled chunk is applied to each member's state in turn. On a CPU,
  XLA's batched matmuls are slower than the same matmuls one after another, so there the
  population gains by sharing the process, the data, the compile and the evaluation programs,
  not by batching; and each member's numbers are bitwise those of its own run (a single run is
  this mode with one member).
'auto' (the default) takes vmap on an accelerator and loop on a CPU.

Placement (vmap): the member axis is replicated and the batch is sharded over the mesh's data
axis, as in a single run. Every member sees the same batch, so splitting the batch keeps every
device busy with every member, keeps each member's numbers independent of the device count,
and needs no cross-member communication; the cost is P copies of the parameters and optimizer
state on every device, small for the models where vectorising pays.
"""

import jax
import jax.numpy as jnp

from vae_jax import sharding
from vae_jax.config import validation
from vae_jax.config.compat import vectorize_problem
from vae_jax.train import step as step_lib

MODES = ('auto', 'vmap', 'loop')


def check_population(configs, names=None):
  """ConfigError unless the configs can form one population (see compat.vectorize_problem)."""
  if not configs:
    raise validation.ConfigError('A population needs at least one member.')
  names = names or [f'member {i}' for i in range(len(configs))]
  problem = vectorize_problem(list(zip(names, configs, strict=True)))
  if problem:
    raise validation.ConfigError(problem)


def resolve_mode(mode):
  """'auto': vmap on an accelerator, loop on CPU (where XLA's batched matmuls are slower than
  the same matmuls one member after another)."""
  if mode not in MODES:
    raise validation.ConfigError(f'population mode {mode!r} is not one of {", ".join(MODES)}.')
  if mode == 'auto':
    return 'loop' if jax.default_backend() == 'cpu' else 'vmap'
  return mode


def stack(states):
  """[P] states -> one state whose every leaf has a leading member axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def member(states, i):
  """Member i's state out of a stacked population state."""
  return jax.tree.map(lambda a: a[i], states)


def jit_population_chunk(exp, abstract_states, backend):
  """The fused chunk of the step vmapped over the member axis of the state: the data arguments
  are shared (not mapped), and the chunk sums come back per member, [P]."""
  vstep = jax.vmap(step_lib.make_train_step(exp), in_axes=(0, None, None))
  return step_lib.jit_train_chunk(exp, backend, vstep, abstract_states)


class Looped:
  """'loop' mode: the members' states side by side, the one compiled chunk applied to each."""

  def __init__(self, chunk, states):
    self.chunk, self.states = chunk, list(states)
    self.last_outs = [None] * len(self.states)
    self.retired = set()

  def apply(self, source, index):
    """One fused call for every member; the chunk sums, each [P] (`steps` a scalar). A retired
    member is not trained: its entries repeat its last call's sums, which nothing reads."""
    outs = []
    for i, s in enumerate(self.states):
      if i not in self.retired:
        self.states[i], self.last_outs[i] = self.chunk(s, source, index)
      outs.append(self.last_outs[i])
    sums = {k: jnp.stack([o[k] for o in outs]) for k in outs[0] if k != 'steps'}
    sums['steps'] = outs[0]['steps']
    return sums

  def member(self, i):
    return self.states[i]

  def retire(self, i):
    """Member i trains no more (it stopped on request): its state stays as it is now."""
    self.retired.add(i)

  def block(self):
    jax.block_until_ready(self.states)


class Vmapped:
  """'vmap' mode: the members' states stacked [P, ...], one program for all of them."""

  def __init__(self, chunk, states):
    self.chunk, self.states = chunk, states
    self.retired = {}  # member -> its state when it retired

  def apply(self, source, index):
    self.states, sums = self.chunk(self.states, source, index)
    return sums

  def member(self, i):
    return self.retired[i] if i in self.retired else member(self.states, i)

  def retire(self, i):
    """Member i trains no more (it stopped on request): its state as it is now is kept. The one
    vmapped program still computes its slice, which nothing reads."""
    self.retired[i] = member(self.states, i)

  def block(self):
    jax.block_until_ready(self.states)


def compile_population(base, states, source, index, mode):
  """The members' states ([P] of them) and their compiled chunk: a Looped or a Vmapped."""
  backend = base.config.data.backend
  if mode == 'loop':
    chunk = step_lib.jit_train_chunk(base, backend).lower(states[0], source, index).compile()
    return Looped(chunk, states)
  rep = sharding.replicated(base.mesh)
  stacked = jax.device_put(stack(states), rep)
  abstract = jax.eval_shape(lambda s: s, stacked)
  abstract = sharding.with_shardings(abstract, jax.tree.map(lambda _: rep, abstract))
  chunk = jit_population_chunk(base, abstract, backend).lower(stacked, source, index).compile()
  return Vmapped(chunk, stacked)
