"""vae_jax: variational autoencoders in JAX/Flax, the derived ELBO made measurable.

Importing the package is cheap (no TensorFlow, no compilation); submodules load on use.
"""

__version__ = '0.1.0'
