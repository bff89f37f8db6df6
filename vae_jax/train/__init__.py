"""Training: the pure step and its fused chunk (step), the members of a run and their one
resume path (members), the population's states (population) and the one loop over P >= 1
members (loop), which calls the periodic evaluations of vae_jax.evaluate.periodic."""

from vae_jax.data.feeder import ChunkFeeder  # noqa: F401 - the loop's feeder, re-exported
from vae_jax.train.loop import (  # noqa: F401 - the package's entry points
  SkippedUpdatesError,
  train_and_evaluate,
  train_population,
)
from vae_jax.train.members import done_record, restore_or_init  # noqa: F401
from vae_jax.train.step import (  # noqa: F401
  compile_chunk,
  jit_train_chunk,
  make_loss_fn,
  make_train_step,
)
