"""TFDS builder `sprites`: the embedded generated dataset (no download, ever).

Importing this module registers the builder, so `tfds.builder('sprites', data_dir=...)` and
`tfds.builder('sprites/small', ...)` work afterwards. Metadata (restored on load) records the
number of renders, the number of distinct images N and the population's entropy log N.
"""

import dataclasses

import tensorflow_datasets as tfds

from vae_jax.data import records, sprites


class SpritesConfig(tfds.core.BuilderConfig):
  """A named size of the generated set."""

  def __init__(self, *, spec, **kwargs):
    super().__init__(**kwargs)
    self.spec = spec


class Sprites(tfds.core.GeneratorBasedBuilder):
  """dSprites-style binary sprites with ground-truth factors, rendered deterministically."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Square, ellipse, heart; duplicates dropped; 10% test split.'}
  BUILDER_CONFIGS = [
      SpritesConfig(name=name, spec=spec, description=f'{spec}')
      for name, spec in sprites.SPRITE_SPECS.items()
  ]
  DEFAULT_BUILDER_CONFIG_NAME = sprites.DEFAULT_CONFIG

  def _info(self):
    spec = self.builder_config.spec
    s = spec.image_size
    sizes = spec.factor_sizes
    factors = {'shape': tfds.features.ClassLabel(names=list(sprites.SHAPES))}
    for name in sprites.FACTORS[1:]:
      factors[name] = tfds.features.ClassLabel(num_classes=sizes[name])
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            'Binary dSprites-style sprites (square, ellipse, heart) at every combination of '
            'scale, rotation (over each shape\'s symmetry period) and x/y grid position, '
            'rendered with numpy; duplicate images dropped; factors are indices.'),
        features=tfds.features.FeaturesDict(
            {'image': tfds.features.Image(shape=(s, s, 1)), **factors}),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    spec = self.builder_config.spec
    data = sprites.generate(spec)
    n = len(data['images'])
    self.info.metadata.update({
        'spec': dataclasses.asdict(spec),
        'factor_names': list(sprites.FACTORS),
        'factor_values': sprites.factor_values(spec),
        'num_renders': int(data['num_renders']),
        'num_distinct': int(n),
        # The population the splits are drawn from: N distinct images, uniformly weighted.
        'entropy_nats': sprites.entropy_nats(n),
    })
    return {split: self._generate_examples(data, rows) for split, rows in data['splits'].items()}

  def _generate_examples(self, data, rows):
    encoded = records.encode_images(data['images'][rows])
    for row, image in zip(rows, encoded, strict=True):
      example = {'image': image}
      example.update(zip(sprites.FACTORS, (int(f) for f in data['factors'][row]), strict=True))
      # The flat render index is unique and stable across sizes of the split.
      yield int(data['render_index'][row]), example
