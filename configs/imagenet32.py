"""Downsampled ImageNet 32x32 (van den Oord et al. 2016, the VDVAE and NVAE benchmark) with the
hierarchical top-down convolutional VAE of configs/cifar10.py and a discretized logistic
mixture on the 8-bit pixels: bits/dim comparable with the literature's.

Data: TFDS's name 'downsampled_imagenet/32x32', prepared offline from the two tars one downloads
(image-net.org/small/download.php: train_32x32.tar, valid_32x32.tar of RGB PNGs, the files
VDVAE's setup_imagenet.sh and NVAE's README use; not the later Imagenet32 npz batches), always
by vae_jax's own builder (vae_jax/data/archives.py, docs/data.md): every pixel as in the PNGs,
stored in a fixed pseudo-random order (sha256 of the file name). Splits: the 1.28M training
images but the last 5000 of that order train, those 5000 select the checkpoint (VDVAE also
holds out 5000 training images), and the official 50000-image validation split, which the
papers report on, is the eval split. The grain back end reads the uint8 pixels from disk (the
training split is 3.9 GB of pixels, beyond the memory back end's on-device copy).

Model: as configs/cifar10.py (32 px too): residual conv stages of 64, 128 and 256 channels at
16x16, 8x8 and 4x4 (stride-2 down, 2 residual blocks each), 4 groups at 4x4, 4 at 8x8 and 2 at
16x16, 16 channels per position each, learned priors given the groups above, residual
posteriors (NVAE), a 5-component discretized logistic per sub-pixel. Sized for one
accelerator: batch 128, 200000 steps (about 20 epochs), KL warm-up over the first 2 epochs;
VDVAE and NVAE train far larger and deeper hierarchies for much longer. On bfloat16 hardware
add --config.model.dtype=bfloat16.

Commands (DIR holds train_32x32.tar and valid_32x32.tar):
  python scripts/prepare_data.py --dataset=downsampled_imagenet/32x32 --manual_dir=DIR
  python scripts/train.py --config=configs/imagenet32.py --workdir=/tmp/vae_imagenet32
  python scripts/evaluate.py --workdir=/tmp/vae_imagenet32 --num_samples=1000

Smoke run on a CPU once the data is prepared (small stages, one group per resolution, 20
steps, slivers of the splits; not timed here, where the data is not):
  python scripts/train.py --config=configs/imagenet32.py --workdir=/tmp/smoke_imagenet32 \
      --config.batch_size=16 --config.num_train_steps=20 --config.steps_per_call=10 \
      --config.log_every_steps=10 --config.eval_every_steps=20 \
      --config.checkpoint_every_steps=20 --config.optim.warmup_steps=10 \
      --config.model.conv_channels="(16,32,64)" --config.model.conv_blocks=1 \
      --config.model.hvae.groups="(1,1,1)" --config.model.latent_dim=4 \
      --config.data.valid_split="train[-200:]" --config.data.eval_split="validation[:200]" \
      --config.eval_batch_size=200

Expected result: not measured here (needs an accelerator and the data; neither is on the CPU
machines this was written on). The data path (preparation from tars of the same format, the
grain back end, two training steps) is tested on a generated stand-in
(tests/test_judged_datasets.py). Literature, bits/dim on the validation split: VDVAE 3.80,
NVAE 3.92, PixelCNN-style autoregressive models about 3.8-3.9. bits/dim = neg_elbo (or the
importance-sampled nll of scripts/evaluate.py) / (32 * 32 * 3 * ln 2).
"""

from configs import cifar10


def get_config():
  c = cifar10.get_config()            # the model, optimizer and batch of 32 px CIFAR-10
  c.data.name = 'downsampled_imagenet/32x32'
  c.data.backend = 'grain'
  c.data.download = False             # prepared only from the original tars (docs/data.md)
  c.data.train_split = 'train[:-5000]'
  c.data.valid_split = 'train[-5000:]'
  c.data.eval_split = 'validation'
  c.num_train_steps = 200_000         # about 20 epochs of 1276149 // 128 = 9969 steps
  c.steps_per_call = 500
  c.log_every_steps = 500
  c.eval_every_steps = 10_000
  c.checkpoint_every_steps = 10_000
  c.objective.kl_warmup_steps = 20_000  # 2 epochs
  return c
