"""Model families. Each exposes the same contract (see `gaussian_vae.GaussianVAE`), so the
trainer, the evaluator, the pictures and the benchmark never branch on the family and never
see the number or shape of its latents.

`build_model(config.model, image_shape)` returns the family the config names; the Flax networks
it is made of live in `networks`.
"""

from vae_jax.models.gaussian_vae import GaussianVAE, build_model
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

__all__ = [
    'DECODERS',
    'ENCODERS',
    'LIKELIHOODS',
    'POSTERIORS',
    'VAE',
    'ConvDecoder',
    'ConvEncoder',
    'GaussianVAE',
    'LikelihoodSpec',
    'MLPDecoder',
    'MLPEncoder',
    'PosteriorHead',
    'build_model',
    'scale_tril_from_raw',
    'stage_sizes',
    'to_float_input',
]
