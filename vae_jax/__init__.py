"""vae_jax: variational autoencoders in JAX/Flax, the derived ELBO made measurable.

Importing the package is cheap (no TensorFlow, no compilation); submodules load on use.
"""

__version__ = '0.1.0'


def load_run(workdir, step=None, device=None):
  """A run's config, model and state from its workdir (see vae_jax.analysis.load_run)."""
  from vae_jax import analysis
  return analysis.load_run(workdir, step=step, device=device)
