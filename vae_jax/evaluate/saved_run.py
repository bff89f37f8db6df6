"""A saved run's evaluation (scripts/evaluate.py): the request checked, the checkpoint restored
and estimated, the eval files written (replaced or kept), and the paired difference of two."""

import json
import os

import jax
import numpy as np

from vae_jax.config import compat
from vae_jax.evaluate import batches, iwae, reader, selection

# Report fields that describe how an evaluation ran, not its result: they may differ between
# two evaluations of the same step, split and K without the file counting as different.
_HOW_IT_RAN = ('selected', 'seconds', 'compile_s', 'samples_per_sec', 'num_devices', 'batch_size',
               'chunk_size', 'num_chunks')
PARAMS_CHOICES = ('state', 'ema')


def eval_path(workdir, step, split, num_samples, params=None):
  """DIR/eval/step_S_SPLIT_kK.json (a slice's brackets and colons made file-name safe).

  params: None for the run's default parameters (its EMA where it keeps one, else the train
  state's); 'state' for the train state of a run whose default is its EMA, which gets its own
  file, step_S_SPLIT_kK_state.json, beside the EMA's.
  """
  tag = split.replace('[', '_').replace(']', '').replace(':', '-').replace('%', 'pc')
  suffix = f'_{params}' if params else ''
  return os.path.join(workdir, 'eval', f'step_{step}_{tag}_k{num_samples}{suffix}.json')


def check_run_request(workdir, *, step=None, split=None, num_samples=1, params=None,
                      chunk_size=0, batch_size=0):
  """Checks what a user asks of a saved run without TensorFlow or a compile (seconds).

  `params`: 'ema', 'state', or None for the EMA where the run keeps one (config.ema_decay > 0
  in the checkpoint's config), else the train state's.

  Returns:
    (the run's config from the checkpoint's metadata (of `step`, else of the newest step), the
    checkpoint steps, the split, the parameters to evaluate: 'ema' or 'state'). A damaged
    DIR/config.json is warned about and passed over: the checkpoint's config is the one used.

  Raises:
    validation.ConfigError: no run in workdir, a step it does not have, K < 1, an unknown
      split or slice, parameters the run does not have, a negative chunk or batch size; a
      damaged config.json without a checkpoint to take the config from.
  """
  from vae_jax.config import validation
  from vae_jax.storage import checkpoint as ckpt_lib
  workdir = os.path.abspath(os.path.expanduser(workdir or ''))
  if not os.path.isfile(os.path.join(workdir, 'config.json')) or not os.path.isdir(
      ckpt_lib.checkpoint_dir(workdir)):
    raise validation.ConfigError(
        f'--workdir={workdir} holds no vae_jax run (no config.json and checkpoints/ folder). '
        'Point it at the --workdir of a scripts/train.py run.')
  if not isinstance(num_samples, int) or num_samples < 1:
    raise validation.ConfigError(f'--num_samples={num_samples} must be an integer >= 1 (K of '
                                 'the importance-sampled -log p(x)).')
  if chunk_size < 0 or batch_size < 0:
    raise validation.ConfigError('--chunk_size and --batch_size must be >= 0 (0: the '
                                 "config's eval_chunk_size and eval_batch_size).")
  if params is not None and params not in PARAMS_CHOICES:
    raise validation.ConfigError(f'--params={params!r} is not one of {PARAMS_CHOICES}.')
  config, damaged = reader.read_run_config(workdir)
  checkpointer = reader.reader_checkpointer(workdir, config)
  try:
    steps = checkpointer.all_steps()
    if not steps and damaged:
      raise validation.ConfigError(
          f'{os.path.join(workdir, "config.json")} cannot be read ({damaged}), and '
          f'{workdir}/checkpoints holds no checkpoint whose saved config could stand in for it. '
          "Rerun scripts/train.py with the run's --config on this workdir.")
    if not steps:
      raise validation.ConfigError(f'{workdir}/checkpoints holds no checkpoint yet.')
    if step is not None and step not in steps:
      raise validation.ConfigError(f'--step={step}: {workdir} has no checkpoint at that step; '
                                   f'its checkpoints are at steps {steps}.')
    meta = checkpointer.restore_meta(step if step is not None else steps[-1])
  finally:
    checkpointer.close()
  if damaged:
    reader.warn(reader.damaged_config_warning(workdir, damaged, meta['step']))
  config = compat.saved_config(meta['config'])
  has_ema = config.ema_decay > 0
  if params == 'ema' and not has_ema:
    raise validation.ConfigError(
        f'The run in {workdir} has no EMA parameters at step {meta["step"]} (it trained with '
        'config.ema_decay=0); evaluate its train state with --params=state, or train with '
        '--config.ema_decay=0.999.')
  params = params or ('ema' if has_ema else 'state')
  split = split or config.data.eval_split
  _check_split(config.data, split)
  return config, steps, split, params


def _check_split(data_cfg, split):
  """The split's syntax, and its size where the dataset is prepared (from its JSON, no TFDS)."""
  from vae_jax.config import validation
  from vae_jax.data import checks, splits
  try:
    splits.parse(split)
    prepared = checks.prepared_dirs(data_cfg.name, data_cfg.data_dir)
    if prepared:
      with open(os.path.join(prepared[-1], 'dataset_info.json')) as f:
        info = json.load(f)
      sizes = {s['name']: sum(int(n) for n in s.get('shardLengths', [])) for s in info['splits']}
      splits.resolve(split, sizes)
  except ValueError as e:
    raise validation.ConfigError(f'--split={split!r} does not fit {data_cfg.name!r}: {e}') from None


def evaluate_run(workdir, *, step='best', split=None, num_samples=1000, params=None,
                 chunk_size=0, batch_size=0, out_dir=None, progress=None, log=print):
  """Restores a run's checkpoint, estimates everything and writes DIR/eval/ (or out_dir).

  step: 'best' (the default: the step selected on data.valid_split, see evaluate.selection),
  'last' (the newest verified step) or a step number; None is 'best'. The report's `selected`
  says which step and why ("best validation neg_elbo 91.28 at step 44460").

  params: 'ema', 'state', or None (the EMA where the run keeps one, else the train state's).
  The run is rebuilt from its checkpoint's config on all local devices (config.mesh.data =
  -1). The report (see estimate, plus step, params and, for the EMA, ema_init_weight and an
  ema_warning while the EMA is dominated by its starting parameters) goes to eval_path(...)
  (the train state of an EMA run to its own _state file) and its per-example values to the
  same name with .npz. An evaluation of one step, split and
  K is deterministic, so an existing file with the same results (up to the fields of _HOW_IT_RAN
  and float32 rounding between device counts) is replaced; a different one (the code or the
  data changed) is kept as NAME.json.1 (.2, ...) beside the new one, with a warning.

  Beside a live run: the step evaluated is the one checked (the newest, or `step`), never one
  committed since; if the run's checkpoint.keep deletes it meanwhile, the newest step is
  checked again once. Past a damaged step the older one restored is evaluated, each field of
  the report from its own config, and the log says so. The step in the log and the report is
  always the step restored.

  Returns:
    The report, without the per-example values.

  Raises:
    ResultNotSavedError: the files could not be written (its `result` is the report); a folder
      that cannot be written is also warned about before the work starts.
  """
  from vae_jax import experiment
  from vae_jax import state as state_lib
  from vae_jax.config import validation
  workdir = os.path.abspath(os.path.expanduser(workdir))
  requested_split = split
  how = selection.parse_step(step)
  step = how if isinstance(how, int) else None
  for attempt in (1, 2):
    config, steps, split, _ = check_run_request(
        workdir, step=step, split=requested_split, num_samples=num_samples, params=params,
        chunk_size=chunk_size, batch_size=batch_size)
    checked, selected = _choose(workdir, config, how, steps)
    if checked != (step if step is not None else steps[-1]):  # that step's own config
      config, steps, split, _ = check_run_request(
          workdir, step=checked, split=requested_split, num_samples=num_samples, params=params,
          chunk_size=chunk_size, batch_size=batch_size)
    if attempt == 1:
      notice = reader.live_run_notice(workdir)
      if notice:
        log(notice)
      folder = os.path.abspath(out_dir) if out_dir else os.path.join(workdir, 'eval')
      why = reader.unwritable(folder) if jax.process_index() == 0 else ''
      if why:
        reader.warn(f'{folder} cannot be written ({why}): the evaluation will be printed but '
                    'not saved. Pass --out=DIR to save it elsewhere.')
    config = _reader_config(config, batch_size)
    experiment.configure_jax(config)
    exp = experiment.build(config)
    checkpointer = reader.reader_checkpointer(workdir, config)
    try:
      state, meta = reader.restore_checked(checkpointer, exp, checked)
      break
    except reader.StepDeletedError:
      if step is not None:
        raise validation.ConfigError(
            f'--step={step}: checkpoint step {step} of {workdir} was deleted while it was being '
            'read (the run training this workdir keeps only its newest checkpoint.keep steps). '
            'Choose a step it keeps.') from None
      if attempt == 2:
        raise validation.ConfigError(
            f'The newest checkpoint steps of {workdir} were deleted twice while being read (the '
            'run training it keeps only its newest checkpoint.keep steps). Try again, or pass '
            '--step.') from None
      log(f'Checkpoint step {checked} was deleted while it was being read (the run training '
          'this workdir keeps only its newest checkpoint.keep steps); checking the newest step '
          'again.')
    finally:
      checkpointer.close()
  restored = int(meta['step'])
  if restored != checked:
    log(f'Evaluating step {restored}: step {checked} could not be verified (see the warning).')
    selected = f'step {restored}, the newest verified step before {selected}'
    # The older step's own config (a resumed run may have changed its evaluation fields).
    config = _reader_config(compat.saved_config(meta['config']), batch_size)
    if config.to_dict() != exp.config.to_dict():
      exp = experiment.build(config)
    split = requested_split or config.data.eval_split
    _check_split(config.data, split)
  if params == 'ema' and state.ema is None:
    raise validation.ConfigError(
        f'Checkpoint step {restored} of {workdir} holds no EMA parameters; evaluate it with '
        '--params=state.')
  chosen, kind, notes = state_lib.eval_params(state)
  default_kind = kind
  if params == 'state':
    chosen, kind, notes = state.params, 'state', {}
  log(f'Evaluating the {"EMA" if kind == "ema" else "train state"} parameters of step '
      f'{restored} (--params={kind}); selected: {selected}.')
  if 'ema_warning' in notes:
    log(f'WARNING: {notes["ema_warning"]}')
  report = iwae.estimate(exp, chosen, split, num_samples, chunk_size=chunk_size or None,
                         progress=progress)
  per_example = report.pop('per_example')
  report.update(step=restored, selected=selected, params=kind, **notes)
  report = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in report.items()}
  if jax.process_index() == 0:
    path = eval_path(workdir, restored, split, num_samples,
                     params=None if kind == default_kind else kind)
    if out_dir:
      path = os.path.join(os.path.abspath(out_dir), os.path.basename(path))
    try:
      _write_eval(path, report, per_example, log)
    except OSError as e:
      raise reader.ResultNotSavedError(
          f'The evaluation above could not be written to {path} ({e.strerror or e}). Pass '
          '--out=DIR to write it elsewhere (scripts/analyze.py looks for it in DIR/eval/), or '
          'evaluate a copy of the workdir.', report) from None
  return report


def _choose(workdir, config, how, steps):
  """(step, selected text) of a reader's --step among the checkpoint steps it checked."""
  checkpointer = reader.reader_checkpointer(workdir, config)
  try:
    return selection.choose(checkpointer, how, reader.warn, steps)
  finally:
    checkpointer.close()


def _reader_config(config, batch_size):
  """A checkpoint's config as a reader runs it: on all local devices, its batch size."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.mesh.data = -1
    if batch_size:
      config.eval_batch_size = batch_size
  return config


def _same_result(old, new):
  keys = (set(old) | set(new)) - set(_HOW_IT_RAN)
  for k in keys:
    a, b = old.get(k), new.get(k)
    if isinstance(a, (int, float, list)) and isinstance(b, (int, float, list)) and not (
        isinstance(a, bool) or isinstance(b, bool)):
      a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
      if a.shape != b.shape or not np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True):
        return False
    elif a != b:
      return False
  return True


def _write_eval(path, report, per_example, log):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  stem = path[:-len('.json')]
  if os.path.exists(path):
    try:
      with open(path) as f:
        same = _same_result(json.load(f), report)
    except (OSError, ValueError):
      same = False
    if not same:
      n = 1
      while os.path.exists(f'{path}.{n}'):
        n += 1
      os.replace(path, f'{path}.{n}')
      if os.path.exists(stem + '.npz'):
        os.replace(stem + '.npz', f'{stem}.npz.{n}')
      log(f'WARNING: {path} held different results; kept them as {path}.{n}.')
  with open(path + '.tmp', 'w') as f:
    json.dump(report, f, sort_keys=True, indent=1)
    f.write('\n')
  os.replace(path + '.tmp', path)
  with open(stem + '.npz.tmp', 'wb') as f:
    np.savez(f, **per_example)
  os.replace(stem + '.npz.tmp', stem + '.npz')


def paired_difference(path_a, path_b, key='nll'):
  """The paired comparison of two evaluations of the same split: per-example a - b of `key`.

  Each path is an evaluation's .json or .npz (eval_path's files; the .npz holds the
  per-example values). The examples are matched by their index in the split, so two runs of
  the same data compare image by image: the standard error of the mean difference is then
  the paired one, which is far smaller than either mean's when the runs err on the same
  images.

  Returns:
    {'key', 'num_examples', 'a', 'a_stderr', 'b', 'b_stderr', 'difference',
     'difference_stderr', 'z'} (z = difference / difference_stderr), nats per example.

  Raises:
    validation.ConfigError: a file is missing or lacks `key`, or the two evaluations do not
      cover the same examples.
  """
  from vae_jax.config import validation
  values = []
  for path in (path_a, path_b):
    stem, ext = os.path.splitext(path)
    stem = stem if ext in ('.json', '.npz') else path
    if not os.path.exists(stem + '.npz'):
      raise validation.ConfigError(
          f'{stem}.npz does not exist: give an evaluation written by scripts/evaluate.py '
          '(DIR/eval/step_S_SPLIT_kK.json or .npz).')
    with np.load(stem + '.npz') as f:
      if key not in f.files:
        raise validation.ConfigError(
            f'{stem}.npz has no per-example {key!r}; it has {sorted(f.files)} (nll needs an '
            'evaluation with --num_samples >= 1).')
      values.append((np.asarray(f['index']), np.asarray(f[key], np.float64)))
  (ia, a), (ib, b) = values
  if ia.shape != ib.shape or not np.array_equal(np.sort(ia), np.sort(ib)):
    raise validation.ConfigError(
        f'{path_a} and {path_b} evaluate different examples ({ia.size} and {ib.size}); a paired '
        'comparison needs the same split.')
  a, b = a[np.argsort(ia)], b[np.argsort(ib)]
  out = {'key': key, 'num_examples': int(a.size)}
  for name, v in (('a', a), ('b', b), ('difference', a - b)):
    out[name], out[f'{name}_stderr'] = batches.mean_and_stderr(v)
  out['z'] = (out['difference'] / out['difference_stderr'] if out['difference_stderr'] > 0
              else float('inf') if out['difference'] else 0.0)
  return out
