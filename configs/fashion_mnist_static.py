"""configs/fashion_mnist_hvae.py (the hierarchical top-down VAE, 4 groups of 16 units, the same
splits, batch, learning-rate schedule, KL warm-up, free bits and 30-minute budget) on
STATICALLY binarized Fashion-MNIST (data.preprocess=static_binarize), with the remedy against
overfitting chosen on validation below: decoupled weight decay (AdamW, 0.01).

Each image is binarized once, pixel by pixel a Bernoulli draw with probability x/255 keyed by
(data_seed, its base split, its index in that split), and keeps those bits for the whole run: at
every epoch of training, in every evaluation of a split that holds it (the validation slice
train[55000:] is keyed as examples 55000.. of train, so its bits are those it would have if read
through the whole train split) and in the analysis. Test examples have draws of their own. This
is the fixed-binarization setting of binarized_mnist (Larochelle's MNIST, configs/
binarized_mnist.py) made from grey-level data; another data_seed gives another fixed
binarization. The Bernoulli likelihood is a normalised mass of these binary images, so the
importance-sampled nll is an honest -log p(x) of them, but it is not comparable with the
dynamically binarized runs (configs/fashion_mnist_hvae.py): those are scored on a fresh draw
per example, these on the fixed one. With only 55000 fixed binary images the model can learn
their particular bits, so the validation split's neg_elbo may turn upward long before the
budget ends; the run keeps the best validation checkpoint and scripts/evaluate.py reports that
step by default (--step=best).

Offline here (Debian's package dataset-fashion-mnist), once:
  python scripts/prepare_data.py --dataset=fashion_mnist \
      --manual_dir=/usr/share/datasets/fashion-mnist
(the same prepared grey-level dataset as the other Fashion-MNIST configs: the binarization is
drawn on the fly, nothing binary is stored). Then:
  python scripts/train.py --config=configs/fashion_mnist_static.py --workdir=/tmp/vae_fm_static
  python scripts/evaluate.py --workdir=/tmp/vae_fm_static --num_samples=1000

Expected result, measured (d4cde28, 2026-12-07, the 2-core CPU machine, seed 0): the
unremedied hierarchy and each remedy had the same budget, the 51480 steps (120 epochs of 429)
the dynamically binarized hierarchy reaches in its 30-minute one-core budget, or for a variant
with another step cost the steps its own benchmarked rate buys in the same time
(scripts/benchmark.py on one core: width 128 runs 1.81 and IWAE K=2 0.57 times as many images
a second). Each ran with --config.max_train_seconds=0 on one core (taskset, XLA
single-threaded) so that the machine's load could not change the result (the step count fixes
it). The unremedied hierarchy's bounds, nats per example (+- the standard error over the split):
  step     train bound (interval mean)   validation neg_elbo   test neg_elbo
  9360     233.18                        233.04 +- 1.07        235.75 +- 0.76
  28080    227.05                        231.33 +- 1.08        234.05 +- 0.77
  46800    224.35                        230.97 +- 1.09        233.73 +- 0.77   (selected)
  51480    224.18                        230.99 +- 1.09        233.74 +- 0.77   (newest)
The train bound keeps falling (the fixed bits are being learnt: 6.8 nats under validation at the
end, against 3 at step 9360), while validation flattens from about step 35000 on: on
Fashion-MNIST at this budget the fixed binarization shows the start of overfitting, not the
turn upward binarized_mnist shows. Selection alone (early stopping at the best validation
step) changes nothing measurable here: test nll (K = 1000) 230.523 +- 0.766 at the selected
step 46800 and at the newest 51480, paired difference -0.0002 +- 0.0016.

Remedies, each under the same budget, chosen on the validation split only (train[55000:],
5000 images): the importance-sampled nll with K = 100 at each run's selected step, paired with
the unremedied hierarchy's over the same images (scripts/compare_evals.py); then the test split
(10000 images, K = 1000, paired likewise), reported, never used to choose:
  remedy                    steps   valid neg_elbo   valid nll (K=100)   paired vs none
  none (the hierarchy)      51480   230.97 +- 1.09   228.24 +- 1.08      -
  weight decay 0.01         51480   230.91 +- 1.09   228.13 +- 1.08      -0.11 +- 0.03
  width 128                 92664   231.87 +- 1.09   228.84 +- 1.08      +0.61 +- 0.04
  IWAE, K = 2               29016   232.94 +- 1.09   230.07 +- 1.08      +1.83 +- 0.07
and on the test split at the same steps:
  remedy                    test neg_elbo    test nll (K=1000)   paired vs none
  none (the hierarchy)      233.73 +- 0.77   230.52 +- 0.77      -
  weight decay 0.01         233.61 +- 0.77   230.46 +- 0.77      -0.062 +- 0.022
  width 128                 234.56 +- 0.77   231.18 +- 0.77      +0.66 +- 0.03
  IWAE, K = 2               235.51 +- 0.77   232.54 +- 0.77      +2.01 +- 0.05
Flags: --config.optim.name=adamw --config.optim.weight_decay=0.01; --config.model.hvae.width=128
--config.num_train_steps=92664; --config.objective.name=iwae --config.objective.num_samples=2
--config.objective.kl_warmup_steps=0 --config.objective.free_bits=0
--config.num_train_steps=29016 (the IWAE bound takes no warm-up or free bits).
The smaller width is worse even at its best step (51480 of its 92664: its validation bound turns
upward after that, the overfitting the remedy was meant to prevent, with fewer active units:
9, 15, 11, 10), and IWAE with two samples buys too few steps in the budget and loses most
units of the top group (5 active). Decoupled weight decay is the winner on validation and
holds on the test split: test nll 230.461 +- 0.766 (0.4241 bits/dim), neg_elbo 233.614 +-
0.773, posterior gap 3.15, active units per group 11, 16, 15, 14, at the selected step 46800;
0.062 +- 0.022 nats (z = -2.8) better than the unremedied hierarchy over the same test images.
A small gain: at this budget Fashion-MNIST's 55000 fixed images overfit only mildly. The
learning-rate schedule a reader would try first, a warm-up then cosine decay to zero over the
run, is already the unremedied hierarchy's (configs/fashion_mnist_binarized.py), and the
hierarchy has no dropout layer (the smaller width stands for less capacity); neither was tried
further. This config ships the winner: the hierarchy with weight decay, selected on
validation. Evaluating the selected step (scripts/evaluate.py --num_samples=1000, the default
--step=best) took 348 s on one core.
"""

from configs import fashion_mnist_hvae


def get_config():
  c = fashion_mnist_hvae.get_config()
  c.data.preprocess = 'static_binarize'  # one fixed draw per example for the whole run
  # The remedy chosen on validation (the table above): decoupled weight decay.
  c.optim.name = 'adamw'
  c.optim.weight_decay = 0.01
  # Every 2340 steps, 5.5 epochs (22 evaluations of the full validation and test splits, about
  # 2 s each on one core): the validation curve shows where the fixed bits start to be learnt,
  # and the selected step is within 5.5 epochs of the best.
  c.eval_every_steps = 2340
  return c
