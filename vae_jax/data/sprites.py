"""dSprites-style binary sprites rendered with numpy: deterministic, with known factors.

Every combination of (shape, scale, rotation, x, y) is rasterised by testing pixel centres
against the shape's implicit equation. A few combinations rasterise to the same image (small
shapes rotated by less than a pixel's worth); those are dropped, keeping the first in factor
order, so the generated population is N distinct images with uniform weight and entropy log N.
This module needs only numpy; the TFDS builder lives in `sprites_builder`.
"""

import dataclasses
import math

import numpy as np

SHAPES = ('square', 'ellipse', 'heart')
# Rotation symmetry period of each shape: rotations are spread over one period, so no two
# rotation values of a shape give the same continuous shape.
SYMMETRY_PERIOD = {'square': math.pi / 2, 'ellipse': math.pi, 'heart': 2 * math.pi}
FACTORS = ('shape', 'scale', 'rotation', 'x', 'y')


@dataclasses.dataclass(frozen=True)
class SpriteSpec:
  """Sizes of the generated set.

  Attributes:
    image_size: height and width in pixels.
    num_scales: scale values, evenly spaced from min_scale to 1 (1 = max_radius).
    num_rotations: rotation values per shape, over the shape's symmetry period.
    grid: x and y positions per axis, chosen so no sprite is ever clipped by the border.
    max_radius: circumradius of the largest sprite, as a fraction of the image size.
    min_scale: smallest scale relative to the largest.
    test_fraction: fraction of the distinct images held out as the test split.
    split_seed: seed of the train/test split (fixed: the split is part of the dataset).
  """

  image_size: int = 32
  num_scales: int = 4
  num_rotations: int = 8
  grid: int = 16
  max_radius: float = 0.2
  min_scale: float = 0.5
  test_fraction: float = 0.1
  split_seed: int = 0

  @property
  def factor_sizes(self):
    return {'shape': len(SHAPES), 'scale': self.num_scales, 'rotation': self.num_rotations,
            'x': self.grid, 'y': self.grid}

  @property
  def num_renders(self):
    return math.prod(self.factor_sizes.values())


# Named builder configs ('sprites' = 'sprites/default'). Known here, without TFDS, so configs
# can be validated before TensorFlow is imported.
SPRITE_SPECS = {
    'default': SpriteSpec(),
    # 1,536 renders of 16x16: prepares in a second or two, for tests and smoke runs.
    'small': SpriteSpec(image_size=16, num_scales=2, num_rotations=4, grid=8),
}
DEFAULT_CONFIG = 'default'


def factor_values(spec):
  """Continuous value of every factor index (rotation in radians, per shape)."""
  scales = np.linspace(spec.min_scale, 1.0, spec.num_scales)
  positions = _positions(spec)
  rotations = {s: (np.arange(spec.num_rotations) * SYMMETRY_PERIOD[s] / spec.num_rotations)
               for s in SHAPES}
  return {'shape': list(SHAPES), 'scale': scales.tolist(), 'x': positions.tolist(),
          'y': positions.tolist(), 'rotation': {s: r.tolist() for s, r in rotations.items()}}


def _positions(spec):
  # Centres in [r, 1 - r] (fractions of the image), so even the largest sprite fits whole.
  return np.linspace(spec.max_radius, 1.0 - spec.max_radius, spec.grid)


def _inside(shape, u, v):
  """Whether (u, v), in the shape's frame scaled to circumradius 1, lies inside the shape."""
  if shape == 'square':
    half = 1 / math.sqrt(2)
    return (np.abs(u) <= half) & (np.abs(v) <= half)
  if shape == 'ellipse':
    return u**2 + (v / 0.5)**2 <= 1.0
  if shape == 'heart':
    # (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 has its smallest enclosing circle at (0, 0.25) with
    # radius 1.25 (measured on a fine grid); map the unit circle onto it.
    x, y = 1.25 * u, 1.25 * v + 0.25
    return (x**2 + y**2 - 1)**3 - x**2 * y**3 <= 0
  raise ValueError(f'Unknown shape {shape!r}; known: {SHAPES}')


def render_all(spec):
  """Renders every factor combination.

  Returns:
    uint8 [shape, scale, rotation, x, y, H, W] images with values 0 or 255.
  """
  s = spec.image_size
  pix = (np.arange(s) + 0.5) / s  # pixel centres
  centres = _positions(spec)
  dx = pix[None, :] - centres[:, None]  # [x, W]
  dy = centres[:, None] - pix[None, :]  # [y, H]; image rows grow downwards, v grows up
  dx = dx[:, None, None, :]  # [x, 1, 1, W]
  dy = dy[None, :, :, None]  # [1, y, H, 1]
  values = factor_values(spec)
  out = np.zeros(tuple(spec.factor_sizes.values()) + (s, s), np.uint8)
  for i, shape in enumerate(SHAPES):
    for j, scale in enumerate(values['scale']):
      radius = spec.max_radius * scale
      for k, theta in enumerate(values['rotation'][shape]):
        c, sn = math.cos(theta), math.sin(theta)
        # Rotate the offset by -theta into the shape's frame.
        u = (c * dx + sn * dy) / radius
        v = (-sn * dx + c * dy) / radius
        out[i, j, k] = np.where(_inside(shape, u, v), 255, 0).astype(np.uint8)
  return out


def generate(spec):
  """Renders, drops duplicate images, and splits the distinct ones into train and test.

  Returns:
    dict with 'images' uint8 [N, H, W, 1] (distinct, in factor order), 'factors' int64 [N, 5]
    (columns in FACTORS order), 'render_index' int64 [N] (flat index of the render),
    'splits' {'train': positions into the N images, 'test': ...}, and 'num_renders'.
  """
  sizes = tuple(spec.factor_sizes.values())
  renders = render_all(spec).reshape(-1, spec.image_size, spec.image_size)
  packed = np.packbits(renders.reshape(len(renders), -1) > 0, axis=1)
  # Unique rows via a void view: much faster than np.unique(axis=0) on 1-byte columns.
  rows = np.ascontiguousarray(packed).view(np.dtype((np.void, packed.shape[1]))).ravel()
  _, first = np.unique(rows, return_index=True)
  keep = np.sort(first)  # first occurrence of each distinct image, in factor order
  factors = np.stack(np.unravel_index(keep, sizes), axis=1).astype(np.int64)
  n = len(keep)
  rng = np.random.default_rng(spec.split_seed)
  perm = rng.permutation(n)
  n_test = int(round(n * spec.test_fraction))
  return {
      'images': renders[keep][..., None],
      'factors': factors,
      'render_index': keep.astype(np.int64),
      'splits': {'train': np.sort(perm[n_test:]), 'test': np.sort(perm[:n_test])},
      'num_renders': len(renders),
  }


def entropy_nats(num_distinct):
  """Entropy of a uniform population of num_distinct distinct images: log N nats."""
  return float(math.log(num_distinct))
