"""configs/fashion_mnist.py's model on dynamically binarized Fashion-MNIST: the same MLP
784-500-20, Adam 1e-3, batch 128, 4680 steps, but each pixel is a fresh Bernoulli draw with
probability x/255 every time an example is used, so the Bernoulli likelihood is a normalised
mass of the data and the importance-sampled nll is an honest -log p(x) (bits per dimension
compare with the literature). Evaluation binarizes each example with one fixed draw keyed by
(data_seed, its index), so numbers compare across steps and runs.

Offline here (Debian's package dataset-fashion-mnist), once:
  python scripts/prepare_data.py --dataset=fashion_mnist \
      --manual_dir=/usr/share/datasets/fashion-mnist
Then:
  python scripts/train.py --config=configs/fashion_mnist_binarized.py --workdir=/tmp/vae_fmb
  python scripts/evaluate.py --workdir=/tmp/vae_fmb --num_samples=1000
  python scripts/evaluate.py --workdir=/tmp/vae_fmb --num_samples=5000

Expected result (measured here, seed 0, 2-core CPU; +- the standard error over the 10000 test
images): single-sample test neg_elbo 242.70 +- 0.76 nats per example after 4680 steps (about
80 s of training); importance-sampled nll 238.54 +- 0.76 with K = 1000 and 238.36 +- 0.76
(0.4386 bits/dim) with K = 5000, so a posterior gap of at least 4.33 +- 0.05 nats (the K-sample
nll is biased upward and still falling: K = 1000 minus K = 5000 is 0.174 +- 0.007 nats,
paired over the same images). 20 of 20 units active. The K = 5000 evaluation took 8 minutes
here (about 100k samples per second on a busy machine).
"""

from configs import fashion_mnist


def get_config():
  c = fashion_mnist.get_config()
  c.data.preprocess = 'dynamic_binarize'
  return c
