"""The study runner: one controller process asks Optuna for trials (ask-and-tell), runs each as a
point of the sweep runner in DIR/<trial name>/, reports its validation evaluations as they
appear, asks the runs the pruner rejects to stop (DIR/<trial>/STOP_REQUEST) and tells each
trial's end from its workdir.

The trainer knows nothing of Optuna: a trial is `scripts/train.py` with the trial's values as
--config flags (or, with vectorize, one `scripts/train_population.py` for a batch of trials), and
everything the controller learns it reads from the trial's workdir. So a controller killed in
any way is replaced by running the same command: the trials it had asked are told from their
workdirs (finished ones), waited for (a live run holds the workdir), or resumed from their
checkpoints (no live run, not finished), never asked again. One controller per search folder
(its lock); controllers on other hosts share a study through a database or journal storage,
each with its own folder, each managing the trials it asked.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys
import time

from vae_jax.config import validation
from vae_jax.config.compat import vectorize_problem
from vae_jax.storage import lock as workdir_lock
from vae_jax.storage import requests
from vae_jax.sweep import space
from vae_jax.sweep import study as study_lib
from vae_jax.sweep.executors import (
  LOG_FILE,
  POPULATION_SCRIPT,
  REPO,
  TRAIN_SCRIPT,
  PointCommand,
  check_slurm,
  gpu_count,
  log_tail,
  stamp,
  worker_envs,
)
from vae_jax.sweep.hyper import SweepError
from vae_jax.sweep.planning import load_config_file, plan_points
from vae_jax.sweep.status import is_running, runner_lock

POLL_SECONDS = 0.25
BATCHES_DIR = 'batches'  # the --points_json files of vectorised batches


@dataclasses.dataclass
class Trial:
  """One trial this controller manages: its Optuna trial, point and workdir, what was reported."""
  number: int
  optuna_trial: object
  plan: dict              # planning.plan_points' dict: name, point, config, workdir, command
  reported: set = dataclasses.field(default_factory=set)
  stop_requested: bool = False
  launches: int = 0
  last_steps: int = 0

  @property
  def name(self):
    return self.plan['name']

  @property
  def workdir(self):
    return self.plan['workdir']


class LocalLauncher:
  """Jobs as subprocesses, `parallel` at once (GPUs split as for a sweep)."""

  def __init__(self, parallel, env):
    self.envs = worker_envs(parallel, gpu_count(), env)
    self.free = list(range(parallel))

  def capacity(self):
    return len(self.free)

  def start(self, jobs):
    for job in jobs:
      slot = self.free.pop(0)
      os.makedirs(job['log_dir'], exist_ok=True)
      logf = open(os.path.join(job['log_dir'], LOG_FILE), 'a')  # noqa: SIM115 - closed in poll
      logf.write(f'\n=== search: {" ".join(job["command"])}\n')
      logf.flush()
      proc = subprocess.Popen(job['command'], stdout=logf, stderr=subprocess.STDOUT,
                              env=self.envs[slot], cwd=REPO)
      job['handle'] = (proc, slot, logf)
      job['id'] = f'pid {proc.pid}'

  def poll(self, job):
    """None while the job runs, else its exit status (its slot freed)."""
    proc, slot, logf = job['handle']
    code = proc.poll()
    if code is not None:
      logf.close()
      self.free.append(slot)
    return code


class SlurmLauncher:
  """Jobs as SLURM job arrays through submitit (one array per batch of jobs started together)."""

  def __init__(self, workdir, env, partition='', gpus_per_task=1, time_limit_min=60,
               array_parallelism=8, cluster=None):
    check_slurm(cluster)
    import submitit
    self.executor = submitit.AutoExecutor(folder=os.path.join(workdir, 'submitit'),
                                          cluster=cluster)
    params = {'timeout_min': time_limit_min, 'slurm_array_parallelism': array_parallelism,
              'gpus_per_node': gpus_per_task, 'tasks_per_node': 1}
    if partition:
      params['slurm_partition'] = partition
    self.executor.update_parameters(**params)
    self.limit, self.running, self.env = array_parallelism, 0, dict(env)

  def capacity(self):
    return self.limit - self.running

  def start(self, jobs):
    for job in jobs:
      os.makedirs(job['log_dir'], exist_ok=True)
    handles = self.executor.map_array(
        PointCommand(), [j['command'] for j in jobs],
        [os.path.join(j['log_dir'], LOG_FILE) for j in jobs], [self.env] * len(jobs))
    for job, handle in zip(jobs, handles, strict=True):
      job['handle'], job['id'] = handle, f'SLURM job {handle.job_id}'
    self.running += len(jobs)

  def poll(self, job):
    handle = job['handle']
    if not handle.done():
      return None
    self.running -= 1
    try:
      handle.result()
      return 0
    except Exception:  # noqa: BLE001 - the trial's workdir and log say what happened
      return 1


def run_search(config_path, config, overrides, workdir, storage=None, study_name=None,
               num_trials=None, executor='local', parallel=1, vectorize=False,
               population_mode='auto', env=None, slurm=None, train_script=TRAIN_SCRIPT,
               log=print):
  """Checks the search, takes the folder's lock, runs the study to num_trials, writes results.

  Args:
    config_path: the config file (get_config, get_search).
    config: its config with the command line's overrides applied.
    overrides: those overrides as '--config.KEY=VALUE' flags (every trial gets them).
    workdir: the search folder: the trials' workdirs, search.json, the results (and the
      study's SQLite file by default).
    storage: an Optuna storage URL (None: sqlite in the folder; journal:PATH: a journal file).
    study_name: the study's name in the storage (default: the folder's name).
    num_trials: overrides the search's num_trials (the study's total, all controllers).
    executor: 'local' or 'slurm'; parallel: local: trials at once (with vectorize: the trials of
      one population).
    vectorize: batches of trials as one vectorised population (the search's keys must be
      traced scalars); population_mode: its auto | vmap | loop.
    env: the trials' environment; slurm: SlurmLauncher's keyword arguments.
    train_script: the program a trial runs (tests put a stand-in here).

  Returns:
    0 when every trial is accounted for and one completed, else 1.

  Raises:
    SweepError: a wrong search (before anything runs), a folder held by another controller
      (naming it), a different search in the folder or study, a storage that cannot be opened.
  """
  workdir = os.path.abspath(workdir)
  module = load_config_file(config_path)
  found = space.search_of(module, config_path)
  if num_trials is not None:
    if num_trials < 1:
      raise SweepError(f'--num_trials={num_trials} must be at least 1.')
    found = dataclasses.replace(found, num_trials=int(num_trials))
  objective = space.check(found, config, overrides, vectorize=vectorize)
  if executor not in ('local', 'slurm'):
    raise SweepError(f'--executor={executor!r} is not one of local, slurm.')
  launcher = (SlurmLauncher(workdir, env or os.environ, **(slurm or {})) if executor == 'slurm'
              else None)
  study_lib.optuna_module()  # the install hint before anything is written
  os.makedirs(workdir, exist_ok=True)
  try:
    lock = runner_lock(workdir).acquire()
  except workdir_lock.WorkdirLockedError as e:
    raise SweepError(str(e).replace('sweep runner', 'search controller')) from None
  try:
    url = storage or study_lib.default_storage(workdir)
    controller = Controller(config_path, config, overrides, workdir, found, objective, url,
                            study_name or os.path.basename(workdir), vectorize, population_mode,
                            max(1, parallel), launcher, dict(env or os.environ), train_script,
                            log)
    return controller.run()
  finally:
    lock.release()


class Controller:
  """The ask / run / report / prune / tell loop of one search folder (see run_search)."""

  def __init__(self, config_path, config, overrides, workdir, found, objective, url, study_name,
               vectorize, population_mode, parallel, launcher, env, train_script, log):
    self.config_path, self.config, self.overrides = config_path, config, list(overrides)
    self.workdir, self.found, self.url, self.study_name = workdir, found, url, study_name
    self.objective, self.field = objective
    self.valid_split = config.data.valid_split
    self.vectorize, self.population_mode, self.parallel = vectorize, population_mode, parallel
    self.launcher = launcher or LocalLauncher(1 if vectorize else parallel, env)
    self.train_script, self.log = train_script, log
    self.jobs, self.waited, self.pending = [], [], []  # running jobs; others' live runs; to run
    self.study = None

  def say(self, message):
    stamp(self.log, message)

  # -- the study ---------------------------------------------------------------------------------

  def open(self):
    """Opens (or creates) the study; refuses a folder or study that holds another search."""
    record = study_lib.search_record(self.config_path, self.overrides, self.found,
                                     self.objective, self.url, self.study_name)
    path = os.path.join(self.workdir, study_lib.SEARCH_FILE)
    if os.path.exists(path):  # checked before the storage is touched
      mine = study_lib.read_search(self.workdir)
      if not study_lib.same_search(mine, record) or mine.get('study_name') != self.study_name:
        raise SweepError(f'{path} holds a different search (config {mine.get("config")}, study '
                         f'{mine.get("study_name")!r}). Use a new --workdir for a different '
                         'search, or delete that one.')
      if not study_lib.same_storage(mine.get('storage', ''), record['storage']):
        raise SweepError(f'{path} keeps its study in {mine.get("storage")}, not in '
                         f'{record["storage"]}: pass --storage for that one (its trials are in '
                         'this folder), or use a new --workdir.')
    storage = study_lib.open_storage(self.url)
    self.study = study_lib.open_study(storage, self.study_name, self.found, self.config)
    held = self.study.user_attrs.get('search')
    if held is not None and not study_lib.same_search(held, record):
      raise SweepError(
          f'The study {self.study_name!r} in {study_lib.masked(self.url)} holds another search '
          f'(config {held.get("config")}, {held.get("search", {}).get("params")}). Use another '
          '--study_name (or --workdir), or delete that study.')
    if held is None:
      self.study.set_user_attr('search', record)
    study_lib.write_search(self.workdir, {**record, 'num_trials': self.found.num_trials})

  def mine(self, frozen):
    return frozen.user_attrs.get('search_dir') == self.workdir

  def plan(self, number, point):
    name = study_lib.trial_name(number, point)
    return plan_points(self.config_path, self.config, self.overrides, self.workdir, [name],
                       [point], train_script=self.train_script, what='trial')[0]

  def attach(self, frozen):
    """A Trial for a trial of the study this folder asked (from this or an earlier controller)."""
    optuna = study_lib.optuna_module()
    point = study_lib.point_of(self.found, frozen.params)
    trial = Trial(frozen.number, optuna.trial.Trial(self.study, frozen._trial_id),  # noqa: SLF001
                  self.plan(frozen.number, point))
    trial.reported = set(frozen.intermediate_values)
    trial.stop_requested = requests.read_stop_request(trial.workdir) is not None
    return trial

  def ask(self):
    number = len(self.study.trials)
    self.study.sampler = study_lib.sampler_for(self.found, number)
    optuna_trial = self.study.ask(study_lib.distributions(self.found))
    point = study_lib.point_of(self.found, optuna_trial.params)
    trial = Trial(optuna_trial.number, optuna_trial, self.plan(optuna_trial.number, point))
    for key, value in (('search_dir', self.workdir), ('name', trial.name),
                       ('host', study_lib.host())):
      optuna_trial.set_user_attr(key, value)
    values = ', '.join(f'{k.rsplit(".", 1)[-1]}={v:.4g}' if isinstance(v, float)
                       else f'{k.rsplit(".", 1)[-1]}={v}' for k, v in point.items())
    self.say(f'trial {trial.number} asked: {values}')
    return trial

  def remaining(self):
    return self.found.num_trials - len(self.study.trials)

  # -- the trials' workdirs ---------------------------------------------------------------------

  def report(self, trial, prune=True):
    """Reports the trial's new validation values; asks its run to stop where the pruner says."""
    recs = study_lib.read_records(trial.workdir)
    values = study_lib.validation_values(recs, self.valid_split, self.field)
    new = sorted(s for s in values if s not in trial.reported)
    for step in new:
      value = float(values[step])
      trial.optuna_trial.report(value if math.isfinite(value) else math.nan, step)
      trial.reported.add(step)
    if not (prune and new) or trial.stop_requested or self.found.pruner.kind == 'none':
      return
    if trial.optuna_trial.should_prune():
      step = new[-1]
      detail = (f'trial {trial.number} pruned by the {self.found.pruner.kind} pruner at step '
                f'{step}: validation {self.field} {values[step]:.4f}')
      requests.request_stop(trial.workdir, requests.DEFAULT_REASON, detail)
      trial.stop_requested = True
      self.say(f'trial {trial.number}: pruned at step {step} ({self.objective} '
               f'{values[step]:.3f}); its run stops at its next evaluation')

  def finish(self, trial, code=None):
    """Tells Optuna how the trial ended (from its workdir), or queues it to run on; code: the
    exit status of this controller's job (None: a run this controller did not start)."""
    optuna = study_lib.optuna_module()
    self.report(trial, prune=False)  # every value, before the end is told
    state, value, attrs = study_lib.trial_end(trial.workdir, trial.plan['config'],
                                              self.valid_split, self.field)
    if state == 'running':  # a job's process ended, but a run still holds the workdir
      self.waited.append(trial)
      return
    if state == 'unfinished':
      progressed = attrs['steps'] > trial.last_steps
      if code is None or (code == 0 and progressed):
        trial.last_steps = attrs['steps']
        self.say(f'trial {trial.number}: unfinished at step {attrs["steps"]}; resuming it')
        self.pending.append(trial)
        return
      state, attrs['reason'] = 'failed', (f'its run ended (exit status {code}) at step '
                                          f'{attrs["steps"]} without finishing: '
                                          + log_tail(trial.workdir, 3).strip().replace('\n', ' '))
    for key, v in attrs.items():
      if v is not None:
        trial.optuna_trial.set_user_attr(key, v)
    t = optuna.trial.TrialState
    if state == 'complete':
      self.study.tell(trial.number, value)
      self.say(f'trial {trial.number} complete: {self.objective} {value:.3f} at step '
               f'{attrs["selected_step"]} ({attrs["steps"]} steps)')
    elif state == 'pruned':
      self.study.tell(trial.number, state=t.PRUNED)
      self.say(f'trial {trial.number} pruned: stopped at step {attrs["steps"]}')
    else:
      self.study.tell(trial.number, state=t.FAIL)
      self.say(f'trial {trial.number} FAILED {attrs.get("reason", "")}; the study goes on')

  def launch(self, trials):
    """Starts the trials: each its own job, or (vectorize) one population of all of them."""
    ready = []
    for trial in trials:
      try:
        validation.validate_config(trial.plan['config'])
      except validation.ConfigError as e:
        trial.optuna_trial.set_user_attr('reason', f'invalid config: {e}')
        self.study.tell(trial.number, state=study_lib.optuna_module().trial.TrialState.FAIL)
        self.say(f'trial {trial.number} FAILED: its config is not valid: {e}')
        continue
      trial.launches += 1
      ready.append(trial)
    if not ready:
      return
    if self.vectorize and len(ready) > 1:
      jobs = [self.population_job(ready)]
    else:
      jobs = [{'trials': [t], 'command': t.plan['command'], 'log_dir': t.workdir} for t in ready]
    self.launcher.start(jobs)
    for job in jobs:
      names = ', '.join(str(t.number) for t in job['trials'])
      what = f'trials {names} as one population' if len(job['trials']) > 1 else f'trial {names}'
      self.say(f'started {what} ({job["id"]})')
    self.jobs += jobs

  def population_job(self, trials):
    os.makedirs(os.path.join(self.workdir, BATCHES_DIR), exist_ok=True)
    first = trials[0].number
    path = os.path.join(self.workdir, BATCHES_DIR, f'trials_{first:04d}.json')
    with open(path, 'w') as f:
      json.dump([{'name': t.name, 'overrides': t.plan['point']} for t in trials], f, indent=1)
    problem = vectorize_problem([(t.name, t.plan['config']) for t in trials])
    if problem:  # the space was checked: only its keys differ
      raise SweepError(problem)
    command = [sys.executable, POPULATION_SCRIPT, f'--config={os.path.abspath(self.config_path)}',
               f'--workdir={self.workdir}', f'--points_json={path}',
               f'--mode={self.population_mode}', *self.overrides]
    return {'trials': trials, 'command': command, 'log_dir': self.workdir}

  # -- the loop -------------------------------------------------------------------------------

  def reconcile(self):
    """The trials this folder asked that the study still counts as running: told, waited for,
    or queued to resume."""
    optuna = study_lib.optuna_module()
    live = [t for t in self.study.trials if self.mine(t)
            and t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)]
    for frozen in live:
      trial = self.attach(frozen)
      state = study_lib.trial_end(trial.workdir, trial.plan['config'], self.valid_split,
                                  self.field)[0]
      self.say(f'trial {trial.number} ({trial.name}): '
               + {'running': 'a live run holds its workdir: waiting for it',
                  'unfinished': 'not finished, no live run: resuming it from its checkpoint'}
               .get(state, f'{state}: telling the study'))
      if state == 'running':
        self.waited.append(trial)
      elif state == 'unfinished':
        self.pending.append(trial)
      else:
        self.finish(trial)

  def fill(self):
    """Starts queued trials, then newly asked ones, while the launcher has room: all that start
    together in one launch (one SLURM array; with vectorize, one population)."""
    while self.launcher.capacity() > 0 and (self.pending or self.remaining() > 0):
      room = self.parallel if self.vectorize else self.launcher.capacity()
      batch = self.pending[:room]  # resumed trials first (a population: they stopped together)
      self.pending = self.pending[len(batch):]
      if not batch:
        batch = [self.ask() for _ in range(min(room, self.remaining()))]
      self.launch(batch)

  def step(self):
    """One poll: reports, prunes, and ends the finished jobs and waited-for runs."""
    for job in list(self.jobs):
      for trial in job['trials']:
        self.report(trial)
      code = self.launcher.poll(job)
      if code is None:
        continue
      self.jobs.remove(job)
      for trial in job['trials']:
        self.finish(trial, code)
    for trial in list(self.waited):
      self.report(trial)
      if not is_running(trial.workdir):
        self.waited.remove(trial)
        self.finish(trial)

  def run(self):
    self.open()
    done = sum(1 for t in self.study.trials if not self.mine(t))
    self.say(f'study {self.study_name!r} in {study_lib.masked(self.url)}: '
             f'{len(self.study.trials)} of {self.found.num_trials} trials asked'
             + (f' ({done} by other controllers)' if done else '')
             + f'; objective {self.objective} (minimised), pruner {self.found.pruner.kind}')
    self.reconcile()
    while True:
      self.fill()
      self.step()
      if not (self.jobs or self.waited or self.pending) and self.remaining() <= 0:
        break
      time.sleep(POLL_SECONDS)
    from vae_jax.sweep.search_results import search_report
    rows = search_report(self.workdir, self.study, log=self.log)
    mine = [r for r in rows if r.get('dir', '') == '']
    open_states = [r for r in mine if r['state'] in ('running', 'waiting')]
    return 0 if any(r['state'] == 'complete' for r in rows) and not open_states else 1
