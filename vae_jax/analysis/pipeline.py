"""The analysis of one checkpoint: analyze() writes DIR/analysis/, headline() its JSON line.

`analyze(workdir)` (scripts/analyze.py) computes with `load`, `latents` and `disentanglement`,
draws with `figures`, and writes the PNG figures, index.html and summary.md (`page`) and the
figures as TensorBoard images. Also here: the run's split arrays and unit statistics, and the
captions saying what each figure shows.

Parameters: everything uses `run.params`, the run's EMA of the parameters where it keeps one
(config.ema_decay > 0), else the train state's; the summary and the page say which.
"""

import os
import time

import numpy as np

from vae_jax import data as data_lib
from vae_jax import evaluate
from vae_jax import state as state_lib
from vae_jax.analysis import figures, load, page
from vae_jax.analysis.disentanglement import MIG_BINS, colour_features, factor_names, mig
from vae_jax.analysis.latents import (
  TEMPERATURES,
  TRAVERSAL_VALUES,
  encode_split,
  interpolate,
  pca,
  prior_samples,
  reconstruct,
  traverse,
)
from vae_jax.analysis.load import run_params
from vae_jax.evaluate import selection
from vae_jax.evaluate.pictures import display, picture_inputs

# The folder of DIR that analyze() writes.
ANALYSIS_DIR = 'analysis'



def unit_statistics(run, split, arrays=None, params=None):
  """evaluate.unit_statistics of the run (KL per unit, active units, mutual information)."""
  stats = evaluate.unit_statistics(run.experiment, run_params(run, params), split, arrays=arrays)
  return {k: (np.asarray(v) if np.ndim(v) else v) for k, v in stats.items()}


def split_arrays(run, split=None):
  """The split's arrays (data.load_arrays), after checking the dataset and the split name.

  Raises:
    validation.ConfigError: an unknown split or a bad slice (the message names the splits).
    data.DatasetMissingError: the dataset is not prepared here (with the command that does).
  """
  from vae_jax.config import validation
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


def analyze(workdir, step='best', split=None, out_dir=None, *, device=None, tensorboard=True,
            temperatures=TEMPERATURES, num_bins=MIG_BINS, log=print):
  """Writes DIR/analysis/ for one checkpoint of a run: figures, index.html, summary.md.

  Args:
    workdir: the run's folder.
    step: 'best' (the default, also for None: the step selected on the run's validation
      split, as scripts/evaluate.py), 'last' (the newest good one) or a step number; the
      summary's `selected` says which and why.
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
  from vae_jax.config import validation
  log = log or (lambda *a, **k: None)
  t0 = time.perf_counter()
  how = selection.parse_step(step)
  workdir, config, steps = load.check_run(workdir, how if isinstance(how, int) else None)
  checkpointer = evaluate.reader_checkpointer(workdir, config)
  try:
    step, selected = selection.choose(checkpointer, how, evaluate.warn, steps)
  finally:
    checkpointer.close()
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
  run = load.load_run(workdir, step=step, device=device)
  config = run.config
  split = split or config.data.eval_split
  arrays = split_arrays(run, split)
  params, params_kind, notes = state_lib.eval_params(run.state)
  if run.step != step:
    selected = f'step {run.step}, the newest good step before {selected}'
  log(f'Selected: {selected}.')
  log(f'Analysing {run.workdir} at checkpoint step {run.step} on split {split!r} '
      f'({len(arrays["image"])} examples), '
      f'{"EMA" if params_kind == "ema" else "train state"} parameters -> {out_dir}')
  if 'ema_warning' in notes:
    log(f'WARNING: {notes["ema_warning"]}')

  elbo = evaluate.evaluate(run.experiment, params, split, arrays=arrays)
  units = unit_statistics(run, split, arrays)
  kl = units['kl_per_unit']
  order = [int(d) for d in np.argsort(-kl, kind='stable')]  # the units by KL, largest first
  latents = encode_split(run, arrays, split=split)
  x = picture_inputs(run.experiment, arrays, split)
  shown = display(x)
  made = []  # {name, file, title, caption}, name.png in out_dir

  def add(name, title, caption, fig):
    figures.save_figure(fig, os.path.join(out_dir, f'{name}.png'))
    made.append({'name': name, 'file': f'{name}.png', 'title': title, 'caption': caption})

  add('reconstructions', 'Reconstructions',
      f'The first {len(x)} {split} images, each above E[x|h] at its posterior mean.',
      figures.plot_reconstructions(shown, reconstruct(run, x)))
  samples = prior_samples(run, 32, temperatures)
  add('samples', 'Samples from the model', samples_caption(run.model),
      figures.plot_samples(samples, samples_title(run.model)))
  pairs = min(6, len(x) // 2)
  if pairs:  # a split of one example has no pair
    x_a, x_b = x[0:2 * pairs:2], x[1:2 * pairs:2]
    lin = interpolate(run, x_a, x_b, 10, 'linear')
    sph = interpolate(run, x_a, x_b, 10, 'spherical')
    add('interpolations', 'Interpolations in latent space',
        f'Between the posterior means of pairs of {split} images: linear (lerp) and spherical '
        '(slerp) paths, decoded as E[x|h]; the outer columns are the two inputs.',
        figures.plot_interpolations(display(x_a), display(x_b), lin, sph))
  dims = order[:10]
  bases = x[:2]
  add('traversals', 'Latent traversals',
      'The units of highest KL, largest first; each row sets one unit of the posterior mean of '
      'the input '
      f'to {TRAVERSAL_VALUES[0]:g} .. {TRAVERSAL_VALUES[-1]:g} (prior standard deviations) and '
      'decodes E[x|h]; the first column shows the input and its reconstruction.',
      figures.plot_traversals(display(bases), reconstruct(run, bases),
                              traverse(run, bases, dims), dims, TRAVERSAL_VALUES, kl[dims]))
  colours = colour_features(arrays)
  names = class_names(config.data, colours)
  proj, explained = pca(latents['mean'])
  add('latent_scatter', 'Posterior means',
      f'Each {split} example at its posterior mean: the two units of highest KL (top) '
      'and the first two principal components (bottom)'
      + (f', coloured by {", ".join(colours)}.' if colours else '.'),
      figures.plot_latent_scatter(latents['mean'][:, dims[:2]], dims[:2], proj, explained,
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
        figures.plot_mig(mig_result))
  add('kl_per_unit', 'KL per latent unit',
      f'{_kl_per_unit_caption(run.experiment.model, units)}, averaged over the {split} split; '
      f'{units["active_units"]} active units (Var_x of the posterior mean '
      f'> {evaluate.ACTIVE_UNIT_THRESHOLD:g}).',
      figures.plot_kl_per_unit(units))
  curves = load.training_curves(run.workdir)
  if curves['train'] or curves['eval']:
    add('training_curves', 'Training curves',
        'From metrics.jsonl: train records (means over each log interval) and full evaluations '
        f'per split; the dashed line marks the analysed step {run.step}.',
        figures.plot_training_curves(curves, run.step))

  evals = load.eval_files(run.workdir, run.step)
  summary = {
      'workdir': run.workdir, 'out_dir': out_dir, 'step': run.step, 'selected': selected,
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
      'figures': made,
  }
  written = page.write_pages(out_dir, summary)
  summary['index_html'], summary['summary_md'] = written
  if tensorboard:
    summary['tensorboard'] = page.write_tensorboard_images(
        os.path.join(run.workdir, 'tensorboard'), run.step,
        {f'analysis/{f["name"]}': os.path.join(out_dir, f['file']) for f in made})
  summary['seconds'] = round(time.perf_counter() - t0, 2)
  log(f'Wrote {len(made)} figures, {written[0]} and {written[1]} in {summary["seconds"]:.1f} s.')
  return summary


def samples_title(model):
  """The samples figure's title: the model's own prior draws (not N(0, T^2 I) for every family)."""
  drawn = model.capabilities.prior_description.replace('T^2', 'T\u00b2')
  return f'Prior draws {drawn}, decoded (same draws in every column)'


def samples_caption(model):
  """The samples figure's caption: what the model declares its prior draws to be
  (models.contract.Capabilities.prior_description)."""
  drawn = model.capabilities.prior_description
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
      'workdir': summary['workdir'], 'step': summary['step'],
      'selected': summary.get('selected'), 'split': summary['split'], 'params': params,
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
