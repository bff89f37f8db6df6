"""A seed sweep of the single-layer VAE on dynamically binarized Fashion-MNIST for 10 epochs
(configs/fashion_mnist.py with data.preprocess=dynamic_binarize): 5 initialisations, one
data order.

Command (one vectorised population: the points differ only in `seed`):
  python scripts/sweep.py --config=configs/sweep_fashion_mnist_seeds.py \
      --workdir=/tmp/sweep_seeds --vectorize

`seed` sets the initialisation and the posterior samples; `data_seed` (0) stays fixed, so the
spread across points is the optimisation's run-to-run spread alone, to compare with the
standard error of one run's test mean (which measures the finite test set instead).

Expected result (measured at bebced3 (2026-12-01) on the 2-core CPU machine, 4680 steps
each; full test split neg_elbo +- its standard error over the 10000 test images):
  seed      0               1               2               3               4
  neg_elbo  242.70 +- 0.76  242.68 +- 0.76  242.28 +- 0.76  242.67 +- 0.76  242.59 +- 0.76
Mean 242.58, standard deviation across seeds 0.17 nats: the optimisation's spread is a
quarter of one run's standard error, which is the finite test set's (and mostly shared by
the seeds, since they are evaluated on the same images). Seed 0 equals the single run of
this config (242.70) to the last digit: the population's loop mode
runs each member with the single run's own compiled program. 407 s for the 5 points as one
population (the same machine, busy).

One point alone: python scripts/train.py --config=configs/sweep_fashion_mnist_seeds.py \
    --workdir=/tmp/one --config.seed=3

Results: /tmp/sweep_seeds/results.csv, results.md and neg_elbo_vs_seed.png.
"""

from configs import fashion_mnist


def get_config():
  c = fashion_mnist.get_config()   # 4680 steps, constant Adam 1e-3
  c.data.preprocess = 'dynamic_binarize'
  return c


def get_sweep(h):
  return h.sweep('seed', [0, 1, 2, 3, 4])
