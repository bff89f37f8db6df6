"""Rematerialisation (model.remat): the same parameters and gradients, the blocks recomputed.

On an accelerator remat shows as less temporary memory in the compiled program's memory
analysis. XLA's CPU back end drops the optimization barriers that keep the recomputation
late before it schedules, so on a CPU the compiled temp size does not move (measured: 82.43
vs 82.43 MiB for this conv model at 32x32, batch 64, 2 blocks a stage); what a CPU test can
see is that the lowered program marks every block for rematerialisation and the compiled one
recomputes the blocks' convolutions.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_config import load_config
from vae_jax import models

SHAPE = (16, 16, 1)


def model_config(kind, remat):
  m = load_config('default').model
  m.encoder = m.decoder = 'conv'
  m.conv_channels = (16, 32)
  m.conv_blocks = 1
  m.latent_dim = 4
  m.kind = kind
  m.hvae.groups = (1, 2)
  m.hvae.width = 32
  m.remat = remat
  return m


def grad_fn(model):
  def loss(params, x, key):
    return jnp.mean(model.terms(params, x, key)['neg_elbo'])
  return jax.jit(jax.value_and_grad(loss))


# Residual blocks of model_config: conv, 2 stages x 1 block in the encoder and the decoder
# (+ the hierarchy's 3 bottom-up and 3 top-down group blocks).
BLOCKS = {'vae': 2 + 2, 'hvae': 2 + 3 + 3 + 2}


@pytest.mark.xla_optimized  # counts the convolutions XLA's optimiser leaves in the program
@pytest.mark.parametrize('kind', ['vae', 'hvae'])
def test_remat_keeps_the_numbers_and_recomputes_every_block(kind):
  x = (jax.random.uniform(jax.random.key(0), (8, *SHAPE)) > 0.5).astype(jnp.float32)
  key = jax.random.key(1)
  results, barriers, convs = [], [], []
  for remat in (False, True):
    model = models.build_model(model_config(kind, remat), SHAPE)
    # Jitted, and rbg keys: initialising op by op at full optimisation took 8 s of this test.
    params = jax.jit(model.init)(jax.random.key(2, impl='rbg'), x[:1])
    # One compile per setting: the numbers come from the executable whose text is inspected.
    lowered = grad_fn(model).lower(params, x, key)
    compiled = lowered.compile()
    results.append((params, *compiled(params, x, key)))
    barriers.append(lowered.as_text().count('optimization_barrier'))
    convs.append(len(re.findall(r' convolution\(', compiled.as_text())))
  (p0, l0, g0), (p1, l1, g1) = results
  assert jax.tree.structure(p0) == jax.tree.structure(p1)  # checkpoints load either way
  for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1), strict=True):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # remat marks each block with an optimization barrier (on CPU the convolutions' gradients
  # carry their own, vae_jax.models.conv, in both programs).
  assert barriers[1] - barriers[0] >= BLOCKS[kind], barriers
  # Each block's two convolutions run again in the backward pass.
  assert convs[1] >= convs[0] + 2 * BLOCKS[kind] // 2, convs
