"""The valid names of every choice field of the config, in one JAX-free place.

The modules that implement each choice (maths, models, data) import their names from
here, and validation checks a config against them without importing JAX, Flax or TensorFlow.
"""

# model.kind's built-in families (models/vae.py, models/hvae.py); a family module's import path
# is accepted too (models/contract.py).
MODEL_KINDS = ('vae', 'hvae')
ENCODERS = ('mlp', 'conv')
DECODERS = ('mlp', 'conv')
POSTERIORS = ('diag', 'full')
LIKELIHOODS = ('bernoulli', 'continuous_bernoulli', 'gaussian', 'discretized_logistic')
# Forms of the discretized logistic mixture: none (independent per sub-pixel) | rgb
# (PixelCNN++: one indicator per pixel, G and B located by the earlier channels' values).
LOGISTIC_COUPLINGS = ('none', 'rgb')
DTYPES = ('float32', 'bfloat16')

OBJECTIVES = ('elbo', 'iwae')
# objective.iwae_gradient: the plain reparameterised gradient | DReG (Tucker et al. 2019).
IWAE_GRADIENTS = ('reparam', 'dreg')
# model.posterior_flow: none | inverse autoregressive flow (Kingma et al. 2016).
POSTERIOR_FLOWS = ('none', 'iaf')
FREE_BITS_GROUPS = ('total', 'unit', 'group')
OPTIMIZERS = ('adam', 'adamw')
SCHEDULES = ('constant', 'warmup_cosine')

PREPROCESS = ('grey', 'dynamic_binarize', 'static_binarize', 'threshold', 'uint8')
BACKENDS = ('memory', 'stream', 'grain')
