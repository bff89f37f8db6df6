"""configs/fashion_mnist_binarized.py with the VampPrior (Tomczak and Welling 2018) in place of
N(0, I): dynamically binarized Fashion-MNIST, the same MLP 784-500-20, Bernoulli likelihood,
Adam 1e-3, batch 128, 4680 steps, so the two runs differ only in the prior.

The prior is p(h) = (1/500) sum_k q(h|u_k) over 500 learned pseudo-inputs u_k (28x28 images,
the sigmoid of learned logits, starting as grey 0.5 +- 0.025). The reported kl is the one-sample
estimate log q(h|x) - log p(h) at the posterior sample (the KL to a mixture has no closed
form), so neg_elbo is the same one-sample bound as before; kl_standard, the analytic KL to
N(0, I), is reported beside it. The 500 pseudo-inputs pass through the encoder every step,
about 4 times the batch's encoder work.

Offline here (Debian's package dataset-fashion-mnist), once:
  python scripts/prepare_data.py --dataset=fashion_mnist \
      --manual_dir=/usr/share/datasets/fashion-mnist
Then:
  python scripts/train.py --config=configs/fashion_mnist_vamp.py --workdir=/tmp/vae_fm_vamp
  python scripts/evaluate.py --workdir=/tmp/vae_fm_vamp --num_samples=1000

Expected result (measured here, seed 0, 2-core CPU; +- the standard error over the 10000 test
images): test neg_elbo 238.04 +- 0.77 nats per example (recon 222.09, kl 15.95; kl_standard
39.33) after 4680 steps, about 150 s of training beside another job; importance-sampled nll
238.04 -> 234.73 +- 0.76 with K = 1000 (0.4320 bits/dim), posterior gap 3.31 +- 0.03; 20 of
20 units active. Against configs/fashion_mnist_binarized.py's N(0, I) prior on the same data
order and step count (neg_elbo 242.70 +- 0.76, K = 1000 nll 238.54 +- 0.76): 4.7 nats better
ELBO and 3.8 nats better nll. The KL to N(0, I) is 39 nats although the KL to the learned
prior is 16: the aggregate posterior is far from a standard normal, and the prior follows it.
"""

from configs import fashion_mnist_binarized


def get_config():
  c = fashion_mnist_binarized.get_config()
  c.model.prior = 'vamp'
  c.model.num_pseudo_inputs = 500  # the paper's K for MNIST-sized data
  return c
