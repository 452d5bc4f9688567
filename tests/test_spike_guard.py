"""The spike guard: a run whose model is wrecked mid-way goes back to its last good snapshot
at a lower learning rate, and a resumed guarded run still equals an uninterrupted one."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from experiments.configs import ntm_copy
from memjax.training import algorithmic
from memjax.training import checkpoint
from memjax.training import metrics

LR = ntm_copy.get_config("smoke").optimizer.learning_rate


def test_spike_detected_by_hand():
  # max(2 * 3.85, 3.85 + 2) = 7.7
  assert algorithmic.spike_detected(7.71, 3.85, factor=2.0, margin=2.0)
  assert not algorithmic.spike_detected(7.69, 3.85, factor=2.0, margin=2.0)
  # Near zero the margin decides: max(2 * 0.05, 0.05 + 2) = 2.05
  assert not algorithmic.spike_detected(2.0, 0.05, factor=2.0, margin=2.0)
  assert algorithmic.spike_detected(2.1, 0.05, factor=2.0, margin=2.0)
  assert algorithmic.spike_detected(float("nan"), 1.0, factor=2.0, margin=2.0)


@pytest.mark.parametrize("override, match", [
    ({"every": -5}, "spike_guard.every must be an integer >= 0"),
    ({"every": 7}, "must be a multiple of steps_per_call=5"),
    ({"every": 10, "factor": 0.5}, "spike_guard.factor must be >= 1"),
    ({"every": 10, "margin": -1.0}, "spike_guard.margin must be >= 0"),
    ({"every": 10, "lr_scale": 0.0}, r"spike_guard.lr_scale must be in \(0, 1\]"),
    ({"every": 10, "max_rollbacks": -1}, "spike_guard.max_rollbacks must be an integer >= 0"),
])
def test_bad_spike_guard_values_are_rejected(override, match):
  c = ntm_copy.get_config("smoke")
  for key, value in override.items():
    setattr(c.spike_guard, key, value)
  with pytest.raises(ValueError, match=match):
    algorithmic.validate_config(c)


def test_spike_guard_and_curriculum_are_rejected_together():
  c = ntm_copy.get_config("smoke")
  c.spike_guard.every, c.curriculum.start, c.curriculum.window = 10, 4, 20
  with pytest.raises(ValueError, match="spike_guard and curriculum cannot be used together"):
    algorithmic.validate_config(c)


def _config(num_steps=60):
  c = ntm_copy.get_config("smoke")
  c.plots, c.num_steps, c.checkpoint_every, c.keep_checkpoints = False, num_steps, 5, 20
  c.stop_at_bit_errors = None
  c.spike_guard.every, c.spike_guard.factor, c.spike_guard.margin = 5, 1.5, 1.0
  return c


def _wreck_at(monkeypatch, wrecked_step, how):
  """Makes the chunk that ends at `wrecked_step` (counted in this process) go wrong.

  how='errors': the chunk reports 100 more bit errors per sequence than it made (a spike
  in the moving average; window = 20 sequences = one chunk). how='nan': it returns NaN
  parameters and a NaN loss.
  """
  build = algorithmic.build

  def patched(config):
    exp = build(config)
    calls = []

    def train_chunk(params, opt_state, batches):
      params, opt_state, loss, errors = exp.train_chunk(params, opt_state, batches)
      calls.append(None)
      if len(calls) * config.steps_per_call == wrecked_step:
        if how == "errors":
          errors = errors + 100
        else:
          params = jax.tree.map(lambda x: x * np.nan, params)
          loss = loss * np.nan
      return params, opt_state, loss, errors

    return dataclasses.replace(exp, train_chunk=train_chunk)

  monkeypatch.setattr(algorithmic, "build", patched)


def _adam_count(opt_state):
  counts = [s.count for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: hasattr(x, "count") and hasattr(x, "mu"))
      if hasattr(s, "mu")]
  return counts[0]


def _rows(workdir):
  return metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))


def _restore(workdir, config, step):
  exp = algorithmic.build(config)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  state = ckpt._manager.restore(step, args=checkpoint.ocp.args.StandardRestore(
      algorithmic._initial_state(exp)))
  ckpt.close()
  return state


def _equal(a, b):
  return all(np.array_equal(x, y, equal_nan=True)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["errors", "nan"])
def test_a_wrecked_model_is_rolled_back_to_the_snapshot_at_half_the_rate(
    tmp_path, monkeypatch, capsys, how):
  # Either way the chunk that ends at step 30 is rolled back at once.
  config = _config()
  workdir = str(tmp_path / how)
  _wreck_at(monkeypatch, 30, how)
  summary = algorithmic.train_and_evaluate(config, workdir)
  assert summary["step"] == 60 and summary["rollbacks"] == 1
  assert (f"spike guard: rolled back 1 time(s); base learning rate now {LR / 2:.3g}"
          in capsys.readouterr().out)
  (rollback,) = [r for r in _rows(workdir) if "rollback_to" in r]
  assert rollback["step"] == 30
  assert rollback["learning_rate"] == pytest.approx(LR / 2) and rollback["rollbacks"] == 1
  snapshot_step = rollback["rollback_to"]
  assert 5 <= snapshot_step <= 25 and snapshot_step % 5 == 0
  # The checkpoint written right after the rollback holds the snapshot's parameters, Adam
  # moments and error window, with half the learning rate.
  at_snapshot = _restore(workdir, config, snapshot_step)
  after = _restore(workdir, config, rollback["step"])
  assert _equal(after["params"], at_snapshot["params"])
  assert _equal(after["recent_errors"], at_snapshot["recent_errors"])
  assert int(after["guard_step"]) == snapshot_step and int(after["rollbacks"]) == 1
  assert algorithmic._learning_rate(after["opt_state"]) == pytest.approx(LR / 2)
  assert algorithmic._learning_rate(at_snapshot["opt_state"]) == pytest.approx(LR)
  assert int(_adam_count(after["opt_state"])) == snapshot_step
  # ... and training went on from there: the final model is finite and trained.
  final = _restore(workdir, config, 60)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(final["params"]))
  assert not _equal(final["params"], at_snapshot["params"])
  assert all(np.isfinite(r["bit_errors_per_sequence"]) for r in _rows(workdir)
             if "eval_length" in r)


@pytest.mark.slow
def test_without_the_guard_a_wrecked_model_stays_wrecked(tmp_path, monkeypatch):
  config = _config()
  config.spike_guard.every = 0
  _wreck_at(monkeypatch, 30, "nan")
  summary = algorithmic.train_and_evaluate(config, str(tmp_path))
  assert summary["step"] == 30 and summary["rollbacks"] == 0  # stops at the non-finite loss


@pytest.mark.slow
def test_a_resumed_guarded_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
  # The second part starts at step 40 and counts its chunks from there, so only the first
  # part and the uninterrupted run are wrecked at step 30.
  _wreck_at(monkeypatch, 30, "errors")
  full, part = str(tmp_path / "full"), str(tmp_path / "part")
  algorithmic.train_and_evaluate(_config(60), full)
  algorithmic.train_and_evaluate(_config(40), part)  # past the rollback at step 30
  algorithmic.train_and_evaluate(_config(60), part)
  # Training and rollback rows; the first part's own evaluation at step 40 aside.
  training = lambda rows: [{k: v for k, v in r.items() if k != "wall_time"} for r in rows
                           if "eval_length" not in r]
  assert training(_rows(part)) == training(_rows(full))  # bit for bit
  assert [r["step"] for r in _rows(full) if "rollback_to" in r] == [30]
  assert _equal(_restore(part, _config(), 60)["params"], _restore(full, _config(), 60)["params"])
