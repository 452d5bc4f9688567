"""Plots written as PNG files: learning curves, and head weightings and memory over time.

`plot_learning_curve` reads any `metrics.jsonl` written by `MetricWriter`, so
every experiment can use it. `plot_episode` draws one sequence the way the
NTM paper's figures do: inputs and outputs, the write and read weightings
over time, and the memory contents at the end.

Shape legend: T time, I input channels, O output channels, N slots, W word size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker

from memjax.training import metrics


def plot_learning_curve(metrics_path: str, out_path: str, *, y: str | Sequence[str] = "loss",
                        x: str = "step", log_y: bool = True, title: str | None = None,
                        skip_keys: Sequence[str] = ("eval_length",)) -> str:
  """Plots metric(s) `y` against `x` from a metrics.jsonl file.

  Rows that carry any of `skip_keys` (evaluation rows) or lack `x` or `y` are
  left out; values written as strings (NaN) are skipped.

  Args:
    metrics_path: the metrics.jsonl file.
    out_path: the PNG to write.
    y: one key, or several drawn on their own axes side by side.
    x: the key on the horizontal axis (e.g. 'step', 'sequences', 'wall_time').
    log_y: a logarithmic vertical axis (zeros are drawn at the lowest positive value).
    title: the figure title (default: the file's directory name).

  Returns:
    `out_path`.
  """
  keys = [y] if isinstance(y, str) else list(y)
  rows = [r for r in metrics.read_metrics(metrics_path)
          if x in r and not any(k in r for k in skip_keys)]
  fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
  for ax, key in zip(axes[0], keys):
    pts = [(r[x], r[key]) for r in rows
           if isinstance(r.get(key), (int, float)) and np.isfinite(r[key])]
    if pts:
      xs, ys = np.asarray(pts, dtype=float).T
      if log_y:
        positive = ys[ys > 0]
        floor = positive.min() if positive.size else 1e-3
        ys = np.maximum(ys, floor)
        ax.set_yscale("log")
      ax.plot(xs, ys, lw=1.5)
    ax.xaxis.set_major_formatter(ticker.EngFormatter())  # 350k, not 350000
    ax.set_xlabel(x)
    ax.set_ylabel(key)
    ax.grid(True, alpha=0.3)
  fig.suptitle(title or os.path.basename(os.path.dirname(os.path.abspath(metrics_path))))
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)
  plt.close(fig)
  return out_path


def plot_episode(out_path: str, *, inputs: np.ndarray, targets: np.ndarray,
                 outputs: np.ndarray, write_weights: np.ndarray, read_weights: np.ndarray,
                 memory: np.ndarray | None = None, title: str = "") -> str:
  """Draws one sequence: inputs, targets, outputs, head weightings over time, memory.

  Args:
    out_path: the PNG to write.
    inputs: [T, I]; targets: [T, O]; outputs: [T, O] (probabilities).
    write_weights: [T, N] (or [T, H, N]: the first head is drawn).
    read_weights: [T, N] (or [T, R, N]).
    memory: [N, W] memory at the end of the sequence, or None.
    title: the figure title.

  Returns:
    `out_path`.
  """
  ww = np.asarray(write_weights)
  rw = np.asarray(read_weights)
  ww = ww[:, 0] if ww.ndim == 3 else ww
  rw = rw[:, 0] if rw.ndim == 3 else rw
  # Show only the slots the heads visit (with a margin), as the paper's figures do.
  used = np.nonzero(np.maximum(ww.max(0), rw.max(0)) > 1e-2)[0]
  lo, hi = (max(0, used.min() - 2), min(ww.shape[1], used.max() + 3)) if used.size else (
      0, ww.shape[1])
  ww, rw = ww[:, lo:hi], rw[:, lo:hi]
  if memory is not None:
    memory = np.asarray(memory)[lo:hi]
  panels = [("inputs", inputs.T), ("targets", targets.T), ("outputs", outputs.T),
            (f"write weighting (slots {lo}-{hi - 1} x time)", ww.T),
            (f"read weighting (slots {lo}-{hi - 1} x time)", rw.T)]
  if memory is not None:
    panels.append((f"memory at the end (slots {lo}-{hi - 1} x word)", memory))
  fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.6 * len(panels) + 1.5))
  for ax, (name, image) in zip(axes, panels):
    ax.imshow(image, aspect="auto", cmap="gray_r" if "weight" in name else "viridis",
              interpolation="nearest")
    ax.set_title(name, fontsize=9)
    ax.tick_params(labelsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)
  plt.close(fig)
  return out_path
