"""Sweeps as data: vae_jax.sweep.hyper's combinators, point names, and points applied to configs."""

import os
import re

import pytest

from configs import default
from vae_jax import sweep
from vae_jax.config import validation
from vae_jax.storage import writers as metrics
from vae_jax.sweep import hyper

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sweep_product_zip_chain():
  a = hyper.sweep('objective.beta', [0.5, 1.0])
  b = hyper.sweep('seed', [0, 1, 2])
  assert a == [{'objective.beta': 0.5}, {'objective.beta': 1.0}]
  prod = hyper.product(a, b)
  assert len(prod) == 6
  assert prod[0] == {'objective.beta': 0.5, 'seed': 0}
  assert prod[1] == {'objective.beta': 0.5, 'seed': 1}  # the last sweep varies fastest
  zipped = hyper.zip(hyper.sweep('seed', [0, 1]), hyper.sweep('data_seed', [5, 6]))
  assert zipped == [{'seed': 0, 'data_seed': 5}, {'seed': 1, 'data_seed': 6}]
  assert hyper.chain(a, b) == a + b
  assert hyper.product(hyper.fixed('seed', 3), a)[1] == {'seed': 3, 'objective.beta': 1.0}


def test_combinator_errors():
  with pytest.raises(hyper.SweepError, match='different lengths'):
    hyper.zip(hyper.sweep('seed', [0, 1]), hyper.sweep('data_seed', [0]))
  with pytest.raises(hyper.SweepError, match='twice'):
    hyper.product(hyper.sweep('seed', [0]), hyper.sweep('seed', [1]))
  with pytest.raises(hyper.SweepError, match='no values'):
    hyper.sweep('seed', [])


def test_point_names_safe_deterministic_unique():
  assert hyper.point_name({'objective.beta': 0.5, 'seed': 1}) == 'beta=0.5_seed=1'
  assert hyper.point_name({'seed': 1, 'objective.beta': 0.5}) == 'beta=0.5_seed=1'
  weird = {'init_from': '/a b/../c', 'model.hidden': (32, 64)}
  name = hyper.point_name(weird)
  assert re.fullmatch(r'[A-Za-z0-9._=+-]+', name), name
  assert '/' not in name and name == hyper.point_name(dict(weird))
  # Shortened keys that collide fall back to the full keys.
  names = hyper.point_names([{'optim.name': 'adam'}, {'objective.name': 'adam'}])
  assert names == ['optim.name=adam', 'objective.name=adam']
  # Values that render alike fall back to a hash suffix.
  names = hyper.point_names([{'init_from': 'a/b'}, {'init_from': 'a b'}])
  assert len(set(names)) == 2
  with pytest.raises(hyper.SweepError, match='more than once'):
    hyper.point_names([{'seed': 1}, {'seed': 1}])


def test_apply_point_to_locked_config():
  base = default.get_config()
  config = hyper.apply_point(base, {'objective.beta': 2, 'model.hidden': [64, 32],
                                    'data.preprocess': 'threshold'})
  assert config.is_locked
  assert isinstance(config.objective.beta, float) and config.objective.beta == 2.0
  assert config.model.hidden == (64, 32)
  assert base.objective.beta == 1.0  # a copy
  validation.validate_config(config)


@pytest.mark.parametrize('point, match', [
    ({'objective.betaa': 1.0}, "no field 'objective.betaa'"),
    ({'nosuch.beta': 1.0}, 'config.nosuch is not a config section'),
    ({'objective': 1.0}, 'is a section'),
    ({'objective.beta': 'big'}, "key 'objective.beta'.*does not fit.*float"),
    ({'num_train_steps': 1.5}, "key 'num_train_steps'.*does not fit.*int"),
    ({'model.hidden': 32}, "key 'model.hidden'.*tuple"),
    ({'data.download': 1}, "key 'data.download'.*bool"),
])
def test_apply_point_errors_name_point_and_key(point, match):
  with pytest.raises(hyper.SweepError, match=match) as info:
    hyper.apply_point(default.get_config(), point)
  assert repr(point) in str(info.value)


def test_config_digest_equals_metrics_digest():
  config = hyper.apply_point(default.get_config(), {'objective.beta': 0.25})
  assert hyper.config_digest(config) == metrics.config_digest(config)


def test_config_flags_render_overrides():
  flags = hyper.config_flags({'objective.beta': 0.5, 'model.hidden': (32,), 'init_from': ''})
  assert flags == ['--config.init_from=', '--config.model.hidden=(32,)',
                   '--config.objective.beta=0.5']


def test_shipped_beta_sweep_is_valid():
  path = os.path.join(REPO, 'configs', 'sweep_sprites_beta.py')
  module = sweep.load_config_file(path)
  points = sweep.sweep_points(module, path)
  assert len(points) == 8
  assert len(set(hyper.point_names(points))) == 8
  for point in points:
    validation.validate_config(hyper.apply_point(module.get_config(), point))
