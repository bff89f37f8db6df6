"""KL warm-up x free bits on the embedded sprites: 2 x 3 points, 1000 steps each.

Command (one vectorised population: the points differ only in traced scalars):
  python scripts/sweep.py --config=configs/sweep_sprites_warmup_freebits.py \
      --workdir=/tmp/sweep_wf --vectorize

KL warm-up ramps the KL's weight from 0 to 1 over the first kl_warmup_steps steps; free bits
(here per latent unit) let each unit keep up to free_bits nats of KL at no cost in the loss.
Both are training devices: the reported neg_elbo is always the true bound at beta 1, apart
from the training loss.

RESULT

Results: /tmp/sweep_wf/results.csv, results.md, neg_elbo_vs_objective.kl_warmup_steps.png and
neg_elbo_vs_objective.free_bits.png.
"""

from configs import sweep_sprites_beta


def get_config():
  c = sweep_sprites_beta.get_config()
  c.objective.free_bits_per = 'unit'
  return c


def get_sweep(h):
  return h.product(h.sweep('objective.kl_warmup_steps', [0, 500]),
                   h.sweep('objective.free_bits', [0.0, 0.5, 2.0]))
