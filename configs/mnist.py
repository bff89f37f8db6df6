"""MNIST with dynamic binarization (a fresh Bernoulli draw of each pixel every time an example
is used) and a hierarchical top-down VAE (model.kind=hvae, MLP variant): an honest Bernoulli
likelihood on binary data.

Model: bottom-up 784-500-256 with one 256-wide residual MLP block per group; 4 stochastic
groups of 16 units, top-down from a learned constant state (the top group's prior N(0, I), each
lower group's prior learned given the groups above, residual posteriors as in NVAE); decoder
256-500-784 to Bernoulli logits; KL warm-up over the first 5 epochs. The single-layer model of
earlier versions is --config.model.kind=vae --config.model.latent_dim=20.

Command (on a connected machine, or after prepare_data.py with the original idx files):
  python scripts/prepare_data.py --dataset=mnist --manual_dir=DIR_WITH_IDX_FILES
  python scripts/train.py --config=configs/mnist.py --workdir=/tmp/vae_mnist

Expected result: not measured (MNIST cannot be installed on the CPU machines it was developed
on). Literature: on dynamically binarized MNIST a one-stochastic-layer VAE reaches a test -log
p(x) of about 86.8 nats and a two-layer one about 85.3 (5000 importance samples, thousands of
epochs: Burda et al. 2016, IWAE, table 1, VAE k=1); deeper ladders about 81.7-85 (Sonderby et
al. 2016, LVAE). The single-sample neg_elbo after 50 epochs of this smaller model is several
nats above its nll. Evaluation binarizes each test example with a fixed draw keyed by
(data_seed, index), so numbers are comparable across steps.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.name = 'mnist'
  c.data.preprocess = 'dynamic_binarize'
  c.data.download = True
  c.data.train_split = 'train[:55000]'
  c.data.valid_split = 'train[55000:]'
  c.batch_size = 128
  c.num_train_steps = 23400           # 50 epochs of 468 steps
  c.steps_per_call = 468
  c.log_every_steps = 468
  c.eval_every_steps = 4680
  c.checkpoint_every_steps = 4680
  c.model.kind = 'hvae'
  c.model.hidden = (500,)
  c.model.hvae.width = 256
  c.model.hvae.groups = (4,)
  c.model.latent_dim = 16             # per group
  c.model.likelihood = 'bernoulli'
  c.objective.kl_warmup_steps = 2340  # 5 epochs
  return c
