"""A search on the embedded sprites over latent size, beta, learning rate (log), KL warm-up and
free bits, 1000 steps a trial, the clearly worse trials stopped early; and the equivalent grid.

Search (an Optuna study: TPE, successive halving with rungs at steps 100, 300 and 900; trials in
/tmp/search_sprites/trial<N>_<values>/; pip install -e '.[search]'):
  python scripts/search.py --config=configs/search_sprites.py --workdir=/tmp/search_sprites \
      --parallel=2
The equivalent grid (3 x 3 x 3 x 2 x 2 = 108 points, the ends and middles of the same box):
  python scripts/sweep.py --config=configs/search_sprites.py --workdir=/tmp/grid_sprites \
      --parallel=2
One trial alone: python scripts/train.py --config=configs/search_sprites.py --workdir=/tmp/one \
    --config.model.latent_dim=8 --config.optim.learning_rate=0.002

Measurement (run the two commands one after the other on the same quiet machine, each under
`/usr/bin/time -v`): train steps spent ("train steps spent" in the search's results.md; the
grid's are 108 x 1000), wall time, and the best validation neg_elbo each found with its standard
error (the **best** row of each results.md). The search meets its aim when its best is within
one standard error of the grid's for at most a third of the grid's train steps.

Expected result: not measured yet (the 2-core CPU machine was busy with other measurements).
The sprites sweeps measured the dimensions one at a time (configs/sweep_sprites_*.py): beta 1,
latent size 10 and no warm-up or free bits were best, 40.84 +- 0.22 test neg_elbo after 1000
steps, so the grid's best should be near that.
"""

from configs import sweep_sprites_beta


def get_config():
  c = sweep_sprites_beta.get_config()  # 1000 steps, batch 128, learning rate 1e-3
  c.eval_every_steps = 100  # the pruner's rungs are evaluation steps
  c.checkpoint_every_steps = 500
  c.objective.free_bits_per = 'unit'  # a floor of free_bits nats per latent unit
  return c


def get_search(s):
  return s.search(
      s.int('model.latent_dim', 4, 20, log=True),
      s.float('objective.beta', 0.5, 2.0, log=True),
      s.float('optim.learning_rate', 3e-4, 3e-3, log=True),
      s.int('objective.kl_warmup_steps', 0, 500, step=100),
      s.float('objective.free_bits', 0.0, 0.5),
      # 60 trials: 10 drawn at random, then TPE. Successive halving keeps the best third at
      # steps 100, 300 and 900, so most trials stop after 100 to 400 steps.
      num_trials=60, pruner=s.successive_halving(min_steps=100, reduction_factor=3), seed=0,
      startup_trials=10)


def get_sweep(h):
  # The search's box at its ends and middles.
  return h.product(h.sweep('model.latent_dim', [4, 9, 20]),
                   h.sweep('objective.beta', [0.5, 1.0, 2.0]),
                   h.sweep('optim.learning_rate', [3e-4, 1e-3, 3e-3]),
                   h.sweep('objective.kl_warmup_steps', [0, 500]),
                   h.sweep('objective.free_bits', [0.0, 0.5]))
