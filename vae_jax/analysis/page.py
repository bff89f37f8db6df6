"""The pages of an analysis (index.html, summary.md) and its figures as TensorBoard images.

The pages reference only the PNG files beside them and carry their style inline: they read
offline, with no script. The TensorBoard images are written without TensorFlow.
"""

import html
import math
import os
import time

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
td, th { border: 1px solid #ddd; padding: 0.25em 0.7em; text-align: left; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0 2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; max-width: 70em; }
code { background: #f4f4f4; padding: 0 0.2em; }
nav a { margin-right: 1em; }
"""


def _fmt(v, digits=3):
  if isinstance(v, float):
    return 'nan' if math.isnan(v) else f'{v:.{digits}f}'
  return str(v)


def _numbers(summary):
  """[(quantity, value, note)] of the summary's headline numbers."""
  rows = []
  e = summary['elbo']
  for k, what in (('neg_elbo', 'negative ELBO'), ('recon', 'reconstruction'), ('kl', 'KL')):
    rows.append((f'{what} ({k})', f'{e[k]:.3f} \u00b1 {e[k + "_stderr"]:.3f}',
                 'nats per example, mean \u00b1 standard error'))
  units = summary.get('units') or {}
  if units.get('active_units') is not None:
    groups = units.get('active_units_per_group') or []
    rows.append(('active units', str(units['active_units']),
                 f'of {len(units["kl_per_unit"])}' + (
                     f'; per group, top first: {", ".join(map(str, groups))}'
                     if len(groups) > 1 else '')))
  if units.get('mutual_info') is not None:
    err = units.get('mutual_info_stderr')
    rows.append(('mutual information I(x; h)', _fmt(units['mutual_info'])
                 + (f' \u00b1 {err:.3f}' if err is not None else ''),
                 'nats, x uniform over the split, h ~ q(h|x)'))
  if units.get('aggregate_kl') is not None:
    rows.append(('aggregate KL(q(h) || p(h))', _fmt(units['aggregate_kl']),
                 'nats: KL - I(x; h), to the model\'s prior'))
  if units.get('aggregate_kl_standard') is not None:
    rows.append(('aggregate KL(q(h) || N(0, I))', _fmt(units['aggregate_kl_standard']),
                 'nats: KL(q(h|x) || N(0, I)) - I(x; h), beside a prior that is not N(0, I)'))
  m = summary.get('mig')
  if m:
    rows.append(('MIG', _fmt(m['mig']), f'{m["num_bins"]} bins; factors '
                 + ', '.join(f'{f} {g:.2f} (unit {u})'
                             for f, g, u in zip(m['factors'], m['gap'], m['top_units'],
                                                strict=True))))
  return rows


# The headline fields of an evaluation file, shown first (the rest follow by name).
_EVAL_FIRST = ('nll', 'posterior_gap', 'neg_elbo', 'recon', 'kl', 'bits_per_dim', 'joint_kl',
               'marginal_kl', 'data_entropy', 'active_units', 'mutual_info', 'aggregate_kl',
               'aggregate_kl_standard')


def _eval_rows(summary):
  """[(file, split, K, [(quantity, value)], note)] of the step's evaluation files.

  Each number is shown with its standard error where the record has one (name_stderr);
  lists (per-unit values) are left to the figures.
  """
  out = []
  for e in summary.get('eval_files', []):
    r = e['record']
    number = lambda v: isinstance(v, int | float) and not isinstance(v, bool)
    names = [k for k in r if number(r[k]) and not k.endswith('_stderr') and k != 'step']
    names = [k for k in _EVAL_FIRST if k in names] + sorted(set(names) - set(_EVAL_FIRST))
    rows = [(k, _fmt(r[k], 4) + (f' \u00b1 {r[k + "_stderr"]:.4f}'
                                 if number(r.get(f'{k}_stderr')) else ''))
            for k in names]
    rows += [(k, str(r[k])) for k in ('likelihood', 'normalized', 'params') if k in r]
    out.append((os.path.basename(e['path']), r.get('split', e['split']), e['k'], rows,
                r.get('note')))
  return out


def write_pages(out_dir, summary):
  """index.html and summary.md in out_dir, showing summary['figures'] and the numbers.

  Returns (index.html path, summary.md path).
  """
  esc = html.escape
  s = summary
  steps = ', '.join(map(str, s['checkpoint_steps']))
  meta = [('run', s['workdir']),
          ('parameters', f'checkpoint step {s["step"]} (the run has steps {steps})'),
          ('selected', s.get('selected') or f'step {s["step"]}'),
          ('split', f'{s["split"]} ({s["num_examples"]} examples)'),
          ('dataset', s['dataset']), ('model', s['model'])]
  parts = ['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
           f'<title>Analysis of {esc(s["workdir"])} at step {s["step"]}</title>',
           f'<style>{_CSS}</style></head><body>',
           f'<h1>Analysis at step {s["step"]}</h1>',
           '<nav>' + ''.join(f'<a href="#{esc(f["name"])}">{esc(f["title"])}</a>'
                             for f in s['figures']) + '</nav>',
           '<table>' + ''.join(f'<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>'
                               for k, v in meta) + '</table>',
           f'<h2>Numbers (split {esc(s["split"])}, checkpoint step {s["step"]})</h2>',
           '<table><tr><th>quantity</th><th>value</th><th></th></tr>'
           + ''.join(f'<tr><td>{esc(q)}</td><td class="num">{esc(v)}</td><td>{esc(n)}</td></tr>'
                     for q, v, n in _numbers(s)) + '</table>',
           '<p>The ELBO is exact over the whole split (one posterior sample per example, keyed '
           'by the example\u2019s index), computed now with these parameters.</p>']
  evals = _eval_rows(s)
  table = lambda rows: ('<table>' + ''.join(f'<tr><td>{esc(q)}</td><td class="num">{esc(v)}'
                                            '</td></tr>' for q, v in rows) + '</table>')
  if evals:
    parts.append(f'<h3>Evaluation files of step {s["step"]} (scripts/evaluate.py)</h3>')
    for name, split, k, rows, note in evals:
      parts.append(f'<p><code>eval/{esc(name)}</code>: split {esc(split)}, K = {k} importance '
                   'samples per example (nats per example, \u00b1 standard error)</p>'
                   + (f'<p><b>Note:</b> {esc(note)}</p>' if note else '')
                   + table([r for r in rows if r[0] in _EVAL_FIRST])
                   + '<details><summary>every field</summary>' + table(rows) + '</details>')
  for f in s['figures']:
    parts.append(f'<h2 id="{esc(f["name"])}">{esc(f["title"])}</h2><figure>'
                 f'<img src="{esc(f["file"])}" alt="{esc(f["title"])}">'
                 f'<figcaption>{esc(f["caption"])}</figcaption></figure>')
  parts.append('</body></html>')
  index = os.path.join(out_dir, 'index.html')
  with open(index, 'w') as fh:
    fh.write('\n'.join(parts) + '\n')

  md = [f'# Analysis at step {s["step"]}', '']
  md += [f'- **{k}**: {v}' for k, v in meta]
  md += ['', f'## Numbers (split {s["split"]}, checkpoint step {s["step"]})', '',
         '| quantity | value | |', '|---|---:|---|']
  cell = lambda text: str(text).replace('|', '\\|')  # a bare | would split the cell
  md += [f'| {cell(q)} | {cell(v)} | {cell(n)} |' for q, v, n in _numbers(s)]
  for name, split, k, rows, note in evals:
    md += ['', f'`eval/{name}` (split {split}, K = {k}): '
           + ', '.join(f'{q} {v}' for q, v in rows if q in _EVAL_FIRST)]
    md += [f'Note: {note}'] if note else []
  for f in s['figures']:
    md += ['', f'## {f["title"]}', '', f'![{f["title"]}]({f["file"]})', '', f['caption']]
  summary_md = os.path.join(out_dir, 'summary.md')
  with open(summary_md, 'w') as fh:
    fh.write('\n'.join(md) + '\n')
  return index, summary_md


# ---------------------------------------------------------------------------------------------
# TensorBoard.


def write_tensorboard_images(logdir, step, pngs):
  """Writes {tag: PNG path} as TensorBoard image summaries at `step` (no TensorFlow).

  A new events file (suffix '.analysis') beside the run's, so TensorBoard shows the images
  under the run. Returns the logdir.
  """
  from PIL import Image
  from tensorboard.compat.proto import event_pb2, summary_pb2
  from tensorboard.summary.writer.event_file_writer import EventFileWriter

  from vae_jax.storage import writers as writers_lib
  writers_lib.tensorboard_without_tensorflow()
  writer = EventFileWriter(logdir, filename_suffix='.analysis')
  values = []
  for tag, path in pngs.items():
    with open(path, 'rb') as f:
      data = f.read()
    with Image.open(path) as im:
      width, height = im.size
      channels = len(im.getbands())
    values.append(summary_pb2.Summary.Value(tag=tag, image=summary_pb2.Summary.Image(
        height=height, width=width, colorspace=channels, encoded_image_string=data)))
  writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                   summary=summary_pb2.Summary(value=values)))
  writer.close()
  return logdir
