"""The VampPrior in the K-sample estimator: its pseudo-inputs are encoded once per batch (in
`encode`'s state), not once per chunk; the automatic chunk counts the mixture's per-sample
component log-densities; and the log-weights are the same numbers as before."""

import types

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from vae_jax import evaluate, sharding
from vae_jax.maths import gaussians, likelihoods
from vae_jax.models import gaussian_vae, networks

D, B = 3, 4
SHAPE = (28, 28, 1)
K_PSEUDO = 7  # a size no other axis of this model has, to find the pseudo-inputs' matmuls


def _family(prior='vamp', num_pseudo_inputs=K_PSEUDO, shape=SHAPE):
  network = networks.VAE(image_shape=shape, hidden=(16,), latent_dim=D,
                         num_pseudo_inputs=num_pseudo_inputs if prior == 'vamp' else 0)
  return gaussian_vae.GaussianVAE(network=network, likelihood='bernoulli', latent_dim=D,
                                  prior=prior)


def _x(seed=0):
  return (np.random.default_rng(seed).uniform(size=(B, *SHAPE)) > 0.5).astype(np.float32)


def _params(family, seed=0):
  """Random parameters (numpy draws), so the pseudo-inputs' posteriors differ clearly."""
  shapes = jax.eval_shape(family.init, jax.random.key(0), _x())
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(np.float32), shapes)


def _products_on_pseudo_inputs(fn, *args):
  """The dot_generals of fn's jaxpr (nested too) that read the K pseudo-inputs' rows."""
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'dot_general' and eqn.invars[0].aval.shape[0] == K_PSEUDO:
        found.append(eqn)
      for value in eqn.params.values():
        for sub in value if isinstance(value, (list, tuple)) else (value,):
          if hasattr(sub, 'eqns'):
            walk(sub)
          elif hasattr(sub, 'jaxpr') and hasattr(sub.jaxpr, 'eqns'):
            walk(sub.jaxpr)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


def test_a_chunk_of_log_weights_encodes_no_pseudo_input():
  # The estimator encodes once per batch and hands the state to every chunk (a lax.scan):
  # the chunk must not run the encoder over the K pseudo-inputs again.
  family = _family()
  params, x = _params(family), _x()
  keys = jax.random.split(jax.random.key(1), B)
  encoded = family.encode(params, x)
  chunk = _products_on_pseudo_inputs(
      lambda p, e: family.log_weights(p, x, keys, 5, 10, encoded=e), params, encoded)
  assert not chunk, f'{len(chunk)} matmuls on the pseudo-inputs in one chunk'
  # They are encoded once, with the batch.
  assert _products_on_pseudo_inputs(lambda p: family.encode(p, x), params)


def test_log_weights_are_unchanged_numbers():
  # log p(x|h) + log (1/K) sum_k q(h|u_k) - log q(h|x) from the network's own parts, at the
  # contract's noise: whole, in chunks with the encoded state, and without it.
  family = _family()
  params, x = _params(family), _x()
  keys = jax.random.split(jax.random.key(2), B)
  apply = lambda *a, method: family.network.apply({'params': params}, *a, method=method)
  post = apply(x, method='encode')
  comp = apply(method='encode_pseudo_inputs')
  eps = gaussians.standard_normal_noise(keys, B, D, 6, 0)  # [6, B, D]
  h = post['mean'] + jnp.exp(post['log_scale']) * eps
  want = (likelihoods.likelihood_log_prob('bernoulli', apply(h, method='decode'), x)
          + gaussians.diagonal_mixture_log_prob(comp, h)
          - gaussians.gaussian_log_prob(post, h))  # [6, B]
  log_w = jax.jit(family.log_weights, static_argnums=3)
  encoded = jax.jit(family.encode)(params, x)
  chunks = jnp.concatenate([log_w(params, x, keys, 2, o, encoded) for o in (0, 2, 4)])
  for got in (log_w(params, x, keys, 6, 0), chunks):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)


def _exp(family):
  mesh = Mesh(np.asarray(jax.devices()[:1]), (sharding.DATA_AXIS,))
  return types.SimpleNamespace(mesh=mesh, model=family)


def test_the_automatic_chunk_counts_the_mixture_per_sample():
  # Per sample the VampPrior adds K_pseudo component log-densities ([Kc, B, K_pseudo]) to the
  # decoder's H*W*C likelihood outputs: 500 pseudo-inputs on 28x28x1 cost a second row.
  standard = evaluate.default_chunk_size(_exp(_family('standard')), 64)
  assert standard == evaluate.ROWS_PER_CHUNK // 64
  vamp = _family(num_pseudo_inputs=500)
  assert evaluate.default_chunk_size(_exp(vamp), 64) == standard // 2
  big = _family(num_pseudo_inputs=4 * 784 + 1)
  assert evaluate.default_chunk_size(_exp(big), 64) == standard // 6
