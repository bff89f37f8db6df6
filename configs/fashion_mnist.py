"""The Flax VAE example's setup on Fashion-MNIST, for comparison with it and with PyTorch.

MLP 784-500-20 (encoder 784-500-(20, 20), decoder 20-500-784), Bernoulli likelihood on grey
values x/255, Adam 1e-3, batch 128, 4680 steps (10 epochs of the Flax example's 60000 images;
here the last 5000 training images are held out for model selection, so 4680 steps are 10.9
epochs of the other 55000), no clipping.

Note: a Bernoulli on grey values is not a normalised density on [0, 1]: its "nats" compare only
with runs that make the same choice (the Flax example, a hand-written PyTorch loop). For an
honest likelihood use data.preprocess=dynamic_binarize (configs/fashion_mnist_binarized.py) or
--config.model.likelihood=continuous_bernoulli.

Offline here (Debian's package dataset-fashion-mnist), once:
  python scripts/prepare_data.py --dataset=fashion_mnist \
      --manual_dir=/usr/share/datasets/fashion-mnist
Then:
  python scripts/train.py --config=configs/fashion_mnist.py --workdir=/tmp/vae_fmnist

Expected result (measured at 0c1b61e, 2026-12-01, on the 2-core CPU machine, seeds 0/1/2): full
test split single-sample neg_elbo 244.67 nats per example (seeds 0, 1, 2: 244.66 +- 0.76, 244.85
+- 0.76, 244.49 +- 0.76, each +- its standard error over the 10000 test images; the data order
is shared, data_seed=0); on the held-out validation slice train[55000:] 241.83, 241.97, 241.70.
About 45 s of training per run here. Importance-sampled (seed 0):
  python scripts/evaluate.py --workdir=/tmp/vae_fmnist --num_samples=1000
gives nll 241.50 +- 0.75 and posterior_gap 3.16 +- 0.04 at K=1000 (241.37 and 3.29 at K=5000);
its report says normalized: false (a Bernoulli on grey values is not a density of the data).
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.name = 'fashion_mnist'
  c.data.preprocess = 'grey'          # x / 255, as the Flax example
  c.data.download = True              # online: TFDS downloads; offline: set data.manual_dir
  c.data.train_split = 'train[:55000]'
  c.data.valid_split = 'train[55000:]'
  c.batch_size = 128
  c.num_train_steps = 4680            # 10 x 468 steps, as the Flax example's 10 epochs
  c.steps_per_call = 468              # fused calls of 468 steps
  c.log_every_steps = 468
  c.eval_every_steps = 468            # full validation and test splits every 468 steps
  c.checkpoint_every_steps = 2340
  c.eval_batch_size = 1000
  c.model.hidden = (500,)
  c.model.latent_dim = 20
  c.model.likelihood = 'bernoulli'
  c.optim.name = 'adam'
  c.optim.learning_rate = 1e-3
  c.optim.clip_norm = 0.0
  return c
