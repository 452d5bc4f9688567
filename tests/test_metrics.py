"""memjax.training.metrics: JSON-lines writer with resume truncation, progress lines."""

import json

import numpy as np

from memjax.training import metrics


def test_rows_round_trip_with_numpy_scalars(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  writer = metrics.MetricWriter(path)
  writer.write(1, loss=np.float32(0.5), bits=np.int64(3), curve=np.array([1.0, 2.0]))
  writer.write(2, loss=float("nan"))
  rows = metrics.read_metrics(path)
  assert rows == [{"step": 1, "loss": 0.5, "bits": 3, "curve": [1.0, 2.0]},
                  {"step": 2, "loss": "nan"}]
  with open(path) as f:
    assert all(json.loads(line) for line in f)


def test_resume_drops_rows_after_the_checkpoint(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  writer = metrics.MetricWriter(path)
  for step in range(1, 6):
    writer.write(step, loss=1.0 / step)
  resumed = metrics.MetricWriter(path, resume_step=3)
  assert [r["step"] for r in metrics.read_metrics(path)] == [1, 2, 3]
  resumed.write(4, loss=0.25)
  assert [r["step"] for r in metrics.read_metrics(path)] == [1, 2, 3, 4]


def test_appends_when_reopened_without_resume(tmp_path):
  path = str(tmp_path / "m.jsonl")
  metrics.MetricWriter(path).write(1, a=1)
  metrics.MetricWriter(path).write(2, a=2)
  assert [r["a"] for r in metrics.read_metrics(path)] == [1, 2]


def test_progress_line():
  progress = metrics.Progress(total_steps=100, start_step=0)
  line = progress.log(50, loss=0.123456)
  assert line.startswith("step 50/100 (50%)")
  assert "steps/s" in line and "ETA " in line and "<=" not in line and "loss=0.1235" in line


def test_progress_eta_is_an_upper_bound_until_the_end_is_known():
  progress = metrics.Progress(total_steps=1000, start_step=0, may_stop_early=True)
  assert "/1000 " in progress.log(10) and "ETA <= " in progress.log(20)
  progress.set_total(40)  # the criterion was met at step 20: 20 more steps
  line = progress.log(30)
  assert line.startswith("step 30/40 (75%)") and "ETA <=" not in line and "ETA " in line


def test_duration_format():
  assert metrics._duration(3725) == "1h02m05s"
  assert metrics._duration(65) == "1m05s"
  assert metrics._duration(float("inf")) == "?"
