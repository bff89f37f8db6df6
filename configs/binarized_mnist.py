"""TFDS binarized_mnist (Larochelle's fixed binarization, 50000/10000/10000) with the Flax
example's setup: MLP 784-500-20, Bernoulli, Adam 1e-3, batch 128, 10 epochs.

Command (connected machine, or offline with the three .amat files in DIR):
  python scripts/prepare_data.py --dataset=binarized_mnist --manual_dir=DIR
  python scripts/train.py --config=configs/binarized_mnist.py --workdir=/tmp/vae_bmnist

Expected result: not measured here (the data cannot be installed on these machines). The Flax
example reports a test loss of about 104 nats per example after 10 epochs of this setup.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.name = 'binarized_mnist'
  c.data.preprocess = 'grey'          # the stored values are already 0/1
  c.data.download = True
  c.data.train_split = 'train'
  c.data.valid_split = 'validation'
  c.batch_size = 128
  c.num_train_steps = 3900            # 10 epochs of 50000 // 128 = 390 steps
  c.steps_per_call = 390
  c.log_every_steps = 390
  c.eval_every_steps = 1950
  c.checkpoint_every_steps = 1950
  c.model.hidden = (500,)
  c.model.latent_dim = 20
  c.model.likelihood = 'bernoulli'
  return c
