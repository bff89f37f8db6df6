"""Model families behind one contract (contract.py): the trainer, the estimator, the pictures
and the benchmark never branch on the family and never see the number or shape of its latents.

`build_model(config.model, image_shape)` builds the family that config.model.kind names: 'vae'
(models/vae.py over gaussian_vae.py: one stochastic layer, N(0, I) or a VampPrior), 'hvae'
(models/hvae.py over hierarchical.py: the top-down hierarchy), or a researcher's own family
module given by its import path. The Flax networks they are made of live in `networks`.
Importing this package loads no JAX (validation reads families' declarations through it).
"""

from vae_jax.models.contract import (
    BUILTIN,
    Capabilities,
    Model,
    UnknownFamilyError,
    build_model,
    capabilities,
    family,
    family_config,
)

__all__ = ['BUILTIN', 'Capabilities', 'Model', 'UnknownFamilyError', 'build_model',
           'capabilities', 'family', 'family_config']
