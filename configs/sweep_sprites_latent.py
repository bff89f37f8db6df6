"""A latent-size sweep on the embedded sprites: h of 1 to 32 dimensions, 1000 steps each.

Command (each point is a full run in /tmp/sweep_latent/latent_dim=D/; rerun to resume):
  python scripts/sweep.py --config=configs/sweep_sprites_latent.py --workdir=/tmp/sweep_latent

The latent size sets the parameter shapes, so these points cannot form one vectorised
population (--vectorize refuses them, naming model.latent_dim); run them one after another or
with --parallel on a machine with more than one device.

RESULT

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
