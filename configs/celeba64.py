"""CelebA 64x64, centre-cropped as NVAE (the NVAE benchmark), with the hierarchical top-down
convolutional VAE of configs/imagenet64.py and a discretized logistic mixture on the 8-bit
pixels: bits/dim comparable with the literature's.

Data: 'celeb_a_64', a dataset vae_jax derives once, at preparation, from CelebA's files (never
per step): img_align_celeba.zip (the 202599 aligned 178x218 JPEGs) and list_eval_partition.txt
(its train / validation / test partition: 162770 / 19867 / 19962), from
mmlab.ie.cuhk.edu.hk/projects/CelebA.html; the attribute, landmark and identity files are not
needed (images only). Each JPEG is decoded by Pillow, cropped to NVAE's box (left 15, top 40,
right 163, bottom 188: the central 148 columns, rows 40..187) and resized to 64x64 by Pillow's
bilinear filter, as NVAE's CropCelebA64 and torchvision's Resize(64) do; NVAE's random flips
are not applied (vae_jax/data/archives.py, docs/data.md). Splits: train trains, validation
selects the checkpoint, test is the eval split. NVAE's reported numbers are on the validation
partition (its loader's 'validation' LMDB): scripts/evaluate.py --split=validation gives the
comparable one. The grain back end reads the uint8 pixels from disk.

Model: as configs/imagenet64.py (64 px): residual conv stages of 64, 128, 256 and 256 channels
at 32x32, 16x16, 8x8 and 4x4 (stride-2 down, 2 residual blocks each); 2 groups at 4x4, 4 at 8x8
and 4 at 16x16, 16 channels per position each, learned priors given the groups above, residual
posteriors (NVAE); a 5-component discretized logistic per sub-pixel. Sized for one accelerator:
batch 64, 125000 steps (about 50 epochs of 2543 steps), KL warm-up over the first 5 epochs;
NVAE trains a far larger and deeper hierarchy. On bfloat16 hardware add
--config.model.dtype=bfloat16.

Commands (DIR holds img_align_celeba.zip and list_eval_partition.txt):
  python scripts/prepare_data.py --dataset=celeb_a_64 --manual_dir=DIR
  python scripts/train.py --config=configs/celeba64.py --workdir=/tmp/vae_celeba64
  python scripts/evaluate.py --workdir=/tmp/vae_celeba64 --num_samples=1000 --split=validation

Smoke run on a CPU once the data is prepared (small stages, one group per resolution, 20
steps, slivers of the splits; not timed here, where the data is not):
  python scripts/train.py --config=configs/celeba64.py --workdir=/tmp/smoke_celeba64 \
      --config.batch_size=16 --config.num_train_steps=20 --config.steps_per_call=10 \
      --config.log_every_steps=10 --config.eval_every_steps=20 \
      --config.checkpoint_every_steps=20 --config.optim.warmup_steps=10 \
      --config.model.conv_channels="(8,16,32,32)" --config.model.conv_blocks=1 \
      --config.model.hvae.groups="(1,1,1)" --config.model.latent_dim=4 \
      --config.data.valid_split="validation[:200]" --config.data.eval_split="test[:200]" \
      --config.eval_batch_size=200

Expected result: not measured here (needs an accelerator and the data; neither is on the CPU
machines this was written on). The data path (preparation from a zip and partition list of the
same format, the crop, the grain back end, two training steps) is tested on a generated
stand-in (tests/test_judged_datasets.py). Literature: NVAE 2.03 bits/dim (validation
partition). bits/dim = neg_elbo (or the importance-sampled nll of scripts/evaluate.py) /
(64 * 64 * 3 * ln 2).
"""

from configs import imagenet64


def get_config():
  c = imagenet64.get_config()         # the 64 px model, batch, optimizer and grain back end
  c.data.name = 'celeb_a_64'
  c.data.train_split = 'train'
  c.data.valid_split = 'validation'
  c.data.eval_split = 'test'
  c.num_train_steps = 125_000         # about 50 epochs of 162770 // 64 = 2543 steps
  c.eval_every_steps = 12_500
  c.checkpoint_every_steps = 12_500
  c.objective.kl_warmup_steps = 12_500  # about 5 epochs
  return c
