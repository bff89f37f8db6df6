"""Real training on the generated sprites: steps, fusion, device-count invariance, resume."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_config import ROOT, load_config
from vae_jax import evaluate as eval_lib
from vae_jax import experiment, sharding, train
from vae_jax.storage import writers as metrics_lib


def tiny_config(**overrides):
  """A small, fast sprites config (2 of the 8 fake devices split batch 32 into 16 per device)."""
  c = load_config('default')
  c.batch_size = 32
  c.eval_batch_size = 512
  c.num_train_steps = 20
  c.steps_per_call = 5
  c.log_every_steps = 5
  c.eval_every_steps = 20
  c.checkpoint_every_steps = 10
  c.model.hidden = (64,)
  c.model.latent_dim = 4
  c.images.num = 16
  c.compilation_cache = ''
  c.checkpoint.async_save = False
  # Two of the 8 test devices: every run is sharded (a batch split over devices, the gradient
  # all-reduced) at a quarter of the 8-way runs' per-device overhead (a tiny run: 3.7 s of CPU
  # against 4.4). Tests about the device count say mesh.data=-1 (all 8) or 1 themselves.
  c.mesh.data = 2
  return set_fields(c, **overrides)


def set_fields(config, **overrides):
  """config with dotted-key overrides applied ('model.latent_dim': 6)."""
  for k, v in overrides.items():
    node = config
    *parents, leaf = k.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = v
  return config


def build(config):
  experiment.configure_jax(config)
  return experiment.build(config)


def run_chunks(config, num_chunks):
  """Trains num_chunks fused calls from scratch; returns (state, per-chunk mean losses, fn)."""
  exp = build(config)
  state = experiment.init_state(exp)
  feeder = train.ChunkFeeder(exp, 0)
  fn = train.jit_train_chunk(exp, config.data.backend)
  losses = []
  for i in range(num_chunks):
    source, index = feeder(i * config.steps_per_call)
    state, m = fn(state, source, index)
    losses.append(float(m['loss']) / config.steps_per_call)
  return state, np.asarray(losses), fn


def test_train_steps_lower_the_loss_and_compile_once():
  config = tiny_config(steps_per_call=10)
  _, losses, fn = run_chunks(config, 6)
  assert losses[-1] < 0.8 * losses[0], losses
  assert fn._cache_size() == 1  # one compile for all calls


def test_fused_chunk_matches_single_steps():
  fused, _, _ = run_chunks(tiny_config(steps_per_call=4, **{'mesh.data': 1}), 1)
  single, _, _ = run_chunks(tiny_config(steps_per_call=1, **{'mesh.data': 1}), 4)
  assert int(fused.step) == int(single.step) == 4
  for a, b in zip(jax.tree.leaves(fused.params), jax.tree.leaves(single.params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(fused.loss_momentum, single.loss_momentum, rtol=1e-5)


def test_one_and_eight_devices_give_the_same_losses():
  assert jax.device_count() == 8
  _, one, _ = run_chunks(tiny_config(steps_per_call=1, **{'mesh.data': 1}), 20)
  _, eight, _ = run_chunks(tiny_config(steps_per_call=1, **{'mesh.data': -1}), 20)
  np.testing.assert_allclose(one, eight, rtol=1e-4)


def test_sharded_gradient_is_the_global_mean_gradient():
  """On 8 devices the jitted step's gradient is that of the mean over the whole global batch
  (not a per-device mean, nor a sum over devices), equal to the one-device computation."""
  exp = build(tiny_config(**{'mesh.data': -1}))
  assert exp.mesh.shape['data'] == 8
  state = experiment.init_state(exp)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((32, 32, 32, 1)) < 0.3, jnp.float32)
  key = jax.random.key(3)
  grad_fn = jax.value_and_grad(train.make_loss_fn(exp.model, exp.config.objective), has_aux=True)
  x_sharded = jax.device_put(x, sharding.batch_sharding(exp.mesh))
  (_, means), grads = jax.jit(grad_fn)(state.params, x_sharded, key, state.hparams, state.step)

  params = jax.device_get(state.params)
  one = jax.devices()[0]
  mean_loss = lambda p: jnp.mean(exp.model.terms(p, x, key)['neg_elbo'])
  with jax.default_device(one):
    want_loss, want = jax.jit(jax.value_and_grad(mean_loss))(params)
  np.testing.assert_allclose(means['loss'], want_loss, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


def test_momentum_tracked_loss_follows_its_formula():
  config = tiny_config(steps_per_call=1, loss_momentum_gamma=0.9, **{'mesh.data': 1})
  exp = build(config)
  state = experiment.init_state(exp)
  feeder = train.ChunkFeeder(exp, 0)
  fn = train.jit_train_chunk(exp, 'memory')
  tracked = None
  for i in range(5):
    source, index = feeder(i)
    state, m = fn(state, source, index)
    batch_loss = float(m['loss'])
    tracked = batch_loss if tracked is None else 0.9 * tracked + 0.1 * batch_loss
    np.testing.assert_allclose(float(state.loss_momentum), tracked, rtol=1e-5)


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
  """One small real run through train_and_evaluate, shared by the tests that read a workdir."""
  workdir = str(tmp_path_factory.mktemp('run'))
  result = train.train_and_evaluate(tiny_config(), workdir)
  return workdir, result


def test_train_and_evaluate_writes_the_workdir(trained_workdir):
  workdir, result = trained_workdir
  for name in ('config.json', 'config_history.jsonl', 'run.json', 'metrics.jsonl', 'DONE',
               'checkpoints', 'images', 'tensorboard'):
    assert os.path.exists(os.path.join(workdir, name)), name
  done = json.load(open(os.path.join(workdir, 'DONE')))
  assert done == train.done_record(tiny_config(), 20)
  train_recs = metrics_lib.read_metrics(workdir, 'train')
  assert [r['step'] for r in train_recs] == [5, 10, 15, 20]
  for key in ('loss', 'loss_momentum', 'neg_elbo', 'recon', 'kl', 'learning_rate', 'grad_norm',
              'images_per_sec'):
    assert np.isfinite(train_recs[-1][key]), key
  evals = {r['split']: r for r in metrics_lib.read_metrics(workdir, 'eval') if r['step'] == 20}
  config = tiny_config()
  assert set(evals) == {config.data.valid_split, config.data.eval_split}
  from vae_jax import data
  info = data.dataset_info(config.data)
  for split, ev in evals.items():
    np.testing.assert_allclose(ev['neg_elbo'], ev['recon'] + ev['kl'], rtol=1e-6)
    assert 0 < ev['neg_elbo_stderr'] < 0.2 * ev['neg_elbo']
    # The whole split, exactly once (eval batches of 512 leave a padded remainder).
    assert ev['num_examples'] == info.split_size(split)
    assert ev['num_examples'] % 512 != 0
  assert result['eval'][config.data.eval_split]['neg_elbo'] == evals['test']['neg_elbo']
  images = sorted(os.listdir(os.path.join(workdir, 'images')))
  for name in ('reconstructions', 'prior_means', 'prior_samples'):
    assert f'{name}_step_20.png' in images, images
  assert json.load(open(os.path.join(workdir, 'config.json')))['batch_size'] == 32


def test_evaluation_does_not_depend_on_batch_size_or_devices(trained_workdir):
  _, result = trained_workdir
  params = jax.device_get(result['state'].params)
  numbers = []
  for eval_batch, mesh_data in ((512, -1), (1000, 1)):
    config = tiny_config(eval_batch_size=eval_batch, **{'mesh.data': mesh_data})
    numbers.append(eval_lib.evaluate(build(config), params, 'test'))
  for key in ('neg_elbo', 'recon', 'kl'):
    np.testing.assert_allclose(numbers[0][key], numbers[1][key], rtol=1e-5)
  assert numbers[0]['num_examples'] == numbers[1]['num_examples']


def test_the_eval_step_compiles_once_for_every_split_and_evaluation(trained_workdir):
  # Splits of different sizes pad their last batch to the same shape: one program serves all.
  _, result = trained_workdir
  exp = result['experiment']
  params = result['state'].params
  step_fn = eval_lib.jit_eval_step(exp)
  compiles = []
  listener = lambda event, duration, **kw: compiles.append(event) if 'compile' in event else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    eval_lib.evaluate(exp, params, 'test', eval_step=step_fn)
    assert compiles  # the listener sees the one compile
    compiles.clear()
    for split in ('test', exp.config.data.valid_split, 'train[:700]'):
      eval_lib.evaluate(exp, params, split, eval_step=step_fn)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert not compiles, compiles


def test_resume_continues_exactly(tmp_path):
  straight = train.train_and_evaluate(tiny_config(), str(tmp_path / 'a'))
  first = train.train_and_evaluate(tiny_config(num_train_steps=10), str(tmp_path / 'b'))
  assert first['step'] == 10
  resumed = train.train_and_evaluate(tiny_config(), str(tmp_path / 'b'))
  assert resumed['step'] == 20
  pairs = zip(jax.tree.leaves(straight['state']), jax.tree.leaves(resumed['state']), strict=True)
  for a, b in pairs:
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_with_a_different_model_is_an_error(trained_workdir, tmp_path):
  from vae_jax.config.compat import IncompatibleCheckpointError
  workdir, _ = trained_workdir
  with pytest.raises(IncompatibleCheckpointError, match='model'):
    train.train_and_evaluate(tiny_config(num_train_steps=30, **{'model.latent_dim': 6}), workdir)


@pytest.mark.slow
def test_readme_quickstart_command_runs(tmp_path):
  """The README's first command (with few steps) so it cannot rot."""
  workdir = tmp_path / 'quick'
  cmd = [sys.executable, 'scripts/train.py', '--config=configs/default.py',
         f'--workdir={workdir}', '--config.num_train_steps=20', '--config.steps_per_call=10',
         '--config.log_every_steps=10', '--config.eval_every_steps=20',
         '--config.checkpoint_every_steps=20', '--config.compilation_cache=']
  readme = open(os.path.join(ROOT, 'README.md')).read()
  assert 'python scripts/train.py --config=configs/default.py --workdir=' in readme
  # One device: what this checks is the command, not the device count (8 compile slower).
  env = dict(os.environ, XLA_FLAGS=os.environ['XLA_FLAGS'].replace(
      'device_count=8', 'device_count=1'))
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  last = json.loads(proc.stdout.strip().splitlines()[-1])
  assert last['step'] == 20 and np.isfinite(last['neg_elbo'])
  # Piped output: plain progress lines, no progress-bar redraws.
  assert 'step 10/20: loss ' in proc.stdout and '\r' not in proc.stdout + proc.stderr
  assert (workdir / 'DONE').exists()
  assert (workdir / 'images' / 'prior_samples_step_20.png').exists()


@pytest.mark.slow
def test_stream_and_memory_back_ends_train_deterministically_and_alike():
  stream = tiny_config(steps_per_call=10, **{'data.backend': 'stream', 'data.shuffle_buffer': 4096})
  _, first, _ = run_chunks(stream, 6)
  _, again, _ = run_chunks(stream, 6)
  np.testing.assert_array_equal(first, again)
  _, memory, _ = run_chunks(tiny_config(steps_per_call=10), 6)
  assert first[-1] < 0.8 * first[0] and memory[-1] < 0.8 * memory[0]
  assert abs(first[-1] - memory[-1]) < 0.15 * memory[-1], (first, memory)
