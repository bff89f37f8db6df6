"""metrics.jsonl after a kill: a cut last line, records of steps a resume recomputes."""

import json
import os
import subprocess
import sys

from tests.test_config import ROOT
from vae_jax.storage import records
from vae_jax.storage import writers as metrics_lib


def _write_lines(path, text):
  with open(path, 'w') as f:
    f.write(text)


def _records(step, kinds=('train', 'eval')):
  return ''.join(json.dumps({'step': step, 'kind': k, 'loss': 1.0 * step}) + '\n' for k in kinds)


def _cut(path, nbytes=10):
  with open(path, 'rb+') as f:
    f.truncate(os.path.getsize(path) - nbytes)


def test_a_writer_after_a_cut_last_line_starts_a_line_of_its_own(tmp_path, capfd):
  path = tmp_path / 'metrics.jsonl'
  _write_lines(path, _records(10) + _records(20))
  _cut(path)  # the step-20 eval record lost its end
  writer = metrics_lib.MetricWriter(str(tmp_path))
  writer.write(30, 'train', {'loss': 3.0})
  writer.close()
  got = metrics_lib.read_metrics(str(tmp_path))
  # the new record is whole; the cut one is skipped, with one warning naming the file and line
  assert [(r['step'], r['kind']) for r in got] == [(10, 'train'), (10, 'eval'), (20, 'train'),
                                                   (30, 'train')]
  err = capfd.readouterr().err
  assert err.count('skipped') == 1 and f'{path}: skipped line 4' in err
  with open(path) as f:
    assert f.read().endswith('\n')


def test_every_reader_skips_a_cut_line_with_one_warning(tmp_path, capfd):
  path = tmp_path / 'metrics.jsonl'
  _write_lines(path, _records(10) + _records(20))
  _cut(path)
  assert [r['step'] for r in metrics_lib.read_metrics(str(tmp_path), 'train')] == [10, 20]
  assert 'line 4' in capfd.readouterr().err
  from vae_jax import analysis
  from vae_jax.sweep import results
  curves = analysis.training_curves(str(tmp_path))
  assert curves['train']['loss'][0] == [10, 20] and curves['eval'] == {None: {'loss': ([10],
                                                                                      [10.0])}}
  assert len(results._read_jsonl(str(path))) == 3
  err = capfd.readouterr().err
  assert err.count(f'{path}: skipped line 4') == 2


def test_the_reader_imports_no_jax():
  code = ('import sys; from vae_jax.storage import records; '
          'assert "jax" not in sys.modules, "jax imported"')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT)


def test_a_resumed_writer_drops_the_records_of_recomputed_steps(tmp_path, capsys):
  """A run killed after writing step 30's records but before its save committed resumes at 20:
  the records of step 30 are written again, so the old ones go (a cut one too)."""
  path = tmp_path / 'metrics.jsonl'
  _write_lines(path, _records(10) + _records(20) + _records(30))
  _cut(path)
  writer = metrics_lib.MetricWriter(str(tmp_path), resume_step=20)
  assert 'dropped 2 records' in capsys.readouterr().out
  writer.write(30, 'train', {'loss': 30.0})
  writer.write(30, 'eval', {'loss': 30.0})
  writer.close()
  got = metrics_lib.read_metrics(str(tmp_path))
  assert [(r['step'], r['kind']) for r in got] == [
      (s, k) for s in (10, 20, 30) for k in ('train', 'eval')]
  assert not os.path.exists(str(path) + '.tmp')


def test_a_resumed_writer_keeps_every_record_of_the_resumed_step_and_before(tmp_path, capsys):
  path = tmp_path / 'metrics.jsonl'
  text = _records(10) + _records(20, ('train', 'eval', 'stop'))
  _write_lines(path, text)
  metrics_lib.MetricWriter(str(tmp_path), resume_step=20).close()
  with open(path) as f:
    assert f.read() == text
  assert 'dropped' not in capsys.readouterr().out
  metrics_lib.MetricWriter(str(tmp_path), resume_step=0).close()  # a start from scratch
  with open(path) as f:
    assert f.read() == ''


def test_drop_after_step_keeps_lines_whose_step_cannot_be_told(tmp_path):
  path = tmp_path / 'r.jsonl'
  _write_lines(path, '{"kind": "x"}\n' + _records(5) + 'garbage\n{"step": 9, "kind": "tr')
  assert records.drop_after_step(str(path), 5) == 1
  with open(path) as f:
    assert f.read() == '{"kind": "x"}\n' + _records(5) + 'garbage\n'
