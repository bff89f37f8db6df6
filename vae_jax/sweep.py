"""The sweep runner: every point of a sweep as a full run in its own workdir, resumably.

Each point runs as a fresh process with the command a user would type,
`python scripts/train.py --config=FILE --workdir=DIR/NAME --config.k=v ...`, so nothing is
pickled but command lines and JAX is never imported here: the parent only reads configs and
workdirs. Before launching, each point's state is read from its workdir (done / running /
partial / new), so a sweep killed in any way is finished by running the same command again:
done points are skipped and interrupted runs resume from their checkpoints.

Results (DIR/results.csv, DIR/results.md, DIR/neg_elbo_vs_KEY.png) are rebuilt from the
workdirs alone (`report`).
"""

import csv
import datetime
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback

from vae_jax import hyper, validation, workdir_lock
from vae_jax.config import failure
from vae_jax.hyper import SweepError
from vae_jax.storage import records as records_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_SCRIPT = os.path.join(REPO, 'scripts', 'train.py')
POPULATION_SCRIPT = os.path.join(REPO, 'scripts', 'train_population.py')
SWEEP_FILE = 'sweep.json'
LOG_FILE = 'sweep.log'
# The lock a live run holds (vae_jax.workdir_lock.lock_path, process 0).
LOCK_FILE = os.path.join('locks', 'process_0.lock')
# What the loop writes where a run or population member failed: {"step", "reason",
# "config_sha256"}.
FAILED_FILE = 'FAILED'
METRICS = ('neg_elbo', 'recon', 'kl', 'nll', 'posterior_gap')


def load_config_file(path):
  """The module of a config file (with the repository importable, as scripts/train.py has)."""
  if not os.path.isfile(path):
    raise SweepError(f'Config file {path} does not exist.')
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  spec = importlib.util.spec_from_file_location('_sweep_config', path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # noqa: BLE001 - the user's file: one line, not a traceback
    raise SweepError(f'Config file {path} cannot be loaded: {type(e).__name__}: {e}') from None
  return module


def sweep_points(module, path):
  """The points of the config file's get_sweep(h)."""
  if not hasattr(module, 'get_sweep'):
    raise SweepError(f'Config file {path} defines no get_sweep(h): nothing to sweep.')
  try:
    points = module.get_sweep(hyper)
  except SweepError:
    raise  # hyper's own message names the combinator and what to change
  except Exception as e:  # noqa: BLE001 - the user's code: one line, not a traceback
    raise SweepError(f'Config file {path}: get_sweep(h) raised {type(e).__name__}: {e}'
                     f'{_user_line(e, path)}.') from None
  return hyper.check_points(points)


def _user_line(error, path):
  """' (line N)' of the config file's last frame in the error's traceback, or ''."""
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if os.path.abspath(f.filename) == os.path.abspath(path)]
  return f' (line {frames[-1].lineno})' if frames else ''


def override_keys(overrides):
  """The keys of '--config.KEY=VALUE' flags."""
  return [o.split('=', 1)[0][len('--config.'):] for o in overrides]


def plan(config_path, config, overrides, workdir):
  """The sweep's points: name, overrides, resolved config, command; checked, nothing run.

  Args:
    config_path: the config file (defines get_config and get_sweep).
    config: its config with the command line's overrides applied (locked ConfigDict).
    overrides: those overrides as '--config.KEY=VALUE' flags, passed on to every point.
    workdir: the sweep's folder.

  Returns:
    A list of dicts {'name', 'point', 'config', 'workdir', 'command'}.

  Raises:
    SweepError: a point names a field that does not exist, has a value of the wrong type,
      or sets a key the command line sets too.
  """
  module = load_config_file(config_path)
  points = sweep_points(module, config_path)
  names = hyper.point_names(points)
  fixed = set(override_keys(overrides))
  planned = []
  seen = {}  # resolved config digest -> the point that resolved to it
  for name, point in zip(names, points, strict=True):
    both = fixed & set(point)
    if both:
      raise SweepError(f'Sweep point {point!r} sets {sorted(both)}, which the command line '
                       'sets too: drop the --config flag or the swept key.')
    resolved = hyper.apply_point(config, point)
    digest = hyper.config_digest(resolved)
    if digest in seen:
      raise SweepError(f'The sweep points {seen[digest]!r} and {point!r} set the same config '
                       '(once each field has its type), so they would train the same run twice. '
                       'Drop one of them.')
    seen[digest] = point
    point_dir = os.path.join(os.path.abspath(workdir), name)
    command = [sys.executable, TRAIN_SCRIPT, f'--config={os.path.abspath(config_path)}',
               f'--workdir={point_dir}', *overrides, *hyper.config_flags(point)]
    planned.append({'name': name, 'point': point, 'config': resolved, 'workdir': point_dir,
                    'command': command})
  return planned


# Fields a vectorised population may vary between its members: each enters the step as a
# traced value (state.hparams; the seed as the state's key data), so one compiled program
# serves them all.
VECTORIZABLE = ('seed', 'objective.beta', 'objective.kl_warmup_steps', 'objective.free_bits',
                'optim.learning_rate')
# Why the other fields must be equal, by prefix (the first that matches).
_STATIC_REASONS = (
    ('model.', 'it sets the architecture: parameter shapes and the compiled program'),
    ('data_seed', 'the members share one data order and one set of binarization draws'),
    ('data.', 'the members share one data pipeline and one batch per step'),
    ('batch_size', 'it sets the array shapes of the compiled step'),
    ('objective.', 'it selects the objective\'s computation or its shapes at trace time'),
    ('optim.', 'it selects the optimizer or the schedule\'s shape at trace time'),
    ('num_train_steps', 'the members share one loop (and the schedule\'s length)'),
    ('', 'the members share one loop, its intervals and its checkpoint policy'),
)


def _flat(config, prefix=''):
  out = {}
  for key, value in config.items():
    if hasattr(value, 'items'):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = value
  return out


def vectorize_problem(named_configs):
  """Why these (name, config) pairs cannot train as one vmapped population, or None.

  They can when they differ only in VECTORIZABLE fields; the answer names the first other
  field that differs, the two points and why the field is static.
  """
  if len(named_configs) < 2:
    return None
  (name0, c0), rest = named_configs[0], named_configs[1:]
  flat0 = _flat(c0.to_dict())
  for name, config in rest:
    flat = _flat(config.to_dict())
    for key in sorted(set(flat0) | set(flat)):
      if key in VECTORIZABLE or flat0.get(key) == flat.get(key):
        continue
      why = next(r for prefix, r in _STATIC_REASONS if key.startswith(prefix))
      return (f'points {name0} and {name} differ in {key} ({flat0.get(key)!r} vs '
              f'{flat.get(key)!r}), which cannot vary within a vectorised population: {why}. '
              f'Only {", ".join(VECTORIZABLE)} can. Run without --vectorize, or sweep that '
              'key in separate sweeps.')
  return None


def validate_points(planned):
  """validation.validate_config of every point, in this JAX-free process.

  Raises:
    SweepError: naming the first point whose config is invalid.
  """
  for p in planned:
    try:
      validation.validate_config(p['config'])
    except validation.ConfigError as e:
      raise SweepError(f'sweep point {p["name"]}: {e}') from None


def sweep_record(config_path, overrides, planned):
  return {'config': os.path.abspath(config_path), 'overrides': list(overrides),
          'points': [{'name': p['name'], 'overrides': p['point']} for p in planned]}


def record_sweep(workdir, record):
  """Writes DIR/sweep.json; refuses a DIR that holds a sweep of different points.

  The command line's overrides may change between invocations (raising num_train_steps
  extends every point: finished ones no longer match their DONE and resume).
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, SWEEP_FILE)
  if os.path.exists(path):
    old = _load_sweep_file(path)
    if json.loads(json.dumps(record['points'])) != old.get('points'):
      names = [p['name'] for p in old.get('points', [])]
      raise SweepError(
          f'{path} holds a different sweep (config {old.get("config")}, points '
          f'{", ".join(names)}). Use a new --workdir for a different sweep, or delete that '
          'one.')
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(record, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def read_sweep(workdir):
  path = os.path.join(workdir, SWEEP_FILE)
  if not os.path.exists(path):
    raise SweepError(f'{workdir} holds no {SWEEP_FILE}: not a sweep folder.')
  return _load_sweep_file(path)


def _load_sweep_file(path):
  """DIR/sweep.json's record; SweepError naming the file if it is damaged."""
  try:
    with open(path) as f:
      record = json.load(f)
  except (OSError, ValueError) as e:
    record, why = None, f'{type(e).__name__}: {e}'
  else:
    why = 'it holds no list of points'
  if not isinstance(record, dict) or not isinstance(record.get('points'), list):
    raise SweepError(
        f'{path} cannot be read ({why}). It is written whole or not at all, so something '
        'else damaged it. Rerun the sweep with its config into a new --workdir, or delete '
        'this file and rerun the same command here: the points\' workdirs are kept and done '
        'points are not run again.')
  return record


def runner_lock(workdir):
  """The sweep folder's runner lock (a `with` block); refused while another runner lives."""
  return workdir_lock.SweepLock(workdir)


def is_running(point_dir):
  """Whether a live process holds the run's lock (probed without refusing a run's start)."""
  return workdir_lock.is_held(point_dir, path=os.path.join(point_dir, LOCK_FILE))


def read_done(point_dir, name='DONE'):
  path = os.path.join(point_dir, name)
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def read_failed(point_dir):
  """DIR/FAILED's record {'step', 'reason', 'config_sha256'}, or None."""
  record = read_done(point_dir, FAILED_FILE)
  return record if isinstance(record, dict) else None


def point_status(point_dir, config=None):
  """done | running | failed | partial | new.

  done: DIR/DONE names the digest of `config` (any finished run when config is None);
  a DONE of another config (num_train_steps raised since, say) is not done. failed: DIR/FAILED
  (the loop's mark of a run that failed, with its reason) names this config, or one that
  differs only in fields that cannot undo the failure (config.failure, the rule the loop uses
  to leave the member out); another change makes it partial or new again, and it is retried.
  """
  if is_running(point_dir):
    return 'running'
  digest = None if config is None else hyper.config_digest(config)
  done = read_done(point_dir)
  if done is not None and (digest is None or done.get('config_sha256') == digest):
    return 'done'
  failed = read_failed(point_dir)
  if failed is not None and (digest is None or failed.get('config_sha256') == digest
                             or failed.get('failure_sha256') == failure.failure_digest(config)):
    return 'failed'
  ckpts = os.path.join(point_dir, 'checkpoints')
  if os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts)):
    return 'partial'
  return 'new'


def gpu_count():
  """GPUs that nvidia-smi lists (0 without it): read without importing JAX."""
  if shutil.which('nvidia-smi') is None:
    return 0
  try:
    out = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True, timeout=30,
                         check=False).stdout
  except (OSError, subprocess.SubprocessError):
    return 0
  return sum(1 for line in out.splitlines() if line.startswith('GPU '))


def worker_envs(parallel, num_gpus, base_env):
  """One environment per worker slot: its own GPUs, or a share of one GPU's memory."""
  envs = []
  for i in range(parallel):
    env = dict(base_env)
    if num_gpus and parallel <= num_gpus:
      per = num_gpus // parallel
      env['CUDA_VISIBLE_DEVICES'] = ','.join(str(g) for g in range(i * per, (i + 1) * per))
    elif num_gpus:
      # More workers than GPUs: workers share GPUs round-robin, each preallocating only its
      # share (JAX preallocates 75% of a GPU otherwise, and the second worker would fail).
      sharing = math.ceil(parallel / num_gpus)
      env['CUDA_VISIBLE_DEVICES'] = str(i % num_gpus)
      env['XLA_PYTHON_CLIENT_MEM_FRACTION'] = f'{0.9 / sharing:.3f}'
      env['XLA_PYTHON_CLIENT_PREALLOCATE'] = 'false'
    envs.append(env)
  return envs


def _log_tail(point_dir, lines=20):
  """The last lines of the point's latest attempt in its log, a traceback cut to its message.

  A run that stops for the user's setting (a divergence, a bad init_from) ends in a clear
  message; the frames of a traceback before it are noise to a sweep's reader (the whole
  traceback stays in the log).
  """
  try:
    with open(os.path.join(point_dir, LOG_FILE), errors='replace') as f:
      text = f.readlines()
  except OSError:
    return '(no log)'
  starts = [i for i, line in enumerate(text) if line.startswith('=== sweep')]
  text = text[starts[-1] + 1:] if starts else text
  kept, in_frames = [], False
  for line in text:
    if line.startswith('Traceback (most recent call last):'):
      in_frames = True
      continue
    if in_frames and (line.startswith('  ') or not line.strip()):
      continue  # a frame: its file and line, its code, the ^^^ marks
    in_frames = False
    if line.startswith(('The above exception was', 'During handling of the above')):
      continue
    kept.append(line)
  return ''.join(kept[-lines:])


def _failure(point_dir):
  """'at step S: REASON' from the point's DIR/FAILED, or None."""
  failed = read_failed(point_dir)
  if failed is None:
    return None
  return f'at step {failed.get("step")}: {failed.get("reason")}'


def _report_end(p, code, seconds, log):
  """One line per point of a finished job (a population reports each member); {name: code}."""
  members = p.get('members')
  if not members:
    if code == 0:
      _stamp(log, f'finished {p["name"]} in {seconds:.1f} s')
    else:
      why = _failure(p['workdir']) if os.path.exists(
          os.path.join(p['workdir'], FAILED_FILE)) else None
      head = f'FAILED {p["name"]} {why}' if why else f'FAILED {p["name"]} (exit {code})'
      _stamp(log, f'{head}; the end of {os.path.join(p["workdir"], LOG_FILE)}:\n'
             f'{_log_tail(p["workdir"])}')
    return {p['name']: code}
  codes, unexplained = {}, False
  for m in members:
    status = point_status(m['workdir'], m['config'])
    if status == 'done':
      codes[m['name']] = 0
      _stamp(log, f'finished {m["name"]} ({p["name"]}, {seconds:.1f} s)')
    elif status == 'failed':
      codes[m['name']] = 1
      _stamp(log, f'FAILED {m["name"]} {_failure(m["workdir"])}')
    else:
      codes[m['name']] = code or 1
      unexplained = True
      _stamp(log, f'FAILED {m["name"]}: {status} when the {p["name"]} ended (exit {code})')
  if unexplained:  # the population's own log says why
    _stamp(log, f'the end of {os.path.join(p["workdir"], LOG_FILE)}:\n{_log_tail(p["workdir"])}')
  return codes


def _stamp(log, message):
  now = datetime.datetime.now().strftime('%H:%M:%S')
  log(f'[{now}] {message}')


def run_local(todo, parallel, env, log=print):
  """Runs the points' commands, `parallel` at once; returns {name: exit status}."""
  envs = worker_envs(parallel, gpu_count(), env)
  free = list(range(parallel))
  queue = list(todo)
  running = {}
  codes = {}
  while queue or running:
    while queue and free:
      p = queue.pop(0)
      slot = free.pop(0)
      os.makedirs(p['workdir'], exist_ok=True)
      logf = open(os.path.join(p['workdir'], LOG_FILE), 'a')  # noqa: SIM115 - closed below
      logf.write(f'\n=== sweep: {" ".join(p["command"])}\n')
      logf.flush()
      proc = subprocess.Popen(p['command'], stdout=logf, stderr=subprocess.STDOUT,
                              env=envs[slot], cwd=REPO, start_new_session=False)
      running[proc.pid] = (proc, p, slot, logf, time.time())
      _stamp(log, f'started {p["name"]} (pid {proc.pid})')
    time.sleep(0.2)
    for pid in list(running):
      proc, p, slot, logf, t0 = running[pid]
      if proc.poll() is None:
        continue
      logf.close()
      del running[pid]
      free.append(slot)
      codes.update(_report_end(p, proc.returncode, time.time() - t0, log))
  return codes


class PointCommand:
  """A submitit job's function: one point's command, its output appended to its log.

  Not submitit.helpers.CommandFunction, which holds the output in memory until the command
  ends. `checkpoint` makes a timed-out task requeued like a preempted one: its command simply
  runs again and the run resumes from its own checkpoint.
  """

  def __call__(self, command, log_path, env):
    with open(log_path, 'a') as logf:
      logf.write(f'\n=== sweep (submitit): {" ".join(command)}\n')
      logf.flush()
      code = subprocess.run(command, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                            check=False).returncode
    if code:
      raise RuntimeError(f'exit status {code}; see {log_path}')
    return code

  def checkpoint(self, *args, **kwargs):
    from submitit.helpers import DelayedSubmission
    return DelayedSubmission(self, *args, **kwargs)


def run_slurm(todo, workdir, env, partition='', gpus_per_task=1, time_limit_min=60,
              array_parallelism=8, cluster=None, log=print):
  """The points' commands as one SLURM job array through submitit; waits; {name: status}."""
  check_slurm(cluster)
  import submitit
  executor = submitit.AutoExecutor(folder=os.path.join(workdir, 'submitit'), cluster=cluster)
  params = {'timeout_min': time_limit_min, 'slurm_array_parallelism': array_parallelism,
            'gpus_per_node': gpus_per_task, 'tasks_per_node': 1}
  if partition:
    params['slurm_partition'] = partition
  executor.update_parameters(**params)
  for p in todo:
    os.makedirs(p['workdir'], exist_ok=True)
  jobs = executor.map_array(PointCommand(), [p['command'] for p in todo],
                            [os.path.join(p['workdir'], LOG_FILE) for p in todo],
                            [dict(env)] * len(todo))
  _stamp(log, f'submitted {len(jobs)} jobs: {", ".join(j.job_id for j in jobs)}')
  t0 = time.time()
  codes = {}
  for p, job in zip(todo, jobs, strict=True):
    try:
      job.result()
      code = 0
    except Exception:  # noqa: BLE001 - a failed job is reported from its log, the others go on
      code = 1
    codes.update(_report_end(p, code, time.time() - t0, log))
  return codes


def check_slurm(cluster=None):
  """Refuses --executor=slurm where it cannot reach SLURM, before anything is written.

  Without srun and sbatch, submitit's AutoExecutor silently runs every point at once on this
  machine. cluster: submitit's cluster name; 'local' or 'debug' (tests) skips the check.
  """
  missing = [tool for tool in ('sbatch', 'srun') if shutil.which(tool) is None]
  if cluster in (None, 'slurm') and missing:
    raise SweepError(
        f'--executor=slurm: no SLURM here ({" and ".join(missing)} not found on PATH), and '
        'submitit would run every point at once on this machine. Run the sweep on the '
        "cluster's login node, or use --executor=local (--parallel=P runs P points at once).")
  try:
    import submitit  # noqa: F401
  except ImportError:
    raise SweepError("--executor=slurm needs submitit: pip install -e '.[slurm]'") from None


def population_job(config_path, overrides, workdir, todo, mode='auto'):
  """The points to run as one `scripts/train_population.py` command (its log: DIR/sweep.log).

  Its 'members' are the points: when it ends, each is reported by its own status.
  """
  command = [sys.executable, POPULATION_SCRIPT, f'--config={os.path.abspath(config_path)}',
             f'--workdir={workdir}', '--points=' + ','.join(p['name'] for p in todo),
             f'--mode={mode}', *overrides]
  return {'name': f'population of {len(todo)}', 'workdir': workdir, 'command': command,
          'members': list(todo)}


def run_sweep(config_path, config, overrides, workdir, executor='local', parallel=1, env=None,
              slurm=None, vectorize=False, population_mode='auto', log=print):
  """Plans, checks, records and runs a sweep, then writes its report.

  Args:
    config_path: the sweep's config file.
    config: its config with the command line's overrides applied.
    overrides: those overrides as '--config.KEY=VALUE' flags.
    workdir: the sweep folder (one subfolder per point).
    executor: 'local' (subprocesses) or 'slurm' (a submitit job array).
    parallel: local: points at once.
    vectorize: train the points still to run as one vmapped population (one process, one
      compile); refused, before anything runs, unless they differ only in VECTORIZABLE fields.
    population_mode: with vectorize, auto | vmap | loop (see vae_jax.population).
    env: the points' environment (default: this process's).
    slurm: keyword arguments of run_slurm.
    log: where progress lines go.

  Returns:
    0 if every point is done, else 1.
  """
  workdir = os.path.abspath(workdir)
  planned = plan(config_path, config, overrides, workdir)
  env = dict(os.environ if env is None else env)
  if vectorize:
    problem = vectorize_problem([(p['name'], p['config']) for p in planned])
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
    return _run_locked(config_path, overrides, workdir, planned, executor, parallel, env,
                       slurm, vectorize, population_mode, log)
  finally:
    lock.release()


def _run_locked(config_path, overrides, workdir, planned, executor, parallel, env, slurm,
                vectorize, population_mode, log):
  record_sweep(workdir, sweep_record(config_path, overrides, planned))
  todo = []
  for p in planned:
    status = point_status(p['workdir'], p['config'])
    why = _failure(p['workdir']) if status == 'failed' else None
    _stamp(log, f'{p["name"]}: {status}' + (f' {why}' if why else ''))
    if status in ('new', 'partial'):
      todo.append(p)
  _stamp(log, f'{len(planned)} points, {len(todo)} to run')
  if vectorize and len(todo) > 1:
    todo = [population_job(config_path, overrides, workdir, todo, population_mode)]
    _stamp(log, f'vectorised: {todo[0]["name"]} points in one process')
  if todo:
    if executor == 'local':
      run_local(todo, max(1, parallel), env, log)
    else:
      run_slurm(todo, workdir, env, log=log, **(slurm or {}))
  rows = report(workdir, planned, log=log)
  failed = [r['name'] for r in rows if r['status'] == 'failed']
  bad = [r['name'] for r in rows if r['status'] not in ('done', 'failed')]
  if failed:
    _stamp(log, f'failed: {", ".join(failed)} (see the reasons above; a point with the same '
           'config is not run again: change its config, or delete its FAILED file to retry)')
  if bad:
    _stamp(log, f'not done: {", ".join(bad)}')
  return 1 if bad or failed else 0


# ----------------------------------------------------------------------------------------------
# Results, from the workdirs alone.


def _read_jsonl(path):
  return records_lib.read_jsonl(path)


def _config_json(point_dir):
  try:
    with open(os.path.join(point_dir, 'config.json')) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _parse_time(text):
  try:
    return datetime.datetime.fromisoformat(text).timestamp()
  except (TypeError, ValueError):
    return None


def _wall_seconds(point_dir, done_step):
  """First start in run.json to DONE's mtime (None if unfinished)."""
  if done_step is None:
    return None
  try:
    with open(os.path.join(point_dir, 'run.json')) as f:
      run = json.load(f)
  except (OSError, ValueError):
    return None
  starts = [run, *run.get('previous', [])]
  times = [t for t in (_parse_time(s.get('started')) for s in starts) if t is not None]
  if not times:
    return None
  return os.path.getmtime(os.path.join(point_dir, 'DONE')) - min(times)


def point_row(point_dir, name, point, config=None):
  """One results row: the point's overrides, status, final step, wall time, final metrics."""
  row = {'name': name, **{k: hyper.render_value(v) for k, v in point.items()}}
  row['status'] = point_status(point_dir, config)
  done = read_done(point_dir)
  records = _read_jsonl(os.path.join(point_dir, 'metrics.jsonl'))
  evals = [r for r in records if r.get('kind') == 'eval']
  row['step'] = (done or {}).get('step', max((r['step'] for r in records), default=None))
  failed = read_failed(point_dir) if row['status'] == 'failed' else None
  row['reason'] = '' if failed is None else str(failed.get('reason', ''))
  if failed is not None and isinstance(failed.get('step'), int):
    row['step'] = failed['step']  # where it stopped, not a later record's step
  wall = _wall_seconds(point_dir, done and done.get('step'))
  row['wall_s'] = None if wall is None else round(wall, 1)
  cfg = _config_json(point_dir) or {}
  splits = {'valid': cfg.get('data', {}).get('valid_split', 'train[90%:]'),
            'test': cfg.get('data', {}).get('eval_split', 'test')}
  last = max((r['step'] for r in evals), default=None)
  for tag, split in splits.items():
    rec = next((r for r in reversed(evals) if r['step'] == last and r.get('split') == split), {})
    for m in METRICS:
      for suffix in ('', '_stderr'):
        if m + suffix in rec or m in ('neg_elbo', 'recon', 'kl'):
          row[f'{tag}_{m}{suffix}'] = rec.get(m + suffix)
  return row


def report(workdir, planned=None, log=print):
  """Prints the results table, then writes DIR/results.csv, DIR/results.md and one PNG per
  swept key; returns the rows.

  Raises:
    SweepError: after the table is printed, naming each file that could not be written
      (a read-only folder, say).
  """
  record = read_sweep(workdir)
  if planned is None:  # --report: from sweep.json and the workdirs alone
    entries = [(os.path.join(workdir, p['name']), p['name'], p['overrides'], None)
               for p in record['points']]
  else:
    entries = [(p['workdir'], p['name'], p['point'], p['config']) for p in planned]
  rows = [point_row(*e) for e in entries]
  keys = sorted({k for _, _, point, _ in entries for k in point})
  columns = ['name', *keys, 'status', 'step', 'wall_s']
  for row in rows:
    columns += [c for c in row if c not in columns]
  markdown = _markdown(rows, keys)
  log(markdown.rstrip('\n'))  # the numbers first, whatever can be written after
  unwritten = []

  def attempt(path, write):
    try:
      write(path)
    except OSError as e:
      unwritten.append(f'{path} ({e.strerror or e})')

  attempt(os.path.join(workdir, 'results.csv'), lambda path: _write_csv(path, rows, columns))
  attempt(os.path.join(workdir, 'results.md'), lambda path: _write_text(path, markdown))
  for key in keys:
    attempt(os.path.join(workdir, f'neg_elbo_vs_{_safe(key)}.png'),
            lambda path, key=key: _plot(path, rows, [
                (e[2], r) for e, r in zip(entries, rows, strict=True)], key, keys))
  if unwritten:
    raise SweepError(
        f'The results above could not be written: {"; ".join(unwritten)}. They are read from '
        'the points\' workdirs alone: run --report again where the folder can be written '
        '(or on a copy of it).')
  log(f'results: {os.path.join(workdir, "results.csv")}, results.md and '
      f'{len(keys)} plot(s)')
  return rows


def _write_csv(path, rows, columns):
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    for row in rows:
      writer.writerow({c: '' if row.get(c) is None else row.get(c) for c in columns})


def _write_text(path, text):
  with open(path, 'w') as f:
    f.write(text)


def _safe(key):
  return hyper._UNSAFE.sub('-', key)  # noqa: SLF001 - the same character rule as point names


def _fmt(value, err=None):
  if value is None:
    return ''
  text = f'{value:.3f}' if isinstance(value, float) else str(value)
  if err is not None:
    text += f' ± {err:.3f}'
  return text


def _best(rows):
  """The index of the finished row with the lowest validation neg_elbo (None if none)."""
  scored = [(r['valid_neg_elbo'], i) for i, r in enumerate(rows)
            if r.get('status') == 'done' and isinstance(r.get('valid_neg_elbo'), (int, float))]
  return min(scored)[1] if scored else None


def _markdown(rows, keys):
  """DIR/results.md: the table, the failed points' reasons, and how to read it."""
  best = _best(rows)
  metrics = [m for m in METRICS if any(f'test_{m}' in r for r in rows)]
  head = ['', 'name', *keys, 'status', 'step', 'wall (s)']
  head += [f'{tag} {m}' for tag in ('valid', 'test') for m in metrics]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for i, r in enumerate(rows):
    cells = ['**best**' if i == best else '', r['name'], *(str(r.get(k, '')) for k in keys),
             r['status'], _fmt(r.get('step')),
             '' if r.get('wall_s') is None else f"{r['wall_s']:.1f}"]
    cells += [_fmt(r.get(f'{tag}_{m}'), r.get(f'{tag}_{m}_stderr'))
              for tag in ('valid', 'test') for m in metrics]
    lines.append('| ' + ' | '.join(cells) + ' |')
  failed = [f'- {r["name"]} failed at step {r.get("step")}: {r["reason"]}'
            for r in rows if r['status'] == 'failed']
  if failed:
    lines += ['', *failed]
  note = ('\nBest point (lowest validation neg_elbo among the finished ones) marked. Values '
          'are the final evaluation, ± one standard error over the split\'s examples. wall: '
          'from the run\'s first start (run.json) to DONE, restarts and any gap between them '
          'included.\n')
  return '\n'.join(lines) + '\n' + note


def _plot(path, rows, pairs, key, keys):
  """neg_elbo (validation and test) against `key`, one line per setting of the other keys."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  others = [k for k in keys if k != key]
  groups = {}
  for point, row in pairs:
    if key not in point or not isinstance(point[key], (int, float)):
      continue
    label = ', '.join(f'{k}={point.get(k)}' for k in others if k in point)
    groups.setdefault(label, []).append((point[key], row))
  if not groups:
    return
  fig = Figure(figsize=(6.4, 4.4))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  xs_all = [x for g in groups.values() for x, _ in g]
  for label, members in sorted(groups.items()):
    members.sort(key=lambda m: m[0])
    for tag, style in (('valid', '--'), ('test', '-')):
      pts = [(x, r.get(f'{tag}_neg_elbo'), r.get(f'{tag}_neg_elbo_stderr') or 0.0)
             for x, r in members if r.get(f'{tag}_neg_elbo') is not None]
      if not pts:
        continue
      x, y, e = zip(*pts, strict=True)
      name = f'{tag}' + (f' ({label})' if label else '')
      ax.errorbar(x, y, yerr=e, fmt='o' + style, capsize=3, label=name)
  if min(xs_all) > 0 and max(xs_all) > 10 * min(xs_all):
    ax.set_xscale('log')
  elif all(isinstance(x, int) for x in xs_all):  # seeds, sizes: no ticks between integers
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel(key)
  ax.set_ylabel('neg_elbo (nats per example)')
  ax.set_title(f'final neg_elbo against {key}')
  ax.grid(True, alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
