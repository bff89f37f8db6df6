"""Split names and contiguous slices of them, in pure Python (no TensorFlow, no numpy).

A split is a base split name ('train', 'validation', 'test') or a slice of one, with Python
slice semantics on the base split's canonical order (its TFRecord shards in order, records in
order):

  'train[:55000]'  'train[55000:]'  'train[-2000:]'  'train[:-2000]'  'train[:90%]'
  'train[90%:]'    'train[12.5%:25%]'

Integer bounds count examples (negative: from the end). Percentage bounds (may be fractional)
become int(round(p * n / 100)) examples, with Python's round (halves go to the even
neighbour) - exactly TFDS's 'closest' rounding, the default of its own split slicing
(tensorflow_datasets/core/splits.py), so a slice here holds the same examples as the same
string given to TFDS. Unlike TFDS, both bounds of a slice must use the same unit, an empty
selection ('train[:]') and an empty result are errors, and no '+' unions or shard units.

An example's index is always its index in the base split ('train[55000:]' starts at index
55000), so two disjoint slices of one base split never share an index.
"""

import dataclasses
import difflib
import re

_SPLIT_RE = re.compile(r'^(?P<base>[\w-]+)(?:\[(?P<selector>[^\[\]]*)\])?$')
_BOUND_RE = re.compile(r'^(?P<value>-?(?:\d+\.?\d*|\.\d+))(?P<percent>%?)$')

SYNTAX = ("a split name ('train') or a slice of one: 'train[:55000]', 'train[55000:]', "
          "'train[-2000:]', 'train[:-2000]', 'train[:90%]', 'train[90%:]' (Python slice "
          'semantics on the split; percentages of its size, rounded to the nearest example)')


@dataclasses.dataclass(frozen=True)
class SplitSpec:
  """A parsed split string, before its base split's size is known.

  Attributes:
    base: the base split name.
    start: the slice's first bound as written (int, or float percent), or None.
    stop: the slice's second bound as written, or None.
    percent: whether the bounds are percentages.
    text: the string it was parsed from.
  """

  base: str
  start: int | float | None = None
  stop: int | float | None = None
  percent: bool = False
  text: str = ''

  @property
  def whole(self):
    """Whether this is the whole base split (no slice)."""
    return self.start is None and self.stop is None


def parse(split):
  """Parses a split string (syntax only).

  Returns:
    SplitSpec.

  Raises:
    ValueError: not a split name or a slice as described in SYNTAX.
  """
  if not isinstance(split, str):
    raise ValueError(f'Split {split!r} is not a string; expected {SYNTAX}.')
  match = _SPLIT_RE.match(split)
  if not match:
    raise ValueError(f'Bad split {split!r}: expected {SYNTAX}.')
  base, selector = match['base'], match['selector']
  if selector is None:
    return SplitSpec(base=base, text=split)
  parts = selector.split(':')
  if len(parts) != 2:
    raise ValueError(f'Bad split {split!r}: the selector needs exactly one colon ([FROM:TO], '
                     f'either side may be empty); expected {SYNTAX}.')
  bounds = [_BOUND_RE.match(p) if p else None for p in parts]
  for part, bound in zip(parts, bounds, strict=True):
    if part and not bound:
      raise ValueError(f'Bad split {split!r}: bound {part!r} is neither an integer nor a '
                       f'percentage; expected {SYNTAX}.')
  given = [b for b in bounds if b is not None]
  if not given:
    raise ValueError(f'Bad split {split!r}: an empty slice (write {base!r} for the whole '
                     f'split); expected {SYNTAX}.')
  units = {bool(b['percent']) for b in given}
  if len(units) > 1:
    raise ValueError(f'Bad split {split!r}: both bounds must be integers or both '
                     f'percentages; expected {SYNTAX}.')
  percent = units.pop()
  values = []
  for bound in bounds:
    if bound is None:
      values.append(None)
    elif percent:
      values.append(float(bound['value']))
    elif '.' in bound['value']:
      raise ValueError(f'Bad split {split!r}: an example count {bound["value"]!r} must be an '
                       f'integer (only percentages may be fractional); expected {SYNTAX}.')
    else:
      values.append(int(bound['value']))
  return SplitSpec(base=base, start=values[0], stop=values[1], percent=percent, text=split)


def _syntax_help(num_examples):
  sizes = ', '.join(f'{k!r} ({v} examples)' for k, v in sorted(num_examples.items()))
  return f'The dataset has splits {sizes}; a split is {SYNTAX}.'


def resolve(split, num_examples):
  """Absolute bounds of a split in its base split's canonical order.

  Args:
    split: a split string (see SYNTAX) or a SplitSpec.
    num_examples: {base split name: number of examples}.

  Returns:
    (base, start, stop) with 0 <= start < stop <= num_examples[base].

  Raises:
    ValueError: bad syntax, an unknown base split, a bound out of range or an empty slice;
      the message names the available splits and the slice syntax.
  """
  spec = split if isinstance(split, SplitSpec) else parse(split)
  if spec.base not in num_examples:
    close = difflib.get_close_matches(spec.base, list(num_examples), n=1)
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    where = '' if spec.whole else f' in {spec.text!r}'
    raise ValueError(f'Unknown split {spec.base!r}{where}{hint}. {_syntax_help(num_examples)}')
  n = int(num_examples[spec.base])
  if spec.whole:
    if n < 1:
      raise ValueError(f'Split {spec.base!r} is empty. {_syntax_help(num_examples)}')
    return spec.base, 0, n

  def absolute(bound, default):
    if bound is None:
      return default
    # TFDS's _pct_to_abs_closest: int(round(p * n / 100)), Python's round-half-to-even.
    return int(round(bound * n / 100.0)) if spec.percent else bound

  start, stop = absolute(spec.start, 0), absolute(spec.stop, n)
  if abs(start) > n or abs(stop) > n:
    raise ValueError(f'Split {spec.text!r} is out of range: {spec.base!r} has {n} examples, '
                     f'so bounds must lie in [-{n}, {n}] (percentages in [-100%, 100%]). '
                     f'{_syntax_help(num_examples)}')
  start, stop = start + n if start < 0 else start, stop + n if stop < 0 else stop
  if start >= stop:
    raise ValueError(f'Split {spec.text!r} is empty: examples [{start}, {stop}) of the {n} in '
                     f'{spec.base!r}. {_syntax_help(num_examples)}')
  return spec.base, start, stop


def size(split, num_examples):
  """Number of examples of a split or slice (see resolve for the errors)."""
  _, start, stop = resolve(split, num_examples)
  return stop - start


def overlap(a, b, num_examples):
  """The base-split index range [lo, hi) that splits a and b share, or None if disjoint."""
  base_a, start_a, stop_a = resolve(a, num_examples)
  base_b, start_b, stop_b = resolve(b, num_examples)
  lo, hi = max(start_a, start_b), min(stop_a, stop_b)
  return (lo, hi) if base_a == base_b and lo < hi else None


def complement(split):
  """The other side of a one-sided slice ('train[90%:]' -> 'train[:90%]'), else None."""
  spec = parse(split)
  selector = split[len(spec.base) + 1:-1] if not spec.whole else ''
  if spec.whole or (spec.start is not None and spec.stop is not None):
    return None
  bound = selector.strip(':')
  return f'{spec.base}[:{bound}]' if spec.stop is None else f'{spec.base}[{bound}:]'
