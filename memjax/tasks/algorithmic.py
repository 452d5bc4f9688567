"""The algorithmic tasks of the NTM paper (Graves et al. 2014, section 4).

Copy, repeat copy, associative recall and priority sort, generated with NumPy
from a `numpy.random.Generator`, so a batch is a pure function of its seed.
Every batch is padded to a fixed number of time steps (`time_steps`) and
carries a mask of the steps that are scored: sequences of different lengths
share one shape, and a jitted model never recompiles for a new length.

Shape legend: B batch, T time steps, I input channels, O output channels,
L sequence length.

References:
  Graves, Wayne, Danihelka. Neural Turing Machines. arXiv:1410.5401, 2014,
  sections 4.1-4.5.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from memjax import _checks

TASKS = ("copy", "repeat_copy", "associative_recall", "priority_sort")


class Batch(NamedTuple):
  """A padded batch.

  Attributes:
    inputs: [B, T, I] float32 inputs (zero after the end of a sequence).
    targets: [B, T, O] float32 binary targets (zero where not scored).
    mask: [B, T] float32: 1 on the steps whose output is scored.
  """
  inputs: np.ndarray
  targets: np.ndarray
  mask: np.ndarray


def rng_for(seed: int, step: int, stream: int = 0) -> np.random.Generator:
  """The generator for batch `step` of stream `stream` (0 train, 1 eval, ...) of a run.

  A pure function of its arguments: a resumed run draws exactly the batches
  it would have drawn had it never stopped.
  """
  return np.random.default_rng([int(seed), int(stream), int(step)])


def _check_range(name: str, low: int, high: int) -> None:
  if not (_checks.is_integer(low) and _checks.is_integer(high)) or not 1 <= low <= high:
    raise ValueError(f"{name} must satisfy 1 <= min <= max; got min={low!r}, max={high!r}")


def _lengths(rng: np.random.Generator, batch_size: int, low: int, high: int,
             length: int | None, name: str = "length") -> np.ndarray:
  if length is not None:
    return np.full(batch_size, _checks.integer(length, name))
  return rng.integers(low, high + 1, size=batch_size)


@dataclasses.dataclass(frozen=True)
class CopyTask:
  """Copy (section 4.1): read L random bit vectors, then a delimiter, then write them back.

  Inputs have `bits + 1` channels (the last is the delimiter); outputs `bits`.
  A sequence of length L takes 2L + 1 steps; its last L are scored.
  """
  bits: int = 8
  min_length: int = 1
  max_length: int = 20

  def __post_init__(self):
    _check_range("copy length", self.min_length, self.max_length)

  @property
  def input_size(self) -> int:
    return self.bits + 1

  @property
  def output_size(self) -> int:
    return self.bits

  def time_steps(self, length: int | None = None) -> int:
    """T for sequences up to `length` (default: the training maximum)."""
    return 2 * (self.max_length if length is None else length) + 1

  def sample(self, rng: np.random.Generator, batch_size: int, *, length: int | None = None,
             time_steps: int | None = None) -> Batch:
    """A batch with lengths uniform in [min_length, max_length], or all equal to `length`."""
    lengths = _lengths(rng, batch_size, self.min_length, self.max_length, length)
    top = int(lengths.max())
    t = time_steps if time_steps is not None else self.time_steps(max(top, self.max_length))
    if t < 2 * top + 1:
      raise ValueError(f"time_steps={t} is too short for length {top} (needs {2 * top + 1})")
    seq = rng.integers(0, 2, size=(batch_size, top, self.bits)).astype(np.float32)
    inputs = np.zeros((batch_size, t, self.bits + 1), np.float32)
    targets = np.zeros((batch_size, t, self.bits), np.float32)
    mask = np.zeros((batch_size, t), np.float32)
    for i, n in enumerate(lengths.tolist()):
      inputs[i, :n, :self.bits] = seq[i, :n]
      inputs[i, n, self.bits] = 1.0
      targets[i, n + 1:2 * n + 1] = seq[i, :n]
      mask[i, n + 1:2 * n + 1] = 1.0
    return Batch(inputs, targets, mask)


@dataclasses.dataclass(frozen=True)
class RepeatCopyTask:
  """Repeat copy (section 4.2): copy a sequence a given number of times, then emit an end mark.

  Inputs have `bits + 2` channels: the bits, a start/delimiter channel and a
  channel holding the number of repeats (divided by `max_repeats`) at the
  delimiter step. Outputs have `bits + 1` channels, the last one the end
  marker. A sequence of length L repeated n times takes L + 2 + n L steps.
  """
  bits: int = 8
  min_length: int = 1
  max_length: int = 10
  min_repeats: int = 1
  max_repeats: int = 10

  def __post_init__(self):
    _check_range("repeat copy length", self.min_length, self.max_length)
    _check_range("repeat count", self.min_repeats, self.max_repeats)

  @property
  def input_size(self) -> int:
    return self.bits + 2

  @property
  def output_size(self) -> int:
    return self.bits + 1

  def time_steps(self, length: int | None = None, repeats: int | None = None) -> int:
    length = self.max_length if length is None else length
    repeats = self.max_repeats if repeats is None else repeats
    return length + 2 + length * repeats

  def sample(self, rng: np.random.Generator, batch_size: int, *, length: int | None = None,
             repeats: int | None = None, time_steps: int | None = None) -> Batch:
    lengths = _lengths(rng, batch_size, self.min_length, self.max_length, length)
    counts = _lengths(rng, batch_size, self.min_repeats, self.max_repeats, repeats, "repeats")
    need = int((lengths + 2 + lengths * counts).max())
    t = time_steps
    if t is None:
      t = self.time_steps(max(int(lengths.max()), self.max_length),
                          max(int(counts.max()), self.max_repeats))
    if t < need:
      raise ValueError(f"time_steps={t} is too short for this batch (needs {need})")
    top = int(lengths.max())
    seq = rng.integers(0, 2, size=(batch_size, top, self.bits)).astype(np.float32)
    inputs = np.zeros((batch_size, t, self.bits + 2), np.float32)
    targets = np.zeros((batch_size, t, self.bits + 1), np.float32)
    mask = np.zeros((batch_size, t), np.float32)
    for i in range(batch_size):  # B is small; a loop reads clearest here
      n, k = int(lengths[i]), int(counts[i])
      inputs[i, :n, :self.bits] = seq[i, :n]
      inputs[i, n, self.bits] = 1.0
      inputs[i, n, self.bits + 1] = k / self.max_repeats
      start = n + 1
      targets[i, start:start + n * k, :self.bits] = np.tile(seq[i, :n], (k, 1))
      targets[i, start + n * k, self.bits] = 1.0
      mask[i, start:start + n * k + 1] = 1.0
    return Batch(inputs, targets, mask)


@dataclasses.dataclass(frozen=True)
class AssociativeRecallTask:
  """Associative recall (section 4.3): given a query item, output the item that followed it.

  An item is `item_length` bit vectors; each item is preceded by an item
  delimiter (input channel `bits`), the query by a query delimiter (channel
  `bits + 1`), which also closes it. Outputs have `bits` channels.
  """
  bits: int = 6
  item_length: int = 3
  min_items: int = 2
  max_items: int = 6

  def __post_init__(self):
    _check_range("item count", self.min_items, self.max_items)
    if self.min_items < 2:
      raise ValueError(f"associative recall needs at least 2 items; got {self.min_items}")

  @property
  def input_size(self) -> int:
    return self.bits + 2

  @property
  def output_size(self) -> int:
    return self.bits

  def time_steps(self, length: int | None = None) -> int:
    """T for up to `length` items."""
    items = self.max_items if length is None else length
    return items * (self.item_length + 1) + 2 * (self.item_length + 1) + 1

  def sample(self, rng: np.random.Generator, batch_size: int, *, length: int | None = None,
             time_steps: int | None = None) -> Batch:
    counts = _lengths(rng, batch_size, self.min_items, self.max_items, length)
    top = int(counts.max())
    t = time_steps if time_steps is not None else self.time_steps(max(top, self.max_items))
    if t < self.time_steps(top):
      raise ValueError(f"time_steps={t} is too short for {top} items")
    k = self.item_length
    items = rng.integers(0, 2, size=(batch_size, top, k, self.bits)).astype(np.float32)
    queries = rng.integers(0, counts - 1)  # any item but the last has a successor
    inputs = np.zeros((batch_size, t, self.bits + 2), np.float32)
    targets = np.zeros((batch_size, t, self.bits), np.float32)
    mask = np.zeros((batch_size, t), np.float32)
    for i in range(batch_size):
      n, q = int(counts[i]), int(queries[i])
      for j in range(n):
        s = j * (k + 1)
        inputs[i, s, self.bits] = 1.0
        inputs[i, s + 1:s + 1 + k, :self.bits] = items[i, j]
      s = n * (k + 1)
      inputs[i, s, self.bits + 1] = 1.0
      inputs[i, s + 1:s + 1 + k, :self.bits] = items[i, q]
      inputs[i, s + 1 + k, self.bits + 1] = 1.0
      out = s + 2 + k
      targets[i, out:out + k] = items[i, q + 1]
      mask[i, out:out + k] = 1.0
    return Batch(inputs, targets, mask)


@dataclasses.dataclass(frozen=True)
class PrioritySortTask:
  """Priority sort (section 4.5): output the `num_outputs` highest-priority vectors, sorted.

  Each of `num_inputs` random bit vectors comes with a priority drawn
  uniformly from [-1, 1] (input channel `bits`); a delimiter (channel
  `bits + 1`) follows; the targets are the `num_outputs` vectors of highest
  priority, highest first.
  """
  bits: int = 8
  num_inputs: int = 20
  num_outputs: int = 16

  def __post_init__(self):
    _check_range("priority sort sizes (num_outputs, num_inputs)", self.num_outputs,
                 self.num_inputs)

  @property
  def input_size(self) -> int:
    return self.bits + 2

  @property
  def output_size(self) -> int:
    return self.bits

  def time_steps(self, length: int | None = None) -> int:
    n = self.num_inputs if length is None else length
    return n + 1 + min(self.num_outputs, n)

  def sample(self, rng: np.random.Generator, batch_size: int, *, length: int | None = None,
             time_steps: int | None = None) -> Batch:
    """`length` (if given) is the number of input vectors; the output count scales with it."""
    n = self.num_inputs if length is None else _checks.integer(length, "length")
    m = min(self.num_outputs, n) if length is None else max(1, round(n * self.num_outputs
                                                                     / self.num_inputs))
    t = time_steps if time_steps is not None else self.time_steps(max(n, self.num_inputs))
    if t < n + 1 + m:
      raise ValueError(f"time_steps={t} is too short (needs {n + 1 + m})")
    seq = rng.integers(0, 2, size=(batch_size, n, self.bits)).astype(np.float32)
    priority = rng.uniform(-1.0, 1.0, size=(batch_size, n)).astype(np.float32)
    order = np.argsort(-priority, axis=1, kind="stable")[:, :m]
    inputs = np.zeros((batch_size, t, self.bits + 2), np.float32)
    targets = np.zeros((batch_size, t, self.bits), np.float32)
    mask = np.zeros((batch_size, t), np.float32)
    inputs[:, :n, :self.bits] = seq
    inputs[:, :n, self.bits] = priority
    inputs[:, n, self.bits + 1] = 1.0
    targets[:, n + 1:n + 1 + m] = np.take_along_axis(seq, order[..., None], axis=1)
    mask[:, n + 1:n + 1 + m] = 1.0
    return Batch(inputs, targets, mask)


def make_task(name: str, **options) -> CopyTask | RepeatCopyTask | AssociativeRecallTask | \
    PrioritySortTask:
  """The task called `name` (one of `TASKS`), built with `options`."""
  classes = {"copy": CopyTask, "repeat_copy": RepeatCopyTask,
             "associative_recall": AssociativeRecallTask, "priority_sort": PrioritySortTask}
  if name not in classes:
    raise ValueError(f"task must be one of {TASKS}; got {name!r}")
  return classes[name](**options)


def bit_errors(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Bit errors per sequence: thresholded outputs vs. targets on the scored steps.

  Args:
    logits: [B, T, O] output logits (a bit is 1 where the logit is > 0, i.e.
      the sigmoid output is > 0.5).
    targets: [B, T, O] binary targets.
    mask: [B, T] the scored steps.

  Returns:
    [B] the number of wrong bits in each sequence. Works on NumPy and JAX arrays.
  """
  wrong = (logits > 0) != (targets > 0.5)
  return (wrong * mask[..., None]).sum(axis=(-2, -1))
