"""The VampPrior of the single-layer family: its log-density, MC KL, chunks, draws and training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_train import tiny_config
from vae_jax import models, train
from vae_jax.config import validation
from vae_jax.maths import gaussians, likelihoods
from vae_jax.maths.gaussians import standard_normal_noise
from vae_jax.storage import writers as metrics_lib

SHAPE, B, D = (8, 8, 1), 4, 3


def _family(num_pseudo_inputs=5, **model):
  cfg = tiny_config()
  cfg.model.update(hidden=(16,), latent_dim=D, **model)
  cfg.model.vae.update(prior='vamp', num_pseudo_inputs=num_pseudo_inputs)
  return models.build_model(cfg.model, SHAPE)


def _x(seed=0, batch=B):
  return (np.random.default_rng(seed).uniform(size=(batch, *SHAPE)) > 0.5).astype(np.float32)


def _params(family, seed=0):
  """Random parameters (numpy draws), so the pseudo-inputs' posteriors differ clearly."""
  shapes = jax.eval_shape(family.init, jax.random.key(0), _x())
  leaves, tree = jax.tree.flatten(shapes)
  rng = np.random.default_rng(seed)
  return tree.unflatten([rng.normal(0, 0.5, a.shape).astype(np.float32) for a in leaves])


def _log_normal64(mean, log_scale, h):
  """log N(h; mean, diag(exp(log_scale))^2) in float64, broadcasting: [...]."""
  mean, log_scale, h = (np.asarray(a, np.float64) for a in (mean, log_scale, h))
  z = (h - mean) / np.exp(log_scale)
  return np.sum(-0.5 * z * z - log_scale - 0.5 * np.log(2 * np.pi), -1)


def _log_mixture64(comp, h):
  """log (1/K) sum_k N(h; comp_k) directly, float64: [...] for h [..., D]."""
  log_p = _log_normal64(comp['mean'], comp['log_scale'], np.asarray(h)[..., None, :])  # [..., K]
  top = log_p.max(-1, keepdims=True)
  return np.log(np.mean(np.exp(log_p - top), -1)) + top[..., 0]


def test_mixture_log_prob_matches_a_direct_computation():
  rng = np.random.default_rng(1)
  comp = {'mean': rng.normal(size=(7, D)).astype(np.float32),
          'log_scale': rng.uniform(-3, 0.5, (7, D)).astype(np.float32)}
  h = rng.normal(size=(2, 5, D)).astype(np.float32) * 2
  got = jax.jit(gaussians.diagonal_mixture_log_prob)(comp, h)
  assert got.shape == (2, 5)
  np.testing.assert_allclose(got, _log_mixture64(comp, h), rtol=1e-5, atol=1e-5)


def test_terms_are_the_one_sample_kl_at_the_recon_sample():
  family = _family()
  params, x, key = _params(family), _x(), jax.random.key(3)
  terms = jax.jit(family.terms)(params, x, key)
  assert set(terms) == {'recon', 'kl', 'neg_elbo', 'kl_standard'}  # no kl_units
  assert all(v.shape == (B,) for v in terms.values())
  post = family.encode(params, x)['posterior']
  comp = family.prior_components(params)
  assert comp['mean'].shape == comp['log_scale'].shape == (5, D)
  h = np.asarray(post['mean']) + np.exp(post['log_scale']) * standard_normal_noise(key, B, D)
  kl = _log_normal64(post['mean'], post['log_scale'], h) - _log_mixture64(comp, h)
  np.testing.assert_allclose(terms['kl'], kl, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(terms['kl_standard'], gaussians.gaussian_kl_to_standard_normal(post),
                             rtol=1e-6)
  lik = family.network.apply({'params': params}, jnp.asarray(h, jnp.float32), method='decode')
  recon = -likelihoods.likelihood_log_prob('bernoulli', lik, x)  # the same sample h
  np.testing.assert_allclose(terms['recon'], recon, rtol=1e-5)
  np.testing.assert_allclose(terms['neg_elbo'], terms['recon'] + terms['kl'], rtol=1e-6)


def test_monte_carlo_kl_converges_to_the_gaussian_kl_with_one_pseudo_input():
  # K = 1: p(h) = q(h|u), a Gaussian, so E_q[log q(h|x) - log p(h)] = KL(q(h|x) || q(h|u)).
  family = _family(num_pseudo_inputs=1)
  params, x = _params(family, seed=4), _x(5)
  n = 20_000
  kls = jax.jit(jax.vmap(lambda k: family.terms(params, x, k)['kl']))(
      jax.random.split(jax.random.key(6), n))  # [n, B]
  post, comp = family.encode(params, x)['posterior'], family.prior_components(params)
  m1, s1 = np.asarray(post['mean'], np.float64), np.asarray(post['log_scale'], np.float64)
  m2, s2 = np.asarray(comp['mean'], np.float64), np.asarray(comp['log_scale'], np.float64)
  exact = np.sum(s2 - s1 + (np.exp(2 * s1) + (m1 - m2) ** 2) / (2 * np.exp(2 * s2)) - 0.5, -1)
  assert np.all(exact > 0.1)  # a KL the estimate can be wrong about
  mean, stderr = np.mean(kls, 0), np.std(kls, 0) / np.sqrt(n)
  assert np.all(np.abs(mean - exact) < 4 * stderr + 1e-4), (mean, exact, stderr)


def test_log_weights_chunks_concatenate_and_use_the_mixture():
  family = _family()
  params, x = _params(family), _x()
  keys = jax.random.split(jax.random.key(7), B)
  log_w = jax.jit(family.log_weights, static_argnums=3)
  whole = log_w(params, x, keys, 6, 0)  # [6, B]
  encoded = family.encode(params, x)
  chunks = [log_w(params, x, keys, 2, o, encoded) for o in (0, 2, 4)]
  np.testing.assert_allclose(jnp.concatenate(chunks), whole, rtol=1e-6, atol=1e-6)
  # Sample 0 of each example is the one the per-example terms use.
  terms = jax.jit(family.terms)(params, x, keys)
  np.testing.assert_allclose(whole[0], -terms['neg_elbo'], rtol=1e-5)


def test_prior_draws_pick_a_component_uniformly_and_scale_it_by_the_temperature():
  family = _family(num_pseudo_inputs=4)
  params = _params(family)
  comp = family.prior_components(params)
  n = 8000
  draw = jax.jit(family.sample_latents, static_argnums=2)
  h0 = np.asarray(draw(params, jax.random.key(8), n, 0.0))  # [n, D]
  which = np.argmin(np.abs(h0[:, None] - np.asarray(comp['mean'])[None]).sum(-1), 1)
  np.testing.assert_allclose(h0, np.asarray(comp['mean'])[which], rtol=1e-6)
  counts = np.bincount(which, minlength=4)
  assert np.all(np.abs(counts - n / 4) < 5 * np.sqrt(n / 4)), counts
  h = np.asarray(draw(params, jax.random.key(9), n, 0.5))
  log_p = np.asarray(jax.jit(family.log_prior)(params, h))
  assert np.isfinite(log_p).all()
  # At temperature 0.5 the draws sit closer to their component than at 1: z ~ N(0, 0.25 I).
  nearest = lambda hh: np.min(np.sum(((hh[:, None] - np.asarray(comp['mean'])[None])
                                      / np.exp(np.asarray(comp['log_scale']))[None]) ** 2, -1), 1)
  assert np.mean(nearest(h)) < 0.3 * D
  out = jax.jit(family.sample, static_argnums=2)(params, jax.random.key(10), 3)
  assert out['means'].shape == out['samples'].shape == (3, *SHAPE)


def test_validation_refuses_what_the_vamp_prior_cannot_do():
  def config(**overrides):
    return tiny_config(**{'model.vae.prior': 'vamp', **overrides})

  validation.validate_config(config())
  for overrides, message in (
      ({'objective.free_bits_per': 'unit'}, 'not a sum'),
      ({'model.posterior': 'full'}, 'model.posterior=diag'),
      ({'model.vae.num_pseudo_inputs': 0}, 'num_pseudo_inputs'),
      ({'model.vae.prior': 'gmm'}, 'model.vae.prior'),
  ):
    with pytest.raises(validation.ConfigError, match=message):
      validation.validate_config(config(**overrides))
  validation.validate_config(tiny_config(**{'model.vae.num_pseudo_inputs': 0}))  # unread


@pytest.mark.slow
def test_the_trainer_runs_with_the_vamp_prior_and_reports_both_kls(tmp_path):
  config = tiny_config(**{'model.vae.prior': 'vamp', 'model.vae.num_pseudo_inputs': 8,
                          'eval_num_samples': 2, 'mesh.data': 1})  # devices: not the point
  result = train.train_and_evaluate(config, str(tmp_path))
  params = result['state'].params
  assert params['pseudo_input_logits'].shape == (8, 32, 32, 1)
  train_recs = metrics_lib.read_metrics(str(tmp_path), 'train')
  for key in ('neg_elbo', 'kl', 'kl_standard'):
    assert np.isfinite(train_recs[-1][key]), key
  evals = [r for r in metrics_lib.read_metrics(str(tmp_path), 'eval') if r['step'] == 20]
  assert {r['split'] for r in evals} == {config.data.valid_split, config.data.eval_split}
  for ev in evals:  # the K-sample evaluation ...
    for key in ('kl', 'kl_standard', 'nll'):
      assert np.isfinite(ev[key]) and ev[f'{key}_stderr'] > 0, key
    np.testing.assert_allclose(ev['neg_elbo'], ev['recon'] + ev['kl'], rtol=1e-5)
  from vae_jax import evaluate as eval_lib
  cheap = eval_lib.evaluate(result['experiment'], params, 'test')  # ... and the loop's cheap one
  assert cheap['kl_standard_stderr'] > 0
  test_eval = next(r for r in evals if r['split'] == 'test')
  np.testing.assert_allclose(cheap['kl_standard'], test_eval['kl_standard'], rtol=1e-5)
  # The mixture prior does not split over units: the per-unit KL is to N(0, 1), and says so.
  units = eval_lib.unit_statistics(result['experiment'], params, 'test', mutual_info=False)
  assert units['kl_per_unit_to'] == 'standard_normal'
  np.testing.assert_allclose(np.sum(units['kl_per_unit']), cheap['kl_standard'], rtol=1e-4)
