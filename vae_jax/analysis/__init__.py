"""The analysis of a trained run: reload it, probe its latents, score them, draw and page it all.

Downstream of everything else: it reads what a workdir holds and never imports the trainer.

  load.py             `load_run(workdir)`: config, model and state on one device, no trainer
  latents.py          the model at chosen latents: posteriors, decodes, samples, paths, traversals
  disentanglement.py  ground-truth factors and the mutual information gap (MIG)
  pipeline.py         `analyze(workdir)` (scripts/analyze.py) writes DIR/analysis/ with all of it
  figures.py          the matplotlib figures (numpy in, a Figure out)
  page.py             index.html, summary.md and the figures as TensorBoard images

No module is named after a function re-exported here (`analysis.analyze` and `analysis.mig`
are functions, which would hide such a module). With the re-exports a notebook needs only the
package:

  from vae_jax import analysis
  run = analysis.load_run('/tmp/vae_sprites')
  arrays = analysis.split_arrays(run, 'test')
  latents = analysis.encode_split(run, arrays)          # posterior means and variances
  analysis.mig(latents['mean'], {k: arrays[k] for k in analysis.factor_names(arrays)})

Parameters: everything uses `run.params`, the run's EMA of the parameters where it keeps one
(config.ema_decay > 0), else the train state's; `run.params_kind` says which ('ema' or
'state'). Pass `params=` to any function to use others (e.g. `run.state.params`).
"""

from vae_jax.analysis.disentanglement import (
  MIG_BINS,
  colour_features,
  discretize,
  entropy,
  factor_names,
  mig,
  mutual_information,
)
from vae_jax.analysis.figures import (
  mosaic,
  plot_interpolations,
  plot_kl_per_unit,
  plot_latent_scatter,
  plot_mig,
  plot_reconstructions,
  plot_samples,
  plot_training_curves,
  plot_traversals,
  save_figure,
)
from vae_jax.analysis.latents import (
  TEMPERATURES,
  TRAVERSAL_VALUES,
  decode,
  encode_split,
  interpolate,
  lerp,
  pca,
  posterior,
  prior_samples,
  reconstruct,
  slerp,
  traverse,
)
from vae_jax.analysis.load import (
  EVAL_FILE,
  Run,
  RunNotFoundError,
  check_run,
  eval_files,
  load_run,
  run_params,
  training_curves,
)
from vae_jax.analysis.page import write_pages, write_tensorboard_images
from vae_jax.analysis.pipeline import (
  ANALYSIS_DIR,
  analyze,
  class_names,
  headline,
  samples_caption,
  samples_title,
  split_arrays,
  unit_statistics,
)
from vae_jax.evaluate.pictures import display, picture_inputs

__all__ = [
  'ANALYSIS_DIR', 'EVAL_FILE', 'MIG_BINS', 'TEMPERATURES', 'TRAVERSAL_VALUES', 'Run',
  'RunNotFoundError', 'analyze', 'check_run', 'class_names', 'colour_features', 'decode',
  'discretize', 'display', 'encode_split', 'entropy', 'eval_files', 'factor_names', 'headline',
  'interpolate', 'lerp', 'load_run', 'mig', 'mosaic', 'mutual_information', 'pca',
  'picture_inputs', 'plot_interpolations', 'plot_kl_per_unit', 'plot_latent_scatter',
  'plot_mig', 'plot_reconstructions', 'plot_samples', 'plot_training_curves',
  'plot_traversals', 'posterior', 'prior_samples', 'reconstruct', 'run_params',
  'samples_caption', 'samples_title', 'save_figure', 'slerp', 'split_arrays', 'training_curves',
  'traverse',
  'unit_statistics', 'write_pages', 'write_tensorboard_images',
]
