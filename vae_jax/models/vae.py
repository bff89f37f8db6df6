"""The single-layer family (model.kind=vae): its config fields, validation, capabilities and
builder, without JAX (the networks and the contract are in gaussian_vae.py, imported by `build`).

One stochastic layer h: q(h|x) Gaussian (diagonal or full covariance), optionally followed by
an inverse autoregressive flow (model.posterior_flow=iaf), p(h) = N(0, I) or the VampPrior
(Tomczak and Welling 2018) over learned pseudo-inputs.
"""

import ml_collections

NAME = 'vae'
PRIORS = ('standard', 'vamp')


def get_config():
  """config.model.vae: the fields only this family reads."""
  c = ml_collections.ConfigDict()
  # The prior p(h): standard (N(0, I), the analytic KL) | vamp (the VampPrior of Tomczak and
  # Welling 2018, (1/K) sum_k q(h|u_k) over K learned pseudo-inputs u_k; kl is then the
  # one-sample estimate log q(h|x) - log p(h), and kl_standard the analytic KL to N(0, I),
  # reported beside it).
  c.prior = 'standard'
  # VampPrior: K pseudo-inputs (read only with prior=vamp). 500, the paper's choice on MNIST
  # and Fashion-MNIST-sized data; the prior costs K encoder passes per step.
  c.num_pseudo_inputs = 500
  return c


def validate(config):
  """model.vae.*, and what the VampPrior needs of the shared fields."""
  from vae_jax.config.validation import ConfigError
  m, f = config.model, config.model.vae
  if f.prior not in PRIORS:
    raise ConfigError(f'config.model.vae.prior={f.prior!r} is not one of '
                      f'{", ".join(map(repr, PRIORS))}. Set --config.model.vae.prior to one '
                      'of those.')
  if m.posterior_flow != 'none':
    _validate_flow(m)
  if f.prior == 'standard':
    return
  k = f.num_pseudo_inputs
  if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
    raise ConfigError(f'config.model.vae.num_pseudo_inputs={k!r} must be a positive int.')
  if m.posterior != 'diag':
    raise ConfigError(
        f'model.vae.prior={f.prior!r} is built for the diagonal posterior (its components are '
        f'the encoder\'s q(h|u_k)); model.posterior={m.posterior!r}. Use model.posterior=diag.')


def _validate_flow(m):
  """What an inverse autoregressive flow on the posterior needs of the shared model fields."""
  from vae_jax.config.validation import ConfigError
  if m.posterior != 'diag' or m.shared_covariance:
    raise ConfigError(
        f'model.posterior_flow={m.posterior_flow!r} transforms a diagonal Gaussian that depends on '
        f'x (the flow itself adds the correlations); model.posterior={m.posterior!r} and '
        f'model.shared_covariance={m.shared_covariance!r}. Set model.posterior=diag and '
        'model.shared_covariance=False.')
  if m.vae.prior != 'standard':
    raise ConfigError(
        f'model.posterior_flow={m.posterior_flow!r} with model.vae.prior={m.vae.prior!r} is not '
        'supported: the VampPrior\'s components would be the flow\'s densities at the '
        'pseudo-inputs, which an IAF gives only at its own samples (inverting it costs D '
        'passes per point). Use model.vae.prior=standard with the flow, or '
        'model.posterior_flow=none with the VampPrior.')


def capabilities(model_cfg):
  """See contract.Capabilities."""
  from vae_jax.models.contract import Capabilities
  vamp = model_cfg.vae.prior == 'vamp'
  diag = model_cfg.posterior == 'diag'
  flow = model_cfg.get('posterior_flow', 'none') == 'iaf'
  post = 'diagonal' if diag else 'full-covariance'
  post += ' (shared covariance)' if model_cfg.shared_covariance and not diag else ''
  post += ' Gaussian q(h|x)'
  if flow:
    post += (f' through an IAF ({model_cfg.flow_steps} steps of {model_cfg.flow_hidden} hidden '
             'units)')
  prior = (f'a VampPrior of {model_cfg.vae.num_pseudo_inputs} pseudo-inputs' if vamp
           else 'p(h) = N(0, I)')
  return Capabilities(
      # The analytic KL to N(0, I) of a diagonal posterior is a sum over units; the KL to a
      # mixture is not, nor is a flow's (its Monte-Carlo KL couples the units).
      kl_units=diag and not vamp and not flow,
      group_kl=False,
      # A flow's q(h|x) is no longer N(mean, diag(var)) of posterior_stats.
      diagonal_posterior=diag and not flow,
      standard_prior=not vamp,
      # DReG's encoder gradient needs phi to reach log w only through h and log q: not through
      # the VampPrior (the encoder's pseudo-input components) or a flow's own parameters.
      dreg=not vamp and model_cfg.get('posterior_flow', 'none') == 'none',
      description=(f'single-layer VAE: {model_cfg.latent_dim} latent units, {post}, {prior}, '
                   f'{model_cfg.likelihood} likelihood'),
      prior_description=('a pseudo-input k uniformly, then h ~ N(mean_k, T^2 diag(scale_k^2))'
                         if vamp else 'h ~ N(0, T^2 I)'))


def build(model_cfg, image_shape, x_dtype=None):
  """The GaussianVAE this config describes (imports JAX and Flax)."""
  from vae_jax.models import gaussian_vae
  return gaussian_vae.build_model(model_cfg, image_shape, x_dtype,
                                  caps=capabilities(model_cfg))
