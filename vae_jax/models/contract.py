"""The model contract: what every model family provides, what a family module declares, and
the family a config's `model.kind` names.

Written once, here, as types; everything downstream (the trainer, the estimator, unit
statistics, pictures, analysis, sweeps, validation) reads what a family declares and never tests
a kind's name. This module loads no JAX: validation and the sweep parent resolve a family and
read its declarations without it.

A family is a module (`Family`) with four functions and a name:
- `NAME`: the family's name, and the name of its sub-config `config.model.<NAME>`.
- `get_config()` -> ConfigDict of the family's own fields, each with a comment (configs/default.py
  places the built-in families' at `config.model.vae` and `config.model.hvae`; a researcher's
  config adds its family's with `c.model[NAME] = family.get_config()`).
- `validate(config)`: raises `config.validation.ConfigError` for a mistake in its own fields or
  in what it needs of the shared ones (`config.model.*`, the objective, the data).
- `capabilities(model_cfg)` -> `Capabilities`: what its terms and posterior offer, known from
  the config alone (validation's cross-family rules read it before anything is built).
- `build(model_cfg, image_shape, x_dtype)` -> a `Model`.

`model.kind` is a built-in family's name (BUILTIN: 'vae', 'hvae') or the importable module path
of a researcher's own (`--config.model.kind=my_project.iaf_family`): a new family is one new
file, with no library file edited. Built-in families keep their declarations in a JAX-free
module (models/vae.py, models/hvae.py) that imports its networks only inside `build`; a
researcher's one-file family may import JAX at the top (its validation then loads JAX).
"""

import dataclasses
import importlib
import typing

from vae_jax.config import names

# model.kind -> the module of a built-in family.
BUILTIN = {kind: f'vae_jax.models.{kind}' for kind in names.MODEL_KINDS}
_FAMILY_FUNCTIONS = ('get_config', 'validate', 'capabilities', 'build')


@dataclasses.dataclass(frozen=True)
class Capabilities:
  """What a family's terms and posterior offer (the contract's optional parts).

  Attributes:
    kl_units: `terms` carry `kl_units` [B, U], each latent unit's part of `kl` (summing to it
      exactly), the KL to the model's own prior: free bits per unit and the per-unit KL of the
      unit statistics read it.
    group_kl: `terms` carry `kl/<group>` [B] for each of several stochastic groups (summing to
      `kl`): free bits per group read them.
    diagonal_posterior: q(h|x) is exactly N(mean, diag(var)) of `posterior_stats` (the mutual
      information and the aggregate KL of the unit statistics need it).
    standard_prior: p(h) = N(0, I). Otherwise a family whose KL to N(0, I) is analytic reports it
      beside `kl` as `kl_standard` [B].
    description: one line a reader of a results page should know the model by.
    prior_description: what `sample` draws, for picture captions (T is the temperature).
    dreg: the model provides `dreg_log_weights` (see `Model`), so the importance-weighted bound
      can train with the doubly reparameterised gradient (objective.iwae_gradient=dreg).
  """

  kl_units: bool
  group_kl: bool
  diagonal_posterior: bool
  standard_prior: bool
  description: str
  prior_description: str
  dreg: bool = False


@typing.runtime_checkable
class Model(typing.Protocol):
  """A built model: pure functions of its parameters (keys in, never noise).

  Terms are per example, nats. Keys follow two conventions: one key for the whole batch
  (training: the batch's noise is drawn in the global view, so with jax_threefry_partitionable a
  sharded draw equals the unsharded one) or keys [B], one per example (evaluation: example i's
  sample k comes from fold_in(key_i, k), so batch size, padding and device count change nothing).
  """

  capabilities: Capabilities
  # Units of each stochastic group, top first, summing to U (one group for a single layer).
  unit_groups: tuple
  # Optional, not required: `sample_cost`, the decoder rows one sample of one example costs in
  # log_weights (evaluate.default_chunk_size divides its row budget by it; 1 when absent).
  # Optional, not required (declared by `Capabilities.dreg`): `dreg_log_weights(params, x, keys,
  # num_samples)` -> (log_w_theta [K, B], log_w_phi [K, B]), both with the value of
  # `log_weights(params, x, keys, num_samples, 0)`, for the doubly reparameterised gradient
  # (Tucker et al. 2019; maths/objectives.dreg_iwae_terms). log_w_theta carries gradients only
  # to the decoder's and prior's parameters (the sample h and q's parameters stopped); log_w_phi
  # only along the sample path h(phi, eps) (the decoder's parameters stopped, log q evaluated
  # at the live h with q's parameters stopped). Only valid where q's parameters reach log w
  # through h and log q alone (not a prior or a decoder that shares them).

  def init(self, key, x):
    """Parameters for inputs shaped like x [B, H, W, C]."""

  def terms(self, params, x, key):
    """{'recon', 'kl', 'neg_elbo', ...}: [B] each (plus the optional terms of `Capabilities`)."""

  def encode(self, params, x):
    """Per-example state that `log_weights` reuses across chunks (callers only pass it back)."""

  def log_weights(self, params, x, keys, num_samples, sample_offset=0, encoded=None):
    """log p(x|h) + log p(h) - log q(h|x): [K, B] for samples offset .. offset + K - 1 of each
    example; chunks at offsets 0, Kc, 2Kc, ... concatenate to the unchunked result."""

  def sample(self, params, key, n, temperature=1.0):
    """n prior draws decoded: {'means': E[x|h], 'samples': x ~ p(x|h)}, [n, H, W, C]."""

  def reconstruct(self, params, x):
    """E[x|h] at the posterior mean (or the family's most likely path): [B, H, W, C]."""

  def decode_mean(self, params, h):
    """E[x|h] for latents h [n, U] laid out as `posterior_stats`' units: [n, H, W, C]."""

  def posterior_stats(self, params, x, key=None):
    """{'mean': [B, U], 'var': [B, U]}: each unit's marginal mean and variance under q(h|x).

    key: for a posterior whose moments need samples (a flow); closed-form families ignore it.
    """


class Family(typing.Protocol):
  """A family module (see the module docstring)."""

  NAME: str

  def get_config(self): ...

  def validate(self, config): ...

  def capabilities(self, model_cfg) -> Capabilities: ...

  def build(self, model_cfg, image_shape, x_dtype) -> Model: ...


class UnknownFamilyError(ValueError):
  """model.kind names neither a built-in family nor an importable family module."""


def family(kind):
  """The family module that `model.kind` names (a built-in name or a module path)."""
  path = BUILTIN.get(kind, kind)
  if '.' not in path:
    raise UnknownFamilyError(
        f'config.model.kind={kind!r} is not a built-in model family ({", ".join(BUILTIN)}) and '
        'not a module path. Use one of those, or the dotted path of your own family module '
        '(e.g. --config.model.kind=my_project.my_family; see docs/model-families.md).')
  try:
    module = importlib.import_module(path)
  except ImportError as e:
    raise UnknownFamilyError(
        f'config.model.kind={kind!r}: the family module {path!r} cannot be imported ({e}). '
        'Check the spelling, and that its folder is on PYTHONPATH.') from None
  missing = [f for f in ('NAME', *_FAMILY_FUNCTIONS) if not hasattr(module, f)]
  if missing:
    raise UnknownFamilyError(
        f'config.model.kind={kind!r}: {path} is not a model family: it lacks '
        f'{", ".join(missing)} (a family module defines NAME, get_config, validate, '
        'capabilities and build; see vae_jax/models/contract.py).')
  return module


def family_config(model_cfg, kind=None):
  """The active family's sub-config `model_cfg[NAME]`, or a clear error where it is missing."""
  fam = family(model_cfg.kind if kind is None else kind)
  if fam.NAME not in model_cfg:
    raise UnknownFamilyError(
        f'config.model.kind={model_cfg.kind!r} reads its fields from config.model.{fam.NAME}, '
        f'which this config lacks: add `c.model.{fam.NAME} = <its module>.get_config()` to the '
        'config file.')
  return model_cfg[fam.NAME]


def capabilities(model_cfg):
  """The Capabilities of the family model_cfg.kind names, from the config alone."""
  return family(model_cfg.kind).capabilities(model_cfg)


def build_model(model_cfg, image_shape, x_dtype=None):
  """The model the config's family builds for images of image_shape (x_dtype: the model
  input's dtype, float32 unless the data are 8-bit integers)."""
  fam = family(model_cfg.kind)
  model = fam.build(model_cfg, tuple(image_shape), x_dtype)
  if not isinstance(model, Model):
    missing = [n for n in ('capabilities', 'unit_groups', 'init', 'terms', 'encode',
                           'log_weights', 'sample', 'reconstruct', 'decode_mean',
                           'posterior_stats') if not hasattr(model, n)]
    raise TypeError(f'model.kind={model_cfg.kind!r} built a {type(model).__name__}, which does '
                    f'not provide the model contract: it lacks {", ".join(missing)}.')
  return model
