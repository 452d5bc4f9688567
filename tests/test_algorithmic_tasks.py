"""The NTM paper's tasks: layout, masks, determinism, targets worked out by hand."""

import numpy as np
import pytest

from memjax.tasks import algorithmic as tasks


def test_copy_layout_by_hand():
  task = tasks.CopyTask(bits=3, min_length=1, max_length=4)
  b = task.sample(tasks.rng_for(0, 0), 5)
  assert b.inputs.shape == (5, 9, 4) and b.targets.shape == (5, 9, 3) and b.mask.shape == (5, 9)
  for i in range(5):
    n = int(b.mask[i].sum())
    assert 1 <= n <= 4
    np.testing.assert_array_equal(b.inputs[i, n, :], [0, 0, 0, 1])       # delimiter
    np.testing.assert_array_equal(b.inputs[i, n + 1:, :], 0)             # silent while answering
    np.testing.assert_array_equal(b.mask[i, n + 1:2 * n + 1], 1)
    np.testing.assert_array_equal(b.targets[i, n + 1:2 * n + 1], b.inputs[i, :n, :3])
    assert b.mask[i, :n + 1].sum() == 0 and b.targets[i, :n + 1].sum() == 0


def test_fixed_length_and_padding():
  task = tasks.CopyTask(bits=2, max_length=3)
  b = task.sample(tasks.rng_for(1, 0), 2, length=5, time_steps=15)
  assert b.inputs.shape == (2, 15, 3)
  np.testing.assert_array_equal(b.mask.sum(1), [5, 5])
  with pytest.raises(ValueError, match="too short"):
    task.sample(tasks.rng_for(1, 0), 2, length=5, time_steps=10)


def test_same_seed_same_batch_and_different_steps_differ():
  task = tasks.CopyTask()
  a = task.sample(tasks.rng_for(7, 12), 4)
  b = task.sample(tasks.rng_for(7, 12), 4)
  c = task.sample(tasks.rng_for(7, 13), 4)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.inputs, c.inputs)


def test_repeat_copy_by_hand():
  task = tasks.RepeatCopyTask(bits=2, max_length=3, max_repeats=4)
  b = task.sample(tasks.rng_for(0, 0), 3, length=2, repeats=3)
  seq = b.inputs[0, :2, :2]
  np.testing.assert_array_equal(b.inputs[0, 2], [0, 0, 1, 0.75])         # delimiter, 3/4 repeats
  np.testing.assert_array_equal(b.targets[0, 3:9, :2], np.tile(seq, (3, 1)))
  np.testing.assert_array_equal(b.targets[0, 9], [0, 0, 1])              # end marker
  np.testing.assert_array_equal(np.nonzero(b.mask[0])[0], np.arange(3, 10))
  assert b.inputs.shape[1] == task.time_steps() == 3 + 2 + 12


def test_associative_recall_target_is_the_next_item():
  task = tasks.AssociativeRecallTask(bits=4, item_length=2, min_items=2, max_items=4)
  b = task.sample(tasks.rng_for(3, 0), 6)
  k = 2
  for i in range(6):
    starts = np.nonzero(b.inputs[i, :, 4])[0]                             # item delimiters
    items = [b.inputs[i, s + 1:s + 1 + k, :4] for s in starts]
    q0 = np.nonzero(b.inputs[i, :, 5])[0][0]
    query = b.inputs[i, q0 + 1:q0 + 1 + k, :4]
    out = np.nonzero(b.mask[i])[0]
    assert len(out) == k and out[0] == q0 + k + 2
    matches = [j for j in range(len(items) - 1) if np.array_equal(items[j], query)]
    assert any(np.array_equal(b.targets[i, out, :4], items[j + 1]) for j in matches)


def test_priority_sort_outputs_highest_first():
  task = tasks.PrioritySortTask(bits=3, num_inputs=6, num_outputs=4)
  b = task.sample(tasks.rng_for(0, 0), 2)
  for i in range(2):
    prio = b.inputs[i, :6, 3]
    order = np.argsort(-prio)[:4]
    np.testing.assert_array_equal(b.targets[i, 7:11], b.inputs[i, order, :3])
    np.testing.assert_array_equal(np.nonzero(b.mask[i])[0], np.arange(7, 11))
    assert b.inputs[i, 6, 4] == 1


def test_bit_errors_by_hand():
  targets = np.zeros((2, 3, 2), np.float32)
  targets[0, 1] = [1, 0]
  logits = np.full((2, 3, 2), -1.0, np.float32)
  logits[0, 1] = [2.0, 3.0]      # one right, one wrong
  logits[0, 0] = [5.0, 5.0]      # wrong but not scored
  logits[1, 2] = [1.0, -1.0]     # one wrong
  mask = np.array([[0, 1, 0], [0, 1, 1]], np.float32)
  np.testing.assert_array_equal(tasks.bit_errors(logits, targets, mask), [1, 1])


@pytest.mark.parametrize("name, kw, match", [
    ("copy", dict(min_length=0), "length"),
    ("copy", dict(min_length=5, max_length=3), "length"),
    ("associative_recall", dict(min_items=1), "2 items"),
    ("sorting", {}, "task must be one of"),
])
def test_bad_task_options(name, kw, match):
  with pytest.raises(ValueError, match=match):
    tasks.make_task(name, **kw)
