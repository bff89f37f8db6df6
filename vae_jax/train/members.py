"""The members of a run and their one resume path: restore or initialise, the common step, the
records a start writes, and the on-disk marks of a member's end (DONE, FAILED).

A single run is a population of one member. Every member resumes the same way:
1. a member whose DIR/FAILED names its current config failed before and would fail again: it is
   left out of a population, and a single run refuses to start (a FAILED of another config is
   removed: the changed config is retried);
2. each member restores its newest good checkpoint (digest-verified; see
   vae_jax.storage.checkpoint), else initialises (config.init_from, or scratch);
3. the population's common step is the newest step that every member holds verified (a member
   killed between the members' saves is a step ahead; one whose step failed its digest holds
   an older one), or 0, where every member starts through the same initialiser as in 2;
4. every member not at the common step restores it, and after the restore each member's state
   must be at that step, or the run refuses, naming the member: no member ever trains on other
   steps' batches.
"""

import dataclasses
import json
import os

import jax

from vae_jax import evaluate as eval_lib
from vae_jax import experiment
from vae_jax import state as state_lib
from vae_jax.config import compat, failure, validation
from vae_jax.storage import checkpoint as ckpt_lib
from vae_jax.storage import runinfo
from vae_jax.storage import writers as metrics_lib

DONE_FILE = 'DONE'
# {"step", "reason", "config_sha256"}: where and why a member failed (a divergence, say).
FAILED_FILE = 'FAILED'


@dataclasses.dataclass
class Member:
  """One member's run: its experiment (its own config), workdir, writers and end."""
  index: int
  exp: experiment.Experiment
  workdir: str
  name: str = ''          # the log prefix in a population ('' for a single run)
  slot: int = 0           # its place among the members that train (set by the loop)
  checkpointer: ckpt_lib.Checkpointer = None
  writer: metrics_lib.MetricWriter = None
  evaluator: object = None  # its vae_jax.evaluate.periodic.PeriodicEval
  meta: dict = None       # the meta of the checkpoint it restored (None: initialised)
  failed: str = ''        # why it failed, once it has
  stopped: str = ''       # the reason of the stop request it honoured (DIR/STOP_REQUEST)
  last_eval: dict = dataclasses.field(default_factory=dict)
  tracker: object = None  # its vae_jax.evaluate.selection.Tracker (set when it resumes)
  print_fn: object = print

  @property
  def config(self):
    return self.exp.config

  def log(self, message):
    self.print_fn(f'[{self.name}] {message}' if self.name else message)


# ----------------------------------------------------------------------------------------------
# Restore or initialise.


def run_dir(path):
  """A workdir, given either it or its checkpoints/ folder."""
  path = os.path.abspath(os.path.expanduser(path.rstrip('/')))
  return os.path.dirname(path) if os.path.basename(path) == 'checkpoints' else path


def restore_target_for(exp):
  """The restore target of a checkpoint of this run: its optional parts as they were saved."""
  return lambda meta: state_lib.restore_target(exp.abstract_state,
                                               eval_lib.saved_config(meta['config']))


def place(exp, state):
  """`state` on the shardings the compiled chunk expects (adapt makes new arrays)."""
  return jax.device_put(state, jax.tree.map(lambda a: a.sharding, exp.abstract_state))


def init_from_params(exp):
  """(parameters, step) of config.init_from's newest good checkpoint.

  Only the model must match (fine-tuning may change the data, the optimizer, the batch...):
  the source is restored into its own config's abstract state, then its parameters are kept.
  """
  config = exp.config
  source = ckpt_lib.Checkpointer(run_dir(config.init_from), config, create=False)
  try:
    steps = source.all_steps()
    if not steps:
      raise validation.ConfigError(f'config.init_from={config.init_from!r} holds no checkpoint.')
    meta = source.restore_meta(steps[-1])
    compat.check_compatible(meta['config'], config, config.init_from, only='model')
    if tuple(meta['image_shape']) != tuple(exp.image_shape):
      raise validation.ConfigError(
          f'config.init_from={config.init_from!r} was trained on images of shape '
          f'{tuple(meta["image_shape"])}, this run has {exp.image_shape}.')
    source_config = eval_lib.saved_config(meta['config'])
    abstract = experiment.abstract_state(source_config, exp.mesh, exp.image_shape)
    target = lambda m: state_lib.restore_target(abstract, eval_lib.saved_config(m['config']))
    check = lambda m: compat.check_compatible(m['config'], config, config.init_from,
                                                only='model')
    restored, meta = source.restore_good(target, check_config=check)
  finally:
    source.close()
  return restored.params, meta['step']


def initial_state(exp, log=print):
  """A member's state at step 0: config.init_from's parameters, or scratch."""
  config = exp.config
  if config.init_from:
    params, step = init_from_params(exp)
    log(f'Initialising parameters from {config.init_from} step {step}; training from step 0 '
        'with a fresh optimizer' + (' and an EMA starting there.' if config.ema_decay else '.'))
    return place(exp, state_lib.with_params(experiment.init_state(exp), params))
  log('Starting from scratch (no checkpoint in the workdir, no config.init_from).')
  return experiment.init_state(exp)


def restore_or_init(exp, checkpointer, log=print, step=None):
  """Resume order: a checkpoint in the workdir > config.init_from > scratch.

  Returns (state, meta of the restored checkpoint or None). On a resume the config's traced
  hyperparameters (learning rate, beta) take effect from the resumed step, and so do its
  stability options (state.adapt: an EMA or a skipping guard switched on starts there).

  step: the newest checkpoint step to consider (None: all); a population resumes its members
  at the step all of them hold.
  """
  config = exp.config
  check = lambda meta: compat.check_compatible(meta['config'], config, checkpointer.directory)
  state, meta = checkpointer.restore_good(restore_target_for(exp), step=step, check_config=check)
  if state is not None:
    log(f'Resuming from the workdir checkpoint at step {meta["step"]}.')
    state = state_lib.adapt(state, config).replace(
        hparams=state_lib.hparams_from_config(config))
    return place(exp, state), meta
  return initial_state(exp, log), None


def _holds(member, step):
  """Whether the member's checkpoints hold `step`, digest-verified."""
  c = member.checkpointer
  return step in c.all_steps() and c.verify(step)[0] is True


def resume(members):
  """Every member's state at the common step (see the module docstring); (states, step).

  Raises:
    validation.ConfigError: naming the member whose state is not at the common step after
      its restore.
  """
  states, steps = [], []
  for m in members:
    state, m.meta = restore_or_init(m.exp, m.checkpointer, m.log)
    states.append(state)
    steps.append(int(state.step))
  common = min(steps)
  if all(s == common for s in steps):
    return states, common
  held = sorted({s for m in members for s in m.checkpointer.all_steps() if 0 < s <= common})
  common = max([s for s in held
                if all(s == own or _holds(m, s) for m, own in zip(members, steps, strict=True))]
               + [0])
  for i, m in enumerate(members):
    if steps[i] == common:
      continue
    if common == 0:
      m.log(f'is at step {steps[i]}, but not every member holds a verified checkpoint of a '
            'step it has passed: it starts again from step 0 with the others, through its '
            'initialiser (its saved steps are kept and not saved again).')
      states[i], m.meta = initial_state(m.exp, m.log), None
    else:
      states[i], m.meta = restore_or_init(m.exp, m.checkpointer, m.log, step=common)
      m.log(f'is at step {steps[i]}; continues from the population\'s step {common}, the newest '
            'step every member holds verified (its newer saved steps are kept).')
    if int(states[i].step) != common:
      raise validation.ConfigError(
          f'{m.workdir}: restoring the population\'s common step {common} gave a state at step '
          f'{int(states[i].step)} (the checkpoint of step {common} did not restore: see the '
          'warnings above), so it cannot train beside the others. Run this point without '
          '--vectorize to finish it, then rerun the population.')
  return states, common


def record_start(member, step):
  """config.json, the config history, a record of every config change, and run.json."""
  m, config = member, member.config
  changes = []
  if m.meta is not None:
    changes = compat.config_changes(m.meta['config'], config)
    for key, old, new in changes:
      m.log(f'config.{key} changed from {old!r} to {new!r}: applied from step {step}.')
    if changes:
      m.writer.write(step, 'config_change', {k: new for k, _, new in changes})
  metrics_lib.write_config(m.workdir, config)
  metrics_lib.append_config_history(m.workdir, config, step, changes)
  runinfo.write_run_info(m.workdir, step)


# ----------------------------------------------------------------------------------------------
# The marks of a member's end: DONE (finished, with what) and FAILED (where and why).


def done_record(config, step):
  """What DONE holds: the final step and the hash of the config the run finished with."""
  return {'step': int(step), 'config_sha256': metrics_lib.config_digest(config)}


def _read(workdir, name):
  try:
    with open(os.path.join(workdir, name)) as f:
      record = json.load(f)
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) else None


def _write(workdir, name, record):
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, name)
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f)
    f.write('\n')
  os.replace(path + '.tmp', path)


def is_done(workdir, config, step):
  """Whether DIR/DONE says this config finished at `step`: nothing is left to do."""
  done = _read(workdir, DONE_FILE)
  return (done is not None and done.get('step') == int(step)
          and done.get('config_sha256') == metrics_lib.config_digest(config))


def write_done(workdir, config, step):
  _write(workdir, DONE_FILE, done_record(config, step))


def read_failed(workdir):
  """DIR/FAILED's record {'step', 'reason', 'config_sha256'}, or None."""
  return _read(workdir, FAILED_FILE)


def write_failed(workdir, config, step, reason):
  """DIR/FAILED: where and why, the config's digest and its failure digest (config.failure)."""
  _write(workdir, FAILED_FILE, {'step': int(step), 'reason': reason,
                                'config_sha256': metrics_lib.config_digest(config),
                                'failure_sha256': failure.failure_digest(config)})


def failed_with(record, config):
  """Whether a FAILED record names this config, or one whose change cannot undo the failure."""
  return record is not None and (
      record.get('config_sha256') == metrics_lib.config_digest(config)
      or record.get('failure_sha256') == failure.failure_digest(config))


def check_failed(member):
  """The reason the member's current config failed before ('' if it did not).

  A FAILED of a config that differs in a field that can change the failure (config.failure)
  is removed (the changed config is retried) and '' returned.
  """
  failed = read_failed(member.workdir)
  if failed is None:
    return ''
  if failed_with(failed, member.config):
    return f'at step {failed.get("step")}: {failed.get("reason")}'
  member.log(f'failed before at step {failed.get("step")} with another config; retrying with '
             'this one.')
  if jax.process_index() == 0:
    os.remove(os.path.join(member.workdir, FAILED_FILE))
  return ''
