"""Training example order: a pure function of (data_seed, epoch), so any step can be recreated.

Orders are over positions 0..n-1 of the training split (a slice 'train[a:b]' has n = b - a;
its example at position p has index a + p in the base split).

Memory back end: epoch e is `epoch_permutation(data_seed, e, n)`, cut into n // B batches (the
remainder skipped); step s is batch s % (n // B) of epoch s // (n // B). The data position a
checkpoint needs is therefore just the step.

Stream back end (reads TFDS records sequentially, so it cannot gather at random): the split's
canonical order is cut into contiguous blocks of `block_size` examples; epoch e visits the blocks
in a permuted order and each block's examples in a permuted order (the block is the shuffle
window, the only buffer), both drawn from (data_seed, e). TFDS stores records shuffled by key
hash already, so contiguous blocks are not correlated with labels. Epoch lengths and batch
boundaries are as for the memory back end; only the order within an epoch differs.
"""

import functools

import numpy as np

# Separate named streams of the data seed, so the two back ends never share draws.
_MEMORY_STREAM = 0
_STREAM_STREAM = 1


def _rng(data_seed, stream, epoch):
  if data_seed < 0 or epoch < 0:
    raise ValueError(f'data_seed and epoch must be >= 0, got {data_seed}, {epoch}.')
  return np.random.default_rng(np.random.SeedSequence([int(data_seed), stream, int(epoch)]))


def steps_per_epoch(n, batch_size):
  """Whole batches of an epoch of n examples (the remainder n % batch_size is skipped)."""
  if batch_size < 1 or n < batch_size:
    raise ValueError(f'Need 1 <= batch_size <= examples, got batch {batch_size}, {n} examples.')
  return n // batch_size


def epoch_of(step, n, batch_size):
  """The epoch of training step `step` (int, numpy or traced jax array) over n examples.

  The one rule of both back ends: step s is in epoch s // steps_per_epoch(n, batch_size).
  """
  return step // steps_per_epoch(n, batch_size)


@functools.lru_cache(maxsize=8)
def epoch_permutation(data_seed, epoch, n):
  """int32 [n]: the memory back end's order of epoch `epoch` (read-only, cached)."""
  perm = _rng(data_seed, _MEMORY_STREAM, epoch).permutation(n).astype(np.int32)
  perm.flags.writeable = False
  return perm


def train_indices(data_seed, start_step, num_steps, batch_size, n):
  """int32 [num_steps, batch_size]: split positions of steps start_step .. + num_steps - 1."""
  spe = steps_per_epoch(n, batch_size)
  steps = np.arange(start_step, start_step + num_steps)
  epochs, within = np.divmod(steps, spe)
  out = np.empty((num_steps, batch_size), np.int32)
  for epoch in np.unique(epochs):
    batches = epoch_permutation(data_seed, int(epoch), n)[:spe * batch_size].reshape(spe, -1)
    sel = epochs == epoch
    out[sel] = batches[within[sel]]
  return out


def stream_blocks(data_seed, epoch, n, block_size):
  """Blocks of stream epoch `epoch` in visiting order: list of (start, perm within block)."""
  block_size = min(block_size, n)
  rng = _rng(data_seed, _STREAM_STREAM, epoch)
  blocks = []
  for b in rng.permutation(-(-n // block_size)):
    start = int(b) * block_size
    blocks.append((start, rng.permutation(min(block_size, n - start)).astype(np.int32)))
  return blocks


def stream_epoch_order(data_seed, epoch, n, block_size):
  """int32 [n]: the full visiting order of stream epoch `epoch` (before the remainder cut)."""
  return np.concatenate([start + perm for start, perm in stream_blocks(
      data_seed, epoch, n, block_size)]).astype(np.int32)


def stream_epoch_plan(data_seed, epoch, n, batch_size, block_size, skip_steps=0):
  """The blocks stream epoch `epoch` reads, and which of their examples it emits, in order.

  Only the first n // batch_size * batch_size positions of the epoch's order are used (the
  remainder cut), minus the first skip_steps batches (resuming mid-epoch).

  Returns:
    starts int32 [k] (first canonical index of each block read), sizes int32 [k] (block sizes),
    offsets int32 [k + 1] (block j's rows are rows[offsets[j]:offsets[j + 1]]), rows int32 [m]
    (offsets into the block, in emission order). start + rows, concatenated over the blocks,
    is the epoch's example order.
  """
  used = steps_per_epoch(n, batch_size) * batch_size
  skip = skip_steps * batch_size
  starts, sizes, parts, pos = [], [], [], 0
  for start, perm in stream_blocks(data_seed, epoch, n, block_size):
    lo, hi = max(pos, skip), min(pos + len(perm), used)
    if hi > lo:
      starts.append(start)
      sizes.append(len(perm))
      parts.append(perm[lo - pos:hi - pos])
    pos += len(perm)
  offsets = np.cumsum([0] + [len(p) for p in parts])
  return (np.asarray(starts, np.int32), np.asarray(sizes, np.int32), offsets.astype(np.int32),
          np.concatenate(parts).astype(np.int32))


def shard_pieces(start, size, shard_lengths):
  """Splits records [start, start + size) into (shard, skip, take) pieces of the shards."""
  bounds = np.concatenate([[0], np.cumsum(shard_lengths)])
  pieces = []
  for shard, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
    a, b = max(start, lo), min(start + size, hi)
    if b > a:
      pieces.append((shard, int(a - lo), int(b - a)))
  return pieces
