"""The hierarchical top-down VAE: contract shapes, its KL and log-weights against Monte Carlo and
closed forms, chunking, the IWAE ordering, stability at initialisation, free bits per group,
and a real run through the trainer, the evaluator and the analysis."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.test_config import load_config
from tests.test_models import _product_dtypes
from tests.test_train import set_fields, tiny_config
from vae_jax import analysis, experiment, models, train
from vae_jax import evaluate as eval_lib
from vae_jax.config import validation
from vae_jax.maths import gaussians, objectives
from vae_jax.models import gaussian_vae, hierarchical, hierarchical_networks
from vae_jax.storage import writers as metrics_lib

B = 4
MLP = {'encoder': 'mlp', 'decoder': 'mlp', 'hidden': (32,), 'hvae.width': 16, 'latent_dim': 3,
       'hvae.groups': (3,)}
CONV = {'encoder': 'conv', 'decoder': 'conv', 'conv_channels': (8, 16), 'conv_blocks': 1,
        'latent_dim': 2, 'hvae.groups': (1, 2), 'likelihood': 'discretized_logistic',
        # the coupled RGB mixture; the 8-bit sprites run: per channel
        'logistic_mixtures': 2, 'logistic_coupling': 'rgb'}
VARIANTS = {'mlp': (MLP, (8, 8, 1)), 'conv': (CONV, (16, 16, 3))}


def model_config(**fields):
  m = load_config('default').model
  m.kind = 'hvae'
  for key, value in fields.items():  # 'hvae.groups': the family's sub-config
    node, leaf = (m.hvae, key[5:]) if key.startswith('hvae.') else (m, key)
    node[leaf] = value
  return m


def build(fields, shape):
  m = model_config(**fields)
  x_dtype = jnp.int32 if m.likelihood == 'discretized_logistic' else jnp.float32
  return models.build_model(m, shape, x_dtype)


def inputs(family, shape, seed=0, batch=B):
  rng = np.random.default_rng(seed)
  if family.x_dtype == jnp.int32:
    return jnp.asarray(rng.integers(0, 256, (batch, *shape)), jnp.int32)
  return jnp.asarray(rng.random((batch, *shape)) < 0.4, jnp.float32)


@functools.cache
def variant(name):
  """(family, params at initialisation, x) of a tiny model of each variant."""
  fields, shape = VARIANTS[name]
  family = build(fields, shape)
  x = inputs(family, shape)
  return family, jax.jit(family.init)(jax.random.key(0, impl='rbg'), x), x


def _finite(tree):
  return all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(tree))


def test_soft_clamp_is_the_identity_near_zero_and_bounded():
  x = jnp.asarray([-1e30, -50.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 50.0, 1e30])
  y = np.asarray(hierarchical_networks.soft_clamp(x, 5.0))
  assert bool(jnp.all(jnp.abs(y) <= 5.0)) and bool(jnp.all(jnp.diff(y) >= 0))
  np.testing.assert_allclose(y[3:6], x[3:6], rtol=1e-6)  # slope 1 at 0
  np.testing.assert_allclose(y[[2, 6]], [-5 * np.tanh(0.2), 5 * np.tanh(0.2)], rtol=1e-6)
  np.testing.assert_allclose(y[[1, 7]], [-5.0, 5.0], rtol=1e-6)
  grad = jax.vmap(jax.grad(hierarchical_networks.soft_clamp))(jnp.asarray([0.0, 3.0, 100.0]))
  np.testing.assert_allclose(grad, [1.0, 1 - np.tanh(0.6) ** 2, 0.0], atol=1e-7)


def test_diagonal_kl_matches_the_textbook_formula_and_is_zero_at_equality():
  rng = np.random.default_rng(0)
  q = {'mean': rng.normal(size=(5, 3)), 'log_scale': rng.normal(size=(5, 3))}
  p = {'mean': rng.normal(size=(5, 3)), 'log_scale': rng.normal(size=(5, 3))}
  sq, sp = np.exp(q['log_scale']), np.exp(p['log_scale'])
  want = np.log(sp / sq) + (sq**2 + (q['mean'] - p['mean']) ** 2) / (2 * sp**2) - 0.5
  got = gaussians.diagonal_gaussian_kl_units(
      jax.tree.map(jnp.float32, q), jax.tree.map(jnp.float32, p))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert float(jnp.max(jnp.abs(gaussians.diagonal_gaussian_kl_units(q, q)))) == 0.0


@pytest.mark.parametrize('name', ['mlp', 'conv'])
def test_contract_outputs_have_their_shapes(name):
  family, params, x = variant(name)
  fields, shape = VARIANTS[name]
  u = family.num_units
  n_groups = sum(fields['hvae.groups'])
  want_u = 3 * 3 if name == 'mlp' else 2 * (4 * 4 + 2 * 8 * 8)  # top group at 4x4, two at 8x8
  assert family.num_groups == n_groups and u == want_u
  keys = jax.random.split(jax.random.key(2), B)

  @jax.jit
  def outputs(params, x):  # one compile for every output
    stats = family.posterior_stats(params, x)
    return dict(terms=family.terms(params, x, jax.random.key(1)),
                eval_terms=family.terms(params, x, keys),  # keys [B]: the evaluation convention
                log_w=family.log_weights(params, x, keys, 5, 0),
                samples=family.sample(params, jax.random.key(3), 3, 0.5), stats=stats,
                recon=family.reconstruct(params, x),
                decoded=family.decode_mean(params, stats['mean']))

  out = outputs(params, x)
  terms, samples, stats, recon = out['terms'], out['samples'], out['stats'], out['recon']
  assert set(terms) == {'recon', 'kl', 'neg_elbo', 'kl_units'} | {
      f'kl/{g}' for g in range(n_groups)}
  for k, v in terms.items():
    assert v.shape == ((B, u) if k == 'kl_units' else (B,)) and v.dtype == jnp.float32, k
  np.testing.assert_allclose(terms['kl'], sum(terms[f'kl/{g}'] for g in range(n_groups)),
                             rtol=1e-6)
  np.testing.assert_allclose(jnp.sum(terms['kl_units'], axis=1), terms['kl'], rtol=1e-5)
  np.testing.assert_allclose(terms['neg_elbo'], terms['recon'] + terms['kl'], rtol=1e-6)
  assert out['eval_terms']['neg_elbo'].shape == (B,) and out['log_w'].shape == (5, B)
  assert {k: v.shape for k, v in samples.items()} == {'means': (3, *shape),
                                                      'samples': (3, *shape)}
  assert 0.0 <= float(jnp.min(samples['samples'])) and float(jnp.max(samples['samples'])) <= 1.0
  assert {k: v.shape for k, v in stats.items()} == {'mean': (B, u), 'var': (B, u)}
  assert sum(family.unit_groups) == u and len(family.unit_groups) == n_groups
  assert recon.shape == (B, *shape)
  # reconstruct is decode_mean at posterior_stats' means (the same units, top first).
  np.testing.assert_allclose(out['decoded'], recon, atol=1e-6)
  assert family.capabilities.diagonal_posterior is False
  assert _finite((terms, samples, stats))


@pytest.mark.parametrize('name, k', [('mlp', 4000), ('conv', 400)])
def test_each_group_kl_is_the_monte_carlo_log_ratio(name, k):
  # E_q[log q(z_l|.) - log p(z_l|.)] at the same sampled groups above equals the analytic kl/l;
  # their difference has mean 0 given the groups above, so it is a sharp test.
  family, params, x = variant(name)
  keys = jax.random.split(jax.random.key(4), B)
  t = jax.jit(family.log_density_terms, static_argnums=3)(params, x, keys, k, 0)
  for g in range(family.num_groups):
    diff = np.asarray(t[f'log_q/{g}'] - t[f'log_p/{g}'] - t[f'kl/{g}'], np.float64)  # [K, B]
    stderr = diff.std(axis=0) / np.sqrt(k)
    assert np.all(np.abs(diff.mean(axis=0)) < 4 * stderr + 1e-3), (g, diff.mean(0), stderr)
    assert float(jnp.mean(t[f'kl/{g}'])) > 0.01  # a KL that is not trivially zero
  # And log_weights is exactly the sum of the parts.
  lw = jax.jit(family.log_weights, static_argnums=3)(params, x, keys, 8, 0)
  parts = t['log_px'][:8] + sum(t[f'log_p/{g}'][:8] - t[f'log_q/{g}'][:8]
                                for g in range(family.num_groups))
  np.testing.assert_allclose(lw, parts, rtol=1e-6)


def test_one_group_without_residual_is_a_plain_gaussian_vae():
  # One group: q(z|x) = N(mean, diag var) of posterior_stats, p(z) = N(0, I), and log_weights
  # is log p(x|z) + log N(z; 0, I) - log q(z|x) with z = mean + sd * eps of the contract's
  # noise, p(x|z) the Bernoulli with mean decode_mean(z).
  family = build({**MLP, 'hvae.groups': (1,), 'hvae.residual_posterior': False}, (8, 8, 1))
  x = inputs(family, (8, 8, 1))
  params = jax.jit(family.init)(jax.random.key(0, impl='rbg'), x)
  assert family.capabilities.diagonal_posterior and family.num_units == 3
  keys = jax.random.split(jax.random.key(5), B)
  k = 6

  @jax.jit
  def outputs(params, x):  # one compile, not op by op
    stats = family.posterior_stats(params, x)
    q = {'mean': stats['mean'], 'log_scale': 0.5 * jnp.log(stats['var'])}
    terms = family.terms(params, x, keys)
    eps = gaussians.standard_normal_noise(keys, B, 3, k, 2)  # [K, B, 3], samples 2 .. 7
    z = q['mean'] + jnp.exp(q['log_scale']) * eps
    mean = family.decode_mean(params, z.reshape(-1, 3)).reshape(k, B, -1)
    xf = x.reshape(B, -1)
    log_px = jnp.sum(xf * jnp.log(mean) + (1 - xf) * jnp.log1p(-mean), axis=-1)  # [K, B]
    want = log_px + gaussians.standard_normal_log_prob(z) - gaussians.gaussian_log_prob(q, z)
    return (terms, gaussians.gaussian_kl_to_standard_normal(q), want,
            family.log_weights(params, x, keys, k, 2))

  terms, kl_want, want, log_w = outputs(params, x)
  np.testing.assert_allclose(terms['kl'], kl_want, rtol=1e-5)
  np.testing.assert_allclose(terms['kl/0'], terms['kl'])
  np.testing.assert_allclose(log_w, want, rtol=1e-4)


@pytest.mark.parametrize('name', ['mlp', 'conv'])
def test_log_weight_chunks_concatenate_to_the_unchunked_result(name):
  family, params, x = variant(name)
  keys = jax.random.split(jax.random.key(6), B)
  encoded = jax.jit(family.encode)(params, x)

  @jax.jit
  def both(params, x, encoded):
    whole = family.log_weights(params, x, keys, 12, 0)
    parts = [family.log_weights(params, x, keys, 4, off, encoded) for off in (0, 4, 8)]
    first = family.log_density_terms(params, x, keys, 1, 0)['log_px'][0]
    return whole, jnp.concatenate(parts), first, family.terms(params, x, keys)['recon']

  whole, parts, first, recon = both(params, x, encoded)
  np.testing.assert_allclose(parts, whole, rtol=1e-6)
  # Sample 0 is the evaluation terms' sample: its log p(x|z) is their recon.
  np.testing.assert_allclose(-first, recon, rtol=1e-6)


def test_iwae_bound_is_below_the_elbo_after_a_little_training():
  family, params, _ = variant('mlp')
  rng = np.random.default_rng(1)
  protos = rng.random((4, 8, 8, 1)) < 0.5
  data = jnp.asarray(protos[rng.integers(0, 4, 64)] ^ (rng.random((64, 8, 8, 1)) < 0.05),
                     jnp.float32)
  tx = optax.adam(3e-3)

  def step(carry, key):
    p, opt = carry
    loss = lambda p: jnp.mean(family.terms(p, data, key)['neg_elbo'])
    value, grads = jax.value_and_grad(loss)(p)
    updates, opt = tx.update(grads, opt, p)
    return (optax.apply_updates(p, updates), opt), value

  (params, _), losses = jax.jit(lambda c, ks: jax.lax.scan(step, c, ks))(
      (params, tx.init(params)), jax.random.split(jax.random.key(7), 300))
  assert float(losses[-20:].mean()) < 0.8 * float(losses[:20].mean())
  x = data[:16]
  keys = jax.random.split(jax.random.key(8), 16)
  lw = jax.jit(family.log_weights, static_argnums=3)(params, x, keys, 500, 0)  # [K, 16]
  nll = float(jnp.mean(objectives.iwae_terms(lw)))
  neg_elbo_mc = float(-jnp.mean(lw))
  elbo_keys = jax.random.split(jax.random.key(9), 50)
  neg_elbo = float(jnp.mean(jax.jit(jax.vmap(lambda k: family.terms(params, x, k)['neg_elbo']))(
      elbo_keys)))
  assert nll < neg_elbo - 0.01, (nll, neg_elbo)
  assert abs(neg_elbo_mc - neg_elbo) < 0.05 * abs(neg_elbo), (neg_elbo_mc, neg_elbo)


@pytest.mark.parametrize('fields, shape', [
    ({**MLP, 'hvae.groups': (8,), 'likelihood': 'gaussian'}, (8, 8, 1)),
    ({**CONV, 'hvae.groups': (2, 2), 'likelihood': 'gaussian', 'logistic_coupling': 'none'},
     (16, 16, 1)),
], ids=['mlp8', 'conv4'])
def test_a_deep_hierarchy_is_finite_at_initialisation_on_huge_inputs(fields, shape):
  family = build(fields, shape)
  assert family.num_groups == sum(fields['hvae.groups'])
  x = jnp.asarray(np.random.default_rng(0).normal(0.0, 1e4, (B, *shape)), jnp.float32)
  params = jax.jit(family.init)(jax.random.key(0, impl='rbg'), x)
  keys = jax.random.split(jax.random.key(2), B)

  @jax.jit
  def outputs(params, x):  # one compile for the three
    loss = lambda p: jnp.mean(family.terms(p, x, jax.random.key(1))['neg_elbo'])
    return (jax.value_and_grad(loss)(params), family.log_weights(params, x, keys, 3, 0),
            family.posterior_stats(params, x))

  (value, grads), log_w, stats = outputs(params, x)
  assert np.isfinite(float(value)) and _finite(grads)
  assert _finite(log_w)
  assert _finite(stats) and float(jnp.max(stats['var'])) < np.exp(10.0) + 1


def _hparams(free_bits):
  return {'beta': 1.0, 'kl_warmup_steps': 0.0, 'free_bits': free_bits}


def test_free_bits_per_group_floors_each_group():
  means = {'recon': jnp.float32(3.0), 'kl': jnp.float32(1.5), 'kl/0': jnp.float32(0.1),
           'kl/1': jnp.float32(1.2), 'kl/2': jnp.float32(0.2)}
  loss = lambda m, fb: objectives.training_objective(m, _hparams(fb), 0, 'group')
  np.testing.assert_allclose(loss(means, 0.5), 3.0 + 0.5 + 1.2 + 0.5, rtol=1e-6)
  np.testing.assert_allclose(loss(means, 0.0), 3.0 + 1.5, rtol=1e-6)  # 0: the plain KL
  grad = jax.grad(loss)(means, 0.5)
  assert [float(grad[f'kl/{g}']) for g in range(3)] == [0.0, 1.0, 0.0]
  assert float(grad['kl']) == 0.0 and float(grad['recon']) == 1.0
  np.testing.assert_allclose(objectives.group_kl_means({**means, 'kl/10': 7.0}),
                             [0.1, 1.2, 0.2, 7.0])  # numeric order: 10 after 2
  with pytest.raises(ValueError, match='kl/<group>'):
    loss({'recon': 1.0, 'kl': 1.0}, 0.5)


@pytest.mark.parametrize('fields, match', [
    ({'objective.free_bits_per': 'group'}, 'free_bits_per=group'),
    ({'model.kind': 'ladder'}, 'model.kind'),
    ({'model.kind': 'hvae', 'model.hvae.groups': (2, 2)}, 'one resolution'),
    ({'model.kind': 'hvae', 'model.hvae.groups': ()}, 'hvae.groups'),
    ({'model.kind': 'hvae', 'model.encoder': 'conv'}, 'must be the same'),
    ({'model.kind': 'hvae', 'model.encoder': 'conv', 'model.decoder': 'conv',
      'model.hvae.groups': (1, 1, 1)}, 'only 2'),
    ({'model.kind': 'hvae', 'model.posterior': 'full'}, 'posterior=diag'),
    ({'model.kind': 'hvae', 'model.hvae.width': 0}, 'hvae.width'),
])
def test_hierarchy_config_mistakes_are_clear_errors(fields, match):
  config = set_fields(load_config('default'), **fields)
  with pytest.raises(validation.ConfigError, match=match):
    validation.validate_config(config)
  ok = set_fields(load_config('default'),
                  **{'model.kind': 'hvae', 'objective.free_bits_per': 'group'})
  validation.validate_config(ok)


def test_build_model_dispatches_on_the_kind():
  m = model_config(**MLP)
  assert isinstance(models.build_model(m, (8, 8, 1)), hierarchical.HierarchicalVAE)
  m.kind = 'vae'
  assert isinstance(models.build_model(m, (8, 8, 1)), gaussian_vae.GaussianVAE)


@pytest.mark.parametrize('dtype', ['bfloat16', 'float32'])
def test_compute_dtype_reaches_every_matmul_and_conv(dtype):
  for fields, shape in VARIANTS.values():
    family = build({**fields, 'dtype': dtype}, shape)
    x = inputs(family, shape)
    params = jax.eval_shape(family.init, jax.random.key(0), x)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
    params = jax.tree.map(lambda s: jnp.full(s.shape, 0.01, s.dtype), params)
    terms = jax.eval_shape(family.terms, params, x, jax.random.key(1))
    assert all(v.dtype == jnp.float32 for v in terms.values())
    terms_of = functools.partial(family.terms, x=x, key=jax.random.key(1))
    products = _product_dtypes(terms_of, params)
    assert products and all(set(d) in ({dtype}, {'float32'}) for _, d in products), products
    # The heads compute in float32 whatever the compute dtype (tests/test_head_dtype.py): a
    # posterior head per group, a prior head per group below the top, the likelihood's layer.
    in_f32 = [d for _, d in products if set(d) == {'float32'}]
    assert len(in_f32) == (2 * family.num_groups if dtype == 'bfloat16' else len(products))


@pytest.fixture(scope='module')
def hvae_run(tmp_path_factory):
  """A 20-step MLP hierarchy on the small sprites, with the loop's K = 4 estimate."""
  workdir = str(tmp_path_factory.mktemp('hvae_run'))
  config = tiny_config(eval_num_samples=4, **{
      'mesh.data': 1, 'data.name': 'sprites/small', 'model.kind': 'hvae',
      'model.hvae.groups': (2,), 'model.hvae.width': 32, 'objective.free_bits_per': 'group',
      'objective.free_bits': 0.1, 'objective.kl_warmup_steps': 10})
  return workdir, train.train_and_evaluate(config, workdir)


@pytest.mark.slow
def test_hvae_trains_evaluates_and_is_analysed(hvae_run):
  workdir, result = hvae_run
  assert result['step'] == 20
  trains = metrics_lib.read_metrics(workdir, 'train')
  assert all('kl/0' in r and 'kl/1' in r for r in trains)
  assert trains[-1]['loss'] < trains[0]['loss']
  evals = metrics_lib.read_metrics(workdir, 'eval')
  for r in evals:
    assert r['kl'] == pytest.approx(r['kl/0'] + r['kl/1'], rel=1e-4)
    assert r['nll'] is not None and np.isfinite(r['nll'])
  exp, params = result['experiment'], result['state'].params
  report = eval_lib.estimate(exp, params, 'test', 8, chunk_size=3, units=True)
  assert report['nll'] < report['neg_elbo_mc'] and 'kl/1_stderr' in report
  assert len(report['kl_per_unit']) == 2 * 4 and report['mutual_info'] is None
  # Units are counted per group, and each unit's KL is to its own prior p(z_l | z_above).
  assert report['kl_per_unit_to'] == 'prior'
  assert len(report['active_units_per_group']) == 2
  assert sum(report['active_units_per_group']) == report['active_units']
  for r in evals:
    if r['split'] == exp.config.data.valid_split:
      assert len(r['active_units_per_group']) == 2  # the training's records count them too
  summary = analysis.analyze(workdir, log=None)
  assert {f['name'] for f in summary['figures']} >= {'reconstructions', 'samples',
                                                      'interpolations', 'traversals'}
  assert summary['elbo']['kl/0'] >= 0 and os.path.exists(summary['index_html'])
  json.dumps(summary)


@pytest.mark.slow
def test_conv_hvae_trains_on_8_bit_sprites(tmp_path):
  # The conv networks want 28, 32 or 64 pixels: the full 32x32 sprites, slivers of its splits.
  # One device and one fused call of 10 steps: the device count is not what this checks.
  config = tiny_config(num_train_steps=10, steps_per_call=10, log_every_steps=10,
                       eval_every_steps=10, checkpoint_every_steps=10, eval_batch_size=64, **{
      'mesh.data': 1, 'data.name': 'sprites', 'data.preprocess': 'uint8',
      'data.valid_split': 'train[-64:]', 'data.eval_split': 'test[:64]', 'model.kind': 'hvae',
      'model.encoder': 'conv', 'model.decoder': 'conv', 'model.conv_channels': (8, 16),
      'model.hvae.groups': (1, 1), 'model.latent_dim': 2,
      'model.likelihood': 'discretized_logistic', 'images.num': 4})
  result = train.train_and_evaluate(config, str(tmp_path))
  rec = result['eval']['test[:64]']
  assert np.isfinite(rec['neg_elbo']) and rec['kl'] == pytest.approx(
      rec['kl/0'] + rec['kl/1'], rel=1e-4)
  assert os.path.exists(tmp_path / 'images' / 'prior_samples_step_10.png')


def test_unit_statistics_count_each_group_and_take_each_units_kl_to_its_own_prior():
  family, params, x = variant('mlp')
  stats = jax.jit(family.posterior_stats)(params, x)
  assert set(stats) == {'mean', 'var'}  # the per-unit KL is the terms' kl_units
  exp = type('Exp', (), {'model': family})()
  mean = np.zeros((100, family.num_units))
  mean[:, [0, 4, 5, 8]] = np.random.default_rng(0).normal(size=(100, 4))  # groups 0, 1, 2
  out = eval_lib.unit_summary(exp, mean, np.ones_like(mean), np.arange(100), mutual_info=False,
                              kl=np.full(100, 9.0), kl_units=np.ones_like(mean))
  assert family.unit_groups == (3, 3, 3)
  assert out['active_units_per_group'] == [1, 2, 1] and out['active_units'] == 4
  assert out['kl_per_unit_to'] == 'prior' and np.allclose(out['kl_per_unit'], 1.0)
  # Without the model's kl (the loop's active-unit count) no KL field is filled in.
  bare = eval_lib.unit_summary(exp, mean, np.ones_like(mean), np.arange(100))
  assert bare['kl_per_unit'] is None and bare['aggregate_kl'] is None
  assert bare['active_units'] == 4


def test_the_cifar10_config_builds_a_multi_resolution_hierarchy():
  config = load_config('cifar10')
  validation.validate_config(config, num_devices=1)
  family = models.build_model(config.model, (32, 32, 3), experiment.x_dtype(config))
  assert isinstance(family, hierarchical.HierarchicalVAE)
  assert family.likelihood == 'discretized_logistic' and family.network.variant == 'conv'
  resolutions = [s[:2] for s in family.shapes]  # top first: the lowest resolution
  assert len(set(resolutions)) == len(config.model.hvae.groups) >= 3
  assert resolutions[0] == (4, 4) and resolutions[-1] == (16, 16)
