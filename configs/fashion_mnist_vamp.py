"""configs/fashion_mnist_binarized.py with the VampPrior (Tomczak and Welling 2018) in place of
N(0, I): dynamically binarized Fashion-MNIST, the same MLP 784-500-20, Bernoulli likelihood,
Adam 1e-3 with a cosine decay, batch 128, the same 30-minute budget, so the two runs differ
only in the prior (and, as the prior costs compute, in the steps the budget buys).

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

Expected result (measured at 97bd294, 2026-12-02, on the 2-core CPU machine, seed 0,
config.max_train_seconds = 1800 on one core of this 2-core CPU beside the hierarchy's run; +-
the standard error over the 10000 test images): all 59904 steps (about 140 epochs of 429, about 4300
images/s) in 29.7 minutes; test neg_elbo 231.58 +- 0.77 (recon 214.27, kl 17.31; kl_standard
56.97; validation 228.72 +- 1.08); importance-sampled nll 229.56 +- 0.76 with K = 1000 (0.4224
bits/dim), posterior gap 2.02 +- 0.03; 20 of 20 units active. Paired over the same test images,
its nll is 1.59 +- 0.03 nats better than the N(0, I) prior's
(configs/fashion_mnist_binarized.py, 231.15) and 1.46 +- 0.03 worse than the hierarchy's
(configs/fashion_mnist_hvae.py, 228.10). The KL to N(0, I) is 57 nats although the KL to the
learned prior is 17: the aggregate posterior is far from a standard normal, and the prior
follows it.
"""

from configs import fashion_mnist_binarized


def get_config():
  c = fashion_mnist_binarized.get_config()
  c.model.vae.prior = 'vamp'
  c.model.vae.num_pseudo_inputs = 500  # the paper's K for MNIST-sized data
  # About 140 epochs: 95% of the budget at the 35 steps/s measured on one core of this CPU.
  c.num_train_steps = 59904
  c.eval_every_steps = 14976
  c.checkpoint_every_steps = 14976
  return c
