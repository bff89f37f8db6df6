"""The networks' convolution on CPU: its gradient stays on XLA's fast convolution inside the
fused train chunk's loop, and equals JAX's own gradient bit for bit.

Inside a while loop (the chunk's lax.scan) XLA:CPU leaves the gradient convolutions that JAX's
autodiff writes in transposed dimension orders (kernel `01oi`, batch and features swapped),
which its Eigen convolution does not take: they ran as generic loops, 10-25x slower than the
same step outside the loop (jax-ml/jax#12868). vae_jax.models.conv writes them in the standard
order with the transposes made explicit.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from tests.test_train import tiny_config
from vae_jax import experiment
from vae_jax.data.feeder import ChunkFeeder
from vae_jax.models import conv as conv_lib
from vae_jax.train import step as step_lib

STANDARD = 'b01f_01io->b01f'  # NHWC input, HWIO kernel: the layout XLA:CPU's Eigen path takes


def _chunk_hlo(model_fields):
  config = tiny_config(num_train_steps=4, steps_per_call=2, **{
      'mesh.data': 1, 'data.name': 'sprites', 'data.preprocess': 'uint8',
      'model.encoder': 'conv', 'model.decoder': 'conv', 'model.conv_channels': (4, 8),
      'model.latent_dim': 2, 'model.likelihood': 'discretized_logistic', **model_fields})
  exp = experiment.build(config)
  state = experiment.init_state(exp)
  source, index = ChunkFeeder(exp, 0)(0)
  jitted = step_lib.jit_train_chunk(exp, config.data.backend)
  return jitted.lower(state, source, index).compile().as_text()


def test_every_convolution_of_the_train_chunk_is_in_the_standard_layout():
  # The conv hierarchy: its own layers (hierarchical_networks.py) and the residual blocks of
  # networks.py; the single-layer conv VAE's layers are the same conv.Conv.
  hlo = _chunk_hlo({'model.kind': 'hvae', 'model.hvae.groups': (1, 1)})
  labels = re.findall(r' convolution\(.*?dim_labels=([^,\s]+)', hlo)
  # forward, input gradient and kernel gradient of every conv layer (the 3x3s and the 1x1s)
  assert len(labels) >= 9
  assert set(labels) == {STANDARD}, sorted(set(labels))


# (height, width, in, out, kernel, stride, dtype, padding): strides 1 and 2, odd and unequal
# sizes (a stride that leaves rows unused), 1x1 kernels, bfloat16, explicit uneven padding.
CASES = [
    (16, 16, 8, 8, 3, 1, jnp.float32, 'SAME'),
    (16, 16, 8, 16, 3, 2, jnp.float32, 'SAME'),
    (15, 9, 8, 16, 3, 2, jnp.float32, 'SAME'),
    (15, 9, 8, 16, 3, 2, jnp.float32, 'VALID'),
    (16, 16, 8, 4, 1, 1, jnp.float32, 'SAME'),
    (7, 7, 2, 3, 1, 2, jnp.float32, 'VALID'),
    (8, 8, 3, 5, 3, 2, jnp.float32, ((2, 0), (0, 1))),
    (16, 16, 8, 16, 3, 2, jnp.bfloat16, 'SAME'),
    (9, 8, 4, 4, 3, 1, jnp.bfloat16, ((1, 2), (2, 0))),
]


@pytest.mark.parametrize('h, w, cin, cout, k, s, dtype, padding', CASES)
def test_gradients_equal_lax_bitwise(h, w, cin, cout, k, s, dtype, padding):
  rng = np.random.default_rng(h * 100 + cin)
  x = jnp.asarray(rng.normal(size=(3, h, w, cin)), dtype)
  kernel = jnp.asarray(rng.normal(size=(k, k, cin, cout)), dtype)
  dn = lax.conv_dimension_numbers(x.shape, kernel.shape, ('NHWC', 'HWIO', 'NHWC'))

  def loss(conv):
    return lambda x, kern: jnp.sum(jnp.sin(conv(
        x, kern, (s, s), padding, dimension_numbers=dn).astype(jnp.float32)))

  ours = jax.jit(jax.value_and_grad(loss(conv_lib.conv_general_dilated), (0, 1)))(x, kernel)
  theirs = jax.jit(jax.value_and_grad(loss(lax.conv_general_dilated), (0, 1)))(x, kernel)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_vmapped_gradients_equal_lax_bitwise():
  """A population vmaps the step: the custom gradient batches like lax's."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 3, 8, 8, 4)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(2, 3, 3, 4, 6)), jnp.float32)
  dn = ('NHWC', 'HWIO', 'NHWC')

  def grads(conv):
    loss = lambda x, kern: jnp.sum(jnp.tanh(conv(x, kern, (2, 2), 'SAME', dimension_numbers=dn)))
    return jax.jit(jax.vmap(jax.grad(loss, (0, 1))))(x, kernel)

  for a, b in zip(grads(conv_lib.conv_general_dilated), grads(lax.conv_general_dilated),
                  strict=True):
    np.testing.assert_array_equal(a, b)


def test_other_convolutions_are_lax_unchanged():
  """Dilations, feature groups or other dimension orders are passed to lax as they are."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 9, 9, 4)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 2, 6)), jnp.float32)
  dn = ('NHWC', 'HWIO', 'NHWC')
  for kwargs in ({'feature_group_count': 2}, {'rhs_dilation': (2, 2)}):
    kern = kernel if 'feature_group_count' in kwargs else jnp.concatenate([kernel] * 2, 2)
    ours = conv_lib.conv_general_dilated(x, kern, (1, 1), 'SAME', dimension_numbers=dn, **kwargs)
    theirs = lax.conv_general_dilated(x, kern, (1, 1), 'SAME', dimension_numbers=dn, **kwargs)
    np.testing.assert_array_equal(ours, theirs)
