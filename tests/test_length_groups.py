"""Length-sorted scan groups (`sort_by_length`, `scan_groups`) train as one plain scan.

`ntm_copy` sorts each training batch by length (`algorithmic.length_order`)
and runs each device's part as scan groups whose time loops stop after their
own last scored step. The loss and gradients are sums over sequences, so this
must give the plain run's losses, bit errors (in the new order) and
parameters, up to float rounding.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest

from experiments.configs import ntm_copy
from memjax.training import algorithmic


def _mask(last_steps, t=10):
  """A [B, T] mask whose row i is scored on steps 0 .. last_steps[i] - 1."""
  return (np.arange(t)[None, :] < np.asarray(last_steps)[:, None]).astype(np.float32)


def test_length_order_by_hand():
  # Last scored steps 3 9 1 7 5 8 2 6: longest first is rows 1 5 3 7 4 0 6 2. Blocks of
  # two: [1 5] [3 7] [4 0] [6 2], dealt in a snake to devices 0 1 1 0.
  order = algorithmic.length_order(_mask([3, 9, 1, 7, 5, 8, 2, 6]), devices=2, groups=2)
  np.testing.assert_array_equal(order, [1, 5, 6, 2, 3, 7, 4, 0])
  # One device, two groups: the longer half, then the shorter. Ties keep batch order.
  order = algorithmic.length_order(_mask([4, 4, 2, 9]), devices=1, groups=2)
  np.testing.assert_array_equal(order, [3, 0, 1, 2])
  # Rows never scored count as length 0; a [B, T, 1] mask works the same.
  order = algorithmic.length_order(_mask([0, 5, 3])[..., None], devices=1, groups=1)
  np.testing.assert_array_equal(order, [1, 2, 0])


def test_length_order_needs_equal_blocks():
  with pytest.raises(ValueError, match="must divide the batch size 6"):
    algorithmic.length_order(_mask([1, 2, 3, 4, 5, 6]), devices=2, groups=2)


def test_config_rejects_groups_that_do_not_divide_each_device_part():
  config = ntm_copy.get_config("smoke")
  config.cpu_devices = 2
  config.scan_groups = 4  # batch 4 = 2 devices x 2 rows: not 4 groups each
  with pytest.raises(ValueError, match="cpu_devices x scan_groups"):
    algorithmic.validate_config(config)
  config.scan_groups = 2
  config = ml_collections.ConfigDict(config.to_dict())
  del config["sort_by_length"]  # a hand-built config, without the bool-typed default
  config.sort_by_length = "yes"
  with pytest.raises(ValueError, match="sort_by_length must be True or False"):
    algorithmic.validate_config(config)


def test_sorted_scan_groups_train_as_one_plain_scan():
  plain = ntm_copy.get_config("smoke")
  plain.scan_groups, plain.sort_by_length = 1, False
  grouped = ntm_copy.get_config("smoke")
  assert grouped.scan_groups == 2 and grouped.sort_by_length  # the config under test
  runs = {}
  for name, config in (("plain", plain), ("grouped", grouped)):
    exp = algorithmic.build(config)
    params, opt_state = exp.params, exp.optimizer.init(exp.params)
    k = config.steps_per_call
    batches = exp.batches(0, k)
    params, opt_state, loss, errors = exp.train_chunk(params, opt_state, batches)
    runs[name] = (batches.data, np.asarray(loss), np.asarray(errors), jax.tree.leaves(params))
  (plain_data, plain_loss, plain_errors, plain_params) = runs["plain"]
  (data, loss, errors, params) = runs["grouped"]
  orders = [algorithmic.length_order(m, 1, 2) for m in plain_data.mask]
  # The grouped run trained on the same sequences, each batch in length order...
  for got, want in zip(data, plain_data):
    np.testing.assert_array_equal(got, np.stack([w[o] for w, o in zip(want, orders)]))
  # ...and its two groups' loops had different lengths on some step (so the early stop of
  # the shorter group was exercised).
  scored = (data.mask > 0).reshape(len(orders), 2, -1, data.mask.shape[-1]).any(axis=2)
  last = scored.shape[-1] - np.argmax(scored[..., ::-1], axis=-1)
  assert np.any(last[:, 0] != last[:, 1])
  np.testing.assert_allclose(loss, plain_loss, rtol=2e-5)
  np.testing.assert_array_equal(errors, np.stack([e[o] for e, o in zip(plain_errors, orders)]))
  for got, want in zip(params, plain_params):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
