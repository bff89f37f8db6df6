"""CIFAR-10 with a convolutional (residual) VAE and a discretized logistic mixture on the 8-bit
pixels, so bits/dim are an honest upper bound on the data's code length.

Command (connected machine, or offline with cifar-10-python.tar.gz in DIR):
  python scripts/prepare_data.py --dataset=cifar10 --manual_dir=DIR
  python scripts/train.py --config=configs/cifar10.py --workdir=/tmp/vae_cifar10

Expected result: not measured here (no CIFAR-10 on these machines, and it wants an accelerator).
Literature: hierarchical VAEs reach 2.87-2.91 bits/dim (VDVAE, NVAE) after days on many GPUs;
a single-latent-layer conv VAE such as this one stays far above that (expect roughly 4.5-5
bits/dim: a flat Gaussian latent codes little of the pixel-level detail). bits/dim =
neg_elbo / (32 * 32 * 3 * ln 2).
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.name = 'cifar10'
  c.data.preprocess = 'uint8'
  c.data.download = True
  c.data.train_split = 'train[:45000]'
  c.data.valid_split = 'train[45000:]'
  c.batch_size = 128
  c.num_train_steps = 39000           # 100 epochs of 50000 // 128 = 390 steps
  c.steps_per_call = 390
  c.log_every_steps = 390
  c.eval_every_steps = 3900
  c.checkpoint_every_steps = 3900
  c.eval_batch_size = 500
  c.model.encoder = 'conv'
  c.model.decoder = 'conv'
  c.model.conv_channels = (64, 128, 256)
  c.model.conv_blocks = 2
  c.model.latent_dim = 128
  c.model.likelihood = 'discretized_logistic'
  c.model.logistic_mixtures = 5
  c.optim.name = 'adamw'
  c.optim.learning_rate = 2e-4
  c.optim.schedule = 'warmup_cosine'
  c.optim.warmup_steps = 1000
  c.optim.clip_norm = 200.0
  return c
