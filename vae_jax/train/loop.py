"""THE training loop, over a population of P >= 1 members (a single run is a population of one).

One iteration: one fused call of k = config.steps_per_call steps for every member (the looped
or vmapped chunk of vae_jax.train.population) -> the interval sums (on device) -> at a log
boundary one `train` record per member -> at a log or save boundary each member's guard (a run
of non-finite or skipped updates longer than the config allows fails the member: a `failed`
record and DIR/FAILED; a single run then raises) -> at an evaluation boundary each member's
periodic evaluation (vae_jax.evaluate.periodic), which updates its model selection (the best
validation step, always saved: vae_jax.evaluate.selection) -> at a save boundary each member's
checkpoint -> the stop conditions (a signal; config.max_train_seconds; early stopping) -> at the
end DONE.

Early stopping (config.early_stopping.patience evaluations without a validation improvement of
at least min_delta) ends the run cleanly: the step is saved, a `stop` record names the reason and
the selected step with its validation value (that step's evaluation records are the ones the
loop wrote when it reached it: the same program, parameters and keys), and DONE is written; a
rerun of the same config does nothing, one with more patience continues from the saved count.

A stop request (SIGTERM / SIGINT, or the budget) is honoured at the first boundary after it: the
members are saved there and a `stop` record says why; no DONE, and the same command resumes
exactly. A member's DIR/STOP_REQUEST (vae_jax.storage.requests: a search's pruner writes it) is
honoured at its next evaluation: that member is saved, its `stop` record gives the file's reason
(`pruned`), no DONE, and the others of a population train on; while the file stays, a rerun
leaves the member as it is (deleting the file resumes it exactly). A rerun of a finished run
does nothing when DIR/DONE names its config; when only an evaluation field changed
(eval_num_samples, data.eval_split, ...), it runs the final evaluation of the saved step before
stamping DONE for the new config.
"""

import contextlib
import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import experiment, sharding
from vae_jax import state as state_lib
from vae_jax.config import validation
from vae_jax.data.feeder import ChunkFeeder
from vae_jax.evaluate import periodic
from vae_jax.evaluate import selection as selection_lib
from vae_jax.storage import checkpoint as ckpt_lib
from vae_jax.storage import lock as workdir_lock
from vae_jax.storage import requests
from vae_jax.storage import writers as metrics_lib
from vae_jax.train import members as members_lib
from vae_jax.train import population as pop_lib


class SkippedUpdatesError(RuntimeError):
  """The gradient-norm guard skipped more consecutive updates than the config tolerates."""


# ----------------------------------------------------------------------------------------------
# What the loop keeps between boundaries.


class IntervalSums:
  """The chunk sums of the steps since the last log boundary, kept on device.

  Every metric adds up, except the values at the interval's end (the momentum-tracked loss and
  the total of skipped steps) and the longest runs of non-finite and skipped steps with the step
  that ended each, which take the longer run.
  """
  END_VALUES = ('loss_momentum', 'skipped_total')
  RUNS = ('nonfinite_run', 'skipped_run')

  def __init__(self):
    self.sums = None

  def add(self, out):
    if self.sums is None:
      self.sums = out
      return
    new = jax.tree.map(jnp.add, self.sums, out)
    for key in self.END_VALUES:
      new[key] = out[key]
    for key in self.RUNS:
      longer = out[f'{key}_max'] > self.sums[f'{key}_max']
      new[f'{key}_max'] = jnp.where(longer, out[f'{key}_max'], self.sums[f'{key}_max'])
      new[f'{key}_max_step'] = jnp.where(longer, out[f'{key}_max_step'],
                                         self.sums[f'{key}_max_step'])
    self.sums = new

  def runs(self):
    """{'nonfinite_run_max', ..._max_step, 'skipped_run_max', ...} on the host, each [P]."""
    keys = [f'{k}_max{s}' for k in self.RUNS for s in ('', '_step')]
    return {k: np.asarray(v) for k, v in jax.device_get({k: self.sums[k] for k in keys}).items()}

  def take(self):
    """The interval's sums on the host (each [P], `steps` a scalar); starts a new interval."""
    sums, self.sums = sharding.to_host(self.sums), None
    return sums

  @staticmethod
  def train_record(sums, i, batch_size, seconds):
    """Member i's `train` record of the interval: means over its steps, the end values."""
    steps = int(sums['steps'])
    m = {k: np.asarray(v)[i] for k, v in sums.items() if k != 'steps'}
    rec = {'loss_momentum': float(m.pop('loss_momentum')),
           'nonfinite_steps': int(m.pop('nonfinite')),
           'skipped_steps': int(m.pop('skipped', 0)),       # updates the norm guard skipped
           'skipped_total': int(m.pop('skipped_total', 0))}  # ... since the run began
    for key in IntervalSums.RUNS:
      m.pop(f'{key}_max'), m.pop(f'{key}_max_step')
    rec.update({k: float(v) / steps for k, v in m.items()})
    rec['images_per_sec'] = steps * batch_size / seconds if seconds > 0 else float('nan')
    return rec


def guard(config, runs, i):
  """Why member i fails ('' if it does not): a run of non-finite or skipped steps in the
  interval longer than its config allows, with the steps it covered."""
  run, end = int(runs['nonfinite_run_max'][i]), int(runs['nonfinite_run_max_step'][i])
  if run > config.max_consecutive_nonfinite:
    return (f'{run} consecutive train steps (steps {end - run + 1} to {end}) had a non-finite '
            'loss or gradient (more than config.max_consecutive_nonfinite='
            f'{config.max_consecutive_nonfinite}); they were skipped and nothing new was '
            'saved. Lower the learning rate or enable clipping (config.optim.clip_norm).')
  run, end = int(runs['skipped_run_max'][i]), int(runs['skipped_run_max_step'][i])
  if config.max_consecutive_skipped and run > config.max_consecutive_skipped:
    o = config.optim
    return (f'{run} consecutive train steps (steps {end - run + 1} to {end}) had their update '
            'skipped by the gradient-norm guard (more than config.max_consecutive_skipped='
            f'{config.max_consecutive_skipped}); nothing new was saved. '
            + (f'A fixed optim.skip_threshold={o.skip_threshold:g} locks once the gradient '
               'norm stays above it (openai/vdvae#25): raise it, or use the adaptive rule '
               '(optim.skip_factor, with skip_threshold=0).' if o.skip_threshold > 0 else
               'The norm keeps growing faster than the adaptive rule follows: lower the '
               'learning rate, or raise optim.skip_factor.'))
  return ''


def any_process(flag):
  """Whether `flag` holds on any process (every process calls it at the same point)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  flags = multihost_utils.process_allgather(np.asarray(flag, np.int32))
  return bool(np.any(flags))


class StopConditions:
  """The requests to stop early: SIGTERM / SIGINT (a second one kills) and the wall-clock
  budget config.max_train_seconds, counted from `t_start`. In a multi-process job the processes
  agree (any process's signal or clock), so all of them stop at the same step.

  Use as a context manager (it installs the signal handlers); `check()` returns None,
  'signal' or 'max_train_seconds'.
  """

  def __init__(self, config, t_start):
    self.max_seconds = config.max_train_seconds
    self.t_start = t_start
    self._requested = False
    self._previous = {}

  def __enter__(self):
    import signal
    import threading
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    import signal
    del frame
    self._requested = True
    print(f'Received signal {signum}: finishing at the next boundary, then saving and exiting.',
          file=sys.stderr, flush=True)
    signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

  def signalled(self):
    return any_process(self._requested)

  def check(self):
    if self.signalled():
      return 'signal'
    if self.max_seconds > 0 and any_process(
        time.perf_counter() - self.t_start >= self.max_seconds):
      return 'max_train_seconds'
    return None

  def __exit__(self, *exc):
    import signal
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False


# ----------------------------------------------------------------------------------------------
# Entry points.


def train_and_evaluate(config, workdir):
  """Trains and evaluates a VAE as the config says; resumes from the workdir's checkpoints.

  Writes DIR/config.json (and config_history.jsonl), DIR/run.json, DIR/metrics.jsonl,
  TensorBoard events, DIR/images/*.png, DIR/checkpoints/ and DIR/DONE. The workdir is locked
  for the run's life: a second run on it is refused.

  A run stopped early (a signal, config.max_train_seconds spent, or DIR/STOP_REQUEST found at an
  evaluation) saves a checkpoint, writes a `stop` record saying why, and no DONE: the same
  command resumes it exactly (once DIR/STOP_REQUEST is deleted: while it stays, a rerun trains
  nothing). The budget
  stop also evaluates, as at the end; the signal stop does not (it must be quick). A run that
  diverges writes a `failed` record and DIR/FAILED, then raises.

  Returns:
    {'step': final step, 'compile_s': seconds to compile the fused chunk, 'eval': the last
    eval records by split ({} if none ran), 'num_devices': devices on the data axis,
    'state': the final TrainState, 'experiment': the Experiment, 'preempted': whether a
    signal stopped the run, 'stopped': None, 'signal', 'max_train_seconds', 'early_stopping' or
    'stop_request' (DIR/STOP_REQUEST; 'state' None where it was there before the run began)}.

  Raises:
    FloatingPointError, SkippedUpdatesError: the run diverged (after DIR/FAILED is written).
    validation.ConfigError: DIR/FAILED says this config failed before.
  """
  t_start = time.perf_counter()  # config.max_train_seconds counts from here
  validation.validate_config(config)
  workdir = validation.validate_workdir(workdir)
  experiment.configure_jax(config)
  # Locked before the dataset is read, so a second run on a busy workdir stops at once.
  with workdir_lock.hold(workdir, jax.process_index()):
    exp = experiment.build(config)
    log = print if jax.process_index() == 0 else (lambda *a, **k: None)
    out = run(exp, [members_lib.Member(0, exp, workdir, print_fn=log)], 'loop', t_start)
  m = out['members'][0]
  return {'step': out['step'], 'compile_s': out['compile_s'], 'eval': m['eval'],
          'num_devices': out['num_devices'], 'state': (out['state_list'] or [None])[0],
          'experiment': exp, 'preempted': out['stopped'] == 'signal', 'stopped': out['stopped']}


def train_population(configs, workdirs, mode='auto', log=print):
  """Trains the members (configs[i] into workdirs[i]) as one population, compiled once.

  mode: 'vmap' (the step vmapped over the stacked states), 'loop' (the one compiled chunk
  applied to each member in turn) or 'auto' (see population.resolve_mode). Both give each
  member the numbers of its own separate run (loop: bitwise; vmap: to float32 round-off). Each
  workdir ends up as train_and_evaluate would leave it. A member that fails is marked
  (DIR/FAILED) and the others go on; a member whose FAILED names its current config is left out.

  Returns:
    {'step', 'compile_s', 'mode', 'members': [{'workdir', 'status' ('done' | 'failed' |
    'preempted' (a signal) | 'stopped' (config.max_train_seconds spent) | 'stop_request' (its
    DIR/STOP_REQUEST: it left the population at that evaluation, or never joined)), 'step',
    'eval', 'reason'}], 'states': the stacked final states of the members that trained, 'preempted':
    whether a signal or the budget stopped it, 'stopped'}. Early stopping ends a population
    when every member has run out of patience (until then the others train on, and a member
    out of patience keeps its selected step: the numbers reported are that step's).
  """
  t_start = time.perf_counter()  # config.max_train_seconds counts from here, as in a run
  for c in configs:
    validation.validate_config(c)
  workdirs = [validation.validate_workdir(w) for w in workdirs]
  if len(set(workdirs)) != len(workdirs):
    raise validation.ConfigError('Two members of the population share a workdir.')
  pop_lib.check_population(configs, [os.path.basename(w) for w in workdirs])
  mode = pop_lib.resolve_mode(mode)
  experiment.configure_jax(configs[0])
  with contextlib.ExitStack() as locks:
    for w in workdirs:  # every member's workdir locked before any data is read
      locks.enter_context(workdir_lock.hold(w, jax.process_index()))
    base = experiment.build(configs[0])
    log = log if jax.process_index() == 0 else (lambda *a, **k: None)
    members = [members_lib.Member(i, dataclasses.replace(base, config=c), w,
                                  name=os.path.basename(w.rstrip('/')), print_fn=log)
               for i, (c, w) in enumerate(zip(configs, workdirs, strict=True))]
    return run(base, members, mode, t_start, log=log)


# ----------------------------------------------------------------------------------------------
# The loop.


def run(base, members, mode, t_start, log=print):
  """Trains the members (sharing base's mesh, model, data and loop fields) to the end.

  A single run (one member without a name) raises on its failure; a population marks the
  failed member and goes on. Returns train_population's dict.
  """
  config = base.config
  single = len(members) == 1 and not members[0].name
  for m in members:
    m.checkpointer = ckpt_lib.Checkpointer(m.workdir, m.config)
  result = {'step': 0, 'compile_s': 0.0, 'mode': mode, 'stopped': None, 'preempted': False,
            'num_devices': sharding.data_axis_size(base.mesh), 'states': None}
  try:
    left_out = []
    for m in members:
      why = members_lib.check_failed(m)
      if why and single:
        raise validation.ConfigError(
            f'This config failed before in {m.workdir} {why} It would fail again: change the '
            f'config (a lower learning rate, say), or delete {m.workdir}/FAILED to retry.')
      if why:
        m.failed = why
        m.log(f'failed before {why}: left out (change its config, or delete its FAILED file to '
              'retry).')
        left_out.append(m)
    for m in members:
      if not m.failed:
        m.stopped = _stop_request(m)
      if m.stopped:
        m.log(f'{requests.stop_request_path(m.workdir)} asks this run to stop ({m.stopped}): '
              'nothing is trained. Delete that file and run again to resume from the newest '
              'checkpoint.')
    live = [m for m in members if not (m.failed or m.stopped)]
    if not live:
      if any(m.stopped for m in members):
        newest = max((m.checkpointer.latest_step() or 0 for m in members), default=0)
        return _finish(members, [], newest, result, 'stop_request')
      log('Every member of the population failed before; nothing to train.')
      return _finish(members, [], 0, result, None)
    for slot, m in enumerate(live):
      m.slot = slot  # its place in the population's states
    states, step = members_lib.resume(live)
    for m in live:  # the selection and early stopping's count, as the restored step had them
      m.tracker = selection_lib.Tracker.from_json((m.meta or {}).get('selection'))
    if step % config.steps_per_call:
      raise validation.ConfigError(
          f'The checkpoint is at step {step}, which is not a multiple of config.steps_per_call='
          f'{config.steps_per_call}: fused chunks start at multiples of k. Resume with a '
          'steps_per_call that divides it (e.g. the one the run was started with).')
    for m in live:
      m.writer = metrics_lib.MetricWriter(m.workdir, resume_step=step)
      members_lib.record_start(m, step)
    if not single:
      log(f'Population of {len(live)} members ({mode}) from step {step}: '
          + ', '.join(m.name for m in live))
    result['step'] = step
    if step < config.num_train_steps and all(
        members_lib.is_done(m.workdir, m.config, step) for m in live):
      log(f'Nothing to do: DONE says this config finished at step {step} (early stopping).')
      return _finish(members, states, step, result, None)
    if step >= config.num_train_steps:
      _final_evaluations(base, live, states, step, log)
      return _finish(members, states, step, result, None)
    return _train(base, live, members, states, step, mode, single, t_start, result, log)
  finally:
    _close(members)


def _close(members):
  """Closes every member's checkpointer and writer, then raises the first error (a save that
  found the disk full, say): one member's failure leaves no other member's files open."""
  first = None
  for m in members:
    for thing in (m.checkpointer, m.writer):
      try:
        if thing is not None:
          thing.close()
      except Exception as e:  # noqa: BLE001 - raised below, after the others are closed
        first = first or e
  if first is not None:
    raise first


def _final_evaluations(base, live, states, step, log):
  """At a step >= num_train_steps: evaluates each member whose DONE does not name its config."""
  todo = [(m, s) for m, s in zip(live, states, strict=True)
          if not members_lib.is_done(m.workdir, m.config, step)]
  if len(todo) < len(live) or not todo:
    log(f'Nothing to do: step {step} >= num_train_steps {base.config.num_train_steps}.')
  if not todo:
    return
  _evaluators([m for m, _ in todo])
  for m, state in todo:
    m.log(f'Step {step} >= num_train_steps {m.config.num_train_steps}, but DONE does not name '
          'this config (an evaluation field changed, say): running the final evaluation.')
    m.last_eval = m.evaluator(step, *state_lib.eval_params(state))
    m.log(m.evaluator.summary(step))


def _evaluators(members):
  """One periodic evaluator per member; the compiled steps and the data shared by all of them
  (the seed is a traced argument of every evaluation program)."""
  first = None
  for m in members:
    if first is None:
      m.evaluator = first = periodic.PeriodicEval(m.exp, m.workdir, m.writer)
    else:
      m.evaluator = first.for_member(m.exp, m.workdir, m.writer)


def _train(base, live, members, states, step, mode, single, t_start, result, log):
  config = base.config
  feeder = ChunkFeeder(base, step)
  _evaluators(live)
  t0 = time.perf_counter()
  source, index = feeder(step)
  pop = pop_lib.compile_population(base, states, source, index, mode)
  result['compile_s'] = time.perf_counter() - t0
  progress = _progress(config, step, single and jax.process_index() == 0)
  sums, t_log, stopped = IntervalSums(), time.perf_counter(), None
  with StopConditions(config, t_start) as stop:
    while step < config.num_train_steps:
      sums.add(pop.apply(source, index))
      step += config.steps_per_call
      final = step >= config.num_train_steps
      stopped = None if final else stop.check()
      if not (final or stopped):  # prepare the next call's inputs while this one runs
        source, index = feeder(step)
      log_now = step % config.log_every_steps == 0 or final or stopped
      save_now = step % config.checkpoint_every_steps == 0 or final or stopped
      runs = sums.runs() if log_now or save_now else None
      if log_now:
        interval = sums.take()
        seconds = time.perf_counter() - t_log
        for m in _live(live):
          rec = IntervalSums.train_record(interval, m.slot, config.batch_size, seconds)
          if not single:
            rec['population_size'] = len(members)
          m.writer.write(step, 'train', rec)
          if single:
            _show_progress(progress, config, step, rec, m.log)
          if rec['skipped_steps']:
            m.log(f'step {step}: {rec["skipped_steps"]} updates skipped in this interval by the '
                  f'gradient-norm guard ({rec["skipped_total"]} since the start).')
        if not single:
          _show(live, interval, step, config, log)
      if runs is not None:  # after the interval's records, before anything new is saved
        for m in _live(live):
          why = guard(m.config, runs, m.slot)
          if why:
            _fail(m, step, why, single, log)
      # Wait for the device before pausing the clock, so evaluation and saving never hide
      # compute of the chunk.
      pop.block()
      t_pause = time.perf_counter()
      did_eval = stopped != 'signal' and (step % config.eval_every_steps == 0 or final
                                          or stopped == 'max_train_seconds')
      best_now = set()  # members whose evaluation here is their best so far: always saved
      for m in _live(live) if did_eval else ():
        m.last_eval = m.evaluator(step, *state_lib.eval_params(pop.member(m.slot)))
        if not single:
          m.log(m.evaluator.summary(step))
        elif jax.process_index() == 0:
          progress.write(m.evaluator.summary(step))
        valid = m.last_eval.get(m.config.data.valid_split, {})
        if selection_lib.METRIC in valid and m.tracker.update(
            step, valid[selection_lib.METRIC], m.config.early_stopping.min_delta):
          best_now.add(m.index)
      for m in _live(live) if did_eval else ():  # after its evaluation: the value it stops on
        m.stopped = _stop_request(m)
        if m.stopped:
          _stop_member(m, step, pop, t_start, did_eval)
          if not _live(live):
            stopped = 'stop_request'
      if did_eval and not (final or stopped) and _live(live) and all(
          m.tracker.exhausted(m.config.early_stopping.patience) for m in _live(live)):
        stopped, save_now = 'early_stopping', True
      for m in _live(live):
        if save_now or m.index in best_now:
          _save(m, step, pop.member(m.slot), did_eval)
      if not (final or stopped) and (did_eval or save_now) and stop.signalled():
        stopped = 'signal'  # arrived during the evaluation or the save: stop here, not later
        for m in _live(live):
          if not (save_now or m.index in best_now):
            _save(m, step, pop.member(m.slot), did_eval)
      if not _live(live):
        if stopped != 'stop_request':
          log('Every member of the population failed; stopping.')
        break
      if stopped:
        break
      if sums.sums is None:  # evaluation and saving are not training throughput
        t_log = time.perf_counter()
      else:
        t_log += time.perf_counter() - t_pause
  progress.close()
  if stopped:
    for m in _live(live):  # a member stopped by its request wrote its own record
      record = {'reason': stopped, 'seconds': time.perf_counter() - t_start,
                'max_train_seconds': config.max_train_seconds,
                'num_train_steps': config.num_train_steps}
      if stopped == 'early_stopping':
        record.update(_early_stop_record(m))
      m.writer.write(step, 'stop', record)
  return _finish(members, [pop.member(m.slot) for m in live], step, result, stopped)


def _live(members):
  """The members still training: neither failed nor stopped by their DIR/STOP_REQUEST."""
  return [m for m in members if not (m.failed or m.stopped)]


def _stop_request(m):
  """The reason of the member's DIR/STOP_REQUEST, or '': the same answer on every process."""
  reason = requests.read_stop_request(m.workdir)
  if any_process(reason is not None):
    return reason or requests.DEFAULT_REASON  # another process's file (a workdir not shared)
  return ''


def _stop_member(m, step, pop, t_start, did_eval):
  """Honours the member's stop request at this evaluation: its checkpoint of the step, its `stop`
  record, no DONE; it leaves the population (in loop mode its chunk is no longer applied)."""
  _save(m, step, pop.member(m.slot), did_eval)
  t = m.tracker
  m.writer.write(step, 'stop', {
      'reason': m.stopped, 'request': requests.STOP_REQUEST_FILE,
      'seconds': time.perf_counter() - t_start, 'num_train_steps': m.config.num_train_steps,
      'selected_step': t.best_step,
      'selected': selection_lib.describe(t.best_value, t.best_step, m.config.data.valid_split)})
  pop.retire(m.slot)
  m.log(f'Stopped at step {step} by {requests.stop_request_path(m.workdir)} ({m.stopped}): '
        'checkpoint saved, no DONE. Delete that file and run the same command again to resume '
        'exactly from here.')


def _fail(m, step, why, single, log):
  """Marks the member failed: a `failed` record and DIR/FAILED; a single run raises."""
  m.failed = why
  m.writer.write(step, 'failed', {'reason': why})
  members_lib.write_failed(m.workdir, m.config, step, why)
  if single:
    error = SkippedUpdatesError if 'gradient-norm guard' in why else FloatingPointError
    raise error(why)
  m.log(f'FAILED at step {step}: {why} The other members go on.')


def _save(m, step, state, did_eval):
  if step in m.checkpointer.all_steps():
    return  # a member that was ahead already holds this step (the same bits: verified resume)
  valid = m.last_eval.get(m.config.data.valid_split) if did_eval else None
  m.checkpointer.save(step, state, m.config, m.exp.image_shape, valid,
                      selection=m.tracker.to_json())


def _early_stop_record(m):
  """What the `stop` record of early stopping adds: the selected step and its evaluation."""
  es, t = m.config.early_stopping, m.tracker
  return {'patience': es.patience, 'min_delta': es.min_delta,
          'evaluations_without_improvement': t.since_improvement,
          'selected_step': t.best_step,
          'selected': selection_lib.describe(t.best_value, t.best_step, m.config.data.valid_split)}


def _finish(members, states, step, result, stopped):
  """DONE for the members that finished; train_population's dict. states: those of the members
  that trained, in their order."""
  single = len(members) == 1 and not members[0].name
  for m in members:  # the last saves committed (a full disk raises here) before DONE or a stop
    m.checkpointer.wait()
  out = []
  for m in members:
    status = ('failed' if m.failed else 'stop_request' if m.stopped
              else 'preempted' if stopped == 'signal'
              else 'stopped' if stopped and stopped != 'early_stopping' else 'done')
    if status == 'done' and not members_lib.is_done(m.workdir, m.config, step):
      members_lib.write_done(m.workdir, m.config, step)
    out.append({'workdir': m.workdir, 'status': status, 'step': int(step),
                'eval': m.last_eval, 'reason': m.failed or m.stopped})
  if stopped == 'signal':
    what = 'checkpoint saved' if single else 'checkpoints saved, no DONE'
    members[0].print_fn(f'Stopped by a signal at step {step}: {what}. Run the same command '
                        'again to resume exactly from here.')
  elif stopped == 'early_stopping':
    for m in members:
      if not m.failed:
        m.log(f'Early stopping at step {step}: {m.tracker.since_improvement} evaluations without '
              'a validation improvement of at least early_stopping.min_delta='
              f'{m.config.early_stopping.min_delta:g}; selected: '
              f'{_early_stop_record(m)["selected"]}. DONE.')
  elif stopped == 'stop_request':
    pass  # each member said so where it stopped (or found its request at the start)
  elif stopped:
    c = members[0].config
    members[0].print_fn(
        f'Stopped at step {step} of {c.num_train_steps}: config.max_train_seconds='
        f'{c.max_train_seconds:g} is spent. Evaluated and saved; no DONE. Run the same command '
        'again (each run has its own budget) to resume exactly from here.')
  result.update(step=int(step), states=pop_lib.stack(states) if states and not single else None,
                state_list=states, members=out, stopped=stopped,
                preempted=stopped not in (None, 'early_stopping'))
  return result


def _show(members, interval, step, config, log):
  steps = int(interval['steps'])
  parts = [f'{m.name} {float(np.asarray(interval["loss"])[m.slot]) / steps:.3f}'
           for m in _live(members)]
  log(f'step {step}/{config.num_train_steps}: loss ' + ', '.join(parts))


def _show_progress(progress, config, step, rec, log):
  if progress.disable:  # not a terminal: one plain line per log interval
    log(f'step {step}/{config.num_train_steps}: loss {rec["loss"]:.3f}, neg_elbo '
        f'{rec["neg_elbo"]:.3f} nats/example, {rec["images_per_sec"]:.0f} images/s')
  else:
    progress.set_postfix(loss=f'{rec["loss"]:.2f}', neg_elbo=f'{rec["neg_elbo"]:.2f}',
                         img_s=f'{rec["images_per_sec"]:.0f}')
    progress.update(step - progress.n)


def _progress(config, start, enabled):
  """A tqdm bar on a terminal; disabled (plain log lines instead) when stderr is a file or pipe,
  where its carriage-return redraws would fill the log."""
  from tqdm import tqdm
  return tqdm(total=config.num_train_steps, initial=start,
              disable=not (enabled and sys.stderr.isatty()), unit='step', dynamic_ncols=True,
              mininterval=1.0)
