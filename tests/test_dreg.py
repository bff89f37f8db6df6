"""The doubly reparameterised gradient of the importance-weighted bound (DReG, Tucker et al.
2019; objective.iwae_gradient=dreg): the same bound and decoder gradient as the reparameterised
estimator, the same encoder gradient in expectation, a higher encoder signal-to-noise ratio,
training through the trainer, and validation's refusals."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_config import load_config
from tests.test_train import build, tiny_config
from vae_jax import experiment, models, train
from vae_jax.config import validation
from vae_jax.config.validation import ConfigError
from vae_jax.maths import objectives

SHAPE = (4, 4, 1)  # tiny images: 16 pixels


def _model(likelihood='bernoulli', hidden=(8,), latent_dim=2, posterior='diag'):
  cfg = load_config()
  cfg.model.update(hidden=hidden, latent_dim=latent_dim, likelihood=likelihood,
                   posterior=posterior)
  return models.build_model(cfg.model, SHAPE)


def _data(likelihood, batch, seed=0):
  u = np.random.default_rng(seed).uniform(size=(batch, *SHAPE)).astype(np.float32)
  return jnp.asarray(u < 0.4, jnp.float32) if likelihood == 'bernoulli' else jnp.asarray(u)


def _params(model, x, seed=0, scale=1.0):
  """Initial parameters, every leaf redrawn ~ N(0, scale^2 / fan-in-ish) so nothing is zero."""
  @jax.jit  # one program, not op by op: the tests are compile-bound
  def redrawn(x):
    leaves, tree = jax.tree.flatten(model.init(jax.random.key(seed), x))
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return tree.unflatten([scale * jax.random.normal(k, a.shape) / np.sqrt(a.shape[0])
                           for k, a in zip(keys, leaves, strict=True)])
  return redrawn(x)


def _loss(model, num_samples, estimator, params, x, key):
  """The batch-mean negative bound the trainer minimises (make_loss_fn's iwae term)."""
  keys = jax.random.split(key, x.shape[0])
  if estimator == 'dreg':
    terms = objectives.dreg_iwae_terms(*model.dreg_log_weights(params, x, keys, num_samples))
  else:
    terms = objectives.iwae_terms(model.log_weights(params, x, keys, num_samples, 0))
  return jnp.mean(terms)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _value_and_grads(model, num_samples, params, x, keys):
  """{estimator: (loss [N], gradient tree with a leading [N])} per key, both estimators on the
  same noise (one program: the tests are compile-bound)."""
  out = {}
  for estimator in ('reparam', 'dreg'):
    fn = jax.value_and_grad(functools.partial(_loss, model, num_samples, estimator))
    out[estimator] = jax.vmap(lambda k, fn=fn: fn(params, x, k))(keys)
  return out


def _encoder(grads):
  """The encoder's leaves, flattened and concatenated: [N, P]."""
  return jnp.concatenate([g.reshape(g.shape[0], -1) for g in jax.tree.leaves(grads['enc'])], 1)


@pytest.mark.parametrize('posterior', ['diag', 'full'])
def test_same_bound_and_decoder_gradient_as_the_reparameterised_estimator(posterior):
  model = _model(posterior=posterior)
  x = _data('bernoulli', 3)
  params = _params(model, x)
  keys = jax.random.split(jax.random.key(2), 2)
  out = _value_and_grads(model, 5, params, x, keys)
  (loss_r, g_r), (loss_d, g_d) = out['reparam'], out['dreg']
  np.testing.assert_allclose(loss_d, loss_r, rtol=1e-6)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
               g_d['dec'], g_r['dec'])
  # The encoder's gradients differ per key (what makes DReG another estimator).
  assert not np.allclose(_encoder(g_d), _encoder(g_r), rtol=1e-3)


def test_encoder_gradient_has_the_reparameterised_estimators_mean():
  # A linear-Gaussian model (no hidden layer: x ~ N(W h + b, sigma^2), q(h|x) Gaussian with its
  # mean and log-scale linear in x): both estimators are unbiased for the bound's gradient, so
  # their paired difference over the same noise has mean 0.
  model = _model(likelihood='gaussian', hidden=(), latent_dim=2)
  x = _data('gaussian', 2)
  params = _params(model, x, scale=0.5)
  keys = jax.random.split(jax.random.key(3), 4000)
  out = _value_and_grads(model, 4, params, x, keys)
  g_r, g_d = out['reparam'][1], out['dreg'][1]
  diff = np.asarray(_encoder(g_d) - _encoder(g_r), np.float64)  # [N, P]
  se = diff.std(0) / np.sqrt(diff.shape[0])
  z = np.abs(diff.mean(0)) / se
  assert np.all(z < 4), z


def _snr(grads):
  """|mean| / std over the keys per encoder parameter, averaged over the parameters (leaving
  out those exactly 0 for every key: weights of 0-valued pixels and of dead relu units)."""
  g = np.asarray(_encoder(grads), np.float64)  # [N, P]
  live = g.std(0) > 0
  assert live.mean() > 0.25, live
  return float(np.mean(np.abs(g[:, live].mean(0)) / g[:, live].std(0)))


def test_encoder_signal_to_noise_ratio_is_higher_than_the_reparameterised_estimators():
  # Rainforth et al. 2018: the reparameterised encoder gradient's SNR falls like 1/sqrt(K);
  # DReG's does not.
  model = _model()
  x = _data('bernoulli', 4)
  params = _params(model, x)
  keys = jax.random.split(jax.random.key(4), 400)
  for k in (16, 64):
    out = _value_and_grads(model, k, params, x, keys)
    snr_r, snr_d = _snr(out['reparam'][1]), _snr(out['dreg'][1])
    print(f'K={k}: encoder SNR reparam {snr_r:.3f}, dreg {snr_d:.3f}')
    assert snr_d > snr_r, (k, snr_r, snr_d)


def test_a_few_train_steps_with_dreg_are_finite_and_update_every_parameter():
  k = 3
  config = tiny_config(steps_per_call=k, num_train_steps=2 * k, log_every_steps=k,
                       eval_every_steps=2 * k, checkpoint_every_steps=2 * k, **{
      'mesh.data': 1, 'objective.name': 'iwae', 'objective.num_samples': 4,
      'objective.iwae_gradient': 'dreg',
      # 16 x 16 images and a small model: the test is compile-bound.
      'data.name': 'sprites/small', 'model.hidden': (16,), 'model.latent_dim': 2})
  validation.validate_config(config, num_devices=1)
  exp = build(config)
  state = experiment.init_state(exp)
  before = jax.device_get(state.params)
  source, index = train.ChunkFeeder(exp, 0)(0)
  state, m = train.jit_train_chunk(exp, config.data.backend)(state, source, index)
  assert int(state.step) == k and int(state.nonfinite_total) == 0
  for name in ('loss', 'iwae', 'neg_elbo', 'recon', 'kl', 'grad_norm'):
    assert np.isfinite(float(m[name])) and float(m[name]) != 0, (name, m[name])
  after = jax.device_get(state.params)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(after), jax.tree.leaves(before),
                          strict=True):
    assert not np.array_equal(a, b), f'{jax.tree_util.keystr(path)} did not change'
  # The trainer's loss is the DReG one: the reparameterised loss and decoder gradient, another
  # encoder gradient.
  x = jnp.asarray(np.random.default_rng(0).random((8, *exp.image_shape)) < 0.3, jnp.float32)

  reparam = config.objective.copy_and_resolve_references()
  reparam.iwae_gradient = 'reparam'

  @jax.jit
  def both(params, hparams):  # one program: the test is compile-bound
    fns = [jax.value_and_grad(train.make_loss_fn(exp.model, ob), has_aux=True)
           for ob in (config.objective, reparam)]
    return [fn(params, x, jax.random.key(3), hparams, 0) for fn in fns]

  ((loss_d, _), g_d), ((loss_r, _), g_r) = both(before, state.hparams)
  np.testing.assert_allclose(loss_d, loss_r, rtol=1e-6)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6),
               g_d['dec'], g_r['dec'])
  flat = lambda tree: np.concatenate([np.ravel(a) for a in jax.tree.leaves(tree)])
  assert not np.allclose(flat(g_d['enc']), flat(g_r['enc']), rtol=1e-3)


@pytest.mark.parametrize('overrides, match', [
    ({}, r'objective.name=.elbo.* Set objective.name=iwae'),
    ({'objective.name': 'iwae', 'objective.num_samples': 4, 'model.kind': 'hvae'},
     r"model.kind='hvae'.*Use iwae_gradient=reparam, or the single-layer family"),
    ({'objective.name': 'iwae', 'objective.num_samples': 4, 'model.vae.prior': 'vamp'},
     r'VampPrior.*Use iwae_gradient=reparam, or the single-layer family with the N\(0, I\)'),
    ({'objective.name': 'iwae', 'objective.num_samples': 4, 'model.posterior_flow': 'iaf'},
     r"model.kind='vae'.*Use iwae_gradient=reparam, or the single-layer .* no posterior flow"),
])
def test_validation_says_what_to_do_where_dreg_does_not_apply(overrides, match):
  config = load_config()
  config.objective.iwae_gradient = 'dreg'
  for field, value in overrides.items():
    node = config
    *parents, leaf = field.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  with pytest.raises(ConfigError, match=match):
    validation.validate_config(config, num_devices=1)
  # The same config with the single-layer N(0, I) model and the bound passes.
  config.model.kind, config.model.vae.prior, config.model.posterior_flow = 'vae', 'standard', 'none'
  config.objective.name, config.objective.num_samples = 'iwae', 4
  validation.validate_config(config, num_devices=1)
