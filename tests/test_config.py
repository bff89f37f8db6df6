"""Every config loads and validates; every user mistake is a clear error before any compile."""

import glob
import importlib.util
import os
import subprocess
import sys
import time

import pytest

from vae_jax.config import validation
from vae_jax.config.validation import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '[!_]*.py')))


def load_config(name='default'):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_every_config_loads_and_validates(path):
  name = os.path.basename(path)[:-3]
  config = load_config(name)
  validation.validate_config(config, num_devices=1)
  # Each config's module docstring states its command and expected result.
  with open(path) as f:
    text = f.read()
  assert 'scripts/train.py' in text and 'xpected' in text


@pytest.mark.parametrize('field, value, match', [
    ('seed', 2**40, r'seed=.*\[0, 2\*\*31\)'),
    ('data_seed', -1, 'data_seed'),
    ('model.likelihood', 'bernouli', 'model.likelihood'),
    ('model.encoder', 'transformer', 'model.encoder'),
    ('model.posterior', 'lowrank', 'model.posterior'),
    ('data.preprocess', 'binarise', 'data.preprocess'),
    ('data.backend', 'disk', 'data.backend'),
    ('optim.name', 'sgd', 'optim.name'),
    ('batch_size', 0, 'batch_size'),
    ('model.latent_dim', -3, 'latent_dim'),
    ('eval_batch_size', 0, 'eval_batch_size'),
    ('log_every_steps', 150, 'multiple of config.steps_per_call'),
    ('num_train_steps', 3050, '3000 or 3100'),
    ('loss_momentum_gamma', 1.0, 'loss_momentum_gamma'),
    ('model.hidden', (), 'model.hidden'),
])
def test_bad_values_are_rejected_with_a_clear_message(field, value, match):
  config = load_config()
  node = config
  *parents, leaf = field.split('.')
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ConfigError, match=match):
    validation.validate_config(config)


def test_likelihood_and_preprocess_must_fit():
  config = load_config()
  config.model.likelihood = 'discretized_logistic'
  with pytest.raises(ConfigError, match='uint8'):
    validation.validate_config(config)


def test_batch_split_over_devices():
  config = load_config()
  config.batch_size = 100
  with pytest.raises(ConfigError, match='96 or 104'):
    validation.validate_config(config, num_devices=8)


def test_workdir_errors(tmp_path):
  f = tmp_path / 'afile'
  f.write_text('x')
  with pytest.raises(ConfigError, match='is a file'):
    validation.validate_workdir(str(f))
  assert validation.validate_workdir(str(tmp_path / 'new' / 'dir')).endswith('dir')


def _run_script(*args, timeout=60):
  t0 = time.perf_counter()
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'train.py'), *args],
                        capture_output=True, text=True, timeout=timeout, cwd=ROOT)
  return proc, time.perf_counter() - t0


@pytest.mark.parametrize('args, match', [
    (['--config.model.likelihood=nope'], 'model.likelihood'),
    (['--config.batch_size=0'], 'batch_size'),
    (['--config.data.name=no_such_dataset_xyz'], 'no_such_dataset_xyz'),
])
def test_script_reports_user_errors_without_traceback(tmp_path, args, match):
  proc, _ = _run_script('--config=configs/default.py', f'--workdir={tmp_path / "w"}', *args)
  assert proc.returncode != 0
  assert match in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_script_rejects_a_mistyped_override(tmp_path):
  proc, _ = _run_script('--config=configs/default.py', f'--workdir={tmp_path}',
                        '--config.modle.latent_dim=3')
  assert proc.returncode == 2
  assert 'modle' in proc.stderr and 'Did you mean "model"' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_script_rejects_a_workdir_that_is_a_file(tmp_path):
  f = tmp_path / 'afile'
  f.write_text('keep me')
  proc, _ = _run_script('--config=configs/default.py', f'--workdir={f}')
  assert proc.returncode == 2 and 'is a file' in proc.stderr
  assert f.read_text() == 'keep me'


def test_the_valid_names_have_one_home():
  """The code that implements each choice uses the names of vae_jax.config.names."""
  from vae_jax import models
  from vae_jax.config import names
  from vae_jax.data import checks
  from vae_jax.maths import likelihoods
  from vae_jax.models import networks
  assert likelihoods.LIKELIHOODS is names.LIKELIHOODS
  assert likelihoods.LOGISTIC_COUPLINGS is names.LOGISTIC_COUPLINGS
  assert tuple(models.BUILTIN) == names.MODEL_KINDS
  assert networks.ENCODERS is names.ENCODERS and networks.DECODERS is names.DECODERS
  assert networks.POSTERIORS is names.POSTERIORS
  assert checks.KNOWN_PREPROCESS is names.PREPROCESS
  assert checks.KNOWN_BACKENDS is names.BACKENDS
  assert validation.OPTIMIZERS is names.OPTIMIZERS
