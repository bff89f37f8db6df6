"""Vectorised populations: several runs that differ only in traced scalars, as one program.

Members may differ in `sweep.VECTORIZABLE` (seed, beta, KL warm-up, free bits, learning rate);
everything else (architecture, data, batch, loop) is shared: one process, one compile, one
data order, one batch per step fed to every member, one evaluation program. Two ways to run
the members' steps:
- vmap: their train states are stacked along a leading member axis [P, ...] and
  `train.make_train_step` is vmapped over it, so each step is one program over all members
  (what fills an accelerator that one small VAE leaves idle);
- loop: the single run's compiled chunk is applied to each member's state in turn. On a CPU,
  XLA's batched matmuls are slower than the same matmuls one after another, so there the
  population gains by sharing the process, the data, the compile and the evaluation
  programs, not by batching; and each member's numbers are bitwise those of its own run.
'auto' (the default) takes vmap on an accelerator and loop on a CPU. Each member keeps
- its own initialisation (from its seed) and posterior-sample stream (its state's key data);
- its own non-finite guard: the step's guard is per member, and a member that exceeds
  config.max_consecutive_nonfinite is reported, never saved again, and left out of the
  rest of the run; the others go on (vmapped members share no reduction, so its NaNs
  cannot reach them);
- its own workdir, exactly as a sequential run writes it: config.json, run.json, metrics.jsonl,
  checkpoints (each member's own slice of the state), pictures, the evaluations and DONE with
  its own config's digest, so the sweep's results and resume read it like any other run.

Placement (vmap): the member axis is replicated and the batch is sharded over the mesh's data
axis, as in a single run. Every member sees the same batch, so splitting the batch keeps every
device busy with every member, keeps each member's numbers independent of the device count,
and needs no cross-member communication; the cost is P copies of the parameters and optimizer
state on every device, small for the models where vectorising pays (on an accelerator a few
small VAEs cannot fill the chip on their own).

Resume: every member restores its own newest good checkpoint; the population continues from
the newest step all of them hold (a kill between two members' saves leaves one a step ahead:
it restores that common step too, and its saves of steps it already holds are kept, not
repeated). Either mode's program is deterministic, so a resumed population equals an
uninterrupted one bitwise.
"""

import contextlib
import copy
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import checkpoint as ckpt_lib
from vae_jax import (
  experiment,
  runinfo,
  sharding,
  sweep,
  validation,
  workdir_lock,
)
from vae_jax import metrics as metrics_lib
from vae_jax import state as state_lib
from vae_jax.train import loop as train


def check_population(configs, names=None):
  """ConfigError unless the configs can form one population (see sweep.vectorize_problem)."""
  if not configs:
    raise validation.ConfigError('A population needs at least one member.')
  names = names or [f'member {i}' for i in range(len(configs))]
  problem = sweep.vectorize_problem(list(zip(names, configs, strict=True)))
  if problem:
    raise validation.ConfigError(problem)


def stack(states):
  """[P] states -> one state whose every leaf has a leading member axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def member(states, i):
  """Member i's state out of a stacked population state."""
  return jax.tree.map(lambda a: a[i], states)


def jit_population_chunk(exp, abstract_states, backend):
  """train's fused chunk of the step vmapped over the member axis of the state: the data
  arguments are shared (not mapped), and the chunk sums come back per member, [P]."""
  vstep = jax.vmap(train.make_train_step(exp), in_axes=(0, None, None))
  return train.jit_train_chunk(exp, backend, vstep, abstract_states)


@dataclasses.dataclass
class _Member:
  """One member's run: its config, workdir and writers, and whether it is still training."""
  index: int
  exp: experiment.Experiment
  workdir: str
  checkpointer: ckpt_lib.Checkpointer
  writer: metrics_lib.MetricWriter = None
  evaluator: object = None
  meta: dict = None
  failed: str = ''
  last_eval: dict = dataclasses.field(default_factory=dict)


MODES = ('auto', 'vmap', 'loop')


def resolve_mode(mode):
  """'auto': vmap on an accelerator, loop on CPU (where XLA's batched matmuls are slower than
  the same matmuls one member after another)."""
  if mode not in MODES:
    raise validation.ConfigError(f'population mode {mode!r} is not one of {", ".join(MODES)}.')
  if mode == 'auto':
    return 'loop' if jax.default_backend() == 'cpu' else 'vmap'
  return mode


def train_population(configs, workdirs, mode='auto', log=print):
  """Trains the members (configs[i] into workdirs[i]) as one population, compiled once.

  mode: 'vmap' (the step vmapped over the stacked states), 'loop' (the one compiled chunk
  applied to each member in turn) or 'auto' (see resolve_mode). Both give each member the
  numbers of its own separate run (loop: bitwise; vmap: to float32 round-off). Each workdir
  ends up as train.train_and_evaluate would leave it (see the module docstring).

  Returns:
    {'step', 'compile_s', 'mode', 'members': [{'workdir', 'status' ('done' | 'failed' |
    'preempted' (a signal) | 'stopped' (config.max_train_seconds spent)), 'step', 'eval',
    'reason'}], 'states': the stacked final state, 'preempted': whether either stop came}.
  """
  t_start = time.perf_counter()  # config.max_train_seconds counts from here, as in train
  for c in configs:
    validation.validate_config(c)
  workdirs = [validation.validate_workdir(w) for w in workdirs]
  if len(set(workdirs)) != len(workdirs):
    raise validation.ConfigError('Two members of the population share a workdir.')
  check_population(configs, [os.path.basename(w) for w in workdirs])
  mode = resolve_mode(mode)
  experiment.configure_jax(configs[0])
  with contextlib.ExitStack() as stack_:
    for w in workdirs:  # every member's workdir locked before any data is read
      stack_.enter_context(workdir_lock.hold(w, jax.process_index()))
    base = experiment.build(configs[0])
    exps = [dataclasses.replace(base, config=c) for c in configs]
    is_main = jax.process_index() == 0
    return _train(base, exps, workdirs, mode, log if is_main else (lambda *a, **k: None),
                  is_main, t_start)


def _restore(members, log):
  """Every member's state at the newest step all of them hold."""
  states, steps = [], []
  for m in members:
    state, m.meta = train.restore_or_init(m.exp, m.checkpointer,
                                          lambda s, m=m: log(f'[{_name(m)}] {s}'))
    states.append(state)
    steps.append(int(state.step))
  common = min(steps)
  for i, m in enumerate(members):
    if steps[i] == common:
      continue
    if common == 0:
      state = experiment.init_state(m.exp)
    else:
      held = m.checkpointer.all_steps()
      if common not in held:
        raise validation.ConfigError(
            f'{m.workdir} is at step {steps[i]} but holds no checkpoint of step {common}, '
            f'where the rest of the population is ({held} are kept). Run the points without '
            '--vectorize to finish them.')
      state, m.meta = train.restore_or_init(m.exp, m.checkpointer, lambda s: None, step=common)
    log(f'[{_name(m)}] is at step {steps[i]}; continues from the population\'s step {common} '
        '(its saved steps are kept).')
    states[i] = state
  return states, common


def _name(m):
  return os.path.basename(m.workdir.rstrip('/'))


def _evaluators(members):
  """One periodic evaluator per member; compiled steps and the data shared between equal seeds
  (the evaluation keys come from the seed, a compile-time constant of the eval step)."""
  by_seed = {}
  for m in members:
    first = by_seed.get(m.exp.config.seed)
    if first is None:
      m.evaluator = by_seed[m.exp.config.seed] = train._PeriodicEval(  # noqa: SLF001
          m.exp, m.workdir, m.writer)
      continue
    ev = copy.copy(first)
    ev.exp, ev.workdir, ev.writer = m.exp, m.workdir, m.writer
    ev.picture_inputs, ev.last = None, {}
    m.evaluator = ev
  return members


class _Looped:
  """The 'loop' mode's population: the members' states side by side, one compiled chunk."""

  def __init__(self, states):
    self.states = list(states)

  def member(self, i):
    return self.states[i]

  @property
  def nonfinite_run(self):
    return jnp.stack([s.nonfinite_run for s in self.states])

  @property
  def skip(self):
    if self.states[0].skip is None:
      return None
    return {'run': jnp.stack([s.skip['run'] for s in self.states])}


def _compile(base, states, source, index, mode):
  """(population chunk: (states, source, index) -> (states, sums [P]), the states on device)."""
  config, rep = base.config, sharding.replicated(base.mesh)
  if mode == 'loop':
    chunk = train.jit_train_chunk(base, config.data.backend).lower(
        states[0], source, index).compile()

    def run(pop, source, index):
      outs = []
      for i, s in enumerate(pop.states):
        pop.states[i], out = chunk(s, source, index)
        outs.append(out)
      sums = {k: jnp.stack([o[k] for o in outs]) for k in outs[0] if k != 'steps'}
      sums['steps'] = outs[0]['steps']
      return pop, sums

    return run
  abstract = jax.eval_shape(lambda s: s, states)
  abstract = sharding.with_shardings(abstract, jax.tree.map(lambda _: rep, abstract))
  return jit_population_chunk(base, abstract, config.data.backend).lower(
      states, source, index).compile()


def _member_state(states, i):
  return states.member(i) if isinstance(states, _Looped) else member(states, i)


def _train(base, exps, workdirs, mode, log, is_main, t_start):
  config = base.config
  members = [_Member(i, e, w, ckpt_lib.Checkpointer(w, e.config))
             for i, (e, w) in enumerate(zip(exps, workdirs, strict=True))]
  states, step = _restore(members, log)
  if step % config.steps_per_call:
    for m in members:
      m.checkpointer.close()
    raise validation.ConfigError(
        f'The population resumes at step {step}, which is not a multiple of '
        f'config.steps_per_call={config.steps_per_call}.')
  for m in members:
    m.writer = metrics_lib.MetricWriter(m.workdir)
    train._record_config(m.workdir, m.exp.config, m.meta, step, m.writer,  # noqa: SLF001
                         lambda s, m=m: log(f'[{_name(m)}] {s}'))
    runinfo.write_run_info(m.workdir, step)
  rep = sharding.replicated(base.mesh)
  if mode == 'vmap':
    states = jax.device_put(stack(states), rep)
  result = {'step': step, 'compile_s': 0.0, 'preempted': False, 'mode': mode,
            'num_devices': sharding.data_axis_size(base.mesh)}
  log(f'Population of {len(members)} members ({mode}) from step {step}: '
      + ', '.join(_name(m) for m in members))
  if step >= config.num_train_steps:
    return _finish(members, _stacked(states), step, result, log, is_main, None)

  feeder = train.ChunkFeeder(base, step)
  _evaluators(members)
  t0 = time.perf_counter()
  source, index = feeder(step)
  chunk_fn = _compile(base, states, source, index, mode)
  if mode == 'loop':
    states = _Looped(states)
  result['compile_s'] = time.perf_counter() - t0
  acc, t_log = None, time.perf_counter()
  preempted = out_of_time = False
  with train._PreemptionFlag() as stop_requested:  # noqa: SLF001
    while step < config.num_train_steps:
      states, out = chunk_fn(states, source, index)
      step += config.steps_per_call
      acc = out if acc is None else train._accumulate(acc, out)  # noqa: SLF001
      final = step >= config.num_train_steps
      preempted = not final and stop_requested()
      out_of_time = (not (final or preempted)
                     and train._budget_spent(config, t_start))  # noqa: SLF001
      stopping = preempted or out_of_time
      if not (final or stopping):
        source, index = feeder(step)
      if step % config.log_every_steps == 0 or final or stopping:
        acc = sharding.to_host(acc)
        seconds = time.perf_counter() - t_log
        for m in _live(members):
          rec = train._train_record(_member_sums(acc, m.index), config.batch_size,  # noqa: SLF001
                                    seconds)
          rec['population_size'] = len(members)
          m.writer.write(step, 'train', rec)
        _show(members, acc, step, config, log)
        acc = None
      jax.block_until_ready(states.states if isinstance(states, _Looped) else states)
      t_pause = time.perf_counter()
      save_now = step % config.checkpoint_every_steps == 0 or final or stopping
      if save_now or step % config.log_every_steps == 0:
        _check_nonfinite(members, states, step, log)
      did_eval = not preempted and (step % config.eval_every_steps == 0 or final or out_of_time)
      for m in _live(members):
        if did_eval:
          m.last_eval = m.evaluator(step, *state_lib.eval_params(_member_state(states, m.index)))
          if is_main:
            log(f'[{_name(m)}] ' + m.evaluator.summary(step))
        if save_now:
          _save(m, step, _member_state(states, m.index), did_eval)
      if not _live(members):
        log('Every member of the population failed; stopping.')
        break
      if stopping:
        break
      if acc is None:
        t_log = time.perf_counter()
      else:
        t_log += time.perf_counter() - t_pause
  stopped = 'signal' if preempted else 'max_train_seconds' if out_of_time else None
  if stopped:
    for m in _live(members):
      m.writer.write(step, 'stop', {'reason': stopped, 'seconds': time.perf_counter() - t_start,
                                    'max_train_seconds': config.max_train_seconds,
                                    'num_train_steps': config.num_train_steps})
  return _finish(members, _stacked(states), step, result, log, is_main, stopped)


def _stacked(states):
  """The final states as one stacked pytree, whichever mode trained them."""
  if isinstance(states, _Looped):
    return stack(states.states)
  if isinstance(states, list):
    return stack(states)
  return states


def _live(members):
  return [m for m in members if not m.failed]


def _member_sums(acc, i):
  out = {k: np.asarray(v)[i] if np.ndim(v) else v for k, v in acc.items()}
  out['steps'] = acc['steps']
  return out


def _show(members, acc, step, config, log):
  steps = int(acc['steps'])
  parts = [f'{_name(m)} {float(np.asarray(acc["loss"])[m.index]) / steps:.3f}'
           for m in _live(members)]
  log(f'step {step}/{config.num_train_steps}: loss ' + ', '.join(parts))


def _save(m, step, state, did_eval):
  selection = m.last_eval.get(m.exp.config.data.valid_split) if did_eval else None
  if step in m.checkpointer.all_steps():
    return  # a member that was ahead already holds this step (verified on its restore path)
  m.checkpointer.save(step, state, m.exp.config, m.exp.image_shape, selection)


def _check_nonfinite(members, states, step, log):
  """Marks the members whose non-finite or skipped-update run exceeds its config's limit."""
  runs = np.asarray(jax.device_get(states.nonfinite_run))
  skip = states.skip
  skip_runs = None if skip is None else np.asarray(jax.device_get(skip['run']))
  for m in _live(members):
    c = m.exp.config
    run = int(runs[m.index])
    if run > c.max_consecutive_nonfinite:
      m.failed = (f'{run} consecutive train steps (steps {step - run + 1} to {step}) had a '
                  'non-finite loss or gradient (more than config.max_consecutive_nonfinite='
                  f'{c.max_consecutive_nonfinite}); they were skipped and nothing new was '
                  'saved. Lower the learning rate or enable clipping (config.optim.clip_norm).')
    elif skip_runs is not None and int(skip_runs[m.index]) > c.max_consecutive_skipped:
      run = int(skip_runs[m.index])
      m.failed = (f'{run} consecutive train steps (steps {step - run + 1} to {step}) had their '
                  'update skipped by the gradient-norm guard (more than '
                  f'config.max_consecutive_skipped={c.max_consecutive_skipped}); nothing new '
                  'was saved.')
    else:
      continue
    m.writer.write(step, 'failed', {'reason': m.failed})
    log(f'[{_name(m)}] FAILED at step {step}: {m.failed} The other members go on.')


def _finish(members, states, step, result, log, is_main, stopped):
  preempted = stopped is not None
  out = []
  for m in members:
    m.checkpointer.close()
    if m.writer is not None:
      m.writer.close()
    status = ('failed' if m.failed else 'preempted' if stopped == 'signal'
              else 'stopped' if stopped else 'done')
    if status == 'done' and is_main:
      with open(os.path.join(m.workdir, 'DONE'), 'w') as f:
        json.dump(train.done_record(m.exp.config, step), f)
        f.write('\n')
    out.append({'workdir': m.workdir, 'status': status, 'step': int(step),
                'eval': m.last_eval, 'reason': m.failed})
  if preempted:
    why = ('by a signal' if stopped == 'signal' else
           f'with config.max_train_seconds={members[0].exp.config.max_train_seconds:g} spent '
           '(evaluated)')
    log(f'Stopped {why} at step {step}: checkpoints saved, no DONE. Run the same command again '
        'to resume exactly from here.')
  result.update(step=int(step), states=states, members=out, preempted=preempted)
  return result
