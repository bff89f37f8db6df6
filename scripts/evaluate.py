"""Evaluate a trained run: ELBO terms, the K-sample -log p(x), the posterior gap, active units.

  python scripts/evaluate.py --workdir=DIR [--step=best|last|S] [--split=test] [--num_samples=K]
      [--params=ema|state] [--chunk_size=Kc] [--batch_size=B] [--out=FOLDER]

Restores the run's checkpoint with the config it was saved with, on all local devices: by default
the step selected on the run's validation split (--step=best: the saved step with the lowest
validation neg_elbo of the loop's evaluations; a damaged one is passed over for the next best,
with a warning), or the newest verified step (--step=last), or step S. The report's `selected`
says which and why ("best validation neg_elbo 91.28 at step 44460"). It evaluates the whole
split (default: the run's data.eval_split) with K importance samples per example, using the
run's EMA of the parameters where it keeps one
(config.ema_decay > 0) and its train state's otherwise, unless --params says which; the report
names them (params) and, for an EMA still dominated by its starting parameters, warns
(ema_warning). Writes DIR/eval/step_S_SPLIT_kK.json (the JSON printed
here) and step_S_SPLIT_kK.npz (per-example values, for paired comparisons); the train state of
a run that keeps an EMA goes to step_S_SPLIT_kK_state.json (and .npz) beside the EMA's. The
last stdout line is one JSON object, nats per example: neg_elbo, recon, kl, nll, posterior_gap
(each with _stderr), normalized, bits_per_dim, joint_kl, kl_per_unit, active_units, mutual_info,
num_examples, num_samples, step, selected, split, samples_per_sec. The posterior gap underestimates
E KL(q || p(h|x)), since the K-sample nll is biased upward.

--out=FOLDER writes the two files there instead of DIR/eval/. Where they cannot be written (a
read-only workdir, say) the report is printed all the same, then an error line names the file,
and the exit status is 2 (a folder that cannot be written is also warned about before the
work). A damaged DIR/config.json is passed over with a warning: each checkpoint step holds the
config it was saved with. Beside a run training the same workdir a note says so; the step
evaluated is the one checked, never one saved since (the log and the report name it).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow (TFDS) start-up chatter

from absl import app, flags, logging  # noqa: E402

from vae_jax import cli  # noqa: E402

flags.DEFINE_string('workdir', None, 'The --workdir of a training run.')
flags.DEFINE_string('step', 'best', 'Checkpoint step: best (the step selected on the run\'s '
                    'data.valid_split), last (the newest verified one) or a number.')
flags.DEFINE_string('split', None, "Split or slice (default: the run's data.eval_split).")
flags.DEFINE_integer('num_samples', 1000, 'K: importance samples per example.')
flags.DEFINE_string('params', None, "Which parameters: ema (the default where the run keeps "
                    "an EMA) or state (the train state's; the default otherwise).")
flags.DEFINE_integer('chunk_size', 0, "Samples per chunk (0: the config's eval_chunk_size, "
                     'else automatic). Memory and speed only, never the numbers.')
flags.DEFINE_integer('batch_size', 0, "Examples per batch (0: the config's eval_batch_size).")
flags.DEFINE_string('out', None, 'Folder for the evaluation files (default: DIR/eval).')
FLAGS = flags.FLAGS


def _progress():
  """A tqdm bar on a terminal; plain lines about every 10% otherwise."""
  state = {'bar': None, 'shown': 0}

  def show(done, total):
    if sys.stderr.isatty():
      if state['bar'] is None:
        from tqdm import tqdm
        state['bar'] = tqdm(total=total, unit='example', dynamic_ncols=True, mininterval=1.0)
      state['bar'].update(done - state['bar'].n)
      if done == total:
        state['bar'].close()
    elif total is None or done >= total or done - state['shown'] >= total / 10:
      state['shown'] = done
      print(f'evaluated {done}/{total if total is not None else "?"} examples', flush=True)

  return show


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs at INFO

  # evaluate_run checks every flag a user can get wrong before TensorFlow or a compile.
  from vae_jax import evaluate

  def run():
    return evaluate.evaluate_run(
        FLAGS.workdir, step=FLAGS.step, split=FLAGS.split, num_samples=FLAGS.num_samples,
        params=FLAGS.params, chunk_size=FLAGS.chunk_size, batch_size=FLAGS.batch_size,
        out_dir=FLAGS.out, progress=_progress())

  try:
    report = cli.run_reporting_user_errors(run)
  except evaluate.ResultNotSavedError as e:  # the numbers first, then what was not written
    cli.print_json(e.result)
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(2)
  cli.print_json(report)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
