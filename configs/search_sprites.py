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

Expected result, measured at 35a9f2a (2026-12-07) on the 2-core CPU machine, quiet, the two
commands above one after the other (--parallel=2):
                 train steps        wall     best validation neg_elbo   its test neg_elbo
  search         25600 (60 trials:  376 s    39.521 +- 0.244 (trial 44) 39.279 +- 0.226
                 12 complete, 48 pruned)
  grid (108)     108000             1072 s   40.035 +- 0.258            39.593 +- 0.228
The search found a better point than the grid's best (0.51 lower on validation: the grid's
box ends and middles miss the region of beta a little above 1 with free bits near 0.35 and a
learning rate near 2.7e-3), for 24% of the grid's train steps and 35% of its wall time. Its
best: latent_dim 8, beta 1.044, learning rate 0.002664, KL warm-up 300 steps, free bits 0.359
per unit; the grid's: latent_dim 9, beta 1, learning rate 0.003, warm-up 500, no free bits.
Optuna's PED-ANOVA importances rank the learning rate first (0.34), then beta (0.22), warm-up
(0.17), free bits (0.14), latent size (0.13). The sprites sweeps measured the dimensions one
at a time (configs/sweep_sprites_*.py): 40.84 +- 0.22 test neg_elbo after 1000 steps.
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
