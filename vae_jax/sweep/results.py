"""A sweep's results rebuilt from the points' workdirs alone: the table printed, and
DIR/results.csv, DIR/results.md and DIR/neg_elbo_vs_KEY.png written (`report`).
"""

import csv
import datetime
import json
import math
import os

from vae_jax.storage import records as records_lib
from vae_jax.sweep import hyper
from vae_jax.sweep.hyper import SweepError
from vae_jax.sweep.planning import read_sweep
from vae_jax.sweep.status import point_status, read_done, read_failed

METRICS = ('neg_elbo', 'recon', 'kl', 'nll', 'posterior_gap')


def _read_jsonl(path):
  return records_lib.read_jsonl(path)


def _config_json(point_dir):
  try:
    with open(os.path.join(point_dir, 'config.json')) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _parse_time(text):
  try:
    return datetime.datetime.fromisoformat(text).timestamp()
  except (TypeError, ValueError):
    return None


def _wall_seconds(point_dir, done_step):
  """First start in run.json to DONE's mtime (None if unfinished)."""
  if done_step is None:
    return None
  try:
    with open(os.path.join(point_dir, 'run.json')) as f:
      run = json.load(f)
  except (OSError, ValueError):
    return None
  starts = [run, *run.get('previous', [])]
  times = [t for t in (_parse_time(s.get('started')) for s in starts) if t is not None]
  if not times:
    return None
  return os.path.getmtime(os.path.join(point_dir, 'DONE')) - min(times)


def selected_step(evals, valid_split):
  """The step of the lowest validation neg_elbo among a run's eval records (ties: the earlier
  step; non-finite values last), the step its readers select (vae_jax.evaluate.selection), or
  None where validation was never evaluated."""
  scored = [(not math.isfinite(r['neg_elbo']), r['neg_elbo'], r['step']) for r in evals
            if r.get('split') == valid_split and isinstance(r.get('neg_elbo'), (int, float))]
  return min(scored)[2] if scored else None


def point_row(point_dir, name, point, config=None):
  """One results row: the point's overrides, status, final step, wall time, and the metrics of
  its step selected on validation (selected_step)."""
  row = {'name': name, **{k: hyper.render_value(v) for k, v in point.items()}}
  row['status'] = point_status(point_dir, config)
  done = read_done(point_dir)
  records = _read_jsonl(os.path.join(point_dir, 'metrics.jsonl'))
  evals = [r for r in records if r.get('kind') == 'eval']
  row['step'] = (done or {}).get('step', max((r['step'] for r in records), default=None))
  failed = read_failed(point_dir) if row['status'] == 'failed' else None
  row['reason'] = '' if failed is None else str(failed.get('reason', ''))
  if failed is not None and isinstance(failed.get('step'), int):
    row['step'] = failed['step']  # where it stopped, not a later record's step
  wall = _wall_seconds(point_dir, done and done.get('step'))
  row['wall_s'] = None if wall is None else round(wall, 1)
  cfg = _config_json(point_dir) or {}
  splits = {'valid': cfg.get('data', {}).get('valid_split', 'train[90%:]'),
            'test': cfg.get('data', {}).get('eval_split', 'test')}
  chosen = selected_step(evals, splits['valid'])
  row['selected_step'] = chosen
  for tag, split in splits.items():
    rec = next((r for r in reversed(evals) if r['step'] == chosen and r.get('split') == split),
               {})
    for m in METRICS:
      for suffix in ('', '_stderr'):
        if m + suffix in rec or m in ('neg_elbo', 'recon', 'kl'):
          row[f'{tag}_{m}{suffix}'] = rec.get(m + suffix)
  return row


def report(workdir, planned=None, log=print):
  """Prints the results table, then writes DIR/results.csv, DIR/results.md and one PNG per
  swept key; returns the rows.

  Raises:
    SweepError: after the table is printed, naming each file that could not be written
      (a read-only folder, say).
  """
  record = read_sweep(workdir)
  if planned is None:  # --report: from sweep.json and the workdirs alone
    entries = [(os.path.join(workdir, p['name']), p['name'], p['overrides'], None)
               for p in record['points']]
  else:
    entries = [(p['workdir'], p['name'], p['point'], p['config']) for p in planned]
  rows = [point_row(*e) for e in entries]
  keys = sorted({k for _, _, point, _ in entries for k in point})
  columns = ['name', *keys, 'status', 'step', 'wall_s']
  for row in rows:
    columns += [c for c in row if c not in columns]
  markdown = _markdown(rows, keys)
  log(markdown.rstrip('\n'))  # the numbers first, whatever can be written after
  unwritten = []

  def attempt(path, write):
    try:
      write(path)
    except OSError as e:
      unwritten.append(f'{path} ({e.strerror or e})')

  attempt(os.path.join(workdir, 'results.csv'), lambda path: _write_csv(path, rows, columns))
  attempt(os.path.join(workdir, 'results.md'), lambda path: _write_text(path, markdown))
  for key in keys:
    attempt(os.path.join(workdir, f'neg_elbo_vs_{_safe(key)}.png'),
            lambda path, key=key: _plot(path, rows, [
                (e[2], r) for e, r in zip(entries, rows, strict=True)], key, keys))
  if unwritten:
    raise SweepError(
        f'The results above could not be written: {"; ".join(unwritten)}. They are read from '
        'the points\' workdirs alone: run --report again where the folder can be written '
        '(or on a copy of it).')
  log(f'results: {os.path.join(workdir, "results.csv")}, results.md and '
      f'{len(keys)} plot(s)')
  return rows


def _write_csv(path, rows, columns):
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    for row in rows:
      writer.writerow({c: '' if row.get(c) is None else row.get(c) for c in columns})


def _write_text(path, text):
  with open(path, 'w') as f:
    f.write(text)


def _safe(key):
  return hyper.UNSAFE_NAME_CHARS.sub('-', key)  # the same character rule as point names


def _fmt(value, err=None):
  if value is None:
    return ''
  text = f'{value:.3f}' if isinstance(value, float) else str(value)
  if err is not None:
    text += f' ± {err:.3f}'
  return text


def _best(rows):
  """The index of the finished row with the lowest validation neg_elbo (None if none)."""
  scored = [(r['valid_neg_elbo'], i) for i, r in enumerate(rows)
            if r.get('status') == 'done' and isinstance(r.get('valid_neg_elbo'), (int, float))]
  return min(scored)[1] if scored else None


def _markdown(rows, keys):
  """DIR/results.md: the table, the failed points' reasons, and how to read it."""
  best = _best(rows)
  metrics = [m for m in METRICS if any(f'test_{m}' in r for r in rows)]
  head = ['', 'name', *keys, 'status', 'step', 'selected step', 'wall (s)']
  head += [f'{tag} {m}' for tag in ('valid', 'test') for m in metrics]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for i, r in enumerate(rows):
    cells = ['**best**' if i == best else '', r['name'], *(str(r.get(k, '')) for k in keys),
             r['status'], _fmt(r.get('step')), _fmt(r.get('selected_step')),
             '' if r.get('wall_s') is None else f"{r['wall_s']:.1f}"]
    cells += [_fmt(r.get(f'{tag}_{m}'), r.get(f'{tag}_{m}_stderr'))
              for tag in ('valid', 'test') for m in metrics]
    lines.append('| ' + ' | '.join(cells) + ' |')
  failed = [f'- {r["name"]} failed at step {r.get("step")}: {r["reason"]}'
            for r in rows if r['status'] == 'failed']
  if failed:
    lines += ['', *failed]
  note = ('\nBest point (lowest validation neg_elbo among the finished ones) marked. Each '
          'point is reported at its selected step, the evaluation with the lowest validation '
          'neg_elbo (what scripts/evaluate.py evaluates by default): its validation and test '
          'values, ± one standard error over the split\'s examples. wall: '
          'from the run\'s first start (run.json) to DONE, restarts and any gap between them '
          'included.\n')
  return '\n'.join(lines) + '\n' + note


def _plot(path, rows, pairs, key, keys):
  """neg_elbo (validation and test) against `key`, one line per setting of the other keys."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  others = [k for k in keys if k != key]
  groups = {}
  for point, row in pairs:
    if key not in point or not isinstance(point[key], (int, float)):
      continue
    label = ', '.join(f'{k}={point.get(k)}' for k in others if k in point)
    groups.setdefault(label, []).append((point[key], row))
  if not groups:
    return
  fig = Figure(figsize=(6.4, 4.4))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  xs_all = [x for g in groups.values() for x, _ in g]
  for label, members in sorted(groups.items()):
    members.sort(key=lambda m: m[0])
    for tag, style in (('valid', '--'), ('test', '-')):
      pts = [(x, r.get(f'{tag}_neg_elbo'), r.get(f'{tag}_neg_elbo_stderr') or 0.0)
             for x, r in members if r.get(f'{tag}_neg_elbo') is not None]
      if not pts:
        continue
      x, y, e = zip(*pts, strict=True)
      name = f'{tag}' + (f' ({label})' if label else '')
      ax.errorbar(x, y, yerr=e, fmt='o' + style, capsize=3, label=name)
  if min(xs_all) > 0 and max(xs_all) > 10 * min(xs_all):
    ax.set_xscale('log')
  elif all(isinstance(x, int) for x in xs_all):  # seeds, sizes: no ticks between integers
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel(key)
  ax.set_ylabel('neg_elbo (nats per example)')
  ax.set_title(f'neg_elbo at the selected step against {key}')
  ax.grid(True, alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
