"""Checkpointer: round trip, keeping the last few, skipping a corrupt checkpoint; GracefulStop."""

import os
import signal

import numpy as np
import optax
import pytest

from memjax.training import checkpoint


def _state(x):
  params = {"w": np.full((3, 2), x, np.float32), "b": np.arange(2, dtype=np.float32) + x}
  return {"params": params, "opt_state": optax.adam(1e-3).init(params),
          "step": np.asarray(int(x), np.int64), "window": np.array([x, np.nan], np.float32)}


def _assert_same(a, b):
  import jax
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_and_keep_last(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ck"), max_to_keep=2)
  assert ckpt.restore_latest(_state(0)) is None
  for step in (10, 20, 30):
    ckpt.save(step, _state(step))
  assert ckpt.steps() == [20, 30]
  step, state = ckpt.restore_latest(_state(0))
  assert step == 30
  _assert_same(state, _state(30))
  ckpt.close()


def test_corrupt_newest_is_reported_kept_and_skipped(tmp_path, capsys):
  directory = str(tmp_path / "ck")
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=3)
  for step in (1, 2, 3):
    ckpt.save(step, _state(step))
  ckpt.close()
  for root, _, files in os.walk(os.path.join(directory, "3")):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"not a checkpoint")
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=3)
  step, state = ckpt.restore_latest(_state(0))
  assert step == 2
  _assert_same(state, _state(2))
  out = capsys.readouterr().out
  assert "checkpoint at step 3 failed to restore" in out
  assert ckpt.steps() == [1, 2]
  moved = os.listdir(directory + "-bad")
  assert len(moved) == 1 and moved[0].startswith("3-")
  ckpt.save(3, _state(33))  # the step can be saved again after the bad one moved aside
  _assert_same(ckpt.restore_latest(_state(0))[1], _state(33))
  ckpt.close()


def test_older_structure_restores_through_a_fallback(tmp_path, capsys):
  directory = str(tmp_path / "ck")
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=3)
  ckpt.save(5, _state(5))  # written before the state gained a field
  newer = lambda x: {**_state(x), "extra": np.full((2,), -x, np.float32)}
  upgrade = lambda old: {**old, "extra": np.full((2,), 7.0, np.float32)}
  step, state = ckpt.restore_latest(newer(0), fallbacks=[(newer(1), None), (_state(0), upgrade)])
  assert step == 5
  _assert_same(state, {**_state(5), "extra": np.full((2,), 7.0, np.float32)})
  assert "failed to restore" not in capsys.readouterr().out
  assert ckpt.steps() == [5]
  ckpt.save(6, newer(6))  # a checkpoint of the new structure restores directly
  step, state = ckpt.restore_latest(newer(0), fallbacks=[(_state(0), upgrade)])
  assert step == 6
  _assert_same(state, newer(6))
  ckpt.close()


def test_no_fitting_fallback_sets_the_checkpoint_aside(tmp_path, capsys):
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ck"), max_to_keep=3)
  ckpt.save(5, _state(5))
  newer = {**_state(0), "extra": np.zeros((2,), np.float32)}
  assert ckpt.restore_latest(newer, fallbacks=[(newer, lambda old: old)]) is None
  assert "checkpoint at step 5 failed to restore" in capsys.readouterr().out
  assert ckpt.steps() == []
  ckpt.close()


def test_bad_max_to_keep(tmp_path):
  with pytest.raises(ValueError, match="max_to_keep"):
    checkpoint.Checkpointer(str(tmp_path), max_to_keep=0)


def test_graceful_stop_catches_sigterm_and_restores_handler():
  before = signal.getsignal(signal.SIGTERM)
  with checkpoint.GracefulStop() as stop:
    assert stop.requested is None
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested == signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) == before
