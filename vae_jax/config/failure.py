"""What identifies a failed run's config: the fields whose change cannot undo its failure.

A run that diverged (DIR/FAILED) would diverge again at the same step with a config that
differs only in fields that do not change its trajectory up to there: how often it logs,
evaluates or saves, what it evaluates, its budget, its data folders, its devices; and
num_train_steps, where the learning-rate schedule does not depend on it. Such a rerun leaves the
member out (a population, a sweep's status) or refuses (a single run). A change of any other
field (a lower learning rate, clipping, a looser max_consecutive_nonfinite) retries it.
JAX-free: the sweep's status reads it.
"""

import copy
import hashlib
import json

# Fields (a name covers its subtree) that do not change a run's trajectory.
FAILURE_NEUTRAL = (
    'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps', 'steps_per_call',
    'eval_batch_size', 'eval_num_samples', 'eval_chunk_size', 'images', 'checkpoint',
    'compilation_cache', 'mesh', 'max_train_seconds',
    'data.data_dir', 'data.manual_dir', 'data.download', 'data.eval_split',
)
# Schedules whose learning rate does not depend on num_train_steps.
LENGTH_FREE_SCHEDULES = ('constant',)


def failure_digest(config):
  """SHA-256 of the config without its FAILURE_NEUTRAL fields (sorted JSON)."""
  d = copy.deepcopy(config.to_dict())
  neutral = list(FAILURE_NEUTRAL)
  if d.get('optim', {}).get('schedule') in LENGTH_FREE_SCHEDULES:
    neutral.append('num_train_steps')
  for key in neutral:
    *parents, leaf = key.split('.')
    node = d
    for p in parents:
      node = node.get(p, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict):
      node.pop(leaf, None)
  return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()
