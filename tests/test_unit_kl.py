"""The unit statistics' KLs are the model's own: the VampPrior's aggregate KL is to its mixture
prior, and a hierarchy's KL per unit adds up to its KL term (through unit_statistics and the
K-sample estimator alike)."""

import jax
import numpy as np
import pytest

from tests.test_train import tiny_config
from vae_jax import data as data_lib
from vae_jax import evaluate as eval_lib
from vae_jax import experiment
from vae_jax.data.preprocess import preprocess

SPLIT = 'test[:256]'


def _setup(**fields):
  config = tiny_config(**fields)
  experiment.configure_jax(config)
  exp = experiment.build(config)
  arrays = data_lib.load_arrays(config.data, SPLIT)
  params = jax.jit(exp.model.init)(jax.random.key(0), np.zeros((1, *exp.image_shape),
                                                               np.float32))
  return config, exp, arrays, params


def _shift_means(params, shift):
  """Adds `shift` to the bias of every posterior-mean output: encodings far from N(0, I)."""
  def move(path, a):
    name = jax.tree_util.keystr(path)
    return a + shift if 'mean' in name and 'bias' in name else a
  return jax.tree_util.tree_map_with_path(move, params)


def test_vamp_prior_on_the_data_has_an_aggregate_kl_of_about_zero():
  """Pseudo-inputs equal to the split's examples make the prior the aggregate posterior q(h),
  so KL(q(h) || p(h)) = 0; the KL to N(0, I) of the shifted encodings is large and is reported
  apart, as aggregate_kl_standard."""
  config, exp, arrays, params = _setup(**{'model.vae.prior': 'vamp',
                                          'model.vae.num_pseudo_inputs': 256})
  x = np.asarray(preprocess(arrays['image'], arrays['index'], mode=config.data.preprocess,
                            data_seed=config.data_seed), np.float64)
  x = np.clip(x, 1e-6, 1 - 1e-6)
  params = dict(_shift_means(params, 3.0))
  params['pseudo_input_logits'] = np.log(x / (1 - x)).astype(np.float32)  # sigmoid -> x
  units = eval_lib.unit_statistics(exp, params, SPLIT, arrays=arrays)
  assert units['kl_per_unit_to'] == 'standard_normal'
  err = units['mutual_info_stderr']
  assert abs(units['aggregate_kl']) < max(0.5, 5 * err), units['aggregate_kl']
  assert units['aggregate_kl_standard'] > 10.0  # the shift: >= 3^2 / 2 per unit, 4 units
  report = eval_lib.estimate(exp, params, SPLIT, 0, arrays=arrays)
  assert abs(report['aggregate_kl']) < max(0.5, 5 * err)
  np.testing.assert_allclose(report['aggregate_kl_standard'], units['aggregate_kl_standard'],
                             rtol=1e-5)


HVAE = {'model.kind': 'hvae', 'model.hidden': (32,), 'model.hvae.width': 16,
        'model.latent_dim': 3, 'model.hvae.groups': (3, 3, 3)}


@pytest.fixture(scope='module')
def hierarchy():
  """The hierarchy, its split and perturbed parameters, built once: both cases only read them."""
  _, exp, arrays, params = _setup(**HVAE)
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(5)
  params = tree.unflatten([np.asarray(a) + 0.05 * rng.normal(size=a.shape).astype(np.float32)
                           for a in leaves])
  return exp, arrays, params


@pytest.mark.parametrize('num_samples', [None, 2])
def test_hierarchy_kl_per_unit_adds_up_to_its_kl_term(hierarchy, num_samples):
  """Priors that depend on the groups above (perturbed parameters, as training makes them): the
  per-unit KL on the sampled path of the evaluation keys sums to the reported kl, group by
  group, where the posterior-mean path does not."""
  exp, arrays, params = hierarchy
  report = eval_lib.estimate(exp, params, SPLIT, num_samples or 0, arrays=arrays)
  units = (eval_lib.unit_statistics(exp, params, SPLIT, arrays=arrays) if num_samples is None
           else report)
  kl = np.asarray(units['kl_per_unit'])
  assert kl.shape == (9,) and units['kl_per_unit_to'] == 'prior'
  np.testing.assert_allclose(kl.sum(), report['kl'], rtol=1e-5)
  for g in range(3):
    np.testing.assert_allclose(kl[3 * g:3 * g + 3].sum(), report[f'kl/{g}'], rtol=1e-4,
                               atol=1e-5)
