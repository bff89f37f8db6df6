"""configs/fashion_mnist_hvae.py (the hierarchical top-down VAE, 4 groups of 16 units, the same
splits, batch, optimizer, KL warm-up, free bits and 30-minute budget) on STATICALLY binarized
Fashion-MNIST: data.preprocess=static_binarize.

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

Expected result, measured (training at b2c9127, evaluation at 68d07bb, 2026-12-07, the 2-core
CPU machine, seed 0):
the same 51480 steps (110 epochs) the dynamically binarized hierarchy reaches in its 30-minute
one-core budget, run with --config.max_train_seconds=0 on one core (taskset) while other work
shared the machine, so that the load could not change the result (the step count fixes it).
The bounds, nats per example (+- the standard error over the split):
  step     train bound (interval mean)   validation neg_elbo   test neg_elbo
  9360     233.18                        233.04 +- 1.07        235.75 +- 0.76
  28080    227.05                        231.33 +- 1.08        234.05 +- 0.77
  46800    224.35                        230.97 +- 1.09        233.73 +- 0.77   (selected)
  51480    224.18                        230.99 +- 1.09        233.74 +- 0.77   (newest)
The train bound keeps falling (the fixed bits are being learnt: 6.8 nats under validation at the
end, against 3 at step 9360), while validation flattens from about step 35000 on: on
Fashion-MNIST at this budget the fixed binarization shows the start of overfitting, not the
turn upward binarized_mnist shows. The selected step is 46800 (best validation neg_elbo 230.97);
scripts/evaluate.py --num_samples=1000 on the test split (738 s on one core):
  selected step 46800: nll 230.523 +- 0.766 (0.4242 bits/dim), neg_elbo 233.725 +- 0.773,
    posterior gap 3.20 +- 0.05, active units per group 11, 16, 16, 16
  newest step 51480:   nll 230.523 +- 0.766, neg_elbo 233.737 +- 0.773
  paired nll difference selected - newest: -0.0002 +- 0.0016 (z = -0.1)
So selection (early stopping) changes nothing measurable here.

Remedies: only the selection above is measured so far. Weight decay (optim.name=adamw with
optim.weight_decay), a smaller width (model.hvae.width=128), IWAE training with a few samples
and a learning-rate schedule, each under the same budget and chosen on validation, are the next
measurements; none is shipped before it is measured. The shipped config is the unremedied
hierarchy.
"""

from configs import fashion_mnist_hvae


def get_config():
  c = fashion_mnist_hvae.get_config()
  c.data.preprocess = 'static_binarize'  # one fixed draw per example for the whole run
  # Every 5 epochs (22 evaluations of the full validation and test splits, about 2 s each on
  # one core): the validation curve shows where the fixed bits start to be learnt, and the
  # selected step is within 5 epochs of the best.
  c.eval_every_steps = 2340
  return c
