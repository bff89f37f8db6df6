"""A sweep point's state read from its workdir alone: done, running, failed, stopped, partial or
new.

Before launching, every point's state is read here, so a sweep killed in any way is finished by
running the same command again: done points are skipped and interrupted runs resume from their
checkpoints. Nothing here imports JAX.
"""

import json
import os

from vae_jax.config import failure
from vae_jax.storage import lock as workdir_lock
from vae_jax.storage import requests
from vae_jax.sweep import hyper

# The lock a live run holds (vae_jax.storage.lock.lock_path, process 0).
LOCK_FILE = os.path.join('locks', 'process_0.lock')
# What the loop writes where a run or population member failed: {"step", "reason",
# "config_sha256"}.
FAILED_FILE = 'FAILED'


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
  """done | running | failed | stopped | partial | new.

  done: DIR/DONE names the digest of `config` (any finished run when config is None);
  a DONE of another config (num_train_steps raised since, say) is not done. failed: DIR/FAILED
  (the loop's mark of a run that failed, with its reason) names this config, or one that
  differs only in fields that cannot undo the failure (config.failure, the rule the loop uses
  to leave the member out); another change makes it partial or new again, and it is retried.
  stopped: DIR/STOP_REQUEST is there (vae_jax.storage.requests): the run stopped, or will stop
  at its next start, until the file is deleted; it is not launched.
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
  if requests.read_stop_request(point_dir) is not None:
    return 'stopped'
  ckpts = os.path.join(point_dir, 'checkpoints')
  if os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts)):
    return 'partial'
  return 'new'


def failure_reason(point_dir):
  """'at step S: REASON' from the point's DIR/FAILED, or None."""
  failed = read_failed(point_dir)
  if failed is None:
    return None
  return f'at step {failed.get("step")}: {failed.get("reason")}'
