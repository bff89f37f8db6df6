"""MNIST with dynamic binarization (a fresh Bernoulli draw of each pixel every time an example
is used) and the Flax example's MLP 784-500-20: an honest Bernoulli likelihood on binary data.

Command (on a connected machine, or after prepare_data.py with the original idx files):
  python scripts/prepare_data.py --dataset=mnist --manual_dir=DIR_WITH_IDX_FILES
  python scripts/train.py --config=configs/mnist.py --workdir=/tmp/vae_mnist

Expected result: not measured here (MNIST cannot be installed on these machines). Literature:
a one-stochastic-layer VAE on dynamically binarized MNIST reaches a test -log p(x) of about
86-87 nats with 5000 importance samples after thousands of epochs (Burda et al. 2016, IWAE,
table 1, VAE k=1: 86.76 with 50 latents); the single-sample neg_elbo after 50 epochs of this
smaller model is several nats higher (roughly 95-100). Evaluation binarizes each test example
with a fixed draw keyed by (data_seed, index), so numbers are comparable across steps.
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
  c.model.hidden = (500,)
  c.model.latent_dim = 20
  c.model.likelihood = 'bernoulli'
  return c
