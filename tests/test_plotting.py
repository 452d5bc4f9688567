"""Plots: files are written, evaluation rows and non-finite values are skipped."""

import json

import numpy as np

from memjax.training import plotting


def test_learning_curve_and_episode(tmp_path):
  path = tmp_path / "metrics.jsonl"
  rows = [{"step": s, "sequences": 16 * s, "loss": 1.0 / s, "bit_errors_per_sequence": 10.0 / s}
          for s in range(1, 30)]
  rows += [{"step": 30, "loss": "nan", "bit_errors_per_sequence": 0.0},
           {"step": 30, "eval_length": 40, "bit_errors_per_sequence": 3.0}]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = plotting.plot_learning_curve(str(path), str(tmp_path / "curve.png"),
                                     y=("loss", "bit_errors_per_sequence"), x="sequences")
  assert (tmp_path / "curve.png").stat().st_size > 1000 and out.endswith("curve.png")
  t, n = 9, 12
  weights = np.eye(n)[np.minimum(np.arange(t), n - 1)]
  plotting.plot_episode(str(tmp_path / "ep.png"), inputs=np.ones((t, 3)),
                        targets=np.zeros((t, 2)), outputs=np.full((t, 2), 0.5),
                        write_weights=weights[:, None], read_weights=weights,
                        memory=np.zeros((n, 4)))
  assert (tmp_path / "ep.png").stat().st_size > 1000
