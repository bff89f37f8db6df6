"""The sweep runner (JAX-free): every point of a sweep as a full run in its own workdir,
resumably, and the results read back from the workdirs.

- hyper: sweeps as data (the `h` of a config's get_sweep(h)), point names, points applied;
- plan: the points read, resolved, checked and recorded in DIR/sweep.json;
- status: a point's state from its workdir (done / running / failed / partial / new);
- executors: the local pool (with its GPU split) and SLURM through submitit;
- runner: run_sweep, the order of all of the above;
- results: DIR/results.csv, DIR/results.md and the plots, from the workdirs alone;
- space: searches as data (the `s` of a config's get_search(s)), checked against the config;
- study, search, search_results: the Optuna study over the same executors (ask-and-tell,
  pruning through DIR/<trial>/STOP_REQUEST), its storage, and its results.

The names below are the ones scripts and tests use as `sweep.NAME`.
"""

from vae_jax.sweep import hyper, space
from vae_jax.sweep.executors import (
    LOG_FILE,
    POPULATION_SCRIPT,
    TRAIN_SCRIPT,
    PointCommand,
    check_slurm,
    gpu_count,
    population_job,
    run_local,
    run_slurm,
    worker_envs,
)
from vae_jax.sweep.hyper import SweepError
from vae_jax.sweep.planning import (
    SWEEP_FILE,
    load_config_file,
    override_keys,
    plan,
    plan_points,
    read_sweep,
    record_sweep,
    sweep_points,
    sweep_record,
    validate_points,
)
from vae_jax.sweep.results import METRICS, point_row, report
from vae_jax.sweep.runner import run_sweep
from vae_jax.sweep.search import run_search
from vae_jax.sweep.search_results import search_report
from vae_jax.sweep.status import (
    FAILED_FILE,
    LOCK_FILE,
    is_running,
    point_status,
    read_done,
    read_failed,
    runner_lock,
)

__all__ = [
    'FAILED_FILE', 'LOCK_FILE', 'LOG_FILE', 'METRICS', 'POPULATION_SCRIPT', 'SWEEP_FILE',
    'TRAIN_SCRIPT', 'PointCommand', 'SweepError', 'check_slurm', 'gpu_count', 'hyper',
    'is_running', 'load_config_file', 'override_keys', 'plan', 'plan_points',
    'point_row', 'point_status',
    'population_job', 'read_done', 'read_failed', 'read_sweep', 'record_sweep', 'report',
    'run_local', 'run_search', 'run_slurm', 'run_sweep', 'runner_lock', 'search_report', 'space',
    'sweep_points', 'sweep_record', 'validate_points', 'worker_envs',
]
