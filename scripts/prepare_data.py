r"""Prepares a dataset into a TFDS data_dir, offline where a manual_dir is given.

  python scripts/prepare_data.py --dataset=fashion_mnist \
      --manual_dir=/usr/share/datasets/fashion-mnist [--data_dir=DIR]
  python scripts/prepare_data.py --dataset=sprites           # generated, never downloads
  python scripts/prepare_data.py --dataset=mnist --download  # TFDS download (network)
  python scripts/prepare_data.py --dataset=folder:DIR        # your own images (or npz:FILE)
  python scripts/prepare_data.py --dataset=downsampled_imagenet/32x32 --manual_dir=DIR
      # DIR: train_32x32.tar, valid_32x32.tar (64x64 likewise)
  python scripts/prepare_data.py --dataset=celeb_a_64 --manual_dir=DIR
      # DIR: img_align_celeba.zip, list_eval_partition.txt
  python scripts/prepare_data.py --dataset=... --array_record  # + the grain back end's copy

Files byte-identical to the official download go through TFDS's own manual_dir path; other
copies (e.g. Debian's dataset-fashion-mnist) are decoded and written under the official name
(see vae_jax/data/offline.py). The judged datasets (downsampled_imagenet/32x32, /64x64 and
celeb_a_64, CelebA centre-cropped to 64x64 as NVAE) are always decoded from their original
archives, whatever their digests (see vae_jax/data/archives.py). Own images and arrays are
prepared from their folder or file (see vae_jax/data/own_data.py); a prepared copy whose source
changed is replaced. --array_record also writes the grain back end's ArrayRecord copy of every
split now (vae_jax/data/arrayrecords.py; otherwise the first grain run writes the splits it
reads): for a data_dir that will be read-only, or shared by the processes of a multi-host job.
Prints one JSON line: dataset, data_dir, how, splits, seconds (and array_record: split ->
file).
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow (TFDS) start-up chatter

from absl import app, flags  # noqa: E402

from configs import default  # noqa: E402
from vae_jax import cli  # noqa: E402

_DATASET = flags.DEFINE_string('dataset', None, "'sprites[/small]', a TFDS name, e.g. mnist, "
                               "or your own images: 'folder:DIR' or 'npz:FILE'.", required=True)
_MANUAL_DIR = flags.DEFINE_string('manual_dir', '', 'Folder with the original files.')
_DATA_DIR = flags.DEFINE_string('data_dir', '', "TFDS data_dir ('' = $TFDS_DATA_DIR or "
                                '~/tensorflow_datasets).')
_DOWNLOAD = flags.DEFINE_bool('download', False, 'Allow TFDS to download (network).')
_ARRAY_RECORD = flags.DEFINE_bool(
    'array_record', False, "Also write the grain back end's ArrayRecord copy of every split "
    '(else the first grain run writes the splits it reads).')


def main(argv):
  del argv
  start = time.time()
  # The default data config (its split fields are only syntax-checked here: the dataset's
  # splits are printed instead), for this dataset and folders.
  cfg = default.get_config().data
  cfg.update(name=_DATASET.value, manual_dir=_MANUAL_DIR.value, data_dir=_DATA_DIR.value,
             download=_DOWNLOAD.value)
  # Before TensorFlow, a wrong name or folder fails in a second; a failed download too is one
  # paragraph, exit status 2.
  from vae_jax.data import own_data

  def check():
    try:
      cli.check_data_available(cfg)
    except own_data.StaleSourceError:
      pass  # own data whose source changed: prepared again below, what this command is for

  cli.run_reporting_user_errors(check)
  from vae_jax.data import datasets, offline

  builder, how = cli.run_reporting_user_errors(
      lambda: datasets.ensure_prepared(cfg, refresh=True))
  result = {
      'dataset': builder.info.full_name, 'data_dir': str(builder.data_dir), 'how': how,
      'splits': {k: v.num_examples for k, v in builder.info.splits.items()},
      'provenance': (offline.read_provenance(builder.data_dir) or {}).get('method'),
  }
  if _ARRAY_RECORD.value:
    from vae_jax.data import arrayrecords

    prepared = datasets.prepared_records(cfg)
    result['array_record'] = cli.run_reporting_user_errors(lambda: {
        split: arrayrecords.split_rows(prepared, split).path for split in result['splits']})
  result['seconds'] = round(time.time() - start, 2)
  print(json.dumps(result))
  return 0


if __name__ == '__main__':
  app.run(main)
