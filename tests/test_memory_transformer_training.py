"""memjax.training.memory_transformer: metrics, plot, resuming, and config checks (smoke size)."""

import os

import numpy as np
import pytest

from experiments.configs import memory_transformer_retrieval
from memjax.training import memory_transformer
from memjax.training import metrics


def _tiny_config(run_suites):
  config = memory_transformer_retrieval.get_config("smoke")
  config.train.phases = ((2, 16, 4),)
  config.eval.run_suites = run_suites
  return config


def test_train_and_evaluate_writes_metrics_and_plot_then_resumes(tmp_path):
  workdir = str(tmp_path)
  first = memory_transformer.train_and_evaluate(_tiny_config("local_only"), workdir)
  rows = metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert [r["split"] for r in rows].count("train_summary") == 1
  assert [r["step"] for r in rows if r["split"] == "train"] == [2]
  evals = [r for r in rows if r["split"] == "eval"]
  # 2 sequences x 2 pairs per distance, distances 8 and 40.
  assert [(r["suite"], r["distance"], r["count"]) for r in evals] == [
      ("local_only", 8, 4), ("local_only", 40, 4)]
  assert all(r["chance"] == pytest.approx(1 / 64) and not r["use_memory"] for r in evals)
  assert os.path.getsize(first["plot"]) > 0
  with np.load(os.path.join(workdir, memory_transformer.PARAMS_FILE)) as f:
    saved = {k: f[k] for k in f.files}

  # Again on the same workdir: no retraining, the finished suite is kept, the other one runs.
  second = memory_transformer.train_and_evaluate(_tiny_config("all"), workdir)
  rows2 = metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert rows2[:len(rows)] == rows
  assert [r["split"] for r in rows2].count("train_summary") == 1
  assert second["train_seconds"] == first["train_seconds"]
  assert [(r["suite"], r["distance"]) for r in rows2[len(rows):]] == [
      ("memory", 8), ("memory", 40), ("memory_ivf", 8), ("memory_ivf", 40)]
  assert [r["memory_size"] for r in rows2[len(rows):]] == [64, 64, 64, 64]
  # The approximate-memory suite: same data as "memory", its recall against exact search.
  ivf_rows = rows2[len(rows) + 2:]
  assert all(r["search"] == "ivf" and 0.0 <= r["recall"] <= 1.0 for r in ivf_rows)
  assert [r["count"] for r in ivf_rows] == [r["count"] for r in rows2[len(rows):len(rows) + 2]]
  with np.load(os.path.join(workdir, memory_transformer.PARAMS_FILE)) as f:
    assert all(np.array_equal(f[k], v) for k, v in saved.items())


def test_phase_memory_size_is_capped_by_the_sequence():
  config = memory_transformer_retrieval.get_config()
  # 2048 - 128 tokens can be in memory before the last segment of a 2048-token sequence.
  assert memory_transformer.phase_memory_size(config, 2048) == 1920
  assert memory_transformer.phase_memory_size(config, 256) == 128
  config.train.memory_size = 1000
  assert memory_transformer.phase_memory_size(config, 2048) == 1000


@pytest.mark.parametrize("changes, message", [
    ({"eval.run_suites": "memory,nope"}, "unknown suite 'nope'"),
    ({"model.num_heads": 3}, "divisible"),
    ({"train.phases": ((10, 100, 2),)}, "multiple of train.segment_length"),
    # Phases long enough for 4 x 129 tokens, so the vocab check (128 keys) is the one that fails.
    ({"train.max_pairs": 129, "train.phases": ((3, 520, 2),)},
     r"train.max_pairs=129 exceeds vocab.num_keys=128"),
])
def test_bad_configs_are_rejected(changes, message):
  config = memory_transformer_retrieval.get_config("smoke")
  for field, value in changes.items():
    section, name = field.split(".")
    config[section][name] = value
  with pytest.raises(ValueError, match=message):
    memory_transformer.validate_config(config)
