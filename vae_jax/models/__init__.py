"""Model families. Each exposes the same contract (see `gaussian_vae.GaussianVAE`), so the
trainer, the evaluator, the pictures and the benchmark never branch on the family and never
see the number or shape of its latents.

`build_model(config.model, image_shape)` returns the family config.model.kind names (MODEL_KINDS:
'vae' the single-layer `gaussian_vae`, 'hvae' the top-down `hierarchical` one); the Flax networks
they are made of live in `networks`.
"""

import jax.numpy as jnp

from vae_jax.config import names
from vae_jax.models import gaussian_vae, hierarchical
from vae_jax.models.gaussian_vae import GaussianVAE
from vae_jax.models.hierarchical import HierarchicalVAE, soft_clamp
from vae_jax.models.networks import (
    DECODERS,
    ENCODERS,
    LIKELIHOODS,
    POSTERIORS,
    VAE,
    ConvDecoder,
    ConvEncoder,
    LikelihoodSpec,
    MLPDecoder,
    MLPEncoder,
    PosteriorHead,
    scale_tril_from_raw,
    stage_sizes,
    to_float_input,
)

MODEL_KINDS = names.MODEL_KINDS
_BUILDERS = {'vae': gaussian_vae.build_model, 'hvae': hierarchical.build_model}


def build_model(model_cfg, image_shape, x_dtype=jnp.float32):
  """The model family config.model.kind names, for images of image_shape."""
  # A run saved before model.kind existed was a 'vae' (load_run rebuilds from its saved config).
  kind = model_cfg.get('kind', 'vae')
  if kind not in _BUILDERS:
    raise ValueError(f'Unknown model.kind {kind!r}; expected one of {MODEL_KINDS}.')
  return _BUILDERS[kind](model_cfg, image_shape, x_dtype)


__all__ = [
    'DECODERS',
    'ENCODERS',
    'LIKELIHOODS',
    'POSTERIORS',
    'VAE',
    'ConvDecoder',
    'ConvEncoder',
    'GaussianVAE',
    'HierarchicalVAE',
    'LikelihoodSpec',
    'MODEL_KINDS',
    'MLPDecoder',
    'MLPEncoder',
    'PosteriorHead',
    'build_model',
    'scale_tril_from_raw',
    'soft_clamp',
    'stage_sizes',
    'to_float_input',
]
