"""Every posterior, every likelihood and the CIFAR-10 path train for real through the trainer;
the stream back end runs the whole loop (evaluation and pictures included)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_train import build, tiny_config
from vae_jax import evaluate as eval_lib
from vae_jax import experiment, train
from vae_jax.maths import objectives
from vae_jax.storage import writers as metrics_lib

CASES = {
    'diag': {},
    'full': {'model.posterior': 'full'},
    'shared_diag': {'model.shared_covariance': True},
    'shared_full': {'model.posterior': 'full', 'model.shared_covariance': True},
    'continuous_bernoulli': {'model.likelihood': 'continuous_bernoulli'},
    'gaussian': {'model.likelihood': 'gaussian'},
    'gaussian_fixed_sigma': {'model.likelihood': 'gaussian', 'model.learn_sigma': False},
    'discretized_logistic': {'model.likelihood': 'discretized_logistic',
                             'data.preprocess': 'uint8', 'model.logistic_mixtures': 2},
    'iwae': {'objective.name': 'iwae', 'objective.num_samples': 3},
    'free_bits_per_unit_with_warmup': {'objective.free_bits': 0.5,
                                       'objective.free_bits_per': 'unit',
                                       'objective.kl_warmup_steps': 2},
    # The cifar10 config's path: conv encoder and decoder, discretized logistic mixture on
    # 8-bit integers, warm-up + cosine, adamw, clipping.
    'cifar10_path': {'model.encoder': 'conv', 'model.decoder': 'conv',
                     'model.conv_channels': (8, 16), 'model.likelihood': 'discretized_logistic',
                     'model.logistic_mixtures': 2, 'data.preprocess': 'uint8',
                     'optim.name': 'adamw', 'optim.schedule': 'warmup_cosine',
                     'optim.warmup_steps': 1, 'optim.clip_norm': 1.0},
}


@pytest.mark.parametrize('case', list(CASES), ids=list(CASES))
def test_a_few_train_steps_update_every_parameter(case):
  # Residual blocks start as the identity (last conv zero), so their first conv gets a gradient
  # only once the last one has moved; with warm-up the first step's learning rate is 0.
  k = 4 if case == 'cifar10_path' else 2
  config = tiny_config(steps_per_call=k, num_train_steps=2 * k,
                       **{'mesh.data': 1, **CASES[case]})
  # run_chunks' one fused call, on the experiment built (and its data loaded) once.
  exp = build(config)
  state = experiment.init_state(exp)
  before = jax.device_get(state.params)
  source, index = train.ChunkFeeder(exp, 0)(0)
  state, m = train.jit_train_chunk(exp, config.data.backend)(state, source, index)
  losses = np.asarray([float(m['loss']) / k])
  assert int(state.step) == k and np.all(np.isfinite(losses)), losses
  assert int(state.nonfinite_total) == 0
  after = jax.device_get(state.params)
  leaves = jax.tree_util.tree_leaves_with_path(after)
  for (path, a), b in zip(leaves, jax.tree.leaves(before), strict=True):
    assert np.all(np.isfinite(a)), path
    assert not np.array_equal(a, b), f'{jax.tree_util.keystr(path)} did not change'


@pytest.mark.slow
def test_stream_back_end_runs_the_whole_loop(tmp_path):
  # One device: the back end, not the device count, is what this checks.
  config = tiny_config(num_train_steps=10, eval_every_steps=10,
                       **{'mesh.data': 1, 'data.backend': 'stream', 'data.shuffle_buffer': 2048})
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result['step'] == 10
  images = os.listdir(tmp_path / 'images')
  assert {'inputs.png', 'reconstructions_step_10.png', 'prior_samples_step_10.png'} <= set(images)
  # Exact evaluation does not depend on the back end that reads the split.
  memory = build(tiny_config(**{'mesh.data': 1}))
  params = jax.device_get(result['state'].params)
  for rec in metrics_lib.read_metrics(str(tmp_path), 'eval'):
    again = eval_lib.evaluate(memory, params, rec['split'])
    np.testing.assert_allclose(rec['neg_elbo'], again['neg_elbo'], rtol=1e-6)
    assert rec['num_examples'] == again['num_examples']


def test_iwae_with_one_sample_is_the_elbo_and_tightens_with_more():
  exp = build(tiny_config(**{'mesh.data': 1}))
  params = experiment.init_state(exp).params
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((8, *exp.image_shape)) < 0.2, jnp.float32)
  keys = jax.random.split(jax.random.key(5), 8)
  model, n = exp.model, 4000
  # Jitted: one program each, not op by op.
  lw = np.asarray(jax.jit(model.log_weights, static_argnums=3)(params, x, keys, n, 0))  # [n, 8]
  # K = 1, sample by sample: -log w = recon + log q(h|x) - log p(h), the single-sample ELBO
  # with a Monte Carlo KL. Its mean over samples is the negative ELBO, which the model's terms
  # (analytic KL) estimate with other samples.
  # One program over the n samples, each its own K = 1 bound (not n dispatches).
  iwae1 = np.asarray(jax.jit(jax.vmap(lambda w: objectives.iwae_terms(w[None])))(lw))  # [n, 8]
  np.testing.assert_array_equal(iwae1, -lw)
  other = jax.jit(jax.vmap(lambda k: model.terms(
      params, x, jax.vmap(jax.random.fold_in, (0, None))(keys, k + n))['neg_elbo']))(
          jnp.arange(n))  # [n, 8]
  other = np.asarray(other)
  stderr = np.sqrt(iwae1.var(0) / n + other.var(0) / n)
  np.testing.assert_array_less(np.abs(iwae1.mean(0) - other.mean(0)), 4 * stderr)
  # More samples give a tighter (lower) bound than the mean single-sample bound.
  iwae50 = np.asarray(objectives.iwae_terms(jnp.asarray(lw[:50])))
  assert np.all(iwae50 <= -lw[:50].mean(0) + 1e-3)
