"""Evaluation over whole splits: the loop's ELBO pass (elbo), the K-sample estimator of
-log p(x) (iwae), the unit statistics (units), a saved run's evaluation and its files
(saved_run, with what every reader shares in reader), the loop's periodic evaluations
(periodic) and picture grids (pictures); batches holds the padded, masked full-split batches
they all share.

The names below are the package's public API, re-exported so that `from vae_jax import evaluate
as eval_lib; eval_lib.estimate(...)` works; periodic and pictures are imported by the loop
itself (vae_jax.evaluate.periodic.PeriodicEval).
"""

from vae_jax.config.compat import saved_config  # noqa: F401 - the one loader of saved configs
from vae_jax.evaluate.elbo import evaluate, jit_eval_step, make_eval_step  # noqa: F401
from vae_jax.evaluate.iwae import (  # noqa: F401
  ROWS_PER_CHUNK,
  EstimateStep,
  chunk_plan,
  default_chunk_size,
  estimate,
  likelihood_kind,
  make_estimate_step,
)
from vae_jax.evaluate.reader import (  # noqa: F401
  ResultNotSavedError,
  StepDeletedError,
  damaged_config_warning,
  live_run_notice,
  read_run_config,
  reader_checkpointer,
  restore_checked,
  unwritable,
  warn,
)
from vae_jax.evaluate.saved_run import (  # noqa: F401
  PARAMS_CHOICES,
  check_run_request,
  eval_path,
  evaluate_run,
  paired_difference,
)
from vae_jax.evaluate.units import (  # noqa: F401
  ACTIVE_UNIT_THRESHOLD,
  MI_MAX_SAMPLES,
  jit_unit_statistics_fn,
  mutual_information,
  unit_statistics,
  unit_summary,
)
