"""TFDS binarized_mnist (Larochelle's fixed binarization: 50000/10000/10000 images that are
already 0/1) with the best model of the Fashion-MNIST comparison for a 30-minute CPU budget
(97bd294): the hierarchical top-down VAE of configs/fashion_mnist_hvae.py (MLP, 4 groups of 16
units, residual posteriors, KL warm-up and 0.25 free bits per group) with decoupled weight
decay (the fixed binarization's remedy chosen on validation, below), under
config.max_train_seconds = 1800.

Command (connected machine, or offline with the three .amat files in DIR):
  python scripts/prepare_data.py --dataset=binarized_mnist --manual_dir=DIR
  python scripts/train.py --config=configs/binarized_mnist.py --workdir=/tmp/vae_bmnist
  python scripts/evaluate.py --workdir=/tmp/vae_bmnist --num_samples=5000

Expected result: not measured on this data, which cannot be installed on these machines.
The model was chosen on dynamically binarized Fashion-MNIST (the same 784 binary pixels),
where three families had the same 30 minutes of one core of this 2-core CPU: the hierarchy
had the best validation ELBO and the best test nll, 1.46 +- 0.03 nats (paired) better than
the VampPrior and 3.05 +- 0.03 better than the single-layer VAE (configs/fashion_mnist_hvae.py).
The published anchors on this data: a one-layer VAE with the
VampPrior about 85.6 nats, hierarchical VAEs 81-84 nats (IWAE-5000), after hundreds to
thousands of epochs; 30 minutes on this CPU give this model about 188 epochs, so expect it to
sit above them. The binarization is fixed, so the validation bound stops improving well before
the training bound does: the run evaluates every 10 epochs, saves every evaluation that is the
best so far, and scripts/evaluate.py and scripts/analyze.py report the step selected on the
validation split by default (--step=best). The same hierarchy on statically binarized
Fashion-MNIST (configs/fashion_mnist_static.py, measured at d4cde28) shows the start of that,
and there the remedies a reader would try were compared under the same budget and chosen on
validation: decoupled weight decay (AdamW, 0.01) won (test nll 0.062 +- 0.022 nats better,
paired, than without it), a smaller width and IWAE training with two samples lost, and the
warm-up-then-cosine learning-rate schedule is already this config's. This config takes the
same choices: weight decay and selection on validation. Its own result is not measured here
(binarized_mnist cannot be installed on these machines), so how much the remedy gains on
binarized_mnist, whose validation bound turns upward, is not known from this CPU.

Longer, on an accelerator: the same model for 1000 epochs (--config.num_train_steps=390000
--config.max_train_seconds=0 --config.steps_per_call=390 --config.eval_every_steps=39000
--config.checkpoint_every_steps=39000 --config.objective.kl_warmup_steps=39000), and wider
(--config.model.hidden='(1024,)' --config.model.hvae.width=512), as the references train.
"""

from configs import fashion_mnist_hvae


def get_config():
  c = fashion_mnist_hvae.get_config()
  c.data.name = 'binarized_mnist'
  c.data.preprocess = 'grey'          # the stored values are already 0/1: no binarization
  c.data.download = True
  c.data.train_split = 'train'
  c.data.valid_split = 'validation'
  c.steps_per_call = 390              # 50000 // 128 = 390 steps per epoch
  c.log_every_steps = 3900
  c.max_train_seconds = 1800.0
  # 188 epochs: 93% of the budget at the 44 steps/s this model ran on both cores of this CPU
  # (on Fashion-MNIST's 28x28 binary images, the same shapes).
  c.num_train_steps = 73320
  c.eval_every_steps = 3900           # every 10 epochs: the selection needs the curve
  c.checkpoint_every_steps = 14820
  c.objective.kl_warmup_steps = 1950  # the first 5 epochs
  c.optim.warmup_steps = 390
  # The remedy chosen on statically binarized Fashion-MNIST (configs/fashion_mnist_static.py).
  c.optim.name = 'adamw'
  c.optim.weight_decay = 0.01
  return c
