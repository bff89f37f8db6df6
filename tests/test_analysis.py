"""The analysis of a trained run: its figures, page, numbers, TensorBoard images and script.

One tiny sprites run (8 fake devices) is trained and analysed once per module; the analysis
runs on one device.
"""

import html.parser
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.test_config import ROOT
from tests.test_train import tiny_config
from vae_jax import analysis, train
from vae_jax.storage import writers as metrics_lib

FIGURES = ('reconstructions', 'samples', 'interpolations', 'traversals', 'latent_scatter',
           'mig', 'kl_per_unit', 'training_curves')
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def analysed(tmp_path_factory):
  """(workdir, summary of analysis.analyze) of a 20-step run with checkpoints at 10 and 20."""
  workdir = str(tmp_path_factory.mktemp('analysed_run'))
  # The small sprites (16x16) generate in about a second; the factors are the same five.
  train.train_and_evaluate(tiny_config(**{'data.name': 'sprites/small'}), workdir)
  return workdir, analysis.analyze(workdir, log=None)


@pytest.fixture(scope='module')
def run(analysed):
  return analysis.load_run(analysed[0])


def _valid_png(path):
  with open(path, 'rb') as f:
    assert f.read(8) == PNG_MAGIC, path
  with Image.open(path) as im:
    im.verify()
  with Image.open(path) as im:
    return im.size


class _References(html.parser.HTMLParser):
  """Every src / href of a page, and whether it has a script or a stylesheet link."""

  def __init__(self):
    super().__init__()
    self.refs, self.tags = [], set()

  def handle_starttag(self, tag, attrs):
    self.tags.add(tag)
    self.refs += [v for k, v in attrs if k in ('src', 'href') and v]


def test_page_shows_every_figure_and_references_only_local_pngs(analysed):
  workdir, summary = analysed
  out = os.path.join(workdir, 'analysis')
  assert summary['index_html'] == os.path.join(out, 'index.html')
  assert [f['name'] for f in summary['figures']] == list(FIGURES)
  parser = _References()
  with open(summary['index_html']) as f:
    page = f.read()
  parser.feed(page)
  assert 'script' not in parser.tags and 'link' not in parser.tags  # readable offline
  images = [r for r in parser.refs if not r.startswith('#')]
  assert sorted(images) == sorted(f'{name}.png' for name in FIGURES)
  for ref in images:
    assert '/' not in ref and ':' not in ref, ref  # beside the page, no URL scheme
    width, height = _valid_png(os.path.join(out, ref))
    assert width > 200 and height > 150
  anchors = {r[1:] for r in parser.refs if r.startswith('#')}
  assert anchors == set(FIGURES) and all(f'id="{a}"' in page for a in anchors)
  # The page states the parameters and the split its numbers are of.
  assert 'checkpoint step 20' in page and 'split test' in page
  with open(summary['summary_md']) as f:
    md = f.read()
  for name in FIGURES:
    assert f']({name}.png)' in md


def test_numbers_are_the_loop_evaluation_on_one_device(analysed):
  # The loop evaluated the same checkpoint on 8 devices; the analysis, on one, must agree.
  workdir, summary = analysed
  loop = [r for r in metrics_lib.read_metrics(workdir, 'eval')
          if r['step'] == 20 and r['split'] == 'test'][-1]
  for k in ('neg_elbo', 'neg_elbo_stderr', 'recon', 'kl'):
    np.testing.assert_allclose(summary['elbo'][k], loop[k], rtol=1e-5, err_msg=k)
  assert summary['step'] == 20 and summary['checkpoint_steps'] == [10, 20]
  assert summary['split'] == 'test' and summary['elbo']['num_examples'] == summary['num_examples']
  units = summary['units']
  assert len(units['kl_per_unit']) == 4 and 0 <= units['active_units'] <= 4
  assert summary['mig']['factors'] == ['shape', 'scale', 'rotation', 'x', 'y']
  assert 0.0 <= summary['mig']['mig'] <= 1.0
  json.dumps(summary)  # what the script prints from


def _events(logdir):
  """Every Event of the TFRecord event files in logdir (framing: length, crc, data, crc)."""
  from tensorboard.compat.proto import event_pb2
  events = []
  for name in sorted(os.listdir(logdir)):
    with open(os.path.join(logdir, name), 'rb') as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      events.append((name, event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])))
      pos += 12 + length + 4
  return events


def test_figures_go_to_tensorboard_as_png_images(analysed):
  workdir, summary = analysed
  images = {v.tag: v.image for name, e in _events(os.path.join(workdir, 'tensorboard'))
            if name.endswith('.analysis') and e.step == 20 for v in e.summary.value}
  assert set(images) == {f'analysis/{name}' for name in FIGURES}
  for tag, image in images.items():
    assert image.encoded_image_string.startswith(PNG_MAGIC), tag
    with open(os.path.join(workdir, 'analysis', tag.split('/')[1] + '.png'), 'rb') as f:
      assert f.read() == image.encoded_image_string
    assert image.width > 0 and image.height > 0


def _product_factors(sizes, repeats=1):
  grids = np.meshgrid(*[np.arange(s) for s in sizes], indexing='ij')
  return [np.tile(g.ravel(), repeats) for g in grids]


def test_mig_is_one_when_each_factor_is_one_unit_and_zero_for_noise():
  factors = _product_factors((3, 6, 16, 16), repeats=2)  # 9216 examples, all combinations
  named = dict(zip('abcd', factors, strict=True))
  rng = np.random.default_rng(0)
  n = len(factors[0])
  # Units = the factors (shuffled, affinely rescaled) plus two noise units.
  exact = np.stack([2.5 * factors[2] - 1, rng.normal(size=n), factors[0] * 0.1,
                    -factors[3], factors[1] + 7, rng.normal(size=n)], 1)
  result = analysis.mig(exact, named)
  assert result['mig'] > 0.99
  np.testing.assert_allclose(np.diag(result['normalized_mi'][[2, 4, 0, 3]]), 1.0, atol=1e-9)
  assert list(result['top_units']) == [2, 4, 0, 3]
  noise = rng.normal(size=(n, 6))
  assert analysis.mig(noise, named)['mig'] < 0.02
  # Two units both carrying factor a: its gap is 0; b's is 1; so MIG = 1/2.
  twice = np.stack([factors[0], factors[0], factors[1]], 1).astype(float)
  half = analysis.mig(twice, {'a': factors[0], 'b': factors[1]})
  np.testing.assert_allclose(half['gap'], [0.0, 1.0], atol=1e-9)
  np.testing.assert_allclose(half['mig'], 0.5, atol=1e-9)
  # A factor with one value carries no information and is left out.
  assert analysis.mig(twice, {'a': factors[0], 'const': np.zeros(n)})['factors'] == ['a']


def test_mutual_information_and_entropy_of_known_distributions():
  v = np.repeat(np.arange(4), 25)
  np.testing.assert_allclose(analysis.entropy(v), np.log(4))
  np.testing.assert_allclose(analysis.mutual_information(v, v), np.log(4))
  np.testing.assert_allclose(analysis.mutual_information(v, v % 2), np.log(2))
  np.testing.assert_allclose(analysis.mutual_information(v % 2, v // 2), 0.0, atol=1e-12)
  bins = analysis.discretize(np.repeat(np.arange(20.0), 2)[:, None], 20)
  assert bins.min() == 0 and bins.max() == 19 and np.all(np.bincount(bins[:, 0]) == 2)


def test_slerp_and_lerp_paths():
  a, b = np.array([3.0, 0.0]), np.array([0.0, 1.0])
  ts = np.linspace(0, 1, 5)
  for path in (analysis.lerp, analysis.slerp):
    p = path(a, b, ts)
    np.testing.assert_allclose(p[0], a, atol=1e-12)
    np.testing.assert_allclose(p[-1], b, atol=1e-12)
  s = analysis.slerp(a, b, ts)
  np.testing.assert_allclose(np.linalg.norm(s, axis=1), 3 + (1 - 3) * ts)  # norm: linear
  np.testing.assert_allclose(np.arctan2(s[:, 1], s[:, 0]), ts * np.pi / 2)  # angle: uniform
  np.testing.assert_allclose(analysis.slerp(a, 2 * a, ts), analysis.lerp(a, 2 * a, ts))


def test_interpolation_endpoints_decode_the_endpoints(run):
  arrays = analysis.split_arrays(run, 'test')
  x = analysis.picture_inputs(run.experiment, arrays)
  x_a, x_b = x[:3], x[3:6]
  recon_a, recon_b = analysis.reconstruct(run, x_a), analysis.reconstruct(run, x_b)
  for method in ('linear', 'spherical'):
    path = analysis.interpolate(run, x_a, x_b, 7, method)
    assert path.shape == (3, 7, *run.image_shape)
    np.testing.assert_allclose(path[:, 0], recon_a, atol=1e-5, err_msg=method)
    np.testing.assert_allclose(path[:, -1], recon_b, atol=1e-5, err_msg=method)


def test_traversal_at_the_units_own_value_is_the_reconstruction(run):
  arrays = analysis.split_arrays(run, 'test')
  x = analysis.picture_inputs(run.experiment, arrays)[:2]
  means = analysis.posterior(run, x)['mean']
  for unit in range(run.config.model.latent_dim):
    t = analysis.traverse(run, x, [unit], [float(means[0, unit]), 3.0])
    assert t.shape == (2, 1, 2, *run.image_shape)
    np.testing.assert_allclose(t[0, 0, 0], analysis.reconstruct(run, x)[0], atol=1e-5)
  latents = analysis.encode_split(run, arrays, batch_size=100)  # batches wrap round the end
  np.testing.assert_allclose(latents['mean'][:2], means, atol=1e-6)
  assert latents['mean'].shape == (len(arrays['image']), 4)


def test_plots_and_pages_without_factors_units_or_eval_records(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {'image': np.zeros((50, 8, 8, 1), np.uint8), 'index': np.arange(50),
            'label': rng.integers(0, 10, 50)}
  assert analysis.factor_names(arrays) == [] and analysis.colour_features(arrays) == ['label']
  means = rng.normal(size=(50, 3))
  proj, explained = analysis.pca(means)
  assert proj.shape == (50, 2) and 0 < explained[1] <= explained[0] <= 1
  figures = {
      'labels': analysis.plot_latent_scatter(means[:, :2], [0, 1], proj, explained,
                                             {'label': arrays['label']},
                                             {'label': [f'class {i}' for i in range(10)]}),
      'plain': analysis.plot_latent_scatter(means[:, :2], [0, 1], proj, explained, {}),
      'curves': analysis.plot_training_curves(
          {'train': {'loss': ([1, 2, 3], [5.0, 4.0, 3.5])}, 'eval': {}}, step=3),
      'rgb': analysis.plot_reconstructions(rng.uniform(size=(5, 8, 8, 3)),
                                           rng.uniform(size=(5, 8, 8, 3))),
  }
  for name, fig in figures.items():
    _valid_png(analysis.save_figure(fig, str(tmp_path / f'{name}.png')))
  summary = {'workdir': '/w', 'step': 3, 'checkpoint_steps': [3], 'split': 'test',
             'num_examples': 50, 'dataset': 'fashion_mnist', 'model': 'm',
             'elbo': {'neg_elbo': 1.0, 'neg_elbo_stderr': 0.1, 'recon': 0.5,
                      'recon_stderr': 0.1, 'kl': 0.5, 'kl_stderr': 0.1},
             'units': None, 'mig': None, 'eval_files': [],
             'figures': [{'name': 'plain', 'file': 'plain.png', 'title': 't', 'caption': 'c'}]}
  index, md = analysis.write_pages(str(tmp_path), summary)
  parser = _References()
  with open(index) as f:
    parser.feed(f.read())
  assert [r for r in parser.refs if not r.startswith('#')] == ['plain.png']
  assert os.path.exists(md)


def test_eval_files_of_the_step_newest_first_and_on_the_page(tmp_path):
  from vae_jax import evaluate
  os.makedirs(tmp_path / 'eval')
  records = [(20, 'test', 100, {'nll': 30.0, 'nll_stderr': 0.25, 'note': 'not normalised'}),
             (20, 'train[90%:]', 5000, {'nll': 29.5, 'kl_per_unit': [1.0, 2.0]}),
             (10, 'test', 100, {'nll': 31.0})]
  for i, (step, split, k, record) in enumerate(records):
    path = evaluate.eval_path(str(tmp_path), step, split, k)  # the name scripts/evaluate.py uses
    with open(path, 'w') as f:
      json.dump({'step': step, 'split': split, 'num_samples': k, **record}, f)
    os.utime(path, (1000 + i, 1000 + i))
  (tmp_path / 'eval' / 'step_20_test_k7.json').write_text('{not json')
  found = analysis.eval_files(str(tmp_path), 20)
  assert [(e['split'], e['k']) for e in found] == [('train[90%:]', 5000), ('test', 100)]
  summary = {'workdir': '/w', 'step': 20, 'checkpoint_steps': [20], 'split': 'test',
             'num_examples': 5, 'dataset': 'sprites', 'model': 'm',
             'elbo': {k: 1.0 for k in ('neg_elbo', 'neg_elbo_stderr', 'recon', 'recon_stderr',
                                       'kl', 'kl_stderr')},
             'units': None, 'mig': None, 'eval_files': found, 'figures': []}
  index, _ = analysis.write_pages(str(tmp_path), summary)
  with open(index) as f:
    page = f.read()
  assert 'step_20_test_k100.json' in page and '29.5000' in page and '31.0' not in page
  assert '30.0000 \u00b1 0.2500' in page and 'not normalised' in page


def test_the_headline_nll_is_of_the_parameters_the_analysis_shows(tmp_path):
  from vae_jax import evaluate
  os.makedirs(tmp_path / 'eval')
  # An EMA run evaluated with its default (EMA) parameters, then, newer, with the train state's.
  for i, (params, nll) in enumerate([(None, 30.0), ('state', 33.0)]):
    path = evaluate.eval_path(str(tmp_path), 20, 'test', 100, params=params)
    with open(path, 'w') as f:
      json.dump({'step': 20, 'split': 'test', 'num_samples': 100, 'nll': nll,
                 'nll_stderr': 0.5, 'params': params or 'ema'}, f)
    os.utime(path, (1000 + i, 1000 + i))
  found = analysis.eval_files(str(tmp_path), 20)
  assert [(e['record']['params'], os.path.basename(e['path'])) for e in found] == [
      ('state', 'step_20_test_k100_state.json'), ('ema', 'step_20_test_k100.json')]
  summary = {'workdir': '/w', 'out_dir': '/w/analysis', 'step': 20, 'split': 'test',
             'index_html': 'i', 'summary_md': 'm', 'figures': [], 'mig': None,
             'units': {'active_units': 3}, 'seconds': 1.0,
             'elbo': {k: 1.0 for k in ('neg_elbo', 'neg_elbo_stderr', 'recon', 'kl')},
             'eval_files': found}
  assert analysis.headline({**summary, 'params': 'ema'})['nll'] == 30.0
  assert analysis.headline({**summary, 'params': 'state'})['nll'] == 33.0


def test_missing_runs_and_steps_are_errors_naming_what_exists(analysed, tmp_path):
  workdir, _ = analysed
  with pytest.raises(analysis.RunNotFoundError, match='does not exist'):
    analysis.load_run(str(tmp_path / 'nowhere'))
  with pytest.raises(analysis.RunNotFoundError, match='no config.json'):
    analysis.load_run(str(tmp_path))
  with pytest.raises(analysis.RunNotFoundError, match='its steps are 10, 20'):
    analysis.load_run(workdir, step=15)
  assert isinstance(analysis.RunNotFoundError('x'), FileNotFoundError)


def _script(*args, timeout=300):
  # Reports on stderr at exit whether the trainer was imported, after the script's own output.
  code = ('import atexit, runpy, sys\n'
          'atexit.register(lambda: print("TRAINER " + str("vae_jax.train" in sys.modules), '
          'file=sys.stderr))\n'
          f'sys.argv = ["analyze.py", *{list(args)!r}]\n'
          'runpy.run_path("scripts/analyze.py", run_name="__main__")\n')
  # The analysis runs on one device: the script's process needs no 8 fake ones.
  env = {**os.environ, 'JAX_LOG_COMPILES': '1',
         'XLA_FLAGS': os.environ['XLA_FLAGS'].replace('device_count=8', 'device_count=1')}
  return subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env=env)


@pytest.mark.slow
def test_script_prints_one_json_line_last_without_the_trainer(analysed, tmp_path):
  workdir, _ = analysed
  out = str(tmp_path / 'out')
  p = _script(f'--workdir={workdir}', '--step=10', f'--out={out}', '--notensorboard')
  assert p.returncode == 0, p.stderr[-3000:]
  result = json.loads(p.stdout.strip().splitlines()[-1])
  assert result['step'] == 10 and result['index_html'] == os.path.join(out, 'index.html')
  assert [os.path.basename(f) for f in result['figures']] == [f'{n}.png' for n in FIGURES]
  for f in result['figures']:
    _valid_png(f)
  assert np.isfinite(result['neg_elbo']) and 0 <= result['mig'] <= 1
  assert 'TRAINER False' in p.stderr
  assert 'Compiling' in p.stderr  # so the error cases below, which have none, mean something


def test_script_bad_input_exits_2_before_compiling(analysed, tmp_path):
  workdir, _ = analysed
  cases = [((), '--workdir=DIR'), ((f'--workdir={tmp_path}/none',), 'does not exist'),
           ((f'--workdir={workdir}', '--step=15'), 'its steps are 10, 20'),
           ((f'--workdir={workdir}', '--split=validation'), "Unknown split 'validation'")]
  for args, message in cases:
    p = _script(*args, timeout=120)
    assert p.returncode == 2, (args, p.stderr[-2000:])
    assert message in p.stderr and 'Traceback' not in p.stderr, (args, p.stderr[-2000:])
    assert 'Compiling' not in p.stderr and p.stdout.strip() == '', args


def test_importing_the_analysis_loads_no_plotting_trainer_or_tensorflow():
  # Plots pick the Agg canvas when they draw, so a notebook's pyplot backend is left alone.
  code = ('import sys, vae_jax.analysis, vae_jax.analysis.figures, vae_jax.analysis.page\n'
          'print([m for m in ("matplotlib", "vae_jax.train", "tensorflow") if m in sys.modules])')
  p = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                     timeout=120)
  assert p.returncode == 0 and p.stdout.strip() == '[]', p.stderr[-2000:]
