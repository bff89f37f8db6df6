"""Paired comparison of two evaluations of the same split, example by example.

  python scripts/compare_evals.py A.json B.json [--key=nll]

A and B are files scripts/evaluate.py wrote (DIR/eval/step_S_SPLIT_kK.json, or the .npz beside
it with the per-example values). Prints A's and B's means, the mean of the per-example
difference A - B with its paired standard error, and z = difference / standard error; the last
line is the same as one JSON object. Two runs evaluated on the same images err on mostly the
same images, so the paired standard error is much smaller than either mean's: it is the one
that says whether A and B differ.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_string('key', 'nll', 'The per-example value to compare (nll, neg_elbo, recon, kl, '
                    'kl/<group>, ...).')
FLAGS = flags.FLAGS


def main(argv):
  from vae_jax import evaluate
  from vae_jax.config import validation
  if len(argv) != 3:
    raise app.UsageError('Give two evaluation files: compare_evals.py A.json B.json.')
  try:
    out = evaluate.paired_difference(argv[1], argv[2], FLAGS.key)
  except validation.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  k = out['key']
  print(f'{k} per example over {out["num_examples"]} examples:\n'
        f'  A  {out["a"]:.3f} +- {out["a_stderr"]:.3f}\n'
        f'  B  {out["b"]:.3f} +- {out["b_stderr"]:.3f}\n'
        f'  A - B  {out["difference"]:.3f} +- {out["difference_stderr"]:.3f} (paired; '
        f'z = {out["z"]:.1f})')
  print(json.dumps(out))


if __name__ == '__main__':
  app.run(main)
