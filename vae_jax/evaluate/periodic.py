"""The loop's periodic evaluations of a member: the full validation and test splits, and the
picture grids."""

import copy
import sys

import jax

from vae_jax import data as data_lib
from vae_jax.evaluate import elbo, iwae
from vae_jax.evaluate import pictures as pictures_lib
from vae_jax.evaluate import units as units_lib


class PeriodicEval:
  """The loop's evaluations: the validation split (model selection) and the test split
  (reporting only), full and exact, plus the picture grids.

  With config.eval_num_samples = K > 0 each record also holds the K-sample nll and the
  posterior gap (iwae.estimate, compiled once for the run). The validation record also
  counts active units, in all and per stochastic group. Records name the parameters
  they evaluated: params='ema' (the EMA, when config.ema_decay > 0: the loop passes
  state.eval_params) or 'state' (the train state's); the pictures show the same parameters.
  An EMA record holds `ema_init_weight`, and `ema_warning` while the EMA is still dominated by
  its starting parameters (also logged).
  """

  def __init__(self, exp, workdir, writer):
    self.exp, self.workdir, self.writer = exp, workdir, writer
    c = exp.config
    d = c.data
    self.splits = list(dict.fromkeys((d.valid_split, d.eval_split)))  # each split once
    self.step_fn = elbo.jit_eval_step(exp)
    self.num_samples = c.eval_num_samples
    self.chunk_size = c.eval_chunk_size or iwae.default_chunk_size(exp, c.eval_batch_size)
    self.estimate_step = (iwae.EstimateStep(exp, self.num_samples, self.chunk_size)
                          if self.num_samples else None)
    self.units_fn = units_lib.jit_unit_statistics_fn(exp, kl=False)  # active units only
    self.pictures = pictures_lib.make_picture_fn(exp)
    # The memory back end holds the eval splits once instead of re-reading them every time.
    self.arrays = {s: data_lib.load_arrays(d, s) if d.backend == 'memory' else None
                   for s in self.splits}
    self.picture_inputs = None
    self.last = {}

  def for_member(self, exp, workdir, writer):
    """This evaluator for another member of the population, of any seed: its compiled
    programs and the eval arrays shared (the seed reaches every program as a traced argument,
    the evaluation and prior keys of the member's own exp.config.seed), its own workdir,
    writer and picture inputs."""
    other = copy.copy(self)
    other.exp, other.workdir, other.writer = exp, workdir, writer
    other.picture_inputs, other.last = None, {}
    return other

  def __call__(self, step, params, params_kind='state', notes=None):
    self.last = {}
    notes = notes or {}
    if 'ema_warning' in notes and jax.process_index() == 0:
      print(f'WARNING: step {step}: evaluating the EMA of the parameters, but '
            f'{notes["ema_warning"]}', file=sys.stderr, flush=True)
    for split in self.splits:
      if self.num_samples:
        rec = iwae.estimate(self.exp, params, split, self.num_samples,
                            chunk_size=self.chunk_size, arrays=self.arrays[split],
                            step=self.estimate_step, units=False)
        rec = {k: v for k, v in rec.items() if k != 'per_example'}
      else:
        rec = elbo.evaluate(self.exp, params, split, eval_step=self.step_fn,
                            arrays=self.arrays[split])
      if split == self.splits[0]:
        # Active units (Var_x E_q[h_d] > 0.01) of the validation split, per stochastic group.
        units = units_lib.unit_statistics(self.exp, params, split, arrays=self.arrays[split],
                                          mutual_info=False, fn=self.units_fn)
        rec['active_units'] = units['active_units']
        rec['active_units_per_group'] = units['active_units_per_group']
      rec['params'] = params_kind
      rec.update(notes)
      self.writer.write(step, 'eval', rec)
      self.last[split] = rec
    split = self.exp.config.data.eval_split
    self.picture_inputs = pictures_lib.write_training_pictures(
        self.exp, self.workdir, step, params, self.pictures, self.picture_inputs,
        self.arrays[split])
    return self.last

  def summary(self, step):
    kind = next(iter(self.last.values()), {}).get('params', 'state')
    parts = [f'{s} neg_elbo {r["neg_elbo"]:.3f} +- {r["neg_elbo_stderr"]:.3f} = recon '
             f'{r["recon"]:.3f} + kl {r["kl"]:.3f}'
             + (f', nll(K={self.num_samples}) {r["nll"]:.3f} +- {r["nll_stderr"]:.3f}'
                if self.num_samples else '') for s, r in self.last.items()]
    return (f'step {step} ({"EMA" if kind == "ema" else "train state"} parameters): '
            + '; '.join(parts) + ' nats/example')
