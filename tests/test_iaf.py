"""Inverse autoregressive flows in the posterior (model.posterior_flow=iaf): each step's Jacobian
and the flow's density, the identity flow as the Gaussian posterior, the K-sample estimator,
training of both families, validation, and the flow-free models bitwise as before the flow."""

import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from tests.test_train import tiny_config
from vae_jax import data, models, train
from vae_jax import evaluate as eval_lib
from vae_jax.config import validation
from vae_jax.maths import gaussians, likelihoods
from vae_jax.models import flows
from vae_jax.storage import writers as metrics_lib

SHAPE = (8, 8, 1)


def _x(batch, seed=0):
  return jnp.asarray(np.random.default_rng(seed).random((batch, *SHAPE)) < 0.4, jnp.float32)


def _config(kind='vae', flow='iaf', latent_dim=3, **fields):
  """tiny_config with a small model of `kind` and posterior_flow=flow (2 steps, 16 hidden)."""
  c = tiny_config()
  c.model.update(kind=kind, hidden=(16,), latent_dim=latent_dim, posterior_flow=flow,
                 flow_steps=2, flow_hidden=16)
  c.model.hvae.update(groups=(2,), width=16)
  for key, value in fields.items():
    node, (*parents, leaf) = c, key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _model(kind='vae', flow='iaf', latent_dim=3):
  """(model, jitted init, jitted outputs) of _config(kind, flow, latent_dim), built once
  (whatever the arguments' spelling: the tests are compile-bound, each program ~5-10 s).

  outputs(params, x, keys [B], key) -> the contract's outputs on x, in one program (one
  compile): terms at keys, log_weights (K = 6) whole and, with a flow, as chunks of 2 from
  `encode`, reconstruct and posterior_stats at key.
  """
  return _built(kind, flow, latent_dim)


@functools.cache
def _built(kind, flow, latent_dim):
  model = models.build_model(_config(kind, flow, latent_dim).model, SHAPE)

  @jax.jit
  def outputs(params, x, keys, key):
    out = {'terms': model.terms(params, x, keys), 'log_weights': model.log_weights(
        params, x, keys, 6), 'reconstruct': model.reconstruct(params, x),
        'stats': model.posterior_stats(params, x, key)}
    if flow != 'none':  # the flow-free models' chunks are the contract tests' own
      encoded = model.encode(params, x)
      chunks = jax.lax.map(lambda o: model.log_weights(params, x, keys, 2, o, encoded),
                           jnp.arange(0, 6, 2))  # [3, 2, B]: one copy of the program
      out['chunks'] = chunks.reshape((6, x.shape[0]))
    return out

  return model, jax.jit(model.init), outputs


def _names(path):
  return [getattr(k, 'key', None) for k in path]


def _perturbed(params, scale=0.5, seed=0):
  """The flows' own parameters replaced by N(0, scale^2) draws: the gates far from their
  initial +2 bias, so each step is far from the identity."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda p, a: (jnp.asarray(rng.normal(0, scale, a.shape), jnp.float32)
                    if 'flow' in _names(p) else a), params)


def _without_flow(params):
  """The parameters a flow-free model of the same config has: no flow, no context head."""
  if not isinstance(params, dict):
    return params
  return {k: _without_flow(v) for k, v in params.items()
          if k not in ('flow', 'context', 'flow_context')}


# ------------------------------------------------------------------------------ (1) Jacobian


def test_each_step_is_triangular_in_its_order_and_the_log_det_is_the_jacobians():
  d, c, hidden = 5, 4, 12
  rng = np.random.default_rng(0)
  z0 = jnp.asarray(rng.normal(size=d), jnp.float32)
  ctx = jnp.asarray(rng.normal(size=c), jnp.float32)
  flow = flows.IAF(steps=2, hidden=hidden)
  params = jax.jit(flow.init)(jax.random.key(0), z0, ctx)['params']  # one program, not op by op
  params = jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.5, a.shape), jnp.float32), params)

  @jax.jit
  def jacobians(z0):
    """Each step's output, log sigma and Jacobian, then the whole flow's."""
    z, out = z0, []
    for t in range(2):
      f = lambda v, t=t: flows.IAFStep(hidden, reverse=t == 1).apply(
          {'params': params[f'step_{t}']}, v, ctx)
      jac = jax.jacfwd(lambda v, f=f: f(v)[0])(z)  # [D, D]: d out_i / d z_j
      z, log_sigma = f(z)
      out.append((jac, log_sigma))
    whole = lambda v: flow.apply({'params': params}, v, ctx)
    return out, whole(z0), z, jax.jacfwd(lambda v: whole(v)[0])(z0)

  steps, (z_t, log_det), z_steps, jac = jacobians(z0)
  for t, (step_jac, log_sigma) in enumerate(steps):
    step_jac = np.asarray(step_jac)
    # Step 0 reads the units in order (output i sees z_<i), step 1 reversed (z_>i): its
    # Jacobian is lower, then upper triangular, every allowed entry non-zero.
    allowed = np.tril(np.ones((d, d)), -1) if t == 0 else np.triu(np.ones((d, d)), 1)
    assert np.all(step_jac[(allowed == 0) & ~np.eye(d, dtype=bool)] == 0), (t, step_jac)
    assert np.all(step_jac[allowed == 1] != 0), (t, step_jac)
    np.testing.assert_allclose(np.diag(step_jac), np.exp(log_sigma), rtol=1e-5)
  np.testing.assert_array_equal(z_t, z_steps)
  sign, logdet = jnp.linalg.slogdet(jac)
  assert sign > 0
  np.testing.assert_allclose(jnp.sum(log_det), logdet, rtol=1e-5, atol=1e-5)


def test_the_models_kl_uses_the_log_det_of_the_flows_jacobian():
  d, b = 5, 3
  model, init, _ = _model(latent_dim=d)
  x, key = _x(b), jax.random.key(1)
  params = _perturbed(init(jax.random.key(0), x))

  @jax.jit
  def by_hand(params):
    apply = lambda *a, method: model.network.apply({'params': params}, *a, method=method)
    enc = apply(x, method='encode')
    post = {'mean': enc['mean'], 'log_scale': enc['log_scale']}
    h0 = gaussians.gaussian_rsample(post, gaussians.standard_normal_noise(key, b, d))  # [B, D]
    h, log_det = apply(h0, enc['context'], method='flow_forward')  # [B, D], [B]
    one = lambda v, c: apply(v[None], c[None], method='flow_forward')[0][0]
    jacs = jax.vmap(jax.jacfwd(one))(h0, enc['context'])  # [B, D, D]
    # kl = log N(h0; mean, sigma) - log|det| - log N(h; 0, I) at the recon's sample.
    kl = (gaussians.gaussian_log_prob(post, h0) - jnp.linalg.slogdet(jacs)[1]
          - gaussians.standard_normal_log_prob(h))
    return (log_det, jnp.linalg.slogdet(jacs), kl, gaussians.gaussian_kl_to_standard_normal(post),
            model.terms(params, x, key))

  log_det, (sign, logdet), kl, kl_base, terms = by_hand(params)
  assert np.all(sign > 0)
  np.testing.assert_allclose(log_det, logdet, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(terms['kl'], kl, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(terms['kl_base'], kl_base, rtol=1e-6)


# ------------------------------------------------------------------- (2) the identity flow


def _identity_flow(params):
  """Shift and gate heads' kernels zero, shift bias 0, gate bias 40: sigmoid(40) is 1.0 in
  float32 and sigmoid(-40) * 0 is 0, so every step returns z exactly (log sigma = -4e-18)."""
  def f(path, a):
    names = _names(path)
    if 'flow' not in names or names[-2] not in ('shift', 'gate'):
      return a
    return jnp.full_like(a, 40.0 if names[-2:] == ['gate', 'bias'] else 0.0)
  return jax.tree_util.tree_map_with_path(f, params)


@pytest.mark.parametrize('kind', ['vae', 'hvae'])
def test_a_flow_at_the_identity_is_the_gaussian_posterior(kind):
  (_, g_init, g_out), (_, f_init, f_out) = _model(kind, 'none'), _model(kind, 'iaf')
  b, x = 4, _x(4)
  p_gauss = g_init(jax.random.key(0), x)
  p_flow = _identity_flow(f_init(jax.random.key(0), x))
  # The flow adds parameters and changes none of the others.
  jax.tree.map(np.testing.assert_array_equal, _without_flow(p_flow), p_gauss)
  keys, key = jax.random.split(jax.random.key(1), b), jax.random.key(2)
  g, f = g_out(p_gauss, x, keys, key), f_out(p_flow, x, keys, key)
  t_gauss, t_flow = g['terms'], f['terms']
  close = lambda a, want: np.testing.assert_allclose(a, want, rtol=1e-6, atol=2e-6)
  close(t_flow['recon'], t_gauss['recon'])
  close(t_flow['kl_base'], t_gauss['kl'])  # the base Gaussian's analytic KL
  if kind == 'hvae':
    for grp in range(2):
      close(t_flow[f'kl_base/{grp}'], t_gauss[f'kl/{grp}'])
  # Its Monte-Carlo kl at the recon's sample is the Gaussian's log q - log p there: the terms'
  # sample is sample 0 of log_weights (keys per example).
  lw_gauss = g['log_weights']  # [K, B]
  close(f['log_weights'], lw_gauss)
  close(t_flow['neg_elbo'], -lw_gauss[0])
  close(t_flow['neg_elbo'], t_flow['recon'] + t_flow['kl'])
  close(f['reconstruct'], g['reconstruct'])
  if kind == 'vae':  # the hierarchy's flow-free stats are on the mean path, not marginal
    exact, est = g['stats'], f['stats']
    # The samples' moments, within their Monte-Carlo error of the Gaussian's.
    n = flows.STATS_SAMPLES
    np.testing.assert_array_less(np.abs(est['mean'] - exact['mean']),
                                 5 * np.sqrt(exact['var'] / n))
    np.testing.assert_array_less(np.abs(est['var'] / exact['var'] - 1), 5 * np.sqrt(2 / n))


# ------------------------------------------------------------- (3) the density on a grid


def _inverse(flow, params, y, ctx):
  """z_0 of flow outputs y [N, D]: each step inverted by D fixed-point passes (pass k fixes the
  k-th unit of the step's order, as the step is autoregressive)."""
  for t in reversed(range(flow.steps)):
    step = flows.IAFStep(flow.hidden, reverse=t % 2 == 1)
    target, z = y, y
    for _ in range(y.shape[-1]):
      out, log_sigma = step.apply({'params': params[f'step_{t}']}, z, ctx)
      sigma = jnp.exp(log_sigma)
      z = (target - (out - sigma * z)) / sigma  # out - sigma z = (1 - sigma) m(z_<i)
    y = z
  return y


def test_the_flows_density_integrates_to_one_and_matches_its_samples():
  flow = flows.IAF(steps=2, hidden=8)
  rng = np.random.default_rng(1)
  ctx1 = jnp.asarray(rng.normal(size=3), jnp.float32)
  params = jax.jit(flow.init)(jax.random.key(0), jnp.zeros(2), ctx1)['params']
  params = jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.8, a.shape), jnp.float32), params)
  base = {'mean': jnp.asarray([0.5, -0.3]), 'log_scale': jnp.asarray([0.2, -0.4])}
  n = 200_000
  bins, sub = 15, 24  # a 15 x 15 histogram, each bin a 24 x 24 block of the density's grid

  @jax.jit
  def draw(key):
    z0 = gaussians.gaussian_rsample(base, jax.random.normal(key, (n, 2)))
    return flow.apply({'params': params}, z0, jnp.broadcast_to(ctx1, (n, 3)))[0]

  @jax.jit
  def log_q(y):  # [N, 2] -> [N]: log N(z_0; base) - log|det dz_T/dz_0|, and flow(z_0) [N, 2]
    ctx = jnp.broadcast_to(ctx1, (y.shape[0], 3))
    z0 = _inverse(flow, params, y, ctx)
    z_t, log_det = flow.apply({'params': params}, z0, ctx)
    return gaussians.gaussian_log_prob(base, z0) - jnp.sum(log_det, -1), z_t

  samples = np.asarray(draw(jax.random.key(2)), np.float64)
  lo, hi = samples.min(0) - 1.0, samples.max(0) + 1.0  # the mass beyond: far below 1e-3
  m = bins * sub
  cells = [lo[i] + (np.arange(m) + 0.5) * (hi[i] - lo[i]) / m for i in (0, 1)]
  grid = np.stack(np.meshgrid(*cells, indexing='ij'), -1).reshape(-1, 2).astype(np.float32)
  lq, y = log_q(jnp.asarray(grid))
  np.testing.assert_allclose(y, grid, atol=1e-4)  # the inverse is exact
  mass = np.exp(np.asarray(lq, np.float64)).reshape(m, m) * np.prod((hi - lo) / m)
  assert abs(mass.sum() - 1.0) < 1e-2, mass.sum()
  expected = mass.reshape(bins, sub, bins, sub).sum((1, 3))  # [bins, bins]
  counts, _, _ = np.histogram2d(samples[:, 0], samples[:, 1], bins=bins,
                                range=[(lo[0], hi[0]), (lo[1], hi[1])])
  tv = 0.5 * np.abs(counts / n - expected).sum()  # total variation, binned
  assert tv < 0.03, tv


# ---------------------------------------------------------------------- (4) the estimator


def _nll(log_w, k):
  """The K-sample bound from the first k of log_w [K, B]: [B]."""
  return np.log(k) - np.asarray(jax.nn.logsumexp(log_w[:k], axis=0))


def test_the_estimators_bound_tightens_with_k_towards_log_px_on_a_grid():
  model, init, _ = _model(latent_dim=2)
  b, x = 6, _x(6, seed=3)
  params = init(jax.random.key(0), x)
  keys = jax.random.split(jax.random.key(1), b)
  log_weights = jax.jit(model.log_weights, static_argnums=3)
  log_w = jnp.concatenate([log_weights(params, x, keys, 1024, o) for o in (0, 1024)])
  nll = {k: _nll(log_w, k) for k in (1, 10, 100, 2048)}  # each [B]
  means = [float(np.mean(nll[k])) for k in sorted(nll)]
  assert all(a >= c - 0.02 for a, c in zip(means, means[1:], strict=False)), means
  neg_elbo_mc = -np.mean(np.asarray(log_w), axis=0)  # [B]
  assert np.all(nll[2048] < neg_elbo_mc), (nll[2048], neg_elbo_mc)

  @jax.jit
  def log_px(params):
    """log p(x) = log of the integral of p(x|h) p(h) over a 200 x 200 grid of h: [B]."""
    axis = jnp.linspace(-6.0, 6.0, 200)
    h = jnp.stack(jnp.meshgrid(axis, axis, indexing='ij'), -1).reshape(-1, 2)  # [G, 2]
    lik = model.network.apply({'params': params}, h, method='decode')  # [G, ...]
    log_p = jax.vmap(lambda xi: likelihoods.likelihood_log_prob(
        'bernoulli', lik, jnp.broadcast_to(xi, (h.shape[0], *xi.shape))))(x)  # [B, G]
    log_p = log_p + gaussians.standard_normal_log_prob(h)
    return jax.nn.logsumexp(log_p, axis=1) + 2 * jnp.log(axis[1] - axis[0])

  # The bound reaches -log p(x) (the flow's exact log q: a wrong log-det, e.g. its sign, moves
  # the estimate by about a nat here), and stays above it up to its noise.
  np.testing.assert_allclose(nll[2048], -log_px(params), atol=0.15)
  assert np.mean(nll[2048] + log_px(params)) > -0.05


# ------------------------------------------------------------------------------- contract


@pytest.mark.parametrize('kind', ['vae', 'hvae'])
def test_with_a_flow_each_family_provides_the_contract_it_declares(kind):
  config = _config(kind)
  validation.validate_config(config)
  caps = models.capabilities(config.model)
  assert not caps.kl_units and not caps.diagonal_posterior and not caps.dreg
  assert 'IAF (2 steps of 16 hidden units)' in caps.description
  model, init, outputs = _model(kind)
  assert isinstance(model, models.Model) and model.capabilities == caps
  b, x = 4, _x(4)
  params = init(jax.random.key(0), x)
  keys = jax.random.split(jax.random.key(3), b)
  out = outputs(params, x, keys, jax.random.key(2))
  terms = out['terms']
  assert 'kl_units' not in terms and terms['kl_base'].shape == (b,)
  if kind == 'hvae':  # per group: kl/<g> sums to kl, kl_base/<g> to kl_base
    np.testing.assert_allclose(terms['kl/0'] + terms['kl/1'], terms['kl'], rtol=1e-5)
    np.testing.assert_allclose(terms['kl_base/0'] + terms['kl_base/1'], terms['kl_base'],
                               rtol=1e-5)
  # Chunks of the K samples concatenate to the unchunked log-weights.
  np.testing.assert_allclose(out['chunks'], out['log_weights'], rtol=1e-5, atol=1e-4)
  stats, units = out['stats'], sum(model.unit_groups)
  assert stats['mean'].shape == stats['var'].shape == (b, units)
  assert np.all(np.asarray(stats['var']) > 0) and np.all(np.isfinite(stats['mean']))
  assert out['reconstruct'].shape == (b, *SHAPE)


def test_validation_says_what_a_flow_needs():
  for fields, match in (
      ({'model.posterior': 'full'}, 'model.posterior=diag'),
      ({'model.shared_covariance': True}, 'model.shared_covariance=False'),
      ({'model.vae.prior': 'vamp'}, 'model.vae.prior=standard with the flow'),
      ({'objective.free_bits_per': 'unit'}, 'not a sum over units'),
      ({'objective.name': 'iwae', 'objective.num_samples': 2,
        'objective.iwae_gradient': 'dreg'}, 'iwae_gradient=reparam'),
      ({'model.flow_steps': 0}, 'model.flow_steps'),
  ):
    with pytest.raises(validation.ConfigError, match=match):
      validation.validate_config(_config(**fields))
  validation.validate_config(_config('hvae', **{'model.encoder': 'conv', 'model.decoder': 'conv',
                                                'model.hvae.groups': (1, 1)}))
  # Without a flow the flow's fields are not read.
  validation.validate_config(_config(flow='none', **{'model.posterior': 'full'}))


# ------------------------------------------------------------------------------- (5) training


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['vae', 'hvae'])
def test_a_model_with_a_flow_trains_evaluates_and_reports_both_kls(tmp_path, kind):
  config = _config(kind, **{'data.name': 'sprites/small', 'mesh.data': 1, 'num_train_steps': 4,
                            'steps_per_call': 2, 'log_every_steps': 2, 'eval_every_steps': 4,
                            'checkpoint_every_steps': 4, 'eval_num_samples': 2,
                            # Small evaluation batches and few pictures: each example's
                            # posterior_stats draws 256 samples (the same programs, less work).
                            'eval_batch_size': 16, 'images.num': 4})
  result = train.train_and_evaluate(config, str(tmp_path))
  assert 'flow' in str(jax.tree_util.tree_structure(result['state'].params))
  names = ('kl', 'kl_base') + (('kl/1', 'kl_base/1') if kind == 'hvae' else ())
  for rec in metrics_lib.read_metrics(str(tmp_path), 'train'):
    for key in ('neg_elbo', *names):
      assert np.isfinite(rec[key]), (key, rec)
  evals = [r for r in metrics_lib.read_metrics(str(tmp_path), 'eval') if r['step'] == 4]
  assert evals
  for ev in evals:
    for key in ('nll', *names):
      assert np.isfinite(ev[key]) and ev[f'{key}_stderr'] > 0, (key, ev)
    np.testing.assert_allclose(ev['neg_elbo'], ev['recon'] + ev['kl'], rtol=1e-5)
  # The unit statistics read the sampled moments; q is no diagonal Gaussian, so no I(x; h).
  # On 8 test examples: the fields' form, not their values, is the point.
  arrays = {k: v[:8] for k, v in data.load_arrays(config.data, 'test').items()}
  units = eval_lib.unit_statistics(result['experiment'], result['state'].params, 'test',
                                   arrays=arrays)
  assert units['mutual_info'] is None and units['aggregate_kl'] is None
  assert np.all(np.isfinite(units['mean_var'])) and len(units['mean_var']) == (
      config.model.latent_dim * (2 if kind == 'hvae' else 1))


# --------------------------------------------------------- (6) flow-free models are unchanged

# Signatures of the flow-free models' parameters and outputs ([sum, sum of squares] of each,
# float64), recorded with the code before the flow existed (7bd0ffd) on the 2-core CPU machine
# (jax 0.10.2), where the current code gives them bitwise; compared here to float32 round-off,
# so another CPU's rounding passes and a real change of the numbers does not. The parameter
# tree's structure (names, shapes, dtypes) must be exactly the same.
BEFORE_THE_FLOW = {
    'vae': {
        'params_structure': '28d5ee2c45d3cc3d',
        'params': [5.645441882908926, 100.56479780128525],
        'log_weights': [-452.7195243835449, 23109.50245870625],
        'posterior_stats/mean': [1.111553244292736, 0.6035502312140142],
        'posterior_stats/var': [11.045856297016144, 14.365664019005965],
        'reconstruct': [96.16958129405975, 48.533366657314744],
        'sample/means': [67.84586408734322, 40.31744074247173],
        'sample/samples': [65.0, 65.0],
        'terms/kl': [0.5523047596216202, 0.10318241435372433],
        'terms/kl_units': [0.5523047689348459, 0.054621025211107496],
        'terms/neg_elbo': [142.04065322875977, 6728.433511972704],
        'terms/recon': [141.48834991455078, 6676.372068401135],
    },
    'vae_full_shared': {
        'params_structure': '4c003fb10b772c58',
        'params': [3.452790395487682, 97.64858465621568],
        'log_weights': [-433.6305847167969, 21075.73057921478],
        'posterior_stats/mean': [1.111553244292736, 0.6035502312140142],
        'posterior_stats/var': [9.0, 9.0],
        'reconstruct': [96.16958129405975, 48.533366657314744],
        'sample/means': [67.84586408734322, 40.31744074247173],
        'sample/samples': [65.0, 65.0],
        'terms/kl': [0.30177511274814606, 0.033881689328309816],
        'terms/neg_elbo': [140.3965835571289, 6571.288699436205],
        'terms/recon': [140.09481048583984, 6543.189176855434],
    },
    'vae_conv_full': {
        'params_structure': 'be015ab40b26b7e1',
        'params': [64.53310169941687, 145.74469232446248],
        'log_weights': [-447.11327362060547, 22313.70649488282],
        'posterior_stats/mean': [0.5623410195112228, 5.277721557882112],
        'posterior_stats/var': [14.152312815189362, 36.63178668494638],
        'reconstruct': [99.56072384119034, 55.221975861166],
        'sample/means': [66.62543876469135, 36.64338496057013],
        'sample/samples': [66.0, 66.0],
        'terms/kl': [4.487916052341461, 7.888344157953302],
        'terms/neg_elbo': [146.68764877319336, 7207.233925995955],
        'terms/recon': [142.1997299194336, 6776.043047650397],
    },
    'hvae': {
        'params_structure': 'ac9ca5a2b925170b',
        'params': [247.8342007932115, 439.2091437928564],
        'log_weights': [-434.21862030029297, 20979.63988981652],
        'posterior_stats/mean': [1.864801436662674, 5.241805215807673],
        'posterior_stats/var': [26.13868872821331, 142.1374492709073],
        'reconstruct': [95.97882050275803, 49.786186059224285],
        'sample/means': [64.66074001789093, 33.95924796930228],
        'sample/samples': [68.0, 68.0],
        'terms/kl': [8.208250284194946, 34.6152999685051],
        'terms/kl/0': [1.3509597927331924, 0.7183549126903321],
        'terms/kl/1': [6.857290506362915, 25.77084149708199],
        'terms/kl_units': [8.208250709809363, 15.398406374550582],
        'terms/neg_elbo': [147.11993408203125, 7230.503669283848],
        'terms/recon': [138.91168212890625, 6432.454556322773],
    },
}
_CASES = {  # every head form of the single layer, and the hierarchy
    'vae': dict(encoder='mlp', decoder='mlp', posterior='diag'),
    'vae_full_shared': dict(encoder='mlp', decoder='mlp', posterior='full',
                            shared_covariance=True),
    'vae_conv_full': dict(encoder='conv', decoder='conv', posterior='full'),
    'hvae': dict(kind='hvae', encoder='mlp', decoder='mlp'),
}


def _fingerprint_config(name):
  """config.model of a fingerprint case, every field it reads set here (not from defaults that
  may move)."""
  m = default.get_config().model
  m.update(kind='vae', hidden=(16,), conv_channels=(4, 8), conv_blocks=1, latent_dim=3,
           posterior='diag', shared_covariance=False, likelihood='bernoulli', dtype='float32',
           remat=False)
  m.vae.update(prior='standard')
  m.hvae.update(groups=(2,) if _CASES[name]['encoder'] == 'mlp' else (1, 1), width=16,
                residual_posterior=True)
  m.update(**_CASES[name])
  return m


def _signature(a):
  """[sum, sum of squares] in float64: equal to float32 round-off on any CPU, and moved by any
  change of the values beyond it (a bitwise digest would also move with a CPU's rounding)."""
  a = np.asarray(a, np.float64)
  return [float(np.sum(a)), float(np.sum(a * a))]


def fingerprint(name, b=3):
  """Digests of a flow-free model's parameters (init key 0) and of every output of the contract
  on fixed inputs. Runs on the code of any commit since the family modules (it reads only
  build_model and the contract)."""
  m = models.build_model(_fingerprint_config(name), SHAPE)
  x = jnp.asarray(np.random.default_rng(0).random((b, *SHAPE)) < 0.4, jnp.float32)
  params = jax.jit(m.init)(jax.random.key(0), x)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  structure = repr([(jax.tree_util.keystr(p), v.shape, str(v.dtype)) for p, v in flat])
  out = {'params_structure': hashlib.sha256(structure.encode()).hexdigest()[:16],
         'params': [sum(x) for x in zip(*(_signature(v) for _, v in flat), strict=True)]}
  keys = jax.random.split(jax.random.key(1), b)

  @jax.jit
  def outputs(params):  # one program (one compile)
    return {'terms': m.terms(params, x, jax.random.key(2)),
            'log_weights': m.log_weights(params, x, keys, 3, 1),
            'posterior_stats': m.posterior_stats(params, x),
            'reconstruct': m.reconstruct(params, x),
            'sample': m.sample(params, jax.random.key(3), 2)}

  for k, v in jax.tree_util.tree_flatten_with_path(outputs(params))[0]:
    out['/'.join(_names(k))] = _signature(v)
  return out


@pytest.mark.parametrize('name', list(BEFORE_THE_FLOW))
def test_without_a_flow_the_model_is_bitwise_what_it_was(name):
  assert _fingerprint_config(name).posterior_flow == 'none'
  got, want = fingerprint(name), BEFORE_THE_FLOW[name]
  assert set(got) == set(want)
  assert got['params_structure'] == want['params_structure']
  changed = {k: (got[k], v) for k, v in want.items() if k != 'params_structure'
             and not np.allclose(got[k], v, rtol=1e-5, atol=1e-5)}
  assert not changed, changed
