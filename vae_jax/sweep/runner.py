"""A sweep run end to end: plan and check every point, take the sweep folder's runner lock,
run the points not yet done (locally or on SLURM, one by one or as one vectorised population),
then write the results.

Each point's state is read from its workdir before anything is launched, so running the same
command again finishes a sweep killed in any way.
"""

import os

from vae_jax.config.compat import vectorize_problem
from vae_jax.storage import lock as workdir_lock
from vae_jax.sweep.executors import check_slurm, population_job, run_local, run_slurm, stamp
from vae_jax.sweep.hyper import SweepError
from vae_jax.sweep.planning import plan, record_sweep, sweep_record, validate_points
from vae_jax.sweep.results import report
from vae_jax.sweep.status import failure_reason, point_status, runner_lock


def run_sweep(config_path, config, overrides, workdir, executor='local', parallel=1, env=None,
              slurm=None, vectorize=False, population_mode='auto', points=None,
              train_script=None, log=print):
  """Plans, checks, records and runs a sweep, then writes its report.

  Args:
    config_path: the sweep's config file.
    config: its config with the command line's overrides applied.
    overrides: those overrides as '--config.KEY=VALUE' flags.
    workdir: the sweep folder (one subfolder per point).
    executor: 'local' (subprocesses) or 'slurm' (a submitit job array).
    parallel: local: points at once.
    vectorize: train the points still to run as one vmapped population (one process, one
      compile); refused, before anything runs, unless they differ only in
      config.compat.VECTORIZABLE fields.
    population_mode: with vectorize, auto | vmap | loop (see vae_jax.train.population).
    env: the points' environment (default: this process's).
    slurm: keyword arguments of run_slurm.
    points: names of the points to run (None: all): the others are left as they are, and
      DIR/sweep.json records the whole sweep, so that running it later without `points` (or
      with others) grows the same folder.
    train_script: the program each point runs (tests put a stand-in here).
    log: where progress lines go.

  Returns:
    0 if every point run (or chosen) is done, else 1.
  """
  workdir = os.path.abspath(workdir)
  planned = plan(config_path, config, overrides, workdir, train_script=train_script)
  chosen = planned
  if points:
    names = [p['name'] for p in planned]
    unknown = [n for n in points if n not in names]
    if unknown:
      raise SweepError(f'--points names {", ".join(unknown)}, which the sweep does not have; '
                       f'its points are {", ".join(names)}.')
    chosen = [p for p in planned if p['name'] in points]
  env = dict(os.environ if env is None else env)
  if vectorize:
    problem = vectorize_problem([(p['name'], p['config']) for p in chosen])
    if problem:
      raise SweepError(problem)
  validate_points(planned)
  if executor == 'slurm':
    check_slurm((slurm or {}).get('cluster'))
  elif executor != 'local':
    raise SweepError(f'--executor={executor!r} is not one of local, slurm.')
  os.makedirs(workdir, exist_ok=True)
  # One runner per sweep folder: a second would launch the points the first runs.
  try:
    lock = runner_lock(workdir).acquire()
  except workdir_lock.WorkdirLockedError as e:
    raise SweepError(str(e)) from None
  try:
    return _run_locked(config_path, overrides, workdir, planned, chosen, points, executor,
                       parallel, env, slurm, vectorize, population_mode, log)
  finally:
    lock.release()


def _run_locked(config_path, overrides, workdir, planned, chosen, points, executor, parallel,
                env, slurm, vectorize, population_mode, log):
  record_sweep(workdir, sweep_record(config_path, overrides, planned), subset=points)
  if points:
    stamp(log, f'--points: {len(chosen)} of the sweep\'s {len(planned)} points')
  todo = []
  for p in chosen:
    status = point_status(p['workdir'], p['config'])
    why = failure_reason(p['workdir']) if status == 'failed' else (
        '(DIR/STOP_REQUEST: delete it to run the point on)' if status == 'stopped' else None)
    stamp(log, f'{p["name"]}: {status}' + (f' {why}' if why else ''))
    if status in ('new', 'partial'):
      todo.append(p)
  stamp(log, f'{len(chosen)} points, {len(todo)} to run')
  if vectorize and len(todo) > 1:
    todo = [population_job(config_path, overrides, workdir, todo, population_mode)]
    stamp(log, f'vectorised: {todo[0]["name"]} points in one process')
  if todo:
    if executor == 'local':
      run_local(todo, max(1, parallel), env, log)
    else:
      run_slurm(todo, workdir, env, log=log, **(slurm or {}))
  rows = report(workdir, planned, log=log)
  names = {p['name'] for p in chosen}
  failed = [r['name'] for r in rows if r['name'] in names and r['status'] == 'failed']
  bad = [r['name'] for r in rows if r['name'] in names and r['status'] not in ('done', 'failed')]
  if failed:
    stamp(log, f'failed: {", ".join(failed)} (see the reasons above; a point with the same '
           'config is not run again: change its config, or delete its FAILED file to retry)')
  if bad:
    stamp(log, f'not done: {", ".join(bad)}')
  return 1 if bad or failed else 0
