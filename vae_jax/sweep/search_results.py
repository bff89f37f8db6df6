"""A search's results, rebuilt from its study and its trials' workdirs: the table printed, and
DIR/results.csv, DIR/results.md, the plots and the page DIR/results.html written."""

import html
import os
import warnings

from vae_jax.sweep import hyper
from vae_jax.sweep import study as study_lib
from vae_jax.sweep.hyper import SweepError
from vae_jax.sweep.results import _write_csv, _write_text, point_row  # the grid's writers

PLOTS = {'history': 'search_history.png', 'intermediate': 'search_intermediate.png',
         'importances': 'search_importances.png'}


def open_recorded_study(workdir, storage=None):
  """The study DIR/search.json names (storage: its URL where the recorded one hides a password)."""
  record = study_lib.read_search(workdir)
  url = storage or record.get('storage') or study_lib.default_storage(workdir)
  if '***' in url and not storage:
    raise SweepError(f'{workdir}/search.json records the storage without its password '
                     f'({url}): pass --storage=URL (or keep the password in ~/.pgpass or '
                     'PGPASSWORD, out of the URL).')
  storage_obj = study_lib.open_storage(url)
  return study_lib.open_study(storage_obj, record['study_name'], create=False)


def trial_rows(workdir, study, record):
  """One row per trial of the study: number, name, its values, state, objective, steps used,
  and (where its workdir is here) its validation and test values at its selected step."""
  keys = [p['key'] for p in record['search']['params']]
  rows = []
  for t in sorted(study.trials, key=lambda t: t.number):
    search_dir = t.user_attrs.get('search_dir', workdir)
    name = t.user_attrs.get('name', f'trial{t.number:04d}')
    row = {'number': t.number, 'name': name}
    row.update(_point(record, t.params))
    row['state'] = study_lib.state_name(t)
    values = list(t.intermediate_values.values()) if t.intermediate_values else []
    row['value'] = t.value if t.value is not None else (
        values[-1] if row['state'] == 'pruned' and values else None)
    trial_dir = os.path.join(search_dir, name)
    metrics = point_row(trial_dir, name, {}) if os.path.isdir(trial_dir) else {}
    steps = t.user_attrs.get('steps')
    if steps is None and os.path.isdir(trial_dir):
      steps = study_lib.steps_trained(study_lib.read_records(trial_dir))
    row['steps'] = steps
    row['selected_step'] = metrics.get('selected_step')
    row['wall_s'] = metrics.get('wall_s')
    row.update({k: v for k, v in metrics.items() if k.startswith(('valid_', 'test_'))})
    row['reason'] = t.user_attrs.get('reason', '')
    row['dir'] = '' if search_dir == workdir else search_dir
    for k in keys:
      row.setdefault(k, '')
    rows.append(row)
  return rows


def _point(record, params):
  """The config values of a trial's params (categorical reprs mapped back)."""
  out = {}
  for p in record['search']['params']:
    if p['key'] not in params:
      continue
    value = params[p['key']]
    if p['kind'] == 'categorical':
      plain = [v if study_lib.plain_value(v) else repr(tuple(v) if isinstance(v, list) else v)
               for v in p['values']]
      if value in plain:
        value = p['values'][plain.index(value)]
    out[p['key']] = value
  return out


def best_row(rows):
  """The index of the complete trial with the lowest objective (ties: the lower number)."""
  scored = [(r['value'], r['number'], i) for i, r in enumerate(rows)
            if r['state'] == 'complete' and isinstance(r.get('value'), (int, float))]
  return min(scored)[2] if scored else None


def search_report(workdir, study=None, storage=None, log=print):
  """Prints the trials' table, then writes DIR/results.csv, results.md, the plots and
  results.html; returns the rows.

  Raises:
    SweepError: after the table is printed, naming each file that could not be written.
  """
  record = study_lib.read_search(workdir)
  if study is None:
    study = open_recorded_study(workdir, storage)
  rows = trial_rows(workdir, study, record)
  keys = [p['key'] for p in record['search']['params']]
  markdown = _markdown(rows, keys, record)
  log(markdown.rstrip('\n'))
  unwritten, plots = [], []

  def attempt(path, write):
    try:
      return write(path)
    except OSError as e:
      unwritten.append(f'{path} ({e.strerror or e})')
      return None

  columns = ['number', 'name', *keys, 'state', 'value', 'steps', 'selected_step', 'wall_s']
  for row in rows:
    columns += [c for c in row if c not in columns]
  attempt(os.path.join(workdir, 'results.csv'), lambda p: _write_csv(p, rows, columns))
  attempt(os.path.join(workdir, 'results.md'), lambda p: _write_text(p, markdown))
  plots = attempt(workdir, lambda d: write_plots(d, study, keys)) or []
  attempt(os.path.join(workdir, 'results.html'),
          lambda p: _write_text(p, _page(rows, keys, record, plots)))
  if unwritten:
    raise SweepError(f'The results above could not be written: {"; ".join(unwritten)}. Run '
                     '--report again where the folder can be written (or on a copy of it).')
  log(f'results: {os.path.join(workdir, "results.csv")}, results.md, results.html and '
      f'{len(plots)} plot(s)')
  return rows


def _fmt(value, err=None):
  if value is None or value == '':
    return ''
  text = f'{value:.3f}' if isinstance(value, float) else str(value)
  return text + (f' ± {err:.3f}' if isinstance(err, float) else '')


def _value(value):
  """A searched value as the table shows it: floats to 4 significant digits."""
  return f'{value:.4g}' if isinstance(value, float) else hyper.render_value(value)


def _metrics(rows):
  return [m for m in ('neg_elbo', 'nll') if any(r.get(f'valid_{m}') is not None for r in rows)]


def _table(rows, keys):
  """(head, [cells]) of the trials' table (shared by results.md and results.html)."""
  best = best_row(rows)
  metrics = _metrics(rows)
  head = ['', 'trial', *(k.rsplit('.', 1)[-1] for k in keys), 'state', 'steps', 'objective',
          'selected step', *(f'{tag} {m}' for tag in ('valid', 'test') for m in metrics)]
  lines = []
  for i, r in enumerate(rows):
    cells = ['**best**' if i == best else '', str(r['number']),
             *(_value(r.get(k, '')) for k in keys),
             r['state'], _fmt(r.get('steps')), _fmt(r.get('value')), _fmt(r.get('selected_step'))]
    cells += [_fmt(r.get(f'{tag}_{m}'), r.get(f'{tag}_{m}_stderr'))
              for tag in ('valid', 'test') for m in metrics]
    lines.append(cells)
  return head, lines


def summary(rows, record):
  """The lines under the table: the states, the train steps spent, the best trial."""
  states = {}
  for r in rows:
    states[r['state']] = states.get(r['state'], 0) + 1
  steps = sum(r['steps'] or 0 for r in rows)
  out = [f'{len(rows)} trials: ' + ', '.join(f'{n} {s}' for s, n in sorted(states.items())),
         f'train steps spent: {steps}']
  best = best_row(rows)
  if best is not None:
    r = rows[best]
    test = ', '.join(f'test {m} {_fmt(r.get(f"test_{m}"), r.get(f"test_{m}_stderr"))}'
                     for m in _metrics([r]) if r.get(f'test_{m}') is not None)
    out.append(f'best trial (lowest {record["objective"]}): {r["number"]} ({r["name"]}), '
               f'{record["objective"]} {_fmt(r["value"])} at step {r.get("selected_step")}'
               + (f'; {test}' if test else ''))
  return out


def _markdown(rows, keys, record):
  head, lines = _table(rows, keys)
  text = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  text += ['| ' + ' | '.join(cells) + ' |' for cells in lines]
  text += ['', *(f'- {line}' for line in summary(rows, record))]
  failed = [f'- trial {r["number"]} failed: {r["reason"]}' for r in rows
            if r['state'] == 'failed' and r.get('reason')]
  text += failed
  note = ('\nThe objective is the validation split\'s value at each trial\'s selected step (its '
          'lowest validation neg_elbo); a pruned trial shows its last reported value. The test '
          'values are reported only, never used to choose. steps: the train steps the trial '
          'ran (a pruned trial stops at the first evaluation after the controller read the '
          'pruner\'s decision: the one decided on, or the next).\n')
  return '\n'.join(text) + '\n' + note


def _page(rows, keys, record, plots):
  head, lines = _table(rows, keys)
  cell = lambda c: html.escape(c.replace('**', ''))
  table = ['<table border="1" cellspacing="0" cellpadding="3">',
           '<tr>' + ''.join(f'<th>{cell(h)}</th>' for h in head) + '</tr>']
  table += ['<tr>' + ''.join(f'<td>{cell(c)}</td>' for c in cells) + '</tr>' for cells in lines]
  table.append('</table>')
  items = ''.join(f'<li>{html.escape(line)}</li>' for line in summary(rows, record))
  images = ''.join(f'<p><img src="{html.escape(p)}" alt="{html.escape(p)}"></p>' for p in plots)
  title = html.escape(f'Search {record["study_name"]}: {record["config"]}')
  return (f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title></head>'
          f'<body><h1>{title}</h1><ul>{items}</ul>{"".join(table)}{images}</body></html>\n')


def write_plots(workdir, study, keys):
  """The optimisation history, the learning curves, the objective against each parameter and
  (where Optuna computes them: two or more complete trials) the parameter importances; returns
  the file names written."""
  import matplotlib
  matplotlib.use('Agg')
  import optuna
  from matplotlib import pyplot as plt
  from optuna.visualization import matplotlib as vis
  complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
  jobs = [(PLOTS['intermediate'], lambda: vis.plot_intermediate_values(study))]
  if complete:
    jobs.append((PLOTS['history'], lambda: vis.plot_optimization_history(study)))
    for key in keys:
      jobs.append((f'objective_vs_{hyper.UNSAFE_NAME_CHARS.sub("-", key)}.png',
                   lambda key=key: vis.plot_slice(study, params=[key])))
  if len(complete) >= 2 and len(keys) >= 2:
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    jobs.append((PLOTS['importances'],
                 lambda: vis.plot_param_importances(study, evaluator=evaluator)))
  written = []
  for name, plot in jobs:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # Optuna's matplotlib plots are marked experimental
      try:
        axes = plot()
      except (ValueError, RuntimeError, ZeroDivisionError):
        continue  # too few trials for this plot (importances, say)
    figure = (axes.flat[0] if hasattr(axes, 'flat') else axes).figure
    figure.set_size_inches(7, 4.6)
    figure.tight_layout()
    try:
      figure.savefig(os.path.join(workdir, name), dpi=100)
    finally:
      plt.close(figure)
    written.append(name)
  return written
