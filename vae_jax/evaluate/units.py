"""Per-unit statistics of q(h|x) over a whole split: the KL per unit, active units, the mutual
information I(x; h) and the aggregate KL against the model's own prior."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import sharding
from vae_jax.data.preprocess import preprocess
from vae_jax.evaluate import batches
from vae_jax.maths import streams

# Active units (Burda et al. 2016): a unit is active when Var_x E_q[h_d] exceeds this.
ACTIVE_UNIT_THRESHOLD = 0.01
# Mixture components of q(h) = mean_x q(h|x) per step of the mutual-information scan.
_MI_BLOCK = 256
# At most this many examples draw the h of the mutual-information estimate (spread evenly over
# the split); the mixture q(h) always has every example of the split.
MI_MAX_SAMPLES = 10_000


def _posterior_stats_fn(exp, kl):
  config, model = exp.config, exp.model

  def stats(params, key, images, index, mask, split):
    x = preprocess(images, index, mode=config.data.preprocess, data_seed=config.data_seed,
                   split=split)
    # {'mean', 'var'}: [B, U]; a flow's moments are sampled with the example's own keys.
    s = model.posterior_stats(params, x, streams.eval_keys_at(key, index))
    out = {'mean': s['mean'], 'var': s['var'], 'index': index, 'mask': mask}
    if kl:  # the model's own KL term at the evaluation keys, as `evaluate` reports it
      terms = model.terms(params, x, streams.eval_keys_at(key, index))
      out['kl'] = terms['kl']  # [B]
      if 'kl_units' in terms:
        out['kl_units'] = terms['kl_units']  # [B, U]
    return out

  return stats


def jit_unit_statistics_fn(exp, kl=True):
  """unit_statistics' per-batch program, compiled once and passed back as its `fn`.

  kl=False leaves out the model's KL terms (a decoder pass): only the posterior moments, for
  the active units alone.
  """
  return batches.jit_batch_fn(exp, _posterior_stats_fn(exp, kl))


def unit_statistics(exp, params, split, *, arrays=None, mutual_info=True, fn=None):
  """Per-unit statistics of q(h|x) over the whole split, each a number of the model's own.

  With m(x), v(x) the marginal mean and variance of unit d under q(h|x) (model.posterior_stats)
  and the model's terms at the evaluation keys (those `evaluate` reports):
    kl_per_unit[d]: where the family gives a per-unit KL (terms' kl_units [B, U]: each unit's
      KL to the model's own prior; a hierarchy's on the sampled path, to p(z_l | z_above)),
      its mean over the split, so the units add up to the reported kl exactly
      (kl_per_unit_to = 'prior'). Otherwise the KL of q's marginal to N(0, 1),
      mean_x 0.5 (m^2 + v - 1 - log v): under a standard prior with a full-covariance
      posterior (still 'prior'; the sum is at most the KL, which also counts the units'
      correlations), and under the VampPrior, whose mixture does not split over units
      ('standard_normal');
    mean_var[d] = Var_x m_d(x) (over the split's examples, ddof 0);
    active_units = #{d: mean_var[d] > 0.01} (Burda et al. 2016), and active_units_per_group
      the same count within each of model.unit_groups (top first).
  mutual_info estimates I(x; h) with x uniform over the split's N examples and h ~ q(h|x), so
  the aggregate posterior q(h) = (1/N) sum_j q(h|x_j) is an exact mixture (no minibatch
  log-mean-exp): for examples i (all of them, or MI_MAX_SAMPLES spread evenly) one draw
  h_i ~ q(h|x_i) gives log q(h_i|x_i) - log q(h_i), whose mean is unbiased for this I, with a
  standard error. This I is at most log N, and as an estimate of the population's I(x; h) it
  is biased low once the posteriors of different examples barely overlap (it saturates at
  log N); the usual minibatch estimator (mixture over a batch of M) saturates at log M.
  `aggregate_kl` = mean kl - mutual_info = KL(q(h) || p(h)) to the model's prior (ELBO
  surgery, Hoffman and Johnson 2016), from the model's own kl term; where the prior is not
  N(0, I) (the VampPrior) `aggregate_kl_standard` = KL(q(h) || N(0, I)) beside it. They need
  q(h|x) to be the Gaussian N(m, diag(v)) (`model.capabilities.diagonal_posterior`); otherwise
  None.
  A `fn` of jit_unit_statistics_fn(exp, kl=False) leaves every KL field None.

  Returns:
    {'kl_per_unit': [U], 'kl_per_unit_to', 'mean_var': [U], 'active_units': int,
     'active_units_per_group': [int], 'mutual_info', 'mutual_info_stderr',
     'aggregate_kl', 'aggregate_kl_standard', 'num_examples', 'split'} (numpy arrays and
     floats).
  """
  fn = fn or jit_unit_statistics_fn(exp)
  params, key = jax.device_put(params, sharding.replicated(exp.mesh)), batches.eval_root(exp)
  parts = [batches.kept(fn(params, key, *g))
           for _, g in batches.global_batches(exp, split, arrays, exp.config.eval_batch_size)]
  stats = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  return {'split': split, **unit_summary(exp, stats['mean'], stats['var'], stats['index'],
                                         mutual_info, kl=stats.get('kl'),
                                         kl_units=stats.get('kl_units'))}


def unit_summary(exp, mean, var, index, mutual_info=True, kl=None, kl_units=None):
  """unit_statistics' numbers from every example's posterior mean and variance [N, U], the
  model's kl [N] (None: no KL fields) and its per-unit KL [N, U] where it gives one."""
  mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
  with np.errstate(invalid='ignore', divide='ignore'):  # a diverged run's stats stay nan
    kl_standard = 0.5 * (np.square(mean) + var - 1.0 - np.log(var))  # [N, U]: to N(0, 1)
  standard_prior = exp.model.capabilities.standard_prior
  mean_var = np.var(mean, axis=0)  # [U]
  active = mean_var > ACTIVE_UNIT_THRESHOLD  # [U]
  bounds = np.cumsum((0, *exp.model.unit_groups))
  out = {
      'num_examples': int(mean.shape[0]),
      'kl_per_unit': None, 'kl_per_unit_to': None,
      'mean_var': mean_var,
      'active_units': int(np.sum(active)),
      'active_units_per_group': [int(np.sum(active[a:b]))
                                 for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
      'mutual_info': None, 'mutual_info_stderr': None, 'aggregate_kl': None,
      'aggregate_kl_standard': None,
  }
  if kl is None:
    return out
  if kl_units is not None:
    out['kl_per_unit'], out['kl_per_unit_to'] = np.asarray(kl_units, np.float64).mean(0), 'prior'
  else:
    # What kl_per_unit measures the distance to: the model's prior, or N(0, 1) where the prior
    # does not split over units (the VampPrior's mixture).
    out['kl_per_unit'] = kl_standard.mean(axis=0)
    out['kl_per_unit_to'] = 'prior' if standard_prior else 'standard_normal'
  if mutual_info and exp.model.capabilities.diagonal_posterior:
    mi = mutual_information(exp.mesh, mean.astype(np.float32), var.astype(np.float32), index,
                            exp.config.seed)
    out['mutual_info'], out['mutual_info_stderr'] = batches.mean_and_stderr(mi)
    out['aggregate_kl'] = float(np.mean(np.asarray(kl, np.float64))) - out['mutual_info']
    if not standard_prior:
      out['aggregate_kl_standard'] = (float(kl_standard.sum(axis=1).mean())
                                      - out['mutual_info'])
  return out


def mutual_information(mesh, mean, var, index, seed, max_samples=MI_MAX_SAMPLES):
  """Per-draw terms log q(h_i|x_i) - log q(h_i) of I(x; h) (see unit_statistics): [M].

  Args:
    mesh: the draws are split over its data axis; the mixture is replicated.
    mean, var: [N, U] of the diagonal Gaussians q(h|x_j), every example of the split.
    index: [N] the examples' indices in their split: example i's draw uses the evaluation key
      of (seed, index_i), folded with sample 0.
    seed: the run's seed.
    max_samples: at most this many draws, from examples spread evenly over the split.
  """
  n, u = mean.shape
  rows = np.arange(n) if n <= max_samples else np.linspace(0, n - 1, max_samples).astype(int)
  devices = sharding.data_axis_size(mesh)
  m_pad = -(-len(rows) // devices) * devices  # draws: a multiple of the device count
  j_pad = -(-n // _MI_BLOCK) * _MI_BLOCK  # mixture components: whole blocks
  pad = lambda a, size, value: np.concatenate(
      [a, np.full((size - len(a),) + a.shape[1:], value, a.dtype)])
  own = pad(rows, m_pad, 0)
  comp = {'mean': pad(mean, j_pad, 0.0).reshape(-1, _MI_BLOCK, u),
          'var': pad(var, j_pad, 1.0).reshape(-1, _MI_BLOCK, u),
          'valid': (np.arange(j_pad) < n).reshape(-1, _MI_BLOCK)}

  def log_q(h, m, v):
    """log N(h_i; m_j, diag v_j) for h [M, U] and m, v [J, U]: [M, J]."""
    z2 = jnp.sum(jnp.square(h[:, None, :] - m[None]) / v[None], axis=-1)
    return -0.5 * (z2 + jnp.sum(jnp.log(v), axis=-1)[None] + u * math.log(2 * math.pi))

  def terms(key, own_mean, own_var, own_index, comp):
    keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(streams.eval_keys_at(key, own_index))
    eps = jax.vmap(lambda k: jax.random.normal(k, (u,)))(keys)  # [M, U]
    h = own_mean + jnp.sqrt(own_var) * eps  # [M, U]
    # log q(h_i|x_i) the way the mixture computes its own term, so each term is <= log N up to
    # the rounding of the log-sum-exp.
    log_own = -0.5 * (jnp.sum(jnp.square(h - own_mean) / own_var + jnp.log(own_var), -1)
                      + u * math.log(2 * math.pi))

    def block(lse, c):
      lq = jnp.where(c['valid'][None], log_q(h, c['mean'], c['var']), -jnp.inf)  # [M, J]
      return jnp.logaddexp(lse, jax.nn.logsumexp(lq, axis=1)), None

    lse, _ = jax.lax.scan(block, jnp.full(h.shape[:1], -jnp.inf), comp)  # [M]
    return log_own - (lse - math.log(n))  # [M]

  rep, bat = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  fn = jax.jit(terms, in_shardings=(rep, bat, bat, bat, rep), out_shardings=rep)
  out = fn(sharding.replicated_value(streams.eval_root, seed, mesh), mean[own], var[own],
           np.asarray(index)[own].astype(np.int32), comp)
  return np.asarray(jax.device_get(out))[:len(rows)]
