"""The quickstart: an MLP VAE on the embedded generated sprites (no download).

Command (about 25 s of training on 2 CPU cores):
  python scripts/train.py --config=configs/default.py --workdir=/tmp/vae_sprites

Expected result (measured at 0c1b61e, 2026-12-01, on the 2-core CPU machine): full test split
neg_elbo 37.47 +- 0.21 nats per example after 3000 steps (seed 0; +- the standard error over the
2449 test sprites; 37.52 +- 0.22 on the held-out validation slice train[90%:]; about 25 s of
training, plus about 15 s to generate the sprites the first time). The generated set's entropy
is log 24488 = 10.11 nats, so the joint KL of the derivation, neg_elbo - H(data), is about 27.36
nats. Tiny local smoke run:
  python scripts/train.py --config=configs/default.py --workdir=/tmp/smoke \
      --config.num_train_steps=20 --config.steps_per_call=10 --config.log_every_steps=10 \
      --config.eval_every_steps=20 --config.checkpoint_every_steps=20

Every field of every config is declared here, once, with the reason for its default. Other
configs import this one and override.
"""

import ml_collections

from vae_jax.models import hvae as hvae_family
from vae_jax.models import vae as vae_family


def get_config():
  """Returns the default (quickstart) config."""
  c = ml_collections.ConfigDict()
  # Parameter initialisation and posterior samples. Separate from data_seed so runs with
  # different seeds can share one data order and one set of binarization draws.
  c.seed = 0
  # Epoch permutations and dynamic-binarization draws.
  c.data_seed = 0
  # Global batch over all devices and processes (split across the mesh's data axis).
  c.batch_size = 128
  # About 19 epochs of the 19.8k training sprites: converged enough to look good, ~25 s here.
  c.num_train_steps = 3000
  # Train steps fused into one jitted lax.scan call: amortises dispatch and host syncs.
  c.steps_per_call = 100
  # Metrics are fetched from the device only every log interval (a multiple of steps_per_call).
  c.log_every_steps = 100
  # Full evaluation interval (validation and test splits, and the image grids).
  c.eval_every_steps = 1000
  # Orbax checkpoint interval; a final checkpoint is always written at the end.
  c.checkpoint_every_steps = 1000
  # gamma of the momentum-tracked loss L <- gamma L + (1 - gamma) L_batch.
  c.loss_momentum_gamma = 0.99
  # Global batch size for evaluation; the last batch is padded and masked, never dropped.
  c.eval_batch_size = 1000
  # K of the importance-sampled -log p(x) (nll) and posterior gap in the loop's evaluations;
  # 0 = off: K decoder passes per example would dominate a short run (scripts/evaluate.py
  # measures a finished one).
  c.eval_num_samples = 0
  # Importance samples per chunk of the K-sample estimator (memory and speed only, never the
  # numbers); 0 = automatic, about 8192 decoder rows per device per chunk.
  c.eval_chunk_size = 0
  # Consecutive non-finite steps tolerated (each skipped and counted) before the run stops.
  c.max_consecutive_nonfinite = 10
  # Consecutive updates skipped by the gradient-norm guard (optim.skip_threshold / skip_factor)
  # tolerated before the run stops with an error naming the steps (nothing new is saved). A
  # fixed threshold can lock; the adaptive rule skips at most about skip_window / 2 in a row on
  # a lasting change of the norm, so this must exceed that (validation checks it).
  c.max_consecutive_skipped = 100
  # Decay of the exponential moving average of the parameters, 0 = off (the default, which is
  # also how runs before it existed trained). Updated inside the step after every applied
  # update, ema <- d ema + (1 - d) params, from the initial parameters, without a warm-up of d,
  # so d is the averaging (about 1 / (1 - d) steps) from the start; the initialisation's weight
  # after t updates is d^t and evaluations warn while it exceeds 0.1. Choose d with
  # d^num_train_steps small: 0.999 for a few thousand steps (0.999^3000 = 0.05), 0.9999 for
  # 10^5 or more (VDVAE, VDM). When on, the loop's evaluations, pictures and model selection,
  # scripts/evaluate.py and the analysis use the EMA and say so (params: 'ema').
  c.ema_decay = 0.0
  # Wall-clock budget of one invocation in seconds (0 = off), counted from the start of
  # train_and_evaluate: loading, compilation and evaluations included, as a job's time limit
  # counts them. Checked after every fused chunk; when spent, the run evaluates, saves and
  # stops without DONE (a 'stop' record says why), so running it again resumes with a fresh
  # budget. Leave room for one chunk, one evaluation and one save after it.
  c.max_train_seconds = 0.0
  # Where to initialise from when the workdir has no checkpoint: '' (scratch) or a workdir /
  # checkpoint directory. Order: workdir checkpoint > init_from > scratch.
  c.init_from = ''

  c.data = d = ml_collections.ConfigDict()
  # 'sprites' (embedded, generated, known factors and entropy), any TFDS image dataset name, or
  # your own images: 'folder:DIR' (DIR/train/, DIR/test/, optional DIR/validation/) or
  # 'npz:FILE' (arrays train, test[, validation]); README.md, "Training on your own images".
  d.name = 'sprites'
  # grey ([0,1] floats) | dynamic_binarize (a fresh Bernoulli draw per example and epoch) |
  # static_binarize (one draw per example, fixed for the whole run: the fixed-binarization
  # setting of binarized_mnist, from any grey-level data) | threshold | uint8 (integers, for
  # the discrete likelihoods). Sprites are binary already, so grey gives exactly {0, 1}.
  d.preprocess = 'grey'
  # Folder with the original download files for offline preparation ('' = none).
  d.manual_dir = ''
  # TFDS data_dir ('' = TFDS's default, $TFDS_DATA_DIR or ~/tensorflow_datasets).
  d.data_dir = ''
  # False: never touch the network; a dataset that is not prepared is an immediate error.
  d.download = False
  # memory: whole split as uint8 on device (MNIST-sized); stream: tf.data over TFDS records;
  # grain: grain over the split in ArrayRecord format (data beyond memory, no TensorFlow in the
  # training process; the batch of a step is a pure function of the step, as for memory).
  d.backend = 'memory'
  # grain back end: worker processes decoding records beside the train step (0 = decode in the
  # training process).
  d.workers = 0
  # Stream back end: shuffle window (examples held in host memory).
  d.shuffle_buffer = 10_000
  # Splits (a TFDS split name or a slice of one: 'train[:90%]', 'train[55000:]'). Training
  # reads train_split; model selection (the best checkpoint) reads valid_split: the dataset's
  # own validation split where it has one, else a held-out slice of train that train_split
  # leaves out; eval_split is evaluated for reporting only.
  d.train_split = 'train[:90%]'
  d.valid_split = 'train[90%:]'
  d.eval_split = 'test'

  c.model = m = ml_collections.ConfigDict()
  # The model family: vae (one stochastic layer, q(h|x) and p(h) = N(0, I) or a VampPrior) |
  # hvae (the hierarchical top-down VAE: groups of latents, each with a learned prior given the
  # groups above) | the import path of a family module of your own (docs/model-families.md).
  # The sprites need only one layer.
  m.kind = 'vae'
  # mlp | conv (hvae: the variant, both the same: mlp groups of latent vectors, conv groups of
  # spatial latents at several resolutions).
  m.encoder = 'mlp'
  m.decoder = 'mlp'
  # MLP hidden widths (encoder; the decoder mirrors them). 512 is plenty for 1024-pixel sprites.
  m.hidden = (512,)
  # Conv: channels per resolution stage (each stage halves the resolution) and residual blocks.
  m.conv_channels = (32, 64)
  m.conv_blocks = 1
  # Dimension of h (hvae: of each group's z, or its channels per position for conv). dSprites
  # has 5 factors; 10 leaves room.
  m.latent_dim = 10
  # diag | full (Cholesky factor L, Sigma = L L^T).
  m.posterior = 'diag'
  # True: Sigma is a free parameter that does not depend on x (q(h|x) = N(mu(x), Sigma)).
  m.shared_covariance = False
  # bernoulli | continuous_bernoulli | gaussian | discretized_logistic.
  m.likelihood = 'bernoulli'
  # Gaussian likelihood: learn a per-pixel sigma, or keep it fixed at gaussian_sigma.
  m.learn_sigma = True
  m.gaussian_sigma = 0.1
  # Discretized logistic: number of mixture components per sub-pixel (1 = plain).
  m.logistic_mixtures = 1
  # Discretized logistic: none (an independent mixture per sub-pixel) | rgb (PixelCNN++,
  # VDVAE, NVAE: one mixture indicator per pixel, mean_G += c0 x_R, mean_B += c1 x_R + c2 x_G
  # with tanh-bounded coefficients; needs 3 channels; model.kind=vae). An option of the same
  # likelihood, not a new name: the data, bits per dim and discreteness checks stay the same.
  m.logistic_coupling = 'none'
  # Each family's own fields, declared by the family module (models/vae.py, models/hvae.py):
  # only model.kind's is read. A config for a researcher's family adds its sub-config the same
  # way (c.model[family.NAME] = family.get_config()).
  m.vae = vae_family.get_config()
  m.hvae = hvae_family.get_config()
  # Compute dtype of the networks' matmuls and convolutions (float32 | bfloat16); parameters,
  # the likelihood and the KL stay float32.
  m.dtype = 'float32'
  # Rematerialise every residual block (nn.remat): its activations are recomputed in the
  # backward pass instead of stored, less memory for more compute; the numbers do not change.
  # Conv models and every block of the hierarchy (the MLP single-layer model has no blocks).
  m.remat = False
  # Normalising flow on the posterior sample: none | iaf (inverse autoregressive flow, Kingma
  # et al. 2016: flow_steps MADE-style steps conditioned on an encoder context, units reversed
  # between steps; for the hierarchy one flow per group). With a flow the KL is the Monte-Carlo
  # log q - log p at the sample, and the base Gaussian's analytic KL is reported beside it.
  m.posterior_flow = 'none'
  # IAF: number of flow steps (each an autoregressive network over the latent units).
  m.flow_steps = 2
  # IAF: hidden width of each step's masked network (and of the encoder's context vector).
  m.flow_hidden = 256

  c.objective = o = ml_collections.ConfigDict()
  # elbo (recon + weighted KL, the derived negative ELBO at beta 1) | iwae (the importance-
  # weighted bound with num_samples samples; beta, warm-up and free bits do not apply).
  o.name = 'elbo'
  # Weight of the KL in the training loss (1 = the derived negative ELBO). Traced, sweepable.
  o.beta = 1.0
  # KL warm-up: the KL's weight ramps linearly from 0 to beta over this many steps (0 = off).
  # Traced, sweepable.
  o.kl_warmup_steps = 0
  # Free bits (Kingma et al. 2016): each group's batch-mean KL counts at least this many nats
  # in the loss (0 = off). Traced, sweepable.
  o.free_bits = 0.0
  # The groups free bits floors: total (the whole KL) | unit (each latent unit: a family whose
  # KL is a sum over units, its kl_units terms) | group (each stochastic group: a family with
  # kl/<group> terms, e.g. model.kind=hvae). Validation reads what the family declares.
  o.free_bits_per = 'total'
  # K of the iwae objective (static: it sets the shapes). 1 equals a single-sample ELBO whose
  # KL is estimated by Monte Carlo.
  o.num_samples = 1
  # Gradient estimator of the iwae objective: reparam (the plain reparameterised gradient of the
  # bound) | dreg (doubly reparameterised, Tucker et al. 2019: the encoder's gradient weights
  # each sample by its squared normalised importance weight and drops the score term, so its
  # signal-to-noise ratio does not fall with K; the decoder's gradient is the same). The loss
  # value is the same bound either way.
  o.iwae_gradient = 'reparam'

  c.optim = op = ml_collections.ConfigDict()
  # adam | adamw.
  op.name = 'adam'
  # Peak learning rate. Traced, sweepable.
  op.learning_rate = 1e-3
  # constant | warmup_cosine.
  op.schedule = 'constant'
  # Linear warm-up steps (warmup_cosine).
  op.warmup_steps = 0
  # Global-norm gradient clipping; 0 turns it off.
  op.clip_norm = 0.0
  # AdamW decoupled weight decay.
  op.weight_decay = 1e-4
  # Gradient skipping (vae_jax.optim): a step whose global gradient norm is too large applies
  # no update (parameters, moments, EMA and loss momentum unchanged; counted as skipped_steps).
  # Both rules are off by default, as runs before they existed trained. Fixed rule, VDVAE's:
  # skip when the norm > skip_threshold (0 = off); it locks if the norm stays above it
  # (openai/vdvae#25), which max_consecutive_skipped then stops.
  op.skip_threshold = 0.0
  # Adaptive rule (0 = off): skip when the norm > skip_factor x the median of the last
  # skip_window finite norms (skipped ones included, so a lasting rise moves the median and the
  # skipping ends: it cannot lock). Active once the window is full. A factor of 5 to 10 leaves
  # ordinary noise alone (measured on this config: over 3000 steps the largest norm was 1.8 x
  # the median of the 100 before it) and catches order-of-magnitude spikes.
  op.skip_factor = 0.0
  # Norms in the adaptive rule's median (static: the size of the ring buffer in the state).
  op.skip_window = 100

  c.early_stopping = es = ml_collections.ConfigDict()
  # Evaluations without an improvement of the validation neg_elbo (data.valid_split) by at least
  # min_delta before the run stops (0 = off). The stop is clean: a `stop` record with the
  # reason, the selected (best) step's evaluation, DONE. The count is saved with every
  # checkpoint, so a resumed run keeps it.
  es.patience = 0
  # Nats per example an evaluation must improve on the best so far to count as an improvement.
  es.min_delta = 0.0

  c.checkpoint = ck = ml_collections.ConfigDict()
  # Keep the newest N checkpoints (plus the best by eval neg_elbo).
  ck.keep = 3
  # Save asynchronously (training continues while the checkpoint is written).
  ck.async_save = True

  c.images = im = ml_collections.ConfigDict()
  # Examples in each reconstruction / sample PNG grid (a square number reads best).
  im.num = 64

  c.mesh = me = ml_collections.ConfigDict()
  # Devices on the data axis; -1 = all devices of all processes.
  me.data = -1

  # Persistent XLA compilation cache folder ('' = off); '~/.cache/vae_jax/xla' by default.
  c.compilation_cache = '~/.cache/vae_jax/xla'
  return c
