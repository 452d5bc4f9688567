"""Metrics as JSON lines, and absl progress lines with rate and ETA.

`MetricWriter` appends one JSON object per call to `DIR/metrics.jsonl`. On a
resumed run, `MetricWriter(path, resume_step=s)` first drops the rows logged
after step `s` (they belong to the part of the run the checkpoint does not
cover and will be logged again), so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging


def _plain(value: Any) -> Any:
  """Converts NumPy/JAX scalars to Python numbers so `json` can write them."""
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if hasattr(value, "shape") and getattr(value, "shape", None) == ():
    value = np.asarray(value).item()
  elif hasattr(value, "tolist"):
    return np.asarray(value).tolist()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/Infinity; keep it readable
  return value


def read_metrics(path: str) -> list[dict[str, Any]]:
  """All rows of a metrics.jsonl file (an empty list if there is none)."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class MetricWriter:
  """Appends metric rows to a JSON-lines file.

  Args:
    path: the file, usually `workdir/metrics.jsonl`.
    resume_step: when resuming from a checkpoint taken at this step, rows with
      a larger `step` are dropped first. None starts the file afresh only if
      it does not exist (rows are appended otherwise).
  """

  def __init__(self, path: str, resume_step: int | None = None):
    self.path = path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if resume_step is not None:
      rows = [r for r in read_metrics(path) if r.get("step", 0) <= resume_step]
      self._rewrite(rows)
    elif not os.path.exists(path):
      self._rewrite([])

  def _rewrite(self, rows: list[dict[str, Any]]) -> None:
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
    os.replace(tmp, self.path)

  def write(self, step: int, **values: Any) -> dict[str, Any]:
    row = {"step": int(step), **_plain(values)}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
      f.flush()
    return row


class Progress:
  """Logs `step/total`, steps per second and the time left, via absl.

  Args:
    total_steps: the step the run ends at (at the latest, with `may_stop_early`).
    start_step: the step it starts (or resumes) from.
    may_stop_early: the run stops when a criterion is met, so the time left is
      an upper bound, logged as "ETA <= ...".
  """

  def __init__(self, total_steps: int, start_step: int = 0, may_stop_early: bool = False):
    self.total = int(total_steps)
    self.may_stop_early = bool(may_stop_early)
    self._t0 = time.perf_counter()
    self._step0 = int(start_step)
    self._last_t = self._t0
    self._last_step = self._step0

  def set_total(self, total_steps: int, may_stop_early: bool = False) -> None:
    """Changes where the run ends (for example once its stopping criterion is met)."""
    self.total = int(total_steps)
    self.may_stop_early = bool(may_stop_early)

  def rate(self, step: int) -> float:
    """Steps per second since the last call of `log` (or the start)."""
    dt = time.perf_counter() - self._last_t
    return (step - self._last_step) / dt if dt > 0 else float("nan")

  def log(self, step: int, **values: Any) -> str:
    now = time.perf_counter()
    rate = self.rate(step)
    overall = (step - self._step0) / max(now - self._t0, 1e-9)
    left = max(self.total - step, 0) / overall if overall > 0 else float("nan")
    shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in _plain(values).items())
    eta = "ETA <= " if self.may_stop_early else "ETA "
    line = (f"step {step}/{self.total} ({100.0 * step / max(self.total, 1):.0f}%) "
            f"{rate:.1f} steps/s {eta}{_duration(left)} {shown}")
    logging.info(line)
    self._last_t, self._last_step = now, step
    return line


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = round(seconds)
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
