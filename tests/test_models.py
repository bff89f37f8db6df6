"""Tests of vae_jax.models: shapes, posterior structure, input scaling, Flax-example parity."""

import dataclasses
import functools
import importlib.util
import itertools
import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import models
from vae_jax.models import gaussian_vae, networks

SHAPES = [(28, 28, 1), (32, 32, 1), (32, 32, 3), (64, 64, 3)]
B, D = 2, 3
# Small widths keep tracing fast; the architecture is the same at any width.
SMALL = dict(hidden=(16,), conv_channels=(8, 16), conv_blocks=1, latent_dim=D,
             logistic_mixtures=2)


def _load_default_config():
  path = pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'default.py'
  spec = importlib.util.spec_from_file_location('default_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _x(shape, seed=0, batch=B):
  return np.random.default_rng(seed).uniform(size=(batch, *shape)).astype(np.float32)


def _eps(seed=1, batch=B, d=D):
  return np.random.default_rng(seed).normal(size=(batch, d)).astype(np.float32)


def _expected_likelihood_shapes(likelihood, shape, lead=(B,), k=2):
  if likelihood in ('bernoulli', 'continuous_bernoulli'):
    return {'logits': (*lead, *shape)}
  if likelihood == 'gaussian':
    return {'loc': (*lead, *shape), 'log_scale': shape}
  return {n: (*lead, *shape, k) for n in ('loc', 'log_scale', 'logit_weights')}


def _expected_posterior_shapes(posterior):
  if posterior == 'diag':
    return {'mean': (B, D), 'log_scale': (B, D)}
  return {'mean': (B, D), 'scale_tril': (B, D, D)}


def _trace(model, *args):
  """(outputs, params) as shapes only: traces init, compiles and runs nothing."""
  return jax.eval_shape(lambda *a: model.init_with_output(jax.random.key(0), *a), *args)


def _params(model, x, eps, seed=0):
  """Random parameters drawn by numpy (kernels ~ N(0, 1/fan_in), the rest ~ N(0, 0.3^2)).

  Compiling Flax's initialisers takes seconds on CPU; tests of structure don't need them.
  """
  rng = np.random.default_rng(seed)

  def draw(s):
    std = 1 / math.sqrt(math.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.3
    return rng.normal(0.0, std, s.shape).astype(np.float32)

  return jax.tree.map(draw, jax.eval_shape(model.init, jax.random.key(0), x, eps))


def _jit(model, method):
  return jax.jit(functools.partial(model.apply, method=method))


def _shapes(tree):
  return jax.tree.map(lambda a: a.shape, tree)


def _num_params(tree):
  return sum(math.prod(a.shape) for a in jax.tree.leaves(tree))


def test_vae_output_shapes_every_combination():
  shape = (28, 28, 1)  # odd lowest resolution (7): the hardest case for the conv decoder
  x, eps = _x(shape), _eps()
  combos = itertools.product(
      networks.ENCODERS, networks.DECODERS, networks.POSTERIORS, (False, True),
      networks.LIKELIHOODS)
  for enc, dec, post, shared, lik in combos:
    model = networks.VAE(image_shape=shape, encoder=enc, decoder=dec, posterior=post,
                       shared_covariance=shared, likelihood=lik, **SMALL)
    out, params = _trace(model, x, eps)
    what = (enc, dec, post, shared, lik)
    assert _shapes(out['posterior']) == _expected_posterior_shapes(post), what
    assert out['h'].shape == (B, D), what
    assert _shapes(out['likelihood']) == _expected_likelihood_shapes(lik, shape), what
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves((params, out))), what


@pytest.mark.parametrize('shape', SHAPES, ids=str)
def test_encoder_decoder_shapes_every_image_size(shape):
  # The encoder and decoder are independent, so each one's variants cover every VAE at this size.
  x, eps = _x(shape), _eps()
  kw = dict(latent_dim=D)
  for (name, enc), post, shared in itertools.product(
      [('mlp', networks.MLPEncoder(hidden=(16,), **kw)),
       ('conv', networks.ConvEncoder(conv_channels=(8, 16), **kw))],
      networks.POSTERIORS, (False, True)):
    q, _ = _trace(enc.clone(posterior=post, shared_covariance=shared), x)
    assert _shapes(q) == _expected_posterior_shapes(post), (name, post, shared)
  for (name, dec), lik in itertools.product(
      [('mlp', networks.MLPDecoder(hidden=(16,))),
       ('conv', networks.ConvDecoder(conv_channels=(8, 16)))],
      networks.LIKELIHOODS):
    spec = networks.LikelihoodSpec(image_shape=shape, likelihood=lik, logistic_mixtures=2)
    p, _ = _trace(dec.clone(spec=spec), eps)
    assert _shapes(p) == _expected_likelihood_shapes(lik, shape), (name, lik)


def test_conv_odd_sizes_three_stages():
  # 28 -> 14 -> 7 -> 4 and back, cropping 8 -> 7.
  shape = (28, 28, 1)
  model = networks.VAE(image_shape=shape, encoder='conv', decoder='conv',
                     **{**SMALL, 'conv_channels': (4, 4, 4)})
  out, _ = _trace(model, _x(shape), _eps())
  assert out['likelihood']['logits'].shape == (B, *shape)
  assert networks.stage_sizes(28, 3) == [28, 14, 7, 4]


@pytest.mark.parametrize('encoder', networks.ENCODERS)
def test_full_posterior_scale_tril_lower_triangular_positive(encoder):
  shape = (16, 16, 1)
  model = networks.VAE(image_shape=shape, encoder=encoder, posterior='full', **SMALL)
  x = _x(shape, batch=4)
  params = _params(model, x, _eps(batch=4))
  tril = np.asarray(_jit(model, 'encode')(params, x)['scale_tril'])  # [B,D,D]
  assert tril.shape == (4, D, D)
  np.testing.assert_array_equal(np.triu(tril, k=1), 0.0)
  assert np.all(np.diagonal(tril, axis1=-2, axis2=-1) > 0)
  rows, cols = np.tril_indices(D, -1)
  assert np.all(tril[:, rows, cols] != 0)  # the strictly lower part is used


@pytest.mark.parametrize('posterior', networks.POSTERIORS)
@pytest.mark.parametrize('encoder', networks.ENCODERS)
@pytest.mark.parametrize('shared', [True, False])
def test_shared_covariance_does_not_depend_on_x(encoder, posterior, shared):
  shape = (16, 16, 1)
  name = 'log_scale' if posterior == 'diag' else 'scale_tril'
  x = _x(shape, batch=4)  # four different images
  model = networks.VAE(image_shape=shape, encoder=encoder, posterior=posterior,
                     shared_covariance=shared, **SMALL)
  q = _jit(model, 'encode')(_params(model, x, _eps(batch=4)), x)
  rows_equal = [np.array_equal(q[name][0], q[name][i]) for i in range(1, 4)]
  assert rows_equal == [shared] * 3
  assert not np.allclose(q['mean'][0], q['mean'][1])


@pytest.mark.parametrize('decoder,likelihood', [
    ('mlp', 'bernoulli'), ('mlp', 'gaussian'), ('conv', 'discretized_logistic'),
    ('conv', 'gaussian')])
def test_decode_leading_sample_dim(decoder, likelihood):
  shape, k = (12, 12, 3), 5
  model = networks.VAE(image_shape=shape, decoder=decoder, likelihood=likelihood, **SMALL)
  params = _params(model, _x(shape), _eps())
  h = np.random.default_rng(7).normal(size=(k, B, D)).astype(np.float32)  # [K,B,D]

  @jax.jit
  def both(params, h):
    decode = functools.partial(model.apply, params, method='decode')
    return decode(h), decode(h.reshape(k * B, D))

  out, flat = both(params, h)
  assert _shapes(out) == _expected_likelihood_shapes(likelihood, shape, lead=(k, B))
  for name, v in out.items():
    if likelihood == 'gaussian' and name == 'log_scale':
      np.testing.assert_array_equal(v, flat[name])  # per pixel: no leading dims
    else:
      np.testing.assert_allclose(v, flat[name].reshape(v.shape), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('posterior', networks.POSTERIORS)
def test_call_with_sample_dim(posterior):
  shape, k = (8, 8, 1), 4
  model = networks.VAE(image_shape=shape, posterior=posterior, **SMALL)
  out, _ = _trace(model, _x(shape), _eps(batch=k * B).reshape(k, B, D))  # eps [K,B,D]
  assert out['h'].shape == (k, B, D)
  assert out['likelihood']['logits'].shape == (k, B, *shape)


@pytest.mark.parametrize('encoder', networks.ENCODERS)
def test_integer_input_is_scaled(encoder):
  shape = (16, 16, 3)
  ints = np.random.default_rng(5).integers(0, 256, size=(B, *shape))
  model = networks.VAE(image_shape=shape, encoder=encoder, **SMALL)
  params = _params(model, _x(shape), _eps())
  encode = _jit(model, 'encode')
  ref = encode(params, ints.astype(np.float32) / 255.0)
  for dtype in (np.uint8, np.int32):
    q = encode(params, ints.astype(dtype))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), q, ref)
  floats = jnp.linspace(0.0, 1.0, 5)
  np.testing.assert_array_equal(networks.to_float_input(floats), floats)  # floats kept as is


class _FlaxExampleEncoder(nn.Module):
  """google/flax examples/vae/models.py, verbatim in structure."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(500, name='fc1')(x))
    return nn.Dense(20, name='fc2_mean')(x), nn.Dense(20, name='fc2_logvar')(x)


class _FlaxExampleDecoder(nn.Module):
  @nn.compact
  def __call__(self, z):
    return nn.Dense(784, name='fc2')(nn.relu(nn.Dense(500, name='fc1')(z)))


def test_mlp_matches_flax_example_parameter_count():
  model = networks.VAE(image_shape=(28, 28, 1), hidden=(500,), latent_dim=20)
  x, eps = jnp.zeros((1, 28, 28, 1)), jnp.zeros((1, 20))
  params = jax.eval_shape(model.init, jax.random.key(0), x, eps)['params']
  assert _num_params(params['enc']) == 784 * 500 + 500 + 2 * (500 * 20 + 20)
  assert _num_params(params['dec']) == 20 * 500 + 500 + 500 * 784 + 784
  ex_enc = jax.eval_shape(_FlaxExampleEncoder().init, jax.random.key(0), jnp.zeros((1, 784)))
  ex_dec = jax.eval_shape(_FlaxExampleDecoder().init, jax.random.key(0), jnp.zeros((1, 20)))
  for ours, theirs in ((params['enc'], ex_enc), (params['dec'], ex_dec)):
    assert sorted(_shapes(jax.tree.leaves(ours))) == sorted(_shapes(jax.tree.leaves(theirs)))


def test_mlp_log_scale_is_half_the_logvar_head():
  model = networks.VAE(image_shape=(4, 4, 1), hidden=(8,), latent_dim=D)
  x, eps = _x((4, 4, 1)), _eps()
  params = _params(model, x, eps)
  q = _jit(model, 'encode')(params, x)  # [B,D] each
  enc = params['params']['enc']
  hidden = np.maximum(x.reshape(B, -1) @ enc['hidden_0']['kernel'] + enc['hidden_0']['bias'], 0)
  logvar = hidden @ enc['head']['logvar']['kernel'] + enc['head']['logvar']['bias']
  np.testing.assert_allclose(q['log_scale'], 0.5 * logvar, rtol=1e-5, atol=1e-6)


class _SeparateDenseHead(nn.Module):
  """PosteriorHead's maths with one nn.Dense per head, as the Flax example writes it."""
  latent_dim: int
  posterior: str
  shared: bool

  @nn.compact
  def __call__(self, feats):
    d, b = self.latent_dim, feats.shape[0]
    mean = nn.Dense(d, name='mean')(feats)
    if self.shared:
      logvar = jnp.broadcast_to(self.param('logvar', nn.initializers.zeros, (d,)), (b, d))
    else:
      logvar = nn.Dense(d, name='logvar')(feats)
    if self.posterior == 'diag':
      return {'mean': mean, 'log_scale': 0.5 * logvar}
    n_off = d * (d - 1) // 2
    if self.shared:
      offdiag = jnp.broadcast_to(self.param('offdiag', nn.initializers.zeros, (n_off,)),
                                 (b, n_off))
    else:
      offdiag = nn.Dense(n_off, kernel_init=nn.initializers.zeros, name='offdiag')(feats)
    return {'mean': mean, 'scale_tril': networks.scale_tril_from_raw(0.5 * logvar, offdiag)}


@pytest.mark.parametrize('posterior,shared', itertools.product(networks.POSTERIORS, (False, True)))
def test_one_matmul_head_equals_separate_dense_heads(posterior, shared):
  # The heads share one matmul of concatenated kernels; the parameter tree, its initial values
  # and the outputs must be those of separate nn.Dense layers (checkpoints stay interchangeable).
  feats = _x((7,), batch=5)
  ours = networks.PosteriorHead(4, posterior, shared)
  theirs = _SeparateDenseHead(4, posterior, shared)
  p_ours, p_theirs = ours.init(jax.random.key(0), feats), theirs.init(jax.random.key(0), feats)
  assert jax.tree.structure(p_ours) == jax.tree.structure(p_theirs)
  jax.tree.map(np.testing.assert_array_equal, p_ours, p_theirs)
  # Random values everywhere (the off-diagonal head starts at zero).
  leaves, tree = jax.tree.flatten(p_ours)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = tree.unflatten(
      [jax.random.normal(k, a.shape) for k, a in zip(keys, leaves, strict=True)])
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
               ours.apply(params, feats), theirs.apply(params, feats))


def test_build_model_reads_config():
  cfg = _load_default_config()
  family = models.build_model(cfg.model, (32, 32, 1))
  assert isinstance(family, gaussian_vae.GaussianVAE)
  assert family.likelihood == cfg.model.likelihood
  assert family.latent_dim == cfg.model.latent_dim
  model = family.network
  assert isinstance(model, networks.VAE)
  assert model.hidden == tuple(cfg.model.hidden)
  assert model.latent_dim == cfg.model.latent_dim
  assert (model.encoder, model.decoder, model.likelihood) == (
      cfg.model.encoder, cfg.model.decoder, cfg.model.likelihood)
  assert model.dtype == jnp.float32
  cfg.model.update(encoder='conv', decoder='conv', posterior='full', shared_covariance=True,
                   likelihood='discretized_logistic', logistic_mixtures=3, conv_channels=(4, 8))
  model = models.build_model(cfg.model, (32, 32, 3)).network
  x = jnp.zeros((B, 32, 32, 3), jnp.uint8)
  eps = jnp.zeros((B, cfg.model.latent_dim))
  out, _ = _trace(model, x, eps)
  assert out['likelihood']['loc'].shape == (B, 32, 32, 3, 3)
  assert out['posterior']['scale_tril'].shape == (B, cfg.model.latent_dim, cfg.model.latent_dim)


def test_unknown_names_raise():
  x, eps = _x((8, 8, 1)), _eps()
  for bad in (dict(encoder='rnn'), dict(posterior='lowrank'), dict(likelihood='poisson')):
    model = networks.VAE(image_shape=(8, 8, 1), **{**SMALL, **bad})
    with pytest.raises(ValueError, match='Unknown'):
      _trace(model, x, eps)


def _product_dtypes(fn, *args):
  """The operand dtypes of every dot_general and convolution in fn's jaxpr (nested too)."""
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in ('dot_general', 'conv_general_dilated'):
        found.append((eqn.primitive.name, tuple(str(v.aval.dtype) for v in eqn.invars)))
      for value in eqn.params.values():
        for sub in value if isinstance(value, (list, tuple)) else (value,):
          if hasattr(sub, 'eqns'):
            walk(sub)
          elif hasattr(sub, 'jaxpr') and hasattr(sub.jaxpr, 'eqns'):
            walk(sub.jaxpr)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


@pytest.mark.parametrize('dtype', ['bfloat16', 'float32'])
def test_compute_dtype_reaches_every_matmul_and_conv(dtype):
  shape = (16, 16, 1)
  model = networks.VAE(image_shape=shape, encoder='conv', decoder='conv', dtype=jnp.dtype(dtype),
                     **SMALL)
  x, eps = _x(shape), _eps()
  out, params = _trace(model, x, eps)
  # Parameters and the likelihood's parameters stay float32 whatever the compute dtype.
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves((params, out)))
  params = _params(model, x, eps)
  products = _product_dtypes(lambda p: model.apply(p, x, eps), params)
  kinds = {name for name, _ in products}
  assert kinds == {'dot_general', 'conv_general_dilated'}, kinds
  # The posterior's matmul and the likelihood's conv compute in float32 whatever the compute
  # dtype (tests/test_head_dtype.py); every other product in the compute dtype.
  in_f32 = [p for p in products if set(p[1]) == {'float32'}]
  assert len(in_f32) == (2 if dtype == 'bfloat16' else len(products)), products
  for name, dtypes in products:
    assert set(dtypes) in ({dtype}, {'float32'}), (name, dtypes)


def _stand_in_loss(out):
  # Not the ELBO (that lives in objectives.py): any smooth function of every output will do.
  return sum(jnp.mean(jnp.square(a)) for a in jax.tree.leaves(out))


@pytest.mark.parametrize('kwargs', [
    dict(),
    dict(encoder='conv', decoder='conv', posterior='full', likelihood='discretized_logistic'),
], ids=['mlp', 'conv_full_logistic'])
def test_jit_apply_compiles_and_gradients_finite(kwargs):
  shape = (16, 16, 3)
  model = networks.VAE(image_shape=shape, **{**SMALL, **kwargs})
  x, eps = _x(shape), _eps()
  # The real initialisers. An 'rbg' key compiles them several times faster than threefry on CPU
  # (seconds here); the model does not depend on the key's implementation.
  params = jax.jit(model.init)(jax.random.key(0, impl='rbg'), x, eps)

  @jax.jit
  def loss_and_grad(params, x, eps):
    return jax.value_and_grad(lambda p: _stand_in_loss(model.apply(p, x, eps)))(params)

  loss, grads = loss_and_grad(params, x, eps)
  assert np.isfinite(loss)
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert sum(float(jnp.sum(jnp.square(g))) for g in leaves) > 0


def test_full_posterior_with_zero_offdiag_equals_diag():
  # Both read log diag(L) from the same 'logvar' head, so diag params carry over to full.
  shape = (8, 8, 1)
  x, eps = _x(shape, batch=4), _eps(batch=4)
  diag = networks.VAE(image_shape=shape, posterior='diag', **SMALL)
  full = networks.VAE(image_shape=shape, posterior='full', **SMALL)
  params = _params(diag, x, eps)
  full_params = jax.eval_shape(full.init, jax.random.key(0), x, eps)
  head = dict(params['params']['enc']['head'])
  head['offdiag'] = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                                 full_params['params']['enc']['head']['offdiag'])
  params['params']['enc']['head'] = head
  q_diag = _jit(diag, 'encode')(params, x)
  q_full = _jit(full, 'encode')(params, x)
  np.testing.assert_allclose(q_full['mean'], q_diag['mean'])
  np.testing.assert_allclose(
      q_full['scale_tril'], jax.vmap(jnp.diag)(jnp.exp(q_diag['log_scale'])), rtol=1e-6)


def test_full_posterior_latent_dim_one():
  model = networks.VAE(image_shape=(8, 8, 1), posterior='full', **{**SMALL, 'latent_dim': 1})
  out, _ = _trace(model, _x((8, 8, 1)), _eps(d=1))
  assert out['posterior']['scale_tril'].shape == (B, 1, 1)


@pytest.mark.parametrize('decoder', ['mlp', 'conv'])
def test_coupled_logistic_heads_emit_ten_k_outputs_per_pixel(decoder):
  # PixelCNN++'s coupled mixture: per pixel K logits + K*C locs + K*C log-scales + K*3 coeffs.
  shape, k = (16, 16, 3), 2
  spec = networks.LikelihoodSpec(image_shape=shape, likelihood='discretized_logistic',
                               logistic_mixtures=k, logistic_coupling='rgb')
  assert spec.pixel_outputs == k + 2 * k * 3 + 3 * k == 10 * k
  dec = (networks.MLPDecoder(hidden=(16,), spec=spec) if decoder == 'mlp'
         else networks.ConvDecoder(conv_channels=(8, 16), spec=spec))
  out, params = _trace(dec, _eps())
  assert _shapes(out) == {'logit_weights': (B, 16, 16, k), 'loc': (B, 16, 16, 3, k),
                          'log_scale': (B, 16, 16, 3, k), 'coeffs': (B, 16, 16, 3, k)}
  last = params['params']['out' if decoder == 'mlp' else 'conv_out']['kernel']
  assert last.shape[-1] == (16 * 16 * 10 * k if decoder == 'mlp' else 10 * k)
  raw = jax.random.normal(jax.random.key(0), (B, 16, 16, 10 * k)) * 5.0
  lik = models.networks.LikelihoodHead(spec).apply({}, raw)
  assert np.all(np.abs(lik['coeffs']) <= 1.0)  # through tanh
  np.testing.assert_array_equal(lik['logit_weights'], raw[..., :k])  # PixelCNN++'s layout
  np.testing.assert_array_equal(lik['loc'][..., 1, :], raw[..., 4 * k:5 * k])
  with pytest.raises(ValueError, match='3 channels'):
    _trace(dec.clone(spec=dataclasses.replace(spec, image_shape=(16, 16, 1))), _eps())


def test_coupled_logistic_model_trains_a_few_steps():
  import optax
  cfg = _load_default_config()
  # The mlp family (the conv heads' shapes are checked above): a real ELBO step with Adam.
  cfg.model.update(hidden=(32,), latent_dim=4, likelihood='discretized_logistic',
                   logistic_mixtures=2, logistic_coupling='rgb')
  family = models.build_model(cfg.model, (16, 16, 3), jnp.int32)
  x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)), jnp.int32)
  params = jax.jit(family.init)(jax.random.key(0, impl='rbg'), x)
  opt = optax.adam(1e-3)

  @jax.jit
  def step(params, opt_state, key):
    loss_fn = lambda p: (lambda t: (jnp.mean(t['neg_elbo']), t))(family.terms(p, x, key))
    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, terms

  opt_state, losses = opt.init(params), []
  for i in range(5):
    params, opt_state, terms = step(params, opt_state, jax.random.key(i))
    assert all(np.isfinite(v).all() for v in terms.values())
    losses.append(float(jnp.mean(terms['neg_elbo'])))
  assert losses[-1] < losses[0], losses
  samples = jax.jit(family.sample, static_argnums=2)(params, jax.random.key(9), 3)
  assert samples['samples'].shape == samples['means'].shape == (3, 16, 16, 3)


def test_validation_refuses_a_coupling_it_cannot_build():
  from vae_jax.config import validation

  def config(**model):
    cfg = _load_default_config()
    cfg.data.preprocess = 'uint8'
    cfg.model.update(**{'likelihood': 'discretized_logistic', 'logistic_coupling': 'rgb', **model})
    return cfg

  validation.validate_config(config())
  validation.validate_image_shape(config(), (32, 32, 3))
  with pytest.raises(validation.ConfigError, match='1 channel'):
    validation.validate_image_shape(config(), (28, 28, 1))
  with pytest.raises(validation.ConfigError, match='logistic_coupling'):
    validation.validate_config(config(logistic_coupling='rgbx'))
  cfg = _load_default_config()
  cfg.model.logistic_coupling = 'rgb'  # with the Bernoulli likelihood
  with pytest.raises(validation.ConfigError, match='model.likelihood'):
    validation.validate_config(cfg)
