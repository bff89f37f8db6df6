"""Config validation that runs before TensorFlow is imported or anything compiles.

Every user mistake the config can hold is reported here as one `ConfigError` paragraph that
says what is wrong and what to do, so a bad sweep entry fails in seconds, not after a compile.
Importing this module loads neither JAX, Flax nor TensorFlow: the sweep runner validates every
point in its own JAX-free process.
"""

import importlib.util
import os

from vae_jax.config.names import (
  DECODERS,
  DTYPES,
  ENCODERS,
  FREE_BITS_GROUPS,
  IWAE_GRADIENTS,
  LIKELIHOODS,
  LOGISTIC_COUPLINGS,
  OBJECTIVES,
  OPTIMIZERS,
  POSTERIOR_FLOWS,
  POSTERIORS,
  SCHEDULES,
)
from vae_jax.data.checks import validate_data_config
from vae_jax.models import contract

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
  for field in ('seed', 'data_seed'):  # keys are made from int32 seeds inside jitted programs
    value = config[field]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
      raise ConfigError(f'config.{field}={value!r} must be an int in [0, 2**31).')
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
  workers = d.get('workers', 0)
  if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
    raise ConfigError(f'config.data.workers={workers!r} must be an int >= 0 (grain worker '
                      'processes; 0 reads in the training process).')
  if d.backend == 'grain':
    missing = [m for m in ('grain', 'array_record') if importlib.util.find_spec(m) is None]
    if missing:
      raise ConfigError(f"data.backend=grain needs {' and '.join(missing)} (not installed "
                        "here): pip install -e '.[grain]', or use data.backend=memory or "
                        'stream.')

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
  _choice(m.dtype, DTYPES, 'model.dtype')
  if not isinstance(m.remat, bool):
    raise ConfigError(f'config.model.remat={m.remat!r} must be True or False.')
  _choice(m.posterior_flow, POSTERIOR_FLOWS, 'model.posterior_flow')
  for field in ('flow_steps', 'flow_hidden'):
    value = m[field]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ConfigError(f'config.model.{field}={value!r} must be a positive int.')
  caps = validate_family(config)
  validate_coupling(m)

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
  _choice(ob.iwae_gradient, IWAE_GRADIENTS, 'objective.iwae_gradient')
  if ob.iwae_gradient == 'dreg' and ob.name != 'iwae':
    raise ConfigError(
        'objective.iwae_gradient=dreg is a gradient estimator of the importance-weighted bound; '
        f'objective.name={ob.name!r} does not train that bound. Set objective.name=iwae (with '
        'objective.num_samples > 1), or iwae_gradient=reparam.')
  if ob.iwae_gradient == 'dreg' and not getattr(caps, 'dreg', False):
    raise ConfigError(
        f'objective.iwae_gradient=dreg needs a posterior whose parameters only the sample path '
        f'reaches (the encoder\'s), and model.kind={m.kind!r} ({caps.description}) does not '
        'declare one (Capabilities.dreg). Use iwae_gradient=reparam, or the single-layer family '
        'with the N(0, I) prior and no posterior flow.')
  if ob.free_bits_per == 'group' and not caps.group_kl:
    raise ConfigError(
        'objective.free_bits_per=group floors each stochastic group\'s KL (the kl/<group> terms), '
        f'and model.kind={m.kind!r} ({caps.description}) reports no groups. Use '
        'free_bits_per=total or unit, or a hierarchical family (model.kind=hvae).')
  if ob.free_bits_per == 'unit' and not caps.kl_units:
    raise ConfigError(
        'objective.free_bits_per=unit floors the KL of each latent unit (the kl_units terms), '
        f'but the KL of model.kind={m.kind!r} ({caps.description}) is not a sum over units '
        '(a full covariance or a mixture prior couples them). Use free_bits_per=total.')
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
  validate_stability(config)
  es = config.early_stopping
  if not isinstance(es.patience, int) or isinstance(es.patience, bool) or es.patience < 0:
    raise ConfigError(f'config.early_stopping.patience={es.patience!r} must be an int >= 0 '
                      '(evaluations without a validation improvement; 0 = off).')
  if isinstance(es.min_delta, bool) or not isinstance(es.min_delta, (int, float)) or not (
      es.min_delta >= 0):
    raise ConfigError(f'config.early_stopping.min_delta={es.min_delta!r} must be a number >= 0 '
                      '(nats per example).')
  _positive(config.checkpoint.keep, 'checkpoint.keep')
  _positive(config.images.num, 'images.num')

  if num_devices is not None:
    validate_batch_split(config, num_devices)


def _number(value, field):
  if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
    raise ConfigError(f'config.{field}={value!r} must be a number.')


def validate_stability(config):
  """Gradient skipping, the parameter EMA and the wall-clock budget."""
  o = config.optim
  for field, value in (('optim.skip_threshold', o.skip_threshold),
                       ('optim.skip_factor', o.skip_factor),
                       ('max_train_seconds', config.max_train_seconds)):
    _number(value, field)
    if value < 0:
      raise ConfigError(f'config.{field}={value!r} must be >= 0 (0 = off).')
  if 0 < o.skip_factor <= 1:
    raise ConfigError(
        f'config.optim.skip_factor={o.skip_factor} would skip about half of all updates (the '
        'limit is skip_factor x the median gradient norm): use a factor well above 1, e.g. 10, '
        'or 0 to turn the adaptive rule off.')
  _positive(o.skip_window, 'optim.skip_window')
  limit = config.max_consecutive_skipped
  if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
    raise ConfigError(f'config.max_consecutive_skipped={limit!r} must be an int >= 0.')
  longest = o.skip_window - (o.skip_window - 1) // 2
  if o.skip_factor > 0 and limit < longest:
    raise ConfigError(
        f'config.max_consecutive_skipped={limit} is below {longest}, the most consecutive '
        f'skips the adaptive rule makes on a lasting change of the gradient norm (about half of '
        f'optim.skip_window={o.skip_window}): the run would stop where the rule recovers. Use '
        f'max_consecutive_skipped >= {longest}, or a smaller skip_window.')
  _number(config.ema_decay, 'ema_decay')
  if not 0.0 <= config.ema_decay < 1.0:
    raise ConfigError(
        f'config.ema_decay={config.ema_decay!r} must be in [0, 1): 0 turns the EMA of the '
        'parameters off; 0.999 averages about the last 1000 steps.')


def validate_coupling(m):
  """model.logistic_coupling: a form of the discretized logistic (both model kinds).

  Its channel count is known only with the dataset (validate_image_shape checks it is 3).
  """
  _choice(m.logistic_coupling, LOGISTIC_COUPLINGS, 'model.logistic_coupling')
  if m.logistic_coupling == 'none':
    return
  if m.likelihood != 'discretized_logistic':
    raise ConfigError(
        f'model.logistic_coupling={m.logistic_coupling!r} couples the channels of the '
        f'discretized logistic mixture, and model.likelihood={m.likelihood!r}. Set '
        'model.likelihood=discretized_logistic (with data.preprocess=uint8), or '
        'model.logistic_coupling=none.')


def validate_family(config):
  """model.kind names a family (built in or a module path), its sub-config is there, and the
  family's own checks pass. Returns its Capabilities (the cross-family rules read them)."""
  m = config.model
  try:
    fam = contract.family(m.kind)
    contract.family_config(m)
  except contract.UnknownFamilyError as e:
    raise ConfigError(str(e)) from None
  fam.validate(config)
  return fam.capabilities(m)


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


def synthetic_benchmark_shape(config, text, num_examples):
  """The benchmark's --synthetic=H,W,C as a shape, checked against the config before compiling.

  The shape and split sizes are then checked like a dataset's (experiment.build).
  """
  from vae_jax.data import synthetic
  try:
    shape = synthetic.parse_shape(text)
  except ValueError as e:
    raise ConfigError(f'--synthetic: {e}') from None
  if config.data.backend != 'memory':
    raise ConfigError('--synthetic holds its images in memory: add --config.data.backend=memory '
                      f'(the config has {config.data.backend!r}).')
  if num_examples < config.batch_size:
    raise ConfigError(f'--synthetic_examples={num_examples} is fewer than one batch '
                      f'(config.batch_size={config.batch_size}).')
  return shape


def validate_image_shape(config, image_shape):
  """Checks the model fits the dataset's images (known once the dataset info is read)."""
  h, w, _ = image_shape
  uses_conv = 'conv' in (config.model.encoder, config.model.decoder)
  if uses_conv and (h != w or h not in CONV_SIZES):
    raise ConfigError(
        f'The conv encoder/decoder is built for square images of size {CONV_SIZES}; dataset '
        f'{config.data.name!r} has {h}x{w}. Use --config.model.encoder=mlp '
        '--config.model.decoder=mlp.')
  channels = image_shape[-1]
  if config.model.logistic_coupling == 'rgb' and channels != 3:
    raise ConfigError(
        f'model.logistic_coupling=rgb couples the R, G and B values of a pixel; dataset '
        f'{config.data.name!r} has {channels} channel(s). Use model.logistic_coupling=none.')


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
