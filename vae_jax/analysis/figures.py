"""The matplotlib figures of an analysis: numpy arrays in, one `Figure` out (and saved as PNG).

Every plot is drawn on its own matplotlib `Figure` with the Agg canvas, created inside the
function: importing this module (or the package) never imports matplotlib or picks a global
backend, and a notebook's pyplot state is left alone. The functions know nothing of models or
runs (`vae_jax.analysis.pipeline` computes what they draw), so each can be called on any
arrays.
"""

import math
import os

import numpy as np

# Figure resolution: with the sizes below, one image pixel spans at least two screen pixels,
# so 1-pixel strokes and the gaps between images survive.
DPI = 110
# Gap colour between the images of a grid (light grey: visible beside black and white images).
GAP = 0.8


def _figure(width, height):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height), dpi=DPI, layout='constrained')
  FigureCanvasAgg(fig)
  return fig


def save_figure(fig, path):
  """Writes fig as a PNG (white background) at path, creating its folder."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=DPI, facecolor='white')
  return path


def mosaic(images, gap=2, group_rows=1, group_gap=6, col_gaps=()):
  """[R, N, H, W, C] images in [0, 1] -> (canvas [h, w, C], row centres, column centres).

  Rows are separated by `gap` pixels, every `group_rows` rows by `group_gap`; `col_gaps`
  {column: extra pixels before it} sets columns apart (e.g. the inputs beside a path).
  """
  images = np.clip(np.nan_to_num(np.asarray(images, np.float32)), 0.0, 1.0)
  r, n, h, w, c = images.shape
  col_gaps = dict(col_gaps)
  xs, x = [], gap
  for j in range(n):
    x += col_gaps.get(j, 0)
    xs.append(x)
    x += w + gap
  ys, y = [], gap
  for i in range(r):
    if i and i % group_rows == 0:
      y += group_gap - gap
    ys.append(y)
    y += h + gap
  canvas = np.full((y, x, c), GAP, np.float32)
  for i in range(r):
    for j in range(n):
      canvas[ys[i]:ys[i] + h, xs[j]:xs[j] + w] = images[i, j]
  return canvas, [y0 + h / 2 - 0.5 for y0 in ys], [x0 + w / 2 - 0.5 for x0 in xs]


def _show(ax, canvas, row_labels=None, row_pos=None, col_labels=None, col_pos=None,
          fontsize=8):
  """imshow of a mosaic with labelled rows and columns (pixel-exact, grey if one channel)."""
  if canvas.shape[-1] == 1:
    ax.imshow(canvas[..., 0], cmap='gray', vmin=0.0, vmax=1.0, interpolation='nearest')
  else:
    ax.imshow(canvas, interpolation='nearest')
  ax.set_yticks(row_pos if row_labels is not None else [])
  if row_labels is not None:
    ax.set_yticklabels(row_labels, fontsize=fontsize)
  ax.set_xticks(col_pos if col_labels is not None else [])
  if col_labels is not None:
    ax.set_xticklabels(col_labels, fontsize=fontsize)
  ax.tick_params(length=0)
  for spine in ax.spines.values():
    spine.set_visible(False)


def _inches(pixels, scale):
  return pixels * scale / DPI


def plot_reconstructions(x, recon, cols=16):
  """Inputs x [N, H, W, C] in [0, 1], each above its reconstruction recon [N, H, W, C]."""
  x, recon = np.asarray(x), np.asarray(recon)
  n = len(x)
  cols = min(cols, n)
  rows = math.ceil(n / cols)
  pad = rows * cols - n
  blank = np.full((pad, *x.shape[1:]), GAP, np.float32)
  xs = np.concatenate([x, blank]).reshape(rows, cols, *x.shape[1:])
  rs = np.concatenate([recon, blank]).reshape(rows, cols, *x.shape[1:])
  pairs = np.stack([xs, rs], 1).reshape(2 * rows, cols, *x.shape[1:])
  canvas, ys, _ = mosaic(pairs, group_rows=2, group_gap=8)
  scale = max(2.0, 900 / canvas.shape[1])
  fig = _figure(_inches(canvas.shape[1], scale) + 1.2, _inches(canvas.shape[0], scale) + 0.6)
  ax = fig.add_subplot()
  _show(ax, canvas, ['input', 'reconstruction'] * rows, ys)
  ax.set_title('Inputs and their reconstructions (E[x|h] at the posterior mean)', fontsize=10)
  return fig


def plot_samples(samples, title, cols=8):
  """{T: {'means', 'samples'} [n, H, W, C]} -> decoded means (top) and samples (bottom), under
  title (analysis.samples_title: what the model's prior draws are)."""
  temps = sorted(samples)
  fig = None
  for j, t in enumerate(temps):
    for i, kind in enumerate(('means', 'samples')):
      images = np.asarray(samples[t][kind])
      n = len(images) - len(images) % cols
      canvas, _, _ = mosaic(images[:n].reshape(n // cols, cols, *images.shape[1:]))
      if fig is None:
        scale = max(2.0, 1300 / (len(temps) * canvas.shape[1]))
        fig = _figure(len(temps) * _inches(canvas.shape[1], scale) + 0.8,
                      2 * _inches(canvas.shape[0], scale) + 1.0)
        axes = fig.subplots(2, len(temps), squeeze=False)
      ax = axes[i, j]
      _show(ax, canvas)
      if i == 0:
        ax.set_title(f'T = {t:g}', fontsize=11)
      if j == 0:
        ax.set_ylabel('E[x|h]' if kind == 'means' else 'x ~ p(x|h)', fontsize=11)
  fig.suptitle(title, fontsize=12)
  return fig


def plot_interpolations(x_a, x_b, linear, spherical):
  """Rows of [x_a, path (t = 0 .. 1), x_b] per pair, linear above spherical."""
  x_a, x_b = np.asarray(x_a), np.asarray(x_b)
  rows = []
  for p in range(len(x_a)):
    for path in (linear, spherical):
      rows.append(np.concatenate([x_a[p:p + 1], path[p], x_b[p:p + 1]]))
  rows = np.stack(rows)
  num = linear.shape[1]
  canvas, ys, xs = mosaic(rows, group_rows=2, group_gap=10, col_gaps={1: 8, num + 1: 8})
  scale = max(2.0, 1000 / canvas.shape[1])
  fig = _figure(_inches(canvas.shape[1], scale) + 1.0, _inches(canvas.shape[0], scale) + 0.9)
  ax = fig.add_subplot()
  ts = [f'{t:.2g}' for t in np.linspace(0, 1, num)]
  _show(ax, canvas, ['linear', 'spherical'] * len(x_a), ys, ['input a', *ts, 'input b'], xs)
  ax.set_xlabel('t (decoded E[x|h] along the path between the posterior means)', fontsize=9)
  ax.set_title('Interpolations between pairs of test images', fontsize=11)
  return fig


def plot_traversals(bases, recons, traversals, dims, values, scores, score_name='KL'):
  """One panel per base image: rows = units dims, columns = the unit's values.

  bases, recons [B, H, W, C] (the inputs and their reconstructions, shown in the first
  column); traversals [B, len(dims), len(values), H, W, C]; scores [len(dims)].
  """
  bases, recons, traversals = np.asarray(bases), np.asarray(recons), np.asarray(traversals)
  b, d = traversals.shape[:2]
  labels = [f'unit {u} ({score_name} {s:.2f}{" nats" if score_name == "KL" else ""})'
            for u, s in zip(dims, scores, strict=True)]
  canvases = []
  for i in range(b):
    # The input and its reconstruction head the first column; the rest of it is blank.
    first = np.full((d, 1, *bases.shape[1:]), GAP, np.float32)
    first[0, 0] = bases[i]
    if d > 1:
      first[1, 0] = recons[i]
    canvases.append(mosaic(np.concatenate([first, traversals[i]], 1), col_gaps={1: 8}))
  canvas, ys, xs = canvases[0]
  scale = max(2.0, 1300 / (b * canvas.shape[1]))
  fig = _figure(b * _inches(canvas.shape[1], scale) + 1.6, _inches(canvas.shape[0], scale) + 1.0)
  axes = fig.subplots(1, b, squeeze=False)[0]
  cols = ['input,\nrecon.', *[f'{v:+.2g}' for v in values]]
  for i, (canvas, ys, xs) in enumerate(canvases):
    _show(axes[i], canvas, labels if i == 0 else None, ys, cols, xs, fontsize=8)
    axes[i].set_title(f'example {i}', fontsize=10)
    axes[i].set_xlabel('value of the unit (prior standard deviations)', fontsize=9)
  fig.suptitle(f'Latent traversals: one unit of the posterior mean varied per row (units by '
               f'{score_name})', fontsize=11)
  return fig


def _subsample(n, limit=5000):
  # Evenly strided, so a split stored in sorted order is still covered end to end.
  return np.arange(n) if n <= limit else np.linspace(0, n - 1, limit).astype(int)


def plot_latent_scatter(top2, dims, proj, explained, colour_by, class_names=None):
  """Posterior means: the two units dims (top2 [N, 2]) and two principal components (proj).

  colour_by {feature: [N] values}: one column of panels per feature (none: one uncoloured
  column). class_names {feature: names} marks a feature categorical (legend); others are
  drawn with a continuous colour map.
  """
  class_names = class_names or {}
  features = list(colour_by) or [None]
  n = len(top2)
  keep = _subsample(n)
  fig = _figure(max(5.5, 3.4 * len(features) + 0.6), 7.0)
  axes = fig.subplots(2, len(features), squeeze=False)
  size = 8 if len(keep) < 3000 else 3
  panels = [(top2, f'unit {dims[0]}', f'unit {dims[1]}' if len(dims) > 1 else ''),
            (proj, f'PC 1 ({explained[0]:.0%} of variance)',
             f'PC 2 ({explained[1]:.0%} of variance)' if len(explained) > 1 else '')]
  for j, feature in enumerate(features):
    values = None if feature is None else np.asarray(colour_by[feature])[keep]
    names = class_names.get(feature)
    categorical = names is not None or feature == 'label'
    for i, (points, xlabel, ylabel) in enumerate(panels):
      ax = axes[i, j]
      pts = np.asarray(points)[keep]
      py = pts[:, 1] if pts.shape[1] > 1 else np.zeros(len(pts))
      if values is None:
        ax.scatter(pts[:, 0], py, s=size, alpha=0.5, linewidths=0, color='tab:blue')
      elif categorical:
        classes = np.unique(values)
        for c in classes:
          m = values == c
          label = names[int(c)] if names is not None and int(c) < len(names) else str(c)
          ax.scatter(pts[m, 0], py[m], s=size, alpha=0.6, linewidths=0, label=label,
                     color=_categorical_colour(int(c), len(classes)))
        if i == 0:
          # Outside the axes, beside the colour bars of the other panels: no point hidden.
          ax.legend(fontsize=7, markerscale=2.5, loc='upper left', bbox_to_anchor=(1.02, 1.0),
                    borderaxespad=0.0, frameon=False)
      else:
        sc = ax.scatter(pts[:, 0], py, s=size, alpha=0.7, linewidths=0, c=values,
                        cmap='viridis')
        if i == 0:
          fig.colorbar(sc, ax=ax, label=f'{feature} (index)', shrink=0.85)
      ax.set_xlabel(xlabel, fontsize=8)
      ax.set_ylabel(ylabel, fontsize=8)
      ax.tick_params(labelsize=7)
      if i == 0:
        ax.set_title(f'coloured by {feature}' if feature else 'posterior means', fontsize=10)
  fig.suptitle(f'Posterior means of {n} examples'
               + (f' ({len(keep)} shown, evenly spaced)' if len(keep) < n else '')
               + f'\ntop: latent units {" and ".join(map(str, dims))}; bottom: the first two '
               'principal components',
               fontsize=11)
  return fig


def _categorical_colour(i, n):
  from matplotlib import colormaps
  cmap = colormaps['tab10' if n <= 10 else 'tab20']
  return cmap(i % cmap.N)


def plot_mig(result):
  """Heatmap of I(z_j; v_k) / H(v_k) (units x factors) and each factor's gap (analysis.mig)."""
  mi = np.asarray(result['normalized_mi'])
  factors, gaps, top = result['factors'], np.asarray(result['gap']), result['top_units']
  u, k = mi.shape
  fig = _figure(3.0 + 0.9 * k + 3.2, max(3.6, 0.32 * u + 1.6))
  left, right = fig.subplots(1, 2, width_ratios=[max(k, 2), 3])
  im = left.imshow(mi, cmap='magma', vmin=0.0, vmax=max(1e-6, float(mi.max())), aspect='auto')
  for j in range(u):
    for f in range(k):
      v = mi[j, f]
      left.text(f, j, f'{v:.2f}', ha='center', va='center', fontsize=7,
                color='black' if v > 0.6 * mi.max() else 'white',
                fontweight='bold' if top[f] == j else 'normal')
  for f in range(k):  # the most informative unit of each factor
    left.add_patch(_box(f, top[f]))
  left.set_xticks(range(k), factors, fontsize=8)
  left.set_yticks(range(u), [f'unit {j}' for j in range(u)], fontsize=8)
  left.set_xlabel('factor v_k')
  left.set_title('I(z_j; v_k) / H(v_k)', fontsize=10)
  fig.colorbar(im, ax=left, shrink=0.8)
  right.barh(range(k), gaps, color='tab:purple')
  right.set_yticks(range(k), factors, fontsize=8)
  right.invert_yaxis()
  right.set_xlim(0, 1)
  right.set_xlabel('gap between the two most informative units')
  for f, g in enumerate(gaps):
    right.text(min(g + 0.02, 0.8), f, f'{g:.2f} (unit {top[f]})', va='center', fontsize=8)
  right.set_title(f'MIG = {result["mig"]:.3f}', fontsize=10)
  fig.suptitle('Mutual information between latent units (posterior means) and factors',
               fontsize=11)
  return fig


def _box(x, y):
  from matplotlib.patches import Rectangle
  return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor='cyan', linewidth=1.5)


def plot_kl_per_unit(units):
  """Bars of units['kl_per_unit'] [U] (nats), with the active-unit count in the title."""
  kl = np.asarray(units['kl_per_unit'])
  fig = _figure(max(5.0, 0.45 * len(kl) + 2.0), 3.4)
  ax = fig.add_subplot()
  order = np.argsort(-kl, kind='stable')
  ax.bar(range(len(kl)), kl, color='tab:blue')
  for j, v in enumerate(kl):
    ax.text(j, v, f'{v:.2f}', ha='center', va='bottom', fontsize=7)
  ax.set_xticks(range(len(kl)), [str(j) for j in range(len(kl))], fontsize=8)
  ax.set_xlabel('latent unit')
  to_prior = units.get('kl_per_unit_to', 'prior') == 'prior'
  ax.set_ylabel('KL(q(h_j|x) || p(h_j)) [nats]' if to_prior else
                'KL(q(h_j|x) || N(0, 1)) [nats]')
  title = f'KL per unit: total {kl.sum():.2f} nats'
  if 'active_units' in units:
    title += f', {int(units["active_units"])} active of {len(kl)}'
  ax.set_title(title + f' (largest: unit {order[0]})', fontsize=10)
  ax.margins(y=0.15)
  return fig


# Panels of the training curves: (title, [metric names], log scale when it spans > 5x).
CURVE_PANELS = (
    ('training loss', ('loss', 'loss_momentum')),
    ('negative ELBO [nats]', ('neg_elbo',)),
    ('reconstruction -E[log p(x|h)] [nats]', ('recon',)),
    ('KL(q(h|x) || p(h)) [nats]', ('kl',)),
    ('K-sample estimates [nats]', ('nll', 'gap')),
)


def plot_training_curves(curves, step=None):
  """Series of analysis.training_curves: train metrics and eval metrics per split."""
  panels = [(t, names) for t, names in CURVE_PANELS
            if any(n in curves['train'] for n in names)
            or any(n in s for s in curves['eval'].values() for n in names)]
  cols = 2 if len(panels) in (2, 4) else min(3, len(panels))
  rows = math.ceil(len(panels) / cols)
  fig = _figure(4.4 * cols, 3.2 * rows)
  axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
  styles = ['-', '--', ':']
  for ax, (title, names) in zip(axes, panels, strict=False):
    low, high = np.inf, -np.inf
    for i, name in enumerate(names):
      if name in curves['train']:
        s, v = curves['train'][name]
        ax.plot(s, v, styles[i % 3], color='tab:blue', lw=1.2, label=f'train {name}')
        low, high = _span(low, high, v)
      for c, (split, series) in enumerate(sorted(curves['eval'].items())):
        if name not in series:
          continue
        s, v = series[name]
        err = series.get(f'{name}_stderr', (None, None))[1]
        ax.errorbar(s, v, yerr=err, fmt='o' + styles[i % 3], ms=3, lw=1, capsize=2,
                    color=_categorical_colour(c + 1, 10), label=f'eval {split} {name}')
        low, high = _span(low, high, v)
    if 0 < low and high / low > 3:  # early steps would flatten the rest on a linear axis
      _log_axis(ax)
    if step is not None:
      ax.axvline(step, color='grey', ls='--', lw=0.8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel('step', fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  for ax in axes[len(panels):]:
    ax.set_visible(False)
  fig.suptitle('Training curves (metrics.jsonl)', fontsize=11)
  return fig


def _log_axis(ax):
  from matplotlib import ticker
  ax.set_yscale('log')
  ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0)))
  ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f'{v:g}'))
  ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def _span(low, high, values):
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  return (min(low, v.min()), max(high, v.max())) if len(v) else (low, high)

