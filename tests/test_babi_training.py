"""Tests of the bAbI trainer (memjax.training.babi) and its config."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import memn2n_babi
from memjax.tasks import babi
from memjax.training import babi as training
from memjax.training import metrics

DATA_DIR = memn2n_babi.SHARED_DATA
needs_data = pytest.mark.skipif(not os.path.isdir(DATA_DIR),
                                reason=f"bAbI data not found in {DATA_DIR}")


def test_parse_tasks():
  assert training.parse_tasks("3") == (3,)
  assert training.parse_tasks(5) == (5,)
  assert training.parse_tasks("1-3,7") == (1, 2, 3, 7)
  assert training.parse_tasks("all") == tuple(range(1, 21))
  for bad in ("0", "21", "x", "3-", ""):
    with pytest.raises(ValueError, match=r"config\.tasks"):
      training.parse_tasks(bad)


def test_paper_columns_have_the_published_summaries():
  # Sukhbaatar et al. 2015, Table 1 (1k): mean error and tasks failed at > 5 %.
  summaries = {"BoW": (25.1, 15), "PE LS RN": (13.9, 11), "PE LS RN joint": (12.4, 11)}
  for name, (mean, failed) in summaries.items():
    column = np.array(training.PAPER[name])
    assert column.shape == (20,)
    assert round(float(column.mean()), 1) == mean, name
    assert int((column > 5.0).sum()) == failed, name


def test_config_variants_and_validation(tmp_path):
  for variant in (None, "table", "joint", "kv", "smoke"):
    config = memn2n_babi.get_config(variant)
    assert config.trainer == "babi"
    training.parse_tasks(config.tasks)
  assert memn2n_babi.get_config("joint").joint
  with pytest.raises(ValueError, match="unknown variant"):
    memn2n_babi.get_config("huge")
  config = memn2n_babi.get_config()
  config.data_dir = str(tmp_path / "missing")
  with pytest.raises(ValueError, match=r"config\.data_dir"):
    training.validate_config(config)
  config.data_dir = str(tmp_path)
  for field, value, message in [("model", "lstm", "config.model"),
                                ("encoding", "cnn", "config.encoding"),
                                ("hops", 0, "config.hops"),
                                ("random_noise", 1.5, "config.random_noise"),
                                ("ensemble", 11, "config.ensemble"),
                                ("tasks", "25", "config.tasks")]:
    bad = memn2n_babi.get_config()
    bad.data_dir = str(tmp_path)
    bad[field] = value
    with pytest.raises(ValueError, match=message):
      training.validate_config(bad)


def test_write_table_counts_mean_and_failures(tmp_path):
  config = memn2n_babi.get_config("table")
  rows = [dict(task=t, name=f"t{t}", test_error=e, valid_error=e / 2)
          for t, e in [(2, 4.0), (1, 0.0), (3, 20.0)]]
  markdown = training.write_table(rows, str(tmp_path), config, 12.0)
  summary = json.loads((tmp_path / "babi_table.json").read_text())
  assert summary["mean_test_error"] == pytest.approx(8.0)
  assert summary["failed_tasks"] == 1
  assert summary["tasks"] == [1, 2, 3]
  # The paper's columns restricted to the same three tasks.
  assert summary["paper_mean_test_error"]["BoW"] == pytest.approx((0.6 + 17.6 + 71.0) / 3)
  lines = markdown.splitlines()
  assert lines[2].startswith("| 1: t1 | 0.0 | 0.0 | 0.6 |")
  assert "| **mean error** | **8.0** |" in markdown
  assert "| **failed (> 5 %)** | **1** |" in markdown
  assert (tmp_path / "babi_table.md").read_text() == markdown


def test_write_table_with_an_ensemble_column(tmp_path):
  config = memn2n_babi.get_config("table")
  rows = [dict(task=t, name=f"t{t}", test_error=e, valid_error=0.0, ensemble_size=5,
               ensemble_test_error=f) for t, e, f in [(1, 6.0, 4.0), (2, 10.0, 8.0)]]
  markdown = training.write_table(rows, str(tmp_path), config)
  summary = json.loads((tmp_path / "babi_table.json").read_text())
  assert summary["mean_test_error"] == pytest.approx(8.0) and summary["failed_tasks"] == 2
  assert summary["ensemble_mean_test_error"] == pytest.approx(6.0)
  assert summary["ensemble_failed_tasks"] == 1 and summary["ensemble_size"] == 5
  lines = markdown.splitlines()
  assert "| memjax ensemble of 5 |" in lines[0]
  assert lines[2].startswith("| 1: t1 | 6.0 | 0.0 | 4.0 | 0.6 |")
  assert "| **mean error** | **8.0** | 0.0 | **6.0** |" in markdown
  assert "| **failed (> 5 %)** | **2** | | **1** |" in markdown


def test_ensemble_averages_probabilities_of_the_restarts_best_on_validation():
  # Three restarts, two questions, three answers. Ranking on validation:
  # restart 2 (acc 0.9), then 0 (0.8, loss 0.3), then 1 (0.8, loss 0.5).
  probs = np.array([[[0.5, 0.4, 0.1], [0.1, 0.2, 0.7]],
                    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]],
                    [[0.2, 0.7, 0.1], [0.3, 0.3, 0.4]]])
  run = training.RunResult(
      None, None, np.array([0.8, 0.8, 0.9]), np.array([0.3, 0.5, 0.1]),
      probs.argmax(-1), probs.argmax(-1), 2, 0.0, 1, np.log(probs + 1e-12),
      np.log(probs + 1e-12))
  np.testing.assert_array_equal(run.ranking, [2, 0, 1])
  np.testing.assert_array_equal(run.ensemble_predictions(1), [1, 2])  # restart 2 alone
  # Restarts 2 and 0: means [0.35, 0.55, 0.1] and [0.2, 0.25, 0.55].
  np.testing.assert_array_equal(run.ensemble_predictions(2), [1, 2])
  # All three: [0.233, 0.367, 0.4] and [0.467, 0.167, 0.367] (the three
  # restarts' own answers to question 1 all differ: probabilities decide).
  np.testing.assert_array_equal(run.ensemble_predictions(3), [2, 0])
  with pytest.raises(ValueError, match="ensemble size"):
    run.ensemble_predictions(4)


@needs_data
def test_smoke_run_learns_task_one_and_resumes(tmp_path):
  config = memn2n_babi.get_config("smoke")
  workdir = str(tmp_path / "run")
  summary = training.train_and_evaluate(config, workdir)
  row = summary["rows"][0]
  assert row["task"] == 1 and len(row["restart_test_error"]) == config.restarts
  # Task 1 is learnt in a few seconds: chance is 1 in 6 locations (83 % error).
  assert row["test_error"] < 25.0
  assert row["test_error"] == row["restart_test_error"][row["chosen_restart"]]
  chosen_valid = row["restart_valid_error"][row["chosen_restart"]]
  assert chosen_valid == min(row["restart_valid_error"])  # picked on validation
  assert row["ensemble_size"] == 2 and row["ensemble_test_error"] < 25.0
  rows = metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert len(rows) == config.linear_start_epochs + config.epochs
  assert rows[-1]["train_error"] < rows[0]["train_error"]
  for name in ("babi_table.md", "babi_table.json", "attention_task1.png",
               "results/task_01.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  # A second run on the same workdir reuses the saved result and trains nothing.
  again = training.train_and_evaluate(config, workdir)
  assert again["rows"] == summary["rows"]
  assert len(metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))) == len(rows)


@needs_data
def test_trainer_restarts_differ_and_picking_uses_validation():
  config = memn2n_babi.get_config("smoke")
  config.model = "kv"
  data = babi.load(DATA_DIR, 1)
  trainer = training.Trainer(config, data)
  run = trainer.fit(3)
  assert run.test_predictions.shape == (config.restarts, len(data.test))
  best = np.lexsort((run.valid_loss, -run.valid_accuracy))[0]
  assert run.chosen == best
  errors = (run.test_predictions != data.test.answer).mean(axis=1)
  assert errors[run.chosen] < 0.5  # the key-value form learns too


@needs_data
def test_embedding_the_batch_or_the_sentence_table_gives_the_same_answers():
  config = memn2n_babi.get_config("smoke")
  data = babi.load(DATA_DIR, 1)
  outputs = []
  for embed in ("table", "batch"):
    config.embed = embed
    trainer = training.Trainer(config, data)
    assert trainer.embed_batch == (embed == "batch")
    params = jax.tree.map(lambda x: x[0], trainer.init(0).params)
    idx = jnp.arange(7)
    outputs.append(trainer._forward(params, trainer.arrays.sentences, trainer.arrays.train, idx,
                                    None, False))
  np.testing.assert_allclose(outputs[0].logits, outputs[1].logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(outputs[0].attention, outputs[1].attention, rtol=1e-5, atol=1e-6)


@needs_data
@pytest.mark.slow
def test_memory_buckets_give_the_whole_memorys_answers_for_less_work():
  # Tasks 1 and 3 (stories of up to 10 and up to 50 sentences) together.
  config = memn2n_babi.get_config("smoke")
  config.tasks, config.restarts, config.embed_dim = "1,3", 2, 8
  data = babi.load(DATA_DIR, (1, 3))
  assert data.memory_size == 50
  plain = training.Trainer(config, data)
  config.memory_buckets = (10, 99)
  bucketed = training.Trainer(config, data)
  assert bucketed.buckets == (10, 50)
  groups = [np.asarray(g) for g in bucketed.arrays.train.groups]
  sizes = data.train.story_size
  assert sum(len(g) for g in groups) == len(data.train)
  assert np.all(sizes[groups[0]] <= 10) and np.all(sizes[groups[1]] > 10)
  assert len(groups[0]) and len(groups[1])
  params = plain.init(0).params
  # Predictions, gathered back into question order.
  want = plain.predict_fn(params, plain.arrays.valid)
  got = bucketed.predict_fn(params, bucketed.arrays.valid)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)  # cross entropy
  np.testing.assert_array_equal(got[1], want[1])
  np.testing.assert_allclose(got[2], want[2], rtol=1e-5, atol=1e-7)  # attention
  # One training epoch: every question once, batches within one bucket, same for all restarts.
  bucket, idx, weight = bucketed._schedule(jax.random.key(0), bucketed.arrays.train)
  seen = np.asarray(idx)[np.asarray(weight) > 0]
  np.testing.assert_array_equal(np.sort(seen), np.arange(len(data.train)))
  limit = np.asarray(bucketed.buckets)[np.asarray(bucket)]
  assert np.all(sizes[np.asarray(idx)] <= limit[:, None])
  assert len(set(np.asarray(bucket[:20]).tolist())) == 2  # the buckets' batches are mixed
  state = bucketed.init(0)
  state, metrics = bucketed.epoch_fn(state, jnp.full((2,), 0.005), jnp.ones((2,), bool))
  assert np.all(np.isfinite(metrics["train_loss"]))
  # A step on a cut memory has the whole memory's gradient.
  rows = np.asarray(idx[int(np.argmax(np.asarray(bucket) == 0))])
  one = jax.tree.map(lambda x: x[0], params)
  grad = lambda trainer, s: jax.grad(lambda p: trainer._loss(
      p, trainer.arrays, jnp.asarray(rows), jnp.ones(len(rows)), None, False, s)[0])(one)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grad(bucketed, 10), grad(plain, None))


def test_select_per_task_picks_on_validation_and_prefers_joint_on_ties():
  def summary(joint, valid, test):
    return {"joint": joint, "rows": [dict(task=t, name=f"t{t}", valid_error=v, test_error=e)
                                     for t, (v, e) in enumerate(zip(valid, test), start=1)]}
  per_task = summary(False, [0.0, 3.0, 9.0], [1.0, 9.0, 30.0])
  joint = summary(True, [0.0, 4.0, 2.0], [2.0, 1.0, 6.0])
  selection = training.select_per_task(per_task, joint)
  # Task 1: a tie (joint); task 2: per task (3 < 4, though its test error is worse); 3: joint.
  assert [r["picked"] for r in selection["rows"]] == ["joint", "per task", "joint"]
  assert [r["test_error"] for r in selection["rows"]] == [2.0, 9.0, 6.0]
  assert selection["mean_test_error"] == pytest.approx(17.0 / 3)
  assert selection["failed_tasks"] == 2 and selection["joint_tasks"] == [1, 3]
  markdown = training.selection_markdown(selection)
  assert "| 2: t2 | 3.0 / 9.0 | 4.0 / 1.0 | per task | 9.0 |" in markdown
  assert "**5.7**" in markdown and "**2**" in markdown
  with pytest.raises(ValueError, match="task 3 is in the per-task table but not in the joint"):
    training.select_per_task(per_task, summary(True, [0.0, 1.0], [0.0, 1.0]))
