"""The update a train step applies is the textbook optax optimizer's, and the logged learning
rate is the one applied."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.test_train import build, tiny_config
from vae_jax import experiment, train
from vae_jax.data.preprocess import gather_images, preprocess

NUM_STEPS = 6
PEAK = 3e-2


def _textbook(config):
  """The optimizer as a user would build it from optax's own constructors."""
  o = config.optim
  if o.schedule == 'constant':
    lr = optax.constant_schedule(PEAK)
  else:
    lr = optax.warmup_cosine_decay_schedule(0.0, PEAK, o.warmup_steps, config.num_train_steps,
                                            0.0)
  opt = optax.adamw(lr, weight_decay=o.weight_decay) if o.name == 'adamw' else optax.adam(lr)
  if o.clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(o.clip_norm), opt)
  return opt, lr


@pytest.mark.parametrize('name', ['adam', 'adamw'])
@pytest.mark.parametrize('schedule', ['constant', 'warmup_cosine'])
@pytest.mark.parametrize('clip', [0.0, 5.0])
def test_train_steps_equal_the_textbook_optax_optimizer(name, schedule, clip):
  config = tiny_config(steps_per_call=1, num_train_steps=10, **{
      'mesh.data': 1, 'optim.name': name, 'optim.schedule': schedule,
      'optim.warmup_steps': 4, 'optim.clip_norm': clip, 'optim.learning_rate': PEAK,
      'optim.weight_decay': 0.1})
  exp = build(config)
  state = experiment.init_state(exp)
  feeder = train.ChunkFeeder(exp, 0)
  chunk = train.jit_train_chunk(exp, 'memory')
  opt, lr = _textbook(config)
  opt_state = opt.init(jax.device_get(state.params))
  logged = []

  @jax.jit
  def grads_at(params, x, key):
    return jax.grad(lambda p: jnp.mean(exp.model.terms(p, x, key)['neg_elbo']))(params)

  for step in range(NUM_STEPS):
    source, (positions, index) = feeder(step)
    # The same batch and noise the real step draws.
    x = preprocess(gather_images(source, positions[0]), index[0], mode=config.data.preprocess,
                   data_seed=config.data_seed, epoch=step // exp.steps_per_epoch)
    # The textbook update from the step's own parameters: only the optimizer maths differ.
    params = jax.device_get(state.params)
    updates, opt_state = opt.update(grads_at(params, x, state.train_key()), opt_state, params)
    params = optax.apply_updates(params, updates)
    state, metrics = chunk(state, source, (positions, index))
    logged.append(float(metrics['learning_rate']))
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params), strict=True):
      np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6, err_msg=f'step {step}')
  np.testing.assert_allclose(logged, [float(lr(s)) for s in range(NUM_STEPS)], rtol=1e-6)
