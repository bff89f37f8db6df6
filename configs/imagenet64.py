"""Downsampled ImageNet 64x64 (van den Oord et al. 2016, the VDVAE benchmark) with the
hierarchical top-down convolutional VAE of configs/cifar10.py grown by one stage for 64 px, and
a discretized logistic mixture on the 8-bit pixels: bits/dim comparable with the literature's.

Data: TFDS's name 'downsampled_imagenet/64x64', prepared offline from the two tars one downloads
(image-net.org/small/download.php: train_64x64.tar, valid_64x64.tar of RGB PNGs, the files
VDVAE's setup_imagenet.sh uses; not the later Imagenet64 npz batches), always by vae_jax's own
builder (vae_jax/data/archives.py, docs/data.md): every pixel as in the PNGs, stored in a fixed
pseudo-random order (sha256 of the file name). Splits: the 1.28M training images but the last
5000 of that order train, those 5000 select the checkpoint (VDVAE also holds out 5000 training
images), and the official 50000-image validation split, which the papers report on, is the eval
split. The grain back end reads the uint8 pixels from disk (the training split is 15.7 GB of
pixels, beyond the memory back end's on-device copy).

Model: residual conv stages of 64, 128, 256 and 256 channels at 32x32, 16x16, 8x8 and 4x4
(stride-2 down, 2 residual blocks each); 2 groups at 4x4, 4 at 8x8 and 4 at 16x16 (none at
32x32, where a group would cost most), 16 channels per position each, learned priors given the
groups above, residual posteriors (NVAE); the top-down path mirrors the stages up to 64x64 and
ends in a 5-component discretized logistic per sub-pixel. Sized for one accelerator: batch 64
(four times CIFAR's pixels per image), 200000 steps (about 10 epochs), KL warm-up over the first
epoch; VDVAE trains a far larger and deeper hierarchy for much longer. On bfloat16 hardware add
--config.model.dtype=bfloat16.

Commands (DIR holds train_64x64.tar and valid_64x64.tar):
  python scripts/prepare_data.py --dataset=downsampled_imagenet/64x64 --manual_dir=DIR
  python scripts/train.py --config=configs/imagenet64.py --workdir=/tmp/vae_imagenet64
  python scripts/evaluate.py --workdir=/tmp/vae_imagenet64 --num_samples=1000

Smoke run on a CPU once the data is prepared (small stages, one group per resolution, 20
steps, slivers of the splits; not timed here, where the data is not):
  python scripts/train.py --config=configs/imagenet64.py --workdir=/tmp/smoke_imagenet64 \
      --config.batch_size=16 --config.num_train_steps=20 --config.steps_per_call=10 \
      --config.log_every_steps=10 --config.eval_every_steps=20 \
      --config.checkpoint_every_steps=20 --config.optim.warmup_steps=10 \
      --config.model.conv_channels="(8,16,32,32)" --config.model.conv_blocks=1 \
      --config.model.hvae.groups="(1,1,1)" --config.model.latent_dim=4 \
      --config.data.valid_split="train[-200:]" --config.data.eval_split="validation[:200]" \
      --config.eval_batch_size=200

Expected result: not measured here (needs an accelerator and the data; neither is on the CPU
machines this was written on). The data path (preparation from tars of the same format, the
grain back end, two training steps) is tested on a generated stand-in
(tests/test_judged_datasets.py). Literature, bits/dim on the validation split: VDVAE 3.52,
autoregressive models (Gated PixelCNN, PixelRNN) about 3.57-3.63, Glow 3.81.
bits/dim = neg_elbo (or the importance-sampled nll of scripts/evaluate.py) / (64 * 64 * 3 * ln 2).
"""

from configs import imagenet32


def get_config():
  c = imagenet32.get_config()         # the 32 px config's data rules, optimizer and schedule
  c.data.name = 'downsampled_imagenet/64x64'
  c.batch_size = 64
  c.num_train_steps = 200_000         # about 10 epochs of 1276149 // 64 = 19939 steps
  c.eval_batch_size = 250
  c.model.conv_channels = (64, 128, 256, 256)  # one more stage: 32x32 down to 4x4
  c.model.hvae.groups = (2, 4, 4)     # top first: at 4x4, 8x8 and 16x16
  c.objective.kl_warmup_steps = 20_000  # 1 epoch
  return c
