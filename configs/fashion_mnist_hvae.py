"""A hierarchical top-down VAE (model.kind=hvae, MLP variant) on dynamically binarized
Fashion-MNIST: the data, splits, batch and optimizer of configs/fashion_mnist_binarized.py,
with the single 20-unit latent replaced by 4 stochastic groups of 16 units each.

Model: bottom-up 784-512-256 (Dense + relu, then Dense), one 256-wide residual MLP block per
group; top-down from a learned constant 256-wide state, group 0 (the top) with prior N(0, I),
each group below with a learned prior p(z_l | groups above) and the residual posterior
q(z_l | x, groups above) (NVAE: q = prior + deltas), the state updated by a residual block per
group; decoder 256-512-784 to Bernoulli logits. KL warm-up over the first 5 epochs and
free bits of 0.25 nats per group keep the lower groups from collapsing early.

Offline here (Debian's package dataset-fashion-mnist), once:
  python scripts/prepare_data.py --dataset=fashion_mnist \
      --manual_dir=/usr/share/datasets/fashion-mnist
Then:
  python scripts/train.py --config=configs/fashion_mnist_hvae.py --workdir=/tmp/vae_fm_hvae
  python scripts/evaluate.py --workdir=/tmp/vae_fm_hvae --num_samples=1000

Expected result (measured here, seed 0, 2-core CPU): the lead adds the numbers of the
commands above (test neg_elbo and K = 1000 nll, with standard errors, per-group KL).
"""

from configs import fashion_mnist_binarized


def get_config():
  c = fashion_mnist_binarized.get_config()
  # 50 x 468 steps: about 30 minutes at the 13 steps/s measured for 300 steps on a busy 2-core
  # CPU (configs/fashion_mnist_binarized.py ran 60 steps/s there at the same time).
  c.num_train_steps = 23400
  c.eval_every_steps = 4680
  c.checkpoint_every_steps = 4680
  c.model.kind = 'hvae'
  c.model.hidden = (512,)
  c.model.hvae_width = 256
  c.model.hvae_groups = (4,)
  c.model.latent_dim = 16             # per group: 64 latent units in all
  c.model.hvae_residual_posterior = True
  c.objective.kl_warmup_steps = 2340  # the first 5 epochs
  c.objective.free_bits_per = 'group'
  c.objective.free_bits = 0.25
  c.optim.schedule = 'warmup_cosine'
  c.optim.warmup_steps = 468
  c.optim.clip_norm = 100.0
  return c
