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

Expected result: the test neg_elbo and the K = 1000 nll (with their standard errors over the
10000 test images) that those two commands print, to compare with
configs/fashion_mnist_binarized.py's 242.70 +- 0.76 and 238.54 +- 0.76.
"""

from configs import fashion_mnist_binarized


def get_config():
  c = fashion_mnist_binarized.get_config()
  c.model.prior = 'vamp'
  c.model.num_pseudo_inputs = 500  # the paper's K for MNIST-sized data
  return c
