"""Reloading runs, the pictures of a model, and the analysis of a trained run.

`load_run(workdir)` gives the run's config, model and state on one CPU-or-default device,
whatever device count or host count trained it, without the trainer. Everything else here goes
through the model contract (`vae_jax.models.gaussian_vae`), except `decode` (E[x|h] at latents
chosen here: the contract has no such method, so it applies the family's decoder and likelihood
mean), and takes numpy in and gives numpy out, for notebooks:

  run = load_run('/tmp/vae_sprites')
  arrays = split_arrays(run, 'test')
  latents = encode_split(run, arrays)                   # posterior means and variances
  mig(latents['mean'], {k: arrays[k] for k in factor_names(arrays)})

`analyze(workdir)` (scripts/analyze.py) runs all of it and writes DIR/analysis/: PNG figures,
index.html and summary.md (see `vae_jax.report`), and the figures as TensorBoard images.

Random draws: the prior samples use the stream of the training pictures
(`streams.prior_key(seed)`), with one key for every temperature, so the panels of different
temperatures decode the same standard-normal draws scaled by T (and the T = 1 panel equals the
training pictures' prior draws of the same count). Nothing else here is random: the examples
shown are the first ones of the split, in its canonical order.

Parameters: everything here uses `run.params`, the run's EMA of the parameters where it keeps
one (config.ema_decay > 0), else the train state's; `run.params_kind` says which ('ema' or
'state'), and the analysis's summary and page say it too. Pass `params=` to any function to
use others (e.g. `run.state.params`).
"""

import dataclasses
import functools
import glob
import json
import math
import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from vae_jax import checkpoint as ckpt_lib
from vae_jax import data as data_lib
from vae_jax import evaluate, experiment, report, sharding
from vae_jax import metrics as metrics_lib
from vae_jax import state as state_lib
from vae_jax.data.preprocess import preprocess
from vae_jax.data.sprites import FACTORS as SPRITE_FACTORS
from vae_jax.maths import streams
from vae_jax.pictures import display, picture_inputs  # noqa: F401 - analysis API

# The folder of DIR that analyze() writes.
ANALYSIS_DIR = 'analysis'
# Prior temperatures of the sample figure: every prior scale times T. Below 1 the draws sit
# nearer the prior's mode, where a VAE's decoder is usually better trained.
TEMPERATURES = (0.5, 0.8, 1.0)
# Traversal values of one latent unit, in units of the prior's standard deviation.
TRAVERSAL_VALUES = tuple(np.linspace(-3.0, 3.0, 9).tolist())
# Bins per latent unit for the MIG histograms (Chen et al. 2018 use 20).
MIG_BINS = 20
# The file scripts/evaluate.py writes per evaluation (evaluate.eval_path):
# DIR/eval/step_S_SPLIT_kK.json, SPLIT made file-name safe (the record holds the split itself),
# and step_S_SPLIT_kK_state.json for the train state of a run whose default is its EMA.
EVAL_FILE = re.compile(r'^step_(\d+)_(.+)_k(\d+)(?:_(state|ema))?\.json$')


class RunNotFoundError(FileNotFoundError):
  """The folder holds no vae_jax run, or not the checkpoint step asked for."""


@dataclasses.dataclass
class Run:
  """A reloaded run: `run.model.terms(run.state.params, x, key)` and the rest of the model
  contract work directly; `run.experiment` is what evaluate.evaluate takes (on one device)."""
  workdir: str
  step: int
  config: ml_collections.ConfigDict
  model: Any
  state: Any
  image_shape: tuple
  experiment: Any = None
  steps: tuple = ()  # every checkpoint step the workdir holds

  @property
  def params(self):
    """The parameters analyses use: the EMA where the run keeps one, else the state's."""
    return state_lib.eval_params(self.state)[0]

  @property
  def params_kind(self):
    """'ema' or 'state': which parameters `params` are."""
    return state_lib.eval_params(self.state)[1]


def check_run(workdir, step=None):
  """The run's checkpoint steps, checked without reading any array (seconds, no compile).

  Returns:
    (workdir made absolute, DIR/config.json's config or None where that file is damaged (the
    checkpoints' own configs stand in for it: load_run warns), the checkpoint steps).

  Raises:
    RunNotFoundError: no run in workdir, no checkpoint, or no checkpoint step `step` (the
      message names the steps there are).
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(workdir):
    raise RunNotFoundError(f'{workdir} does not exist (or is not a folder): no run to load.')
  if not os.path.isfile(os.path.join(workdir, 'config.json')):
    raise RunNotFoundError(f'{workdir} has no config.json: is it a vae_jax workdir '
                           '(scripts/train.py --workdir=DIR)?')
  if not os.path.isdir(ckpt_lib.checkpoint_dir(workdir)):
    raise RunNotFoundError(f'{workdir} has no checkpoints/ folder: is it a vae_jax workdir?')
  config, damaged = evaluate.read_run_config(workdir)
  checkpointer = evaluate.reader_checkpointer(workdir, config)
  steps = checkpointer.all_steps()
  checkpointer.close()
  if not steps:
    raise RunNotFoundError(
        f'{workdir}/checkpoints holds no checkpoint yet'
        + (f', and {os.path.join(workdir, "config.json")} cannot be read ({damaged}).'
           if damaged else '.'))
  if step is not None and int(step) not in steps:
    raise RunNotFoundError(f'{workdir} has no checkpoint step {step}; its steps are '
                           f'{", ".join(map(str, steps))}.')
  return workdir, config, steps


def load_run(workdir, step=None, device=None):
  """Loads a run's config, model and train state from its workdir.

  Args:
    workdir: the run's --workdir.
    step: a checkpoint step; None = the newest good one (damaged steps are skipped with a
      warning, as when resuming).
    device: where the state lands (default: the first local device).

  Returns:
    A Run with .config (the config the checkpoint was written with), .model, .state, .step,
    .experiment (built on a one-device mesh) and .steps. Beside a live run the step loaded is
    the one whose metadata was read, never one committed since; if the run's checkpoint.keep
    deletes it meanwhile, the newest step is checked again once. A damaged DIR/config.json is
    warned about and passed over (each step holds its own config).

  Raises:
    RunNotFoundError: no run in workdir, or no checkpoint step `step` (naming those there
      are); checked before anything is read or built.
  """
  from vae_jax import validation
  requested = step
  for attempt in (1, 2):
    workdir, config, steps = check_run(workdir, requested)
    checkpointer = evaluate.reader_checkpointer(workdir, config)
    try:
      meta = None
      for candidate in ([requested] if requested is not None else reversed(steps)):
        try:  # the newest readable metadata names the config and image shape
          meta = checkpointer.restore_meta(candidate)
          break
        except Exception:  # noqa: BLE001 - a damaged step; restore_good below says which
          continue
      if meta is None:
        raise ckpt_lib.NoGoodCheckpointError(
            f'No readable checkpoint metadata in {workdir}/checkpoints (steps {steps}).')
      checked = int(meta['step'])
      saved = evaluate.saved_config(meta['config'])  # fields added since at their defaults
      jax.config.update('jax_threefry_partitionable', True)  # the project's draws
      device = device or jax.local_devices()[0]
      mesh = Mesh(np.asarray([device]), (sharding.DATA_AXIS,))  # one device: any batch splits
      exp = experiment.build(saved, mesh=mesh, image_shape=tuple(meta['image_shape']))
      state, meta = evaluate.restore_checked(
          checkpointer,
          lambda m, exp=exp: state_lib.restore_target(exp.abstract_state,
                                                      evaluate.saved_config(m['config'])),
          checked)
      break
    except evaluate.StepDeletedError:
      if requested is not None or attempt == 2:
        raise validation.ConfigError(
            f'Checkpoint step {checked} of {workdir} was deleted while it was being read (the '
            'run training this workdir keeps only its newest checkpoint.keep steps). Try '
            'again, or pass a step it keeps.') from None
      evaluate.warn(f'checkpoint step {checked} of {workdir} was deleted while it was being '
                     'read (checkpoint.keep of the run training it); checking the newest step '
                     'again.')
    finally:
      checkpointer.close()
  if config is None:
    _, damaged = evaluate.read_run_config(workdir)
    evaluate.warn(evaluate.damaged_config_warning(workdir, damaged, meta['step']))
  config = evaluate.saved_config(meta['config'])
  return Run(workdir=workdir, step=int(meta['step']), config=config, model=exp.model,
             state=state, image_shape=tuple(meta['image_shape']), experiment=exp,
             steps=tuple(steps))


# ---------------------------------------------------------------------------------------------
# The model at chosen latents. The model is a static argument: it is a frozen dataclass that
# compares by value, so each function compiles once per model and shape.


@functools.partial(jax.jit, static_argnums=0)
def _posterior(model, params, x):
  return model.posterior_stats(params, x)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _encode_images(model, mode, data_seed, params, images, index):
  x = preprocess(images, index, mode=mode, data_seed=data_seed)
  return model.posterior_stats(params, x)


@functools.partial(jax.jit, static_argnums=0)
def _decode_mean(model, params, h):
  return model.decode_mean(params, h)


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct(model, params, x):
  return model.reconstruct(params, x)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _sample(model, params, n, key, temperature):
  return model.sample(params, key, n, temperature)


def _params(run, params):
  return run.params if params is None else params


def posterior(run, x, params=None):
  """{'mean', 'var'}: numpy [B, U] posterior moments of preprocessed inputs x [B, H, W, C]."""
  out = _posterior(run.model, _params(run, params), jnp.asarray(x))
  return {k: np.asarray(v) for k, v in out.items()}


def encode_split(run, arrays, params=None, batch_size=None):
  """{'mean', 'var'}: numpy [N, U] posterior moments of every example of `arrays`.

  Batches of config.eval_batch_size (the last one padded, so one shape compiles); the images
  are preprocessed as in evaluation (a binarized dataset's draws are keyed by each example's
  index).
  """
  config = run.config
  images, index = arrays['image'], arrays['index']
  n = len(images)
  b = min(batch_size or config.eval_batch_size, n)
  means, variances = [], []
  for start in range(0, n, b):
    rows = np.arange(start, start + b) % n  # the last batch wraps round; sliced off below
    out = _encode_images(run.model, config.data.preprocess, config.data_seed,
                         _params(run, params), images[rows], index[rows])
    keep = min(b, n - start)
    means.append(np.asarray(out['mean'])[:keep])
    variances.append(np.asarray(out['var'])[:keep])
  return {'mean': np.concatenate(means), 'var': np.concatenate(variances)}


def decode(run, h, params=None):
  """E[x|h] for latents h [..., U]: numpy [..., H, W, C] in [0, 1]."""
  h = np.asarray(h, np.float32)
  flat = h.reshape(-1, h.shape[-1])
  out = np.asarray(_decode_mean(run.model, _params(run, params), jnp.asarray(flat)))
  return out.reshape(*h.shape[:-1], *out.shape[1:])


def reconstruct(run, x, params=None):
  """E[x|h] at the posterior mean of each preprocessed x: numpy [B, H, W, C] in [0, 1]."""
  return np.asarray(_reconstruct(run.model, _params(run, params), jnp.asarray(x)))


def prior_samples(run, n, temperatures=TEMPERATURES, params=None):
  """{T: {'means': E[x|h], 'samples': x ~ p(x|h)}} for h = T eps, the same eps for every T."""
  key = streams.prior_key(run.config.seed)
  out = {}
  for t in temperatures:
    s = _sample(run.model, _params(run, params), int(n), key, float(t))
    out[float(t)] = {k: np.asarray(v) for k, v in s.items()}
  return out


def lerp(a, b, ts):
  """Points (1 - t) a + t b: [len(ts), U] for latents a, b [U]."""
  a, b, ts = np.asarray(a), np.asarray(b), np.asarray(ts)[:, None]
  return (1.0 - ts) * a + ts * b


def slerp(a, b, ts):
  """Spherical interpolation (Shoemake 1985; White 2016 for VAEs): [len(ts), U].

  Moves along the great circle between the directions of a and b, with the norm interpolated
  linearly, so it never passes through the low-norm middle of the prior where few encodings
  lie (a straight line between two N(0, I) draws does). Equals a at t = 0 and b at t = 1.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  ts = np.asarray(ts, np.float64)[:, None]
  na, nb = np.linalg.norm(a), np.linalg.norm(b)
  if na == 0 or nb == 0:
    return lerp(a, b, ts[:, 0])
  ua, ub = a / na, b / nb
  omega = math.acos(float(np.clip(ua @ ub, -1.0, 1.0)))
  if math.sin(omega) < 1e-6:  # (anti)parallel: the great circle is not unique
    return lerp(a, b, ts[:, 0])
  direction = (np.sin((1.0 - ts) * omega) * ua + np.sin(ts * omega) * ub) / math.sin(omega)
  return direction * ((1.0 - ts) * na + ts * nb)


def interpolate(run, x_a, x_b, num=10, method='linear', params=None):
  """Decoded paths between the posterior means of x_a [P, ...] and x_b [P, ...].

  Returns numpy [P, num, H, W, C]: path p at t = 0, 1/(num-1), ..., 1, so its first and last
  images are the reconstructions of x_a[p] and x_b[p].
  """
  path = {'linear': lerp, 'spherical': slerp}[method]
  ma, mb = posterior(run, x_a, params)['mean'], posterior(run, x_b, params)['mean']
  ts = np.linspace(0.0, 1.0, num)
  h = np.stack([path(a, b, ts) for a, b in zip(ma, mb, strict=True)])  # [P, num, U]
  return decode(run, h, params)


def traverse(run, x, dims, values=TRAVERSAL_VALUES, params=None):
  """Latent traversals: numpy [B, len(dims), len(values), H, W, C].

  For each x[b] the posterior mean is kept except unit dims[i], which is set to each value.
  """
  base = posterior(run, x, params)['mean']  # [B, U]
  h = np.repeat(base[:, None, None, :], len(dims), 1).repeat(len(values), 2)
  for i, d in enumerate(dims):
    h[:, i, :, d] = np.asarray(values)
  return decode(run, h, params)


def pca(points, k=2):
  """(projections [N, k], explained variance fractions [k]) of points [N, U]."""
  centred = np.asarray(points, np.float64) - np.mean(points, axis=0)
  _, s, vt = np.linalg.svd(centred, full_matrices=False)
  var = np.square(s)
  return centred @ vt[:k].T, var[:k] / max(var.sum(), 1e-30)


# ---------------------------------------------------------------------------------------------
# Ground-truth factors and the mutual information gap.


def factor_names(arrays):
  """The ground-truth factors among the features of `arrays` (the sprites'; else none)."""
  return [k for k in SPRITE_FACTORS if k in arrays]


def colour_features(arrays):
  """The features to colour latents by: the factors where known, else the class label."""
  return factor_names(arrays) or [k for k in ('label',) if k in arrays]


def discretize(values, num_bins=MIG_BINS):
  """Each column of values [N, U] into num_bins equal-width bins over its range: int [N, U]."""
  values = np.asarray(values, np.float64)
  out = np.zeros(values.shape, np.int64)
  for j in range(values.shape[1]):
    edges = np.histogram_bin_edges(values[:, j], bins=num_bins)
    out[:, j] = np.digitize(values[:, j], edges[1:-1])  # 0 .. num_bins - 1
  return out


def mutual_information(a, b):
  """Plug-in (histogram) I(a; b) in nats of two discrete sequences [N]."""
  _, a = np.unique(np.asarray(a), return_inverse=True)
  _, b = np.unique(np.asarray(b), return_inverse=True)
  joint = np.zeros((a.max() + 1, b.max() + 1))
  np.add.at(joint, (a, b), 1.0)
  joint /= joint.sum()
  pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
  nz = joint > 0
  return float(np.sum(joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])))


def entropy(v):
  """Plug-in H(v) in nats of a discrete sequence [N]."""
  _, counts = np.unique(np.asarray(v), return_counts=True)
  p = counts / counts.sum()
  return float(-np.sum(p * np.log(p)))


def mig(latents, factors, num_bins=MIG_BINS):
  """The mutual information gap (Chen et al. 2018, "Isolating sources of disentanglement").

  Each latent unit's values (posterior means) are cut into num_bins equal-width bins,
  I(z_j; v_k) is estimated from the histograms, and normalised by H(v_k); for each factor the
  gap is the difference between its two most informative units, and MIG is their mean. 1: every
  factor is captured by one unit alone; 0: no unit stands out for any factor. Factors with a
  single value carry no information and are left out. The plug-in estimate is biased upwards
  by about (bins - 1)(values - 1) / (2N) nats, so use thousands of examples.

  Args:
    latents: [N, U] (e.g. posterior means).
    factors: {name: [N] discrete values}.
    num_bins: bins per latent unit.

  Returns:
    {'mig': float (NaN without an informative factor), 'factors': names used, 'mi': [U, K]
    nats, 'normalized_mi': [U, K] = mi / H(v_k), 'entropy': [K], 'gap': [K], 'top_units':
    [K] (the most informative unit of each factor)}.
  """
  latents = np.asarray(latents)
  names = [k for k, v in factors.items() if entropy(v) > 0]
  binned = discretize(latents, num_bins)
  mi = np.array([[mutual_information(binned[:, j], factors[k]) for k in names]
                 for j in range(latents.shape[1])]).reshape(latents.shape[1], len(names))
  h = np.array([entropy(factors[k]) for k in names])
  normalized = mi / h if len(names) else mi
  top2 = np.sort(normalized, axis=0)[::-1][:2] if latents.shape[1] > 1 else None
  gap = (top2[0] - top2[1]) if top2 is not None else normalized[0]
  return {'mig': float(np.mean(gap)) if len(names) else float('nan'), 'factors': names,
          'mi': mi, 'normalized_mi': normalized, 'entropy': h, 'gap': gap,
          'top_units': np.argmax(normalized, axis=0)}


# ---------------------------------------------------------------------------------------------
# What the run recorded.


def training_curves(workdir):
  """metrics.jsonl as series: {'train': {name: (steps, values)}, 'eval': {split: {name:
  (steps, values)}}}; a step logged twice (a resumed run) keeps its last record."""
  last = {}
  for r in metrics_lib.read_metrics(workdir):
    last[(r['kind'], r.get('split'), r['step'])] = r
  out = {'train': {}, 'eval': {}}
  for (kind, split, step), r in sorted(last.items(), key=lambda kv: kv[0][2]):
    if kind not in out:
      continue
    series = out['train'] if kind == 'train' else out['eval'].setdefault(split, {})
    for k, v in r.items():
      if k in ('step', 'kind', 'split') or isinstance(v, bool) or not isinstance(v, int | float):
        continue
      steps, values = series.setdefault(k, ([], []))
      steps.append(step)
      values.append(float(v))
  return out


def eval_files(workdir, step=None):
  """The evaluations scripts/evaluate.py wrote (DIR/eval/step_S_SPLIT_kK.json), newest first.

  Returns [{'path', 'step', 'split', 'k', 'mtime', 'record'}] (of `step` only, if given);
  files that do not parse as a JSON object are skipped.
  """
  found = []
  for path in glob.glob(os.path.join(workdir, 'eval', 'step_*.json')):
    m = EVAL_FILE.match(os.path.basename(path))
    if not m or (step is not None and int(m.group(1)) != int(step)):
      continue
    try:
      with open(path) as f:
        record = json.load(f)
    except (OSError, ValueError):
      continue
    if not isinstance(record, dict):
      continue
    found.append({'path': path, 'step': int(m.group(1)), 'split': record.get('split', m.group(2)),
                  'k': int(m.group(3)), 'mtime': os.path.getmtime(path), 'record': record})
  return sorted(found, key=lambda e: e['mtime'], reverse=True)


def unit_statistics(run, split, arrays=None, params=None):
  """evaluate.unit_statistics of the run (KL per unit, active units, mutual information)."""
  stats = evaluate.unit_statistics(run.experiment, _params(run, params), split, arrays=arrays)
  return {k: (np.asarray(v) if np.ndim(v) else v) for k, v in stats.items()}


def split_arrays(run, split=None):
  """The split's arrays (data.load_arrays), after checking the dataset and the split name.

  Raises:
    validation.ConfigError: an unknown split or a bad slice (the message names the splits).
    data.DatasetMissingError: the dataset is not prepared here (with the command that does).
  """
  from vae_jax import validation
  data_cfg = run.config.data
  split = split or data_cfg.eval_split
  data_lib.check_available(data_cfg)  # before TensorFlow, with the prepare command
  info = data_lib.dataset_info(data_cfg)
  try:
    info.split_size(split)
  except ValueError as e:
    raise validation.ConfigError(f'--split={split}: {e}') from None
  return data_lib.load_arrays(data_cfg, split)


def class_names(data_cfg, features):
  """{feature: [names]} for the features stored as TFDS ClassLabels with names."""
  out = {}
  try:
    info = data_lib.prepare(data_cfg).info
  except Exception:  # noqa: BLE001 - names only label the plots
    return out
  for k in features:
    feature = info.features[k] if k in info.features else None
    names = getattr(feature, 'names', None)
    if names and not all(n == str(i) for i, n in enumerate(names)):
      out[k] = list(names)
  return out


# ---------------------------------------------------------------------------------------------
# The whole analysis.


def analyze(workdir, step=None, split=None, out_dir=None, *, device=None, tensorboard=True,
            temperatures=TEMPERATURES, num_bins=MIG_BINS, log=print):
  """Writes DIR/analysis/ for one checkpoint of a run: figures, index.html, summary.md.

  Args:
    workdir: the run's folder.
    step: the checkpoint step; None = the newest good one.
    split: the split the pictures, latents and numbers use (default config.data.eval_split).
    out_dir: default DIR/analysis.
    device: the one device everything runs on (default the first local one).
    tensorboard: also write the figures as images into DIR/tensorboard at the step.
    temperatures: prior temperatures of the sample figure.
    num_bins: bins per latent unit of the MIG.
    log: progress lines (None: silent).

  Returns:
    The summary (JSON-serialisable): paths, the checkpoint and split, the ELBO with standard
    errors, the evaluation files of the step, unit statistics and the MIG.

  Raises:
    RunNotFoundError, validation.ConfigError, data.DatasetMissingError: before anything
    compiles; among them a folder it would write that cannot be written (out_dir, or
    DIR/tensorboard with tensorboard=True: a read-only workdir, say), before the run is loaded.
  """
  from vae_jax import validation
  log = log or (lambda *a, **k: None)
  t0 = time.perf_counter()
  workdir, _, _ = check_run(workdir, step)
  notice = evaluate.live_run_notice(workdir)
  if notice:
    log(notice)
  out_dir = os.path.abspath(out_dir or os.path.join(workdir, ANALYSIS_DIR))
  why = evaluate.unwritable(out_dir)
  if why:
    raise validation.ConfigError(
        f'{out_dir} cannot be written ({why}): nothing was computed. Pass --out=DIR to write '
        'the analysis to a folder you can write.')
  tb_dir = os.path.join(workdir, 'tensorboard')
  why = evaluate.unwritable(tb_dir) if tensorboard else ''
  if why:
    raise validation.ConfigError(
        f'{tb_dir} cannot be written ({why}): nothing was computed. Pass --notensorboard to '
        f'leave the figures out of TensorBoard (they still go to {out_dir}).')
  run = load_run(workdir, step=step, device=device)
  config = run.config
  split = split or config.data.eval_split
  arrays = split_arrays(run, split)
  params, params_kind, notes = state_lib.eval_params(run.state)
  log(f'Analysing {run.workdir} at checkpoint step {run.step} on split {split!r} '
      f'({len(arrays["image"])} examples), '
      f'{"EMA" if params_kind == "ema" else "train state"} parameters -> {out_dir}')
  if 'ema_warning' in notes:
    log(f'WARNING: {notes["ema_warning"]}')

  elbo = evaluate.evaluate(run.experiment, params, split, arrays=arrays)
  units = unit_statistics(run, split, arrays)
  kl = units['kl_per_unit']
  order = [int(d) for d in np.argsort(-kl, kind='stable')]  # the units by KL, largest first
  latents = encode_split(run, arrays)
  x = picture_inputs(run.experiment, arrays, split)
  shown = display(x)
  figures = []  # (name, title, caption), name.png in out_dir

  def add(name, title, caption, fig):
    report.save_figure(fig, os.path.join(out_dir, f'{name}.png'))
    figures.append({'name': name, 'file': f'{name}.png', 'title': title, 'caption': caption})

  add('reconstructions', 'Reconstructions',
      f'The first {len(x)} {split} images, each above E[x|h] at its posterior mean.',
      report.plot_reconstructions(shown, reconstruct(run, x)))
  samples = prior_samples(run, 32, temperatures)
  add('samples', 'Samples from the model', samples_caption(run.model),
      report.plot_samples(samples))
  pairs = min(6, len(x) // 2)
  if pairs:  # a split of one example has no pair
    x_a, x_b = x[0:2 * pairs:2], x[1:2 * pairs:2]
    lin = interpolate(run, x_a, x_b, 10, 'linear')
    sph = interpolate(run, x_a, x_b, 10, 'spherical')
    add('interpolations', 'Interpolations in latent space',
        f'Between the posterior means of pairs of {split} images: linear (lerp) and spherical '
        '(slerp) paths, decoded as E[x|h]; the outer columns are the two inputs.',
        report.plot_interpolations(display(x_a), display(x_b), lin, sph))
  dims = order[:10]
  bases = x[:2]
  add('traversals', 'Latent traversals',
      'The units of highest KL, largest first; each row sets one unit of the posterior mean of '
      'the input '
      f'to {TRAVERSAL_VALUES[0]:g} .. {TRAVERSAL_VALUES[-1]:g} (prior standard deviations) and '
      'decodes E[x|h]; the first column shows the input and its reconstruction.',
      report.plot_traversals(display(bases), reconstruct(run, bases),
                             traverse(run, bases, dims), dims, TRAVERSAL_VALUES, kl[dims]))
  colours = colour_features(arrays)
  names = class_names(config.data, colours)
  proj, explained = pca(latents['mean'])
  add('latent_scatter', 'Posterior means',
      f'Each {split} example at its posterior mean: the two units of highest KL (top) '
      'and the first two principal components (bottom)'
      + (f', coloured by {", ".join(colours)}.' if colours else '.'),
      report.plot_latent_scatter(latents['mean'][:, dims[:2]], dims[:2], proj, explained,
                                 {k: arrays[k] for k in colours}, names))
  factors = factor_names(arrays)
  mig_result = None
  if factors:
    mig_result = mig(latents['mean'], {k: arrays[k] for k in factors}, num_bins)
    add('mig', 'Mutual information between latents and factors',
        f'I(z_j; v_k) / H(v_k) from {num_bins}-bin histograms of the posterior means over the '
        f'{len(arrays["image"])} {split} examples; MIG = {mig_result["mig"]:.3f} (the mean '
        'over factors of the gap between the two most informative units; boxed: the most '
        'informative unit of each factor).',
        report.plot_mig(mig_result))
  add('kl_per_unit', 'KL per latent unit',
      f'{_kl_per_unit_caption(run.experiment.model, units)}, averaged over the {split} split; '
      f'{units["active_units"]} active units (Var_x of the posterior mean '
      f'> {evaluate.ACTIVE_UNIT_THRESHOLD:g}).',
      report.plot_kl_per_unit(units))
  curves = training_curves(run.workdir)
  if curves['train'] or curves['eval']:
    add('training_curves', 'Training curves',
        'From metrics.jsonl: train records (means over each log interval) and full evaluations '
        f'per split; the dashed line marks the analysed step {run.step}.',
        report.plot_training_curves(curves, run.step))

  evals = eval_files(run.workdir, run.step)
  summary = {
      'workdir': run.workdir, 'out_dir': out_dir, 'step': run.step,
      'checkpoint_steps': list(run.steps), 'split': split,
      'num_examples': int(len(arrays['image'])),
      'dataset': config.data.name,
      'model': _model_description(config) + _params_description(config, params_kind, notes),
      'params': params_kind, **notes,
      'elbo': elbo,
      'eval_files': [{k: e[k] for k in ('path', 'step', 'split', 'k', 'record')} for e in evals],
      'units': {'kl_per_unit': [float(v) for v in kl],
                'mean_var': [float(v) for v in units['mean_var']],
                'active_units_per_group': [int(v) for v in units['active_units_per_group']],
                **{k: _plain(units.get(k)) for k in ('active_units', 'kl_per_unit_to',
                                                     'mutual_info', 'mutual_info_stderr',
                                                     'aggregate_kl', 'aggregate_kl_standard')}},
      'mig': None if mig_result is None else {
          'mig': mig_result['mig'], 'factors': mig_result['factors'],
          'gap': [float(g) for g in mig_result['gap']],
          'top_units': [int(u) for u in mig_result['top_units']], 'num_bins': num_bins},
      'figures': figures,
  }
  pages = report.write_pages(out_dir, summary)
  summary['index_html'], summary['summary_md'] = pages
  if tensorboard:
    summary['tensorboard'] = report.write_tensorboard_images(
        os.path.join(run.workdir, 'tensorboard'), run.step,
        {f'analysis/{f["name"]}': os.path.join(out_dir, f['file']) for f in figures})
  summary['seconds'] = round(time.perf_counter() - t0, 2)
  log(f'Wrote {len(figures)} figures, {pages[0]} and {pages[1]} in {summary["seconds"]:.1f} s.')
  return summary


def samples_caption(model):
  """The samples figure's caption: what the model declares its prior draws to be
  (capabilities.prior_description; N(0, T^2 I) for a model that declares none)."""
  caps = getattr(model, 'capabilities', None)
  drawn = getattr(caps, 'prior_description', None) or 'h ~ N(0, T^2 I)'
  return (f'{drawn} at each temperature T (the same random draws in every column), decoded: '
          'E[x|h] (top) and a true sample x ~ p(x|h) (bottom).')


def _kl_per_unit_caption(model, units):
  """What the KL-per-unit bars measure, from what the unit statistics say they are."""
  if units['kl_per_unit_to'] == 'standard_normal':
    return ('KL(q(h_j|x) || N(0, 1)) of each unit\'s marginal posterior (the model\'s mixture '
            'prior does not split over units; the ELBO\'s kl is to that prior)')
  if len(model.unit_groups) > 1:
    return ('Each unit\'s part of the kl term: KL(q(h_j|x, z_above) || p(h_j|z_above)) on the '
            'path sampled at the evaluation keys, so the bars add up to the reported kl')
  return 'KL(q(h_j|x) || p(h_j)) of each unit\'s marginal posterior'


def headline(summary):
  """The paths and headline numbers of an analyze() summary: scripts/analyze.py's JSON line.

  nll (with its standard error and K) is the newest evaluation file of the step and split made
  with the parameters the analysis shows (the EMA or the train state's), or None where
  scripts/evaluate.py made none.
  """
  elbo = summary['elbo']
  params = summary.get('params', 'state')
  nll = next((e['record'] for e in summary['eval_files'] if e['split'] == summary['split']
              and e['record'].get('params', 'state') == params
              and e['record'].get('nll') is not None), {})
  return {
      'workdir': summary['workdir'], 'step': summary['step'], 'split': summary['split'],
      'params': params,
      **{k: summary[k] for k in ('ema_init_weight', 'ema_warning') if k in summary},
      'index_html': summary['index_html'], 'summary_md': summary['summary_md'],
      'figures': [os.path.join(summary['out_dir'], f['file']) for f in summary['figures']],
      **{k: elbo[k] for k in ('neg_elbo', 'neg_elbo_stderr', 'recon', 'kl')},
      'nll': nll.get('nll'), 'nll_stderr': nll.get('nll_stderr'),
      'nll_num_samples': nll.get('num_samples'),
      'mig': summary['mig']['mig'] if summary['mig'] else None,
      'active_units': summary['units']['active_units'],
      'seconds': summary['seconds'],
  }


def _plain(v):
  v = np.asarray(v).item() if hasattr(v, 'dtype') or isinstance(v, np.generic) else v
  return v


def _params_description(config, kind, notes):
  """Which parameters the analysis shows, for the page (its model line)."""
  if kind != 'ema':
    return '; the train state\'s parameters'
  text = (f'; the EMA of the parameters (decay {config.ema_decay:g}, initial weight '
          f'{notes["ema_init_weight"]:.3g})')
  return text + (f' \u2014 WARNING: {notes["ema_warning"]}' if 'ema_warning' in notes else '')


def _model_description(config):
  """What the family declares it is (models.contract.Capabilities.description), and beta."""
  from vae_jax import models
  return f'{models.capabilities(config.model).description}, beta {config.objective.beta:g}'
