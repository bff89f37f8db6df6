"""With model.dtype=bfloat16 the last layer of every head (posterior, prior, likelihood) still
computes in float32, as configs/default.py promises: each head layer's output equals a float32
computation of that layer from the (bf16-rounded) features it was given."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax.models import hierarchical, hierarchical_networks, networks

SMALL = dict(hidden=(16,), conv_channels=(8, 16), conv_blocks=1, latent_dim=3)
# The head layers: the posterior's (PosteriorHead, the hierarchy's posterior_head), the
# hierarchy's prior_head, and the likelihood's last layer (out, conv_out).
HEAD_NAMES = ('head', 'prior_head', 'posterior_head', 'out', 'conv_out')


def _is_head(module):
  return module.name in HEAD_NAMES and isinstance(
      module, (networks.PosteriorHead, nn.Dense, nn.Conv))


def _random_params(shapes, seed=0):
  """Numpy draws (kernels ~ N(0, 1/fan_in), the rest ~ N(0, 0.3^2)): the zero-initialised
  heads (prior_head, offdiag) are nonzero, and nothing compiles Flax's initialisers."""
  rng = np.random.default_rng(seed)

  def draw(s):
    std = 1 / math.sqrt(math.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.3
    return jnp.asarray(rng.normal(0.0, std, s.shape).astype(np.float32))

  return jax.tree.map(draw, shapes)


def _head_calls(run):
  """(name, module, its params, input, output) of every head layer called by run().

  The network runs once under jit (one compile, not an eager dispatch per op) to collect each
  head's parameters and input features; then each head layer, as the network configured it,
  runs alone on those features. Alone, because inside the jitted network XLA may skip the
  bfloat16 rounding between fused elementwise ops, so the features a fused head reads are
  not the bf16 array it was given.
  """
  modules = []

  def traced():
    arrays = []

    def record(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      module = context.module
      if context.method_name == '__call__' and _is_head(module):
        modules.append(module)
        arrays.append((module.variables['params'], args[0]))
      return out

    with nn.intercept_methods(record):
      run()
    return arrays

  arrays = jax.jit(traced)()
  calls = []
  for module, (params, feats) in zip(modules, arrays, strict=True):
    out = module.clone(parent=None).apply({'params': params}, feats)
    calls.append((module.name, module, params, feats, out))
  return calls


def _dense(x, p):
  return x @ np.asarray(p['kernel'], np.float64) + np.asarray(p['bias'], np.float64)


def _conv3x3(x, p):
  """A stride-1 'SAME' 3x3 convolution [N,H,W,C] -> [N,H,W,F], as a sum of 9 shifted dots."""
  kernel, (h, w) = np.asarray(p['kernel'], np.float64), x.shape[1:3]
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = sum(xp[:, i:i + h, j:j + w] @ kernel[i, j] for i in range(3) for j in range(3))
  return out + np.asarray(p['bias'], np.float64)


def _posterior_head(x, p, module):
  """PosteriorHead's outputs (not shared: every head reads the features)."""
  d = module.latent_dim
  mean, logvar = _dense(x, p['mean']), _dense(x, p['logvar'])
  if module.posterior == 'diag':
    return {'mean': mean, 'log_scale': 0.5 * logvar}
  tril = np.zeros(mean.shape + (d,))
  rows, cols = np.tril_indices(d, -1)
  tril[:, rows, cols] = _dense(x, p['offdiag'])
  tril[:, np.arange(d), np.arange(d)] = np.exp(0.5 * logvar)
  return {'mean': mean, 'scale_tril': tril}


def _reference(module, params, feats):
  """The head layer's output computed in float64 from the features it was given."""
  x = np.asarray(jnp.asarray(feats, jnp.float32), np.float64)
  if isinstance(module, networks.PosteriorHead):
    assert not module.shared_covariance
    return _posterior_head(x, params, module)
  if isinstance(module, nn.Dense):
    return _dense(x, params)
  assert tuple(module.kernel_size) == (3, 3) and module.strides in (None, 1, (1, 1))
  return _conv3x3(x, params)


def _assert_heads_in_float32(calls, expected_names):
  assert sorted({name for name, *_ in calls}) == sorted(expected_names)
  for name, module, params, feats, out in calls:
    ref = _reference(module, params, feats)
    assert jax.tree.structure(out) == jax.tree.structure(ref), name
    for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(ref), strict=True):
      assert got.dtype == jnp.float32, name
      got = np.asarray(got, np.float64)
      scale = max(1.0, float(np.max(np.abs(want))))
      # Float32 round-off of a short dot product (a few hundred terms): ~1e-6 relative, far
      # below bfloat16's 2^-9 relative rounding of every input and output.
      np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize('coder', ['mlp', 'conv'])
def test_single_layer_heads_compute_in_float32(coder):
  shape = (8, 8, 1)
  model = networks.VAE(image_shape=shape, encoder=coder, decoder=coder, posterior='full',
                       dtype=jnp.bfloat16, **SMALL)
  x = np.random.default_rng(0).uniform(size=(4, *shape)).astype(np.float32)
  eps = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
  params = _random_params(jax.eval_shape(model.init, jax.random.key(0), x, eps))
  calls = _head_calls(lambda: model.apply(params, x, eps))
  _assert_heads_in_float32(calls, ['head', 'out' if coder == 'mlp' else 'conv_out'])


HVAE = {
    'mlp': (dict(variant='mlp', groups=(3,), hidden=(32,), width=16, latent_dim=3), (8, 8, 1),
            networks.LikelihoodSpec(image_shape=(8, 8, 1))),
    'conv': (dict(variant='conv', groups=(1, 2), conv_channels=(8, 16), conv_blocks=1,
                  latent_dim=2), (16, 16, 3),
             networks.LikelihoodSpec(image_shape=(16, 16, 3), likelihood='discretized_logistic',
                                     logistic_mixtures=2, logistic_coupling='rgb')),
}


@pytest.mark.parametrize('variant', HVAE)
def test_hierarchy_heads_compute_in_float32(variant):
  fields, shape, spec = HVAE[variant]
  network = hierarchical_networks.HierarchicalNetwork(image_shape=shape, spec=spec,
                                                      dtype=jnp.bfloat16, **fields)
  family = hierarchical.HierarchicalVAE(network=network, likelihood=spec.likelihood)
  rng = np.random.default_rng(0)
  if spec.likelihood == 'discretized_logistic':
    x = jnp.asarray(rng.integers(0, 256, (2, *shape)), jnp.int32)
  else:
    x = jnp.asarray(rng.random((2, *shape)) < 0.4, jnp.float32)
  params = _random_params(jax.eval_shape(family.init, jax.random.key(0), x))
  calls = _head_calls(lambda: family.terms(params, x, jax.random.key(1)))
  _assert_heads_in_float32(calls, ['prior_head', 'posterior_head',
                                   'out' if variant == 'mlp' else 'conv_out'])
