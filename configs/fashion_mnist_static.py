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

Expected result: not measured yet (to be filled by a measured 30-minute run on this machine:
the steps reached, the selected step and why, test neg_elbo and K = 1000 nll with their
standard errors, validation neg_elbo, active units per group).

Remedies for overfitting the fixed bits, each against this config under the same 30-minute
budget, selected on validation (train[55000:]); to be filled by measured runs:
  remedy (override)                                     validation neg_elbo   test nll (K=1000)
  none (this config)                                    not measured yet      not measured yet
  early stopping (--config.early_stopping.patience=2)   not measured yet      not measured yet
  parameter EMA (--config.ema_decay=0.9999)             not measured yet      not measured yet
  weight decay (--config.optim.name=adamw
    --config.optim.weight_decay=1e-2)                   not measured yet      not measured yet
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
