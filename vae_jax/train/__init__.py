"""Training: the fused train step, the members of a run and their resume, and the one loop
that trains one run or a population of them."""

from vae_jax.train.loop import (  # noqa: F401 - the package's public names
  ChunkFeeder,
  compile_chunk,
  done_record,
  jit_train_chunk,
  make_loss_fn,
  make_train_step,
  restore_or_init,
  train_and_evaluate,
)
