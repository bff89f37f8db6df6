"""Where a sweep's commands run: a local pool of subprocesses (with its GPU split) or a SLURM
job array through submitit; each finished job reported from its point's workdir and log.

Every job is a fresh process running the command a user would type (scripts/train.py for a
point, scripts/train_population.py for a vectorised population of points), its output appended
to the point's DIR/NAME/sweep.log.
"""

import datetime
import math
import os
import shutil
import subprocess
import sys
import time

from vae_jax.sweep.hyper import SweepError
from vae_jax.sweep.status import FAILED_FILE, failure_reason, point_status

# The repository root (vae_jax/sweep/ is two levels below it): the commands run from there.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_SCRIPT = os.path.join(REPO, 'scripts', 'train.py')
POPULATION_SCRIPT = os.path.join(REPO, 'scripts', 'train_population.py')
LOG_FILE = 'sweep.log'


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


def log_tail(point_dir, lines=20):
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


def _report_end(p, code, seconds, log):
  """One line per point of a finished job (a population reports each member); {name: code}."""
  members = p.get('members')
  if not members:
    if code == 0:
      stamp(log, f'finished {p["name"]} in {seconds:.1f} s')
    else:
      why = failure_reason(p['workdir']) if os.path.exists(
          os.path.join(p['workdir'], FAILED_FILE)) else None
      head = f'FAILED {p["name"]} {why}' if why else f'FAILED {p["name"]} (exit {code})'
      stamp(log, f'{head}; the end of {os.path.join(p["workdir"], LOG_FILE)}:\n'
             f'{log_tail(p["workdir"])}')
    return {p['name']: code}
  codes, unexplained = {}, False
  for m in members:
    status = point_status(m['workdir'], m['config'])
    if status == 'done':
      codes[m['name']] = 0
      stamp(log, f'finished {m["name"]} ({p["name"]}, {seconds:.1f} s)')
    elif status == 'failed':
      codes[m['name']] = 1
      stamp(log, f'FAILED {m["name"]} {failure_reason(m["workdir"])}')
    else:
      codes[m['name']] = code or 1
      unexplained = True
      stamp(log, f'FAILED {m["name"]}: {status} when the {p["name"]} ended (exit {code})')
  if unexplained:  # the population's own log says why
    stamp(log, f'the end of {os.path.join(p["workdir"], LOG_FILE)}:\n{log_tail(p["workdir"])}')
  return codes


def stamp(log, message):
  """Logs the message after the time of day."""
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
      stamp(log, f'started {p["name"]} (pid {proc.pid})')
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
  stamp(log, f'submitted {len(jobs)} jobs: {", ".join(j.job_id for j in jobs)}')
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
