"""Random associations: N random input vectors, each with a random class.

There is nothing to generalise, only to store, so accuracy on these items
measures how much a model can memorise (the capacity test used for memory
layers). Deterministic from the seed; NumPy only.

Shape legend: N items, I input features.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from memjax import _checks


class Associations(NamedTuple):
  """inputs [N, I] float32 on the unit sphere; labels [N] int32 in [0, C)."""
  inputs: np.ndarray
  labels: np.ndarray


def random_associations(num_items: int, in_features: int, num_classes: int,
                        seed: int) -> Associations:
  """N unit-norm Gaussian inputs with uniformly random labels."""
  num_items = _checks.integer(num_items, "num_items")
  in_features = _checks.integer(in_features, "in_features")
  num_classes = _checks.integer(num_classes, "num_classes")
  rng = np.random.default_rng(seed)
  inputs = rng.standard_normal((num_items, in_features)).astype(np.float32)
  inputs /= np.linalg.norm(inputs, axis=1, keepdims=True)
  labels = rng.integers(0, num_classes, num_items).astype(np.int32)
  return Associations(inputs, labels)


def batches(data: Associations, batch_size: int, seed: int, start_step: int = 0):
  """An endless stream of batches (epochs of reshuffled items), from `start_step` on."""
  n = len(data.labels)
  per_epoch = max(n // batch_size, 1)
  step = start_step
  while True:
    epoch, index = divmod(step, per_epoch)
    order = np.random.default_rng((seed, epoch)).permutation(n)
    take = order[index * batch_size:(index + 1) * batch_size]
    yield data.inputs[take], data.labels[take]
    step += 1
