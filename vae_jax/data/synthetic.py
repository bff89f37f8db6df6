"""Synthetic uint8 images in place of a dataset, for timing on machines without TensorFlow.

A throughput measurement needs the shapes and sizes of a dataset, not its pixels: these give a
DataInfo and training arrays of the configured shape from numpy alone, so the benchmark runs
where TensorFlow and TFDS are not installed (an accelerator image, say). Nothing here trains
or evaluates a model on real data.
"""

import numpy as np

from vae_jax.data import datasets, splits


def parse_shape(text):
  """'H,W,C' -> (H, W, C) of positive ints.

  Raises:
    ValueError: anything else; the message shows the expected form.
  """
  parts = [p.strip() for p in str(text).split(',')]
  try:
    shape = tuple(int(p) for p in parts)
  except ValueError:
    shape = ()
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(f'A synthetic image shape is H,W,C of three positive integers (28,28,1 '
                     f'for MNIST, 32,32,3 for CIFAR-10); got {text!r}.')
  return shape


def synthetic_info(data_cfg, image_shape, num_examples):
  """A DataInfo with `num_examples` in each base split the config names."""
  names = (data_cfg.train_split, data_cfg.valid_split, data_cfg.eval_split)
  bases = {splits.parse(s).base for s in names if s}
  return datasets.DataInfo(name=f'{data_cfg.name} (synthetic)', image_shape=tuple(image_shape),
                           num_examples={b: int(num_examples) for b in sorted(bases)})


def synthetic_arrays(info, split, seed=0):
  """The split or slice as uniform random uint8 images, with load_arrays' keys and indices.

  Returns:
    {'image': uint8 [N, H, W, C], 'index': int32 [N] (indices in the base split)}.
  """
  _, start, stop = info.split_range(split)
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 256, size=(stop - start, *info.image_shape), dtype=np.uint8)
  return {'image': image, 'index': np.arange(start, stop, dtype=np.int32)}
