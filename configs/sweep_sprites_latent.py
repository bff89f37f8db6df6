"""A latent-size sweep on the embedded sprites: h of 1 to 32 dimensions, 1000 steps each.

Command (each point is a full run in /tmp/sweep_latent/latent_dim=D/; rerun to resume):
  python scripts/sweep.py --config=configs/sweep_sprites_latent.py --workdir=/tmp/sweep_latent

The latent size sets the parameter shapes, so these points cannot form one vectorised
population (--vectorize refuses them, naming model.latent_dim); run them one after another or
with --parallel on a machine with more than one device.

Expected result (measured at bebced3 (2026-12-01) on the 2-core CPU machine, seed 0, 1000
steps; full test split neg_elbo +- standard error, and the KL part of it):
  latent_dim  1              2             3             5             10            32
  neg_elbo    127.91 +- 1.13 69.80 +- 0.54 58.20 +- 0.41 41.36 +- 0.26 40.84 +- 0.22 47.90 +- 0.28
  kl          2.87           7.48          9.07          12.06         15.91         18.32
Best by validation neg_elbo: latent_dim 10 (41.17 +- 0.24). The bound falls steeply up to 5
dimensions (the data has 5 factors), flattens at 10 and worsens at 32, where the KL of units
the decoder barely uses costs more than they give in 1000 steps. Wall time of the 6 points
one after another: 275 s (the same machine, busy).

One point alone: python scripts/train.py --config=configs/sweep_sprites_latent.py \
    --workdir=/tmp/one --config.model.latent_dim=5

Results: /tmp/sweep_latent/results.csv, results.md and neg_elbo_vs_model.latent_dim.png.
"""

from configs import sweep_sprites_beta


def get_config():
  # The beta sweep's schedule (1000 steps, evaluations at 500 and 1000) at beta 1.
  return sweep_sprites_beta.get_config()


def get_sweep(h):
  # The sprites have 5 generative factors (shape, scale, orientation, x, y), 10.11 nats of
  # entropy in all: from too few dimensions to many more than the factors.
  return h.sweep('model.latent_dim', [1, 2, 3, 5, 10, 32])
