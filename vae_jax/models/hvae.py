"""The hierarchical top-down family (model.kind=hvae): its config fields, validation,
capabilities and builder, without JAX (the networks and the contract are in hierarchical.py,
imported by `build`).

Groups of latents, top first, each with a learned prior given the groups above (Ladder VAE,
NVAE, VDVAE); an mlp variant (latent vectors) and a conv variant (spatial latents at several
resolutions). With model.posterior_flow=iaf each group's posterior sample passes its own inverse
autoregressive flow (conv: over the channels at every position).
"""

import ml_collections

NAME = 'hvae'


def get_config():
  """config.model.hvae: the fields only this family reads."""
  c = ml_collections.ConfigDict()
  # Stochastic groups per resolution, top (lowest resolution) first; conv places them at the
  # lowest len(groups) encoder stages, mlp takes one count. 2 groups: the smallest hierarchy.
  # (model.latent_dim is each group's z size, or its channels per position for conv.)
  c.groups = (2,)
  # mlp: width of the bottom-up features and of the top-down state (conv uses
  # model.conv_channels). 256 is plenty for the group sizes above.
  c.width = 256
  # q's mean and log-scale are the prior's plus deltas (NVAE's residual parametrisation): q
  # starts near p, so the KL of a deep hierarchy starts small.
  c.residual_posterior = True
  return c


def validate(config):
  """model.hvae.*, and what the hierarchy needs of the shared model fields."""
  from vae_jax.config.validation import ConfigError
  m, f = config.model, config.model.hvae
  if m.encoder != m.decoder:
    raise ConfigError(
        f'model.kind=hvae shares one architecture between its bottom-up and top-down paths: '
        f'model.encoder={m.encoder!r} and model.decoder={m.decoder!r} must be the same (mlp '
        'or conv).')
  groups = tuple(f.groups)
  if not groups or any(not isinstance(g, int) or isinstance(g, bool) or g <= 0 for g in groups):
    raise ConfigError(f'config.model.hvae.groups={groups!r} must be a non-empty tuple of '
                      'positive ints (groups per resolution, top first), e.g. "(4,)".')
  if m.encoder == 'mlp' and len(groups) != 1:
    raise ConfigError(
        f'config.model.hvae.groups={groups!r}: the mlp hierarchy has one resolution, so give '
        f'one count, e.g. --config.model.hvae.groups="({sum(groups)},)".')
  stages = len(tuple(m.conv_channels))
  if m.encoder == 'conv' and len(groups) > stages:
    raise ConfigError(
        f'config.model.hvae.groups={groups!r} places groups at {len(groups)} resolutions, but '
        f'model.conv_channels={tuple(m.conv_channels)!r} makes only {stages}. Give at most '
        f'{stages} counts or add stages.')
  if not isinstance(f.width, int) or isinstance(f.width, bool) or f.width <= 0:
    raise ConfigError(f'config.model.hvae.width={f.width!r} must be a positive int.')
  if not isinstance(f.residual_posterior, bool):
    raise ConfigError('config.model.hvae.residual_posterior must be True or False.')
  if m.posterior != 'diag' or m.shared_covariance:
    raise ConfigError(
        'model.kind=hvae has a diagonal Gaussian per group that depends on x (with '
        'model.posterior_flow=iaf, the base of each group\'s flow): set model.posterior=diag and '
        'model.shared_covariance=False.')


def capabilities(model_cfg):
  """See contract.Capabilities."""
  from vae_jax.models.contract import Capabilities
  groups = tuple(model_cfg.hvae.groups)
  n = sum(groups)
  unit = 'channels per position' if model_cfg.encoder == 'conv' else 'units'
  flow = model_cfg.get('posterior_flow', 'none') == 'iaf'
  posterior = (f', each group\'s posterior through an IAF ({model_cfg.flow_steps} steps of '
               f'{model_cfg.flow_hidden} hidden units)' if flow else '')
  return Capabilities(
      # Each unit's KL to its own prior given the groups above; a flow's Monte-Carlo KL is not
      # a sum over units.
      kl_units=not flow,
      group_kl=n > 1,      # kl/<group> for every group
      # A single group is one diagonal Gaussian (without a flow); more are not.
      diagonal_posterior=n == 1 and not flow,
      standard_prior=False,  # the top group's prior is N(0, I), the others are learned
      dreg=False,  # its posteriors share the decoder's top-down parameters
      description=(f'top-down hierarchical VAE ({model_cfg.encoder}): {n} groups of '
                   f'{model_cfg.latent_dim} {unit}, learned priors given the groups above'
                   f'{posterior}, {model_cfg.likelihood} likelihood'),
      prior_description='top-down: each group z_l ~ p(z_l | z_above) with its scale times T')


def build(model_cfg, image_shape, x_dtype=None):
  """The HierarchicalVAE this config describes (imports JAX and Flax)."""
  from vae_jax.models import hierarchical
  return hierarchical.build_model(model_cfg, image_shape, x_dtype,
                                  caps=capabilities(model_cfg))
