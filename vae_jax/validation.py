"""Config validation that runs before TensorFlow is imported or anything compiles.

Every user mistake the config can hold is reported here as one `ConfigError` paragraph that
says what is wrong and what to do, so a bad sweep entry fails in seconds, not after a compile.
"""

import os

# The valid names live with the code that implements them (no TensorFlow is imported here).
from vae_jax.data.checks import validate_data_config
from vae_jax.distributions import LIKELIHOODS
from vae_jax.models import DECODERS, ENCODERS, POSTERIORS

OPTIMIZERS = ('adam', 'adamw')
OBJECTIVES = ('elbo', 'iwae')
FREE_BITS_GROUPS = ('total', 'unit')
SCHEDULES = ('constant', 'warmup_cosine')
# Image sizes the conv encoder/decoder are built and tested for.
CONV_SIZES = (28, 32, 64)


class ConfigError(ValueError):
  """A user mistake in the config or flags; scripts print it without a traceback."""


def _choice(value, valid, field):
  if value not in valid:
    raise ConfigError(
        f'config.{field}={value!r} is not one of {", ".join(map(repr, valid))}. '
        f'Set --config.{field} to one of those.')


def _positive(value, field, kind=int):
  if not isinstance(value, kind) or isinstance(value, bool) or value <= 0:
    raise ConfigError(f'config.{field}={value!r} must be a positive {kind.__name__}.')


def _nearest_multiples(value, k):
  lo = max(k, (value // k) * k)
  hi = lo if lo >= value else lo + k
  return sorted({lo, hi})


def validate_intervals(config):
  """The fused-chunk rules: every interval is a multiple of steps_per_call."""
  k = config.steps_per_call
  for field in ('num_train_steps', 'log_every_steps', 'eval_every_steps',
                'checkpoint_every_steps'):
    value = config[field]
    if value % k:
      near = ' or '.join(str(v) for v in _nearest_multiples(value, k))
      raise ConfigError(
          f'config.{field}={value} is not a multiple of config.steps_per_call={k} (k train '
          f'steps run fused in one call, so everything happens on chunk boundaries). Use '
          f'{near}, or change steps_per_call.')


def validate_config(config, num_devices=None):
  """Checks names, sizes, intervals and combinations. Raises ConfigError.

  Args:
    config: the experiment ConfigDict (see configs/default.py).
    num_devices: devices on the mesh's data axis, if known; checks the batch splits evenly.
  """
  for field in ('batch_size', 'num_train_steps', 'steps_per_call', 'log_every_steps',
                'eval_every_steps', 'checkpoint_every_steps', 'eval_batch_size'):
    _positive(config[field], field)
  validate_intervals(config)
  if not 0.0 <= config.loss_momentum_gamma < 1.0:
    raise ConfigError(f'config.loss_momentum_gamma={config.loss_momentum_gamma} must be in '
                      '[0, 1): L <- gamma L + (1 - gamma) L_batch.')
  if config.max_consecutive_nonfinite < 0:
    raise ConfigError('config.max_consecutive_nonfinite must be >= 0.')
  for field in ('eval_num_samples', 'eval_chunk_size'):
    value = config[field]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise ConfigError(f'config.{field}={value!r} must be an int >= 0 (0 = off / automatic).')

  d = config.data
  try:  # the data package owns its settings' rules
    validate_data_config(d)
  except ValueError as e:
    raise ConfigError(str(e)) from None

  m = config.model
  _choice(m.encoder, ENCODERS, 'model.encoder')
  _choice(m.decoder, DECODERS, 'model.decoder')
  _choice(m.posterior, POSTERIORS, 'model.posterior')
  _choice(m.likelihood, LIKELIHOODS, 'model.likelihood')
  _positive(m.latent_dim, 'model.latent_dim')
  _positive(m.conv_blocks, 'model.conv_blocks')
  _positive(m.logistic_mixtures, 'model.logistic_mixtures')
  for field in ('hidden', 'conv_channels'):
    widths = tuple(m[field])
    if not widths or any(not isinstance(w, int) or w <= 0 for w in widths):
      raise ConfigError(f'config.model.{field}={widths!r} must be a non-empty tuple of positive '
                        f'ints, e.g. --config.model.{field}="(500,)".')
  if m.gaussian_sigma <= 0:
    raise ConfigError('config.model.gaussian_sigma must be > 0.')

  discrete = m.likelihood == 'discretized_logistic'
  if discrete != (d.preprocess == 'uint8'):
    raise ConfigError(
        f'model.likelihood={m.likelihood!r} does not fit data.preprocess={d.preprocess!r}: the '
        'discretized logistic is a mass over 8-bit integers and needs data.preprocess=uint8, and '
        'uint8 data needs model.likelihood=discretized_logistic. Change one of them.')

  ob = config.objective
  _choice(ob.name, OBJECTIVES, 'objective.name')
  _choice(ob.free_bits_per, FREE_BITS_GROUPS, 'objective.free_bits_per')
  if ob.beta < 0 or ob.kl_warmup_steps < 0 or ob.free_bits < 0:
    raise ConfigError('config.objective.beta, kl_warmup_steps and free_bits must be >= 0.')
  _positive(ob.num_samples, 'objective.num_samples')
  if ob.name == 'iwae' and (ob.beta != 1.0 or ob.kl_warmup_steps or ob.free_bits):
    raise ConfigError(
        'objective.name=iwae trains the importance-weighted bound itself: beta, kl_warmup_steps '
        'and free_bits do not apply to it. Set them to 1, 0 and 0, or use objective.name=elbo.')
  if ob.free_bits_per == 'unit' and m.posterior != 'diag':
    raise ConfigError(
        'objective.free_bits_per=unit needs model.posterior=diag: a full covariance KL is not a '
        'sum over latent units. Use free_bits_per=total.')
  o = config.optim
  _choice(o.name, OPTIMIZERS, 'optim.name')
  _choice(o.schedule, SCHEDULES, 'optim.schedule')
  if o.learning_rate <= 0:
    raise ConfigError('config.optim.learning_rate must be > 0.')
  if o.warmup_steps < 0 or o.clip_norm < 0 or o.weight_decay < 0:
    raise ConfigError('config.optim.warmup_steps, clip_norm and weight_decay must be >= 0 '
                      '(clip_norm 0 turns clipping off).')
  if o.schedule == 'warmup_cosine' and o.warmup_steps >= config.num_train_steps:
    raise ConfigError(f'config.optim.warmup_steps={o.warmup_steps} must be smaller than '
                      f'num_train_steps={config.num_train_steps}.')
  _positive(config.checkpoint.keep, 'checkpoint.keep')
  _positive(config.images.num, 'images.num')

  if num_devices is not None:
    validate_batch_split(config, num_devices)


def validate_batch_split(config, num_devices):
  """The global batch (train and eval) must split evenly over the data axis."""
  for field in ('batch_size', 'eval_batch_size'):
    b = config[field]
    if b % num_devices:
      near = ' or '.join(str(v) for v in _nearest_multiples(b, num_devices))
      raise ConfigError(
          f'config.{field}={b} cannot be split evenly over {num_devices} devices on the data '
          f'axis. Use a multiple of {num_devices} (e.g. {near}), or run on fewer devices '
          '(config.mesh.data).')


def validate_data_splits(config, info):
  """The configured splits exist in the dataset (known once its info is read), fit the batch
  sizes, and the validation slice does not overlap the training one."""
  from vae_jax import data as data_lib
  try:
    data_lib.validate_splits(config.data, info)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  n_train = info.split_size(config.data.train_split)
  if n_train < config.batch_size:
    raise ConfigError(
        f'config.batch_size={config.batch_size} is larger than the {n_train} training '
        f'examples of {config.data.name!r} (data.train_split={config.data.train_split!r}).')


def validate_image_shape(config, image_shape):
  """Checks the model fits the dataset's images (known once the dataset info is read)."""
  h, w, _ = image_shape
  uses_conv = 'conv' in (config.model.encoder, config.model.decoder)
  if uses_conv and (h != w or h not in CONV_SIZES):
    raise ConfigError(
        f'The conv encoder/decoder is built for square images of size {CONV_SIZES}; dataset '
        f'{config.data.name!r} has {h}x{w}. Use --config.model.encoder=mlp '
        '--config.model.decoder=mlp.')


def validate_workdir(workdir):
  """A workdir must be a directory we can write (created if missing)."""
  if not workdir:
    raise ConfigError('--workdir is required: the folder for checkpoints, metrics and images.')
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f'--workdir={workdir} exists and is a file, not a folder. Choose another '
                      'path; nothing was written.')
  probe = workdir
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
    why = 'is a file' if not os.path.isdir(probe) else 'is not writable'
    raise ConfigError(f'--workdir={workdir} cannot be written ({probe} {why}). Choose '
                      'a folder you can write to.')
  return workdir
