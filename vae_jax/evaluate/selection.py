"""Model selection: the checkpoint step a reader reports (`--step=best|last|S`) and the loop's
record of the best validation step with early stopping's count.

The selected step of a run is the saved step with the lowest validation neg_elbo (data.valid_split,
evaluated by the loop; ties go to the earlier step). The loop saves every evaluation that lowers
the best so far, whatever checkpoint_every_steps says, and Orbax keeps the best saved step beside
the newest checkpoint.keep (storage/checkpoint.py), so the selected step is always on disk. The test
split is never used to select.

Early stopping (config.early_stopping): an evaluation improves when it lowers the reference, the
value of the last improvement, by at least min_delta; after `patience` evaluations without one the
run stops. The tracker travels in every checkpoint's meta, so a resumed run continues its count.
"""

import dataclasses
import math

from vae_jax.config import validation

STEP_CHOICES = ('best', 'last')
METRIC = 'neg_elbo'  # the one selection metric; storage.checkpoint ranks saved steps by it


def parse_step(value):
  """A --step flag's value: 'best' (the default, also for None), 'last', or a step number.

  Raises:
    validation.ConfigError: anything else, naming the choices.
  """
  if value is None:
    return 'best'
  if isinstance(value, int) and not isinstance(value, bool):
    return value
  text = str(value).strip().lower()
  if text in STEP_CHOICES:
    return text
  if text.isdigit():
    return int(text)
  raise validation.ConfigError(
      f'--step={value!r} is not a checkpoint step: use best (the step selected on the '
      'validation split, the default), last (the newest verified step) or a step number.')


def describe(value, step, split=None):
  """The `selected` text of a report: why this step."""
  where = f' ({split})' if split else ''
  return f'best validation{where} {METRIC} {value:.2f} at step {step}'


def choose(checkpointer, how, warn, steps=None):
  """The step a reader evaluates, and why: (step, selected text).

  steps: the checkpoint steps the reader checked (default: listed now); a step committed
  since (beside a live run) is never chosen.

  how: parse_step's value. 'best': the best ranked step whose files match their digest; a
  damaged one is passed over with a warning for the next best; where no saved step holds a
  validation evaluation (a run evaluated only at steps it did not save, or older than
  selection), the newest step, saying so. 'last': the newest step. A number: that step.
  Readers restore the step with their usual checks (a damaged `last` or number falls back to an
  older verified step, warned).

  Raises:
    validation.ConfigError: a step number the run does not hold.
  """
  steps = checkpointer.all_steps() if steps is None else sorted(steps)
  if how == 'last':
    return steps[-1], f'the newest step {steps[-1]} (--step=last)'
  if how != 'best':
    if how not in steps:
      raise validation.ConfigError(
          f'--step={how}: the run has no checkpoint at that step; its checkpoints are at steps '
          f'{steps}.')
    return how, f'step {how} (--step={how})'
  for value, step in checkpointer.ranked_steps():
    if step not in steps:
      continue
    ok, why = checkpointer.verify(step)
    if ok:
      if not math.isfinite(value):
        return step, (f'step {step}: every saved validation evaluation is non-finite '
                      '(the run diverged); the earliest of them')
      return step, describe(value, step)
    warn(f'checkpoint step {step}, the best on validation ({METRIC} {value:.2f}), cannot be '
         f'used: {why}. Using the next best.')
  return steps[-1], (f'the newest step {steps[-1]}: no saved step holds a validation '
                     'evaluation to select by')


@dataclasses.dataclass
class Tracker:
  """The best validation step so far and early stopping's count (JSON in checkpoint metas).

  best_step -1: no evaluation yet. `reference` is the value of the last improvement by at
  least min_delta, `since_improvement` the evaluations after it.
  """
  best_step: int = -1
  best_value: float = math.inf
  reference: float = math.inf
  since_improvement: int = 0

  def update(self, step, value, min_delta):
    """Counts the evaluation of `step`; returns whether it is the new best (to be saved)."""
    value = float(value)
    if not math.isfinite(value):  # never selected over a finite one, never an improvement
      self.since_improvement += 1
      if self.best_step < 0:
        self.best_step = int(step)
        return True
      return False
    if value <= self.reference - min_delta or not math.isfinite(self.reference):
      self.reference, self.since_improvement = value, 0
    else:
      self.since_improvement += 1
    if value < self.best_value or self.best_step < 0:
      self.best_step, self.best_value = int(step), value
      return True
    return False

  def exhausted(self, patience):
    """Whether early stopping ends the run (patience 0: never)."""
    return patience > 0 and self.since_improvement >= patience

  def to_json(self):
    return {'best_step': self.best_step,
            'best_value': self.best_value if math.isfinite(self.best_value) else None,
            'reference': self.reference if math.isfinite(self.reference) else None,
            'since_improvement': self.since_improvement}

  @classmethod
  def from_json(cls, record):
    """A tracker from a checkpoint's meta (None: a run saved before selection, started fresh)."""
    if not isinstance(record, dict):
      return cls()
    inf = lambda v: math.inf if v is None else float(v)
    return cls(best_step=int(record.get('best_step', -1)),
               best_value=inf(record.get('best_value')),
               reference=inf(record.get('reference')),
               since_improvement=int(record.get('since_improvement', 0)))
