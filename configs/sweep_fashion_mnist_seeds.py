"""A seed sweep of configs/fashion_mnist_binarized.py: 5 initialisations, one data order.

Command (one vectorised population: the points differ only in `seed`):
  python scripts/sweep.py --config=configs/sweep_fashion_mnist_seeds.py \
      --workdir=/tmp/sweep_seeds --vectorize

`seed` sets the initialisation and the posterior samples; `data_seed` (0) stays fixed, so the
spread across points is the optimisation's run-to-run spread alone, to compare with the
standard error of one run's test mean (which measures the finite test set instead).

RESULT

Results: /tmp/sweep_seeds/results.csv, results.md and neg_elbo_vs_seed.png.
"""

from configs import fashion_mnist_binarized


def get_config():
  return fashion_mnist_binarized.get_config()


def get_sweep(h):
  return h.sweep('seed', [0, 1, 2, 3, 4])
