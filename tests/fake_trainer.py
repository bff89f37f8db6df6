"""A stand-in for scripts/train.py in the search controller's tests: the trainer's workdir
protocol (the lock, metrics.jsonl's eval and train records, checkpoints/<step>/, DONE, FAILED,
the stop request at each evaluation, resume from the newest checkpoint) without JAX, so a
study of many trials runs in seconds. The real trainer's side of the protocol is tested in
tests/test_stop_request.py and by the search tests that train.

  python tests/fake_trainer.py --config=FILE --workdir=DIR [--config.KEY=VALUE ...]

The validation value at step s is a fixed function of the point (fake_value) plus 200 / s;
objective.beta above DIVERGE_BETA "diverges" at the first evaluation (FAILED, exit 1). Each
evaluation interval takes FAKE_STEP_SECONDS (environment; default 0.1) of sleep. Every start
appends {"from": step} to DIR/starts.jsonl.
"""

import ast
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vae_jax.config import failure  # noqa: E402
from vae_jax.storage import lock as workdir_lock  # noqa: E402
from vae_jax.storage import records, requests  # noqa: E402
from vae_jax.sweep import hyper, planning  # noqa: E402

DIVERGE_BETA = 7.5


def fake_value(config, step):
  """The validation neg_elbo the stand-in reports at `step`."""
  beta, latent = config.objective.beta, config.model.latent_dim
  return 50.0 + 10.0 * math.log(beta) ** 2 + (latent - 4) ** 2 + 200.0 / step


def parse(argv):
  config_path = workdir = None
  point = {}
  for arg in argv:
    key, _, text = arg.partition('=')
    if key == '--config':
      config_path = text
    elif key == '--workdir':
      workdir = text
    elif key.startswith('--config.'):
      try:
        value = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        value = text
      point[key[len('--config.'):]] = value
  module = planning.load_config_file(config_path)
  return hyper.apply_point(module.get_config(), point), workdir


def write(path, record):
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f)
  os.replace(path + '.tmp', path)


def main():
  config, workdir = parse(sys.argv[1:])
  os.makedirs(workdir, exist_ok=True)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  digest = hyper.config_digest(config)
  with workdir_lock.hold(workdir):
    if requests.read_stop_request(workdir) is not None:
      print('stop requested: nothing to train')
      return 0
    ckpts = os.path.join(workdir, 'checkpoints')
    os.makedirs(ckpts, exist_ok=True)
    start = max([int(n) for n in os.listdir(ckpts) if n.isdigit()] + [0])
    records.drop_after_step(metrics, start)
    records.append(os.path.join(workdir, 'starts.jsonl'), {'from': start})
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json(sort_keys=True))
    every, total = config.eval_every_steps, config.num_train_steps
    delay = float(os.environ.get('FAKE_STEP_SECONDS', '0.1'))
    for step in range(start + every, total + 1, every):
      time.sleep(delay)
      records.append(metrics, {'step': step, 'kind': 'train', 'loss': 1.0})
      if config.objective.beta > DIVERGE_BETA:
        reason = 'the loss became non-finite (a fake divergence)'
        records.append(metrics, {'step': step, 'kind': 'failed', 'reason': reason})
        write(os.path.join(workdir, 'FAILED'), {
            'step': step, 'reason': reason, 'config_sha256': digest,
            'failure_sha256': failure.failure_digest(config)})
        print(f'error: the run failed: {reason}')
        return 1
      value = fake_value(config, step)
      for split, shift in ((config.data.valid_split, 0.0), (config.data.eval_split, 0.5)):
        records.append(metrics, {'step': step, 'kind': 'eval', 'split': split,
                                 'neg_elbo': value + shift, 'neg_elbo_stderr': 0.2,
                                 'recon': value - 5, 'kl': 5.0})
      os.makedirs(os.path.join(ckpts, str(step)), exist_ok=True)
      reason = requests.read_stop_request(workdir)
      if reason is not None:
        records.append(metrics, {'step': step, 'kind': 'stop', 'reason': reason})
        print(f'stopped at step {step} ({reason})')
        return 0
    write(os.path.join(workdir, 'DONE'), {'step': total, 'config_sha256': digest})
  return 0


if __name__ == '__main__':
  sys.exit(main())
