"""CIFAR-10 with a hierarchical top-down convolutional VAE (model.kind=hvae, conv variant) and a
discretized logistic mixture on the 8-bit pixels, so bits/dim are an honest upper bound on the
data's code length.

Model: residual conv stages of 64, 128 and 256 channels at 16x16, 8x8 and 4x4 (stride-2 down,
2 residual blocks each), with stochastic groups at all three resolutions: 4 groups at 4x4 (the
top, prior N(0, I) for group 0), 4 at 8x8 and 2 at 16x16, each z_l 16 channels per position
(13312 latent units), learned priors given the groups above and residual posteriors (NVAE);
the top-down path mirrors the stages and ends in a 5-component discretized logistic per
sub-pixel. KL warm-up over 10 epochs. Sized for one accelerator (batch 128, 100 epochs); on
bfloat16 hardware add --config.model.dtype=bfloat16.

Command (connected machine, or offline with cifar-10-python.tar.gz in DIR):
  python scripts/prepare_data.py --dataset=cifar10 --manual_dir=DIR
  python scripts/train.py --config=configs/cifar10.py --workdir=/tmp/vae_cifar10

Smoke run on a CPU (small stages, one group per resolution, 20 steps and a sliver of each
split; 2.4 minutes on a busy 2-core CPU, mostly compiling, measured with the 32x32 sprites in
place of CIFAR-10 via --config.data.name=sprites --config.data.train_split="train[:90%]"):
  python scripts/train.py --config=configs/cifar10.py --workdir=/tmp/smoke_cifar \
      --config.batch_size=16 --config.num_train_steps=20 --config.steps_per_call=10 \
      --config.log_every_steps=10 --config.eval_every_steps=20 \
      --config.checkpoint_every_steps=20 --config.optim.warmup_steps=10 \
      --config.model.conv_channels="(16,32,64)" --config.model.conv_blocks=1 \
      --config.model.hvae.groups="(1,1,1)" --config.model.latent_dim=4 \
      --config.data.valid_split="train[45000:45200]" --config.data.eval_split="test[:200]" \
      --config.eval_batch_size=200

Expected result: not measured (no CIFAR-10 on the CPU machines it was developed on, and it wants
an accelerator). Literature: hierarchical VAEs reach 2.87-2.91 bits/dim (VDVAE, NVAE) after days
on many GPUs with far larger and deeper hierarchies than this one; a single-latent-layer conv
VAE stays around 4.5-5 bits/dim. bits/dim = neg_elbo / (32 * 32 * 3 * ln 2).
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
  c.model.kind = 'hvae'
  c.model.conv_channels = (64, 128, 256)
  c.model.conv_blocks = 2
  c.model.hvae.groups = (4, 4, 2)     # top first: at 4x4, 8x8 and 16x16
  c.model.latent_dim = 16             # channels per position of each group
  c.model.likelihood = 'discretized_logistic'
  c.model.logistic_mixtures = 5
  c.optim.name = 'adamw'
  c.optim.learning_rate = 2e-4
  c.optim.schedule = 'warmup_cosine'
  c.optim.warmup_steps = 1000
  c.optim.clip_norm = 200.0
  c.objective.kl_warmup_steps = 3900  # 10 epochs
  return c
