"""Shared plumbing for the recurrent cells."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from memjax import _checks


def with_one_batch_axis(step: Callable[[Any, jax.Array], tuple[Any, jax.Array]], carry: Any,
                        inputs: jax.Array) -> tuple[Any, jax.Array]:
  """Runs a cell step written for inputs [B, I] on inputs of any batch shape [..., I].

  The batch axes of `inputs` and of every leaf of `carry` are flattened into
  one, `step` runs, and the results get the original batch axes back (an
  unbatched step, inputs [I], runs as a batch of one).

  Args:
    step: `(carry, inputs [B, I]) -> (carry, outputs [B, O])`.
    carry: the state, every leaf with the batch axes of `inputs` in front.
    inputs: [..., I].

  Returns:
    (the new carry, outputs [..., O]).
  """
  batch = inputs.shape[:-1]
  flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[len(batch):]), carry)
  new, y = step(flat, inputs.reshape(-1, inputs.shape[-1]))
  return (jax.tree.map(lambda x: x.reshape(*batch, *x.shape[1:]), new),
          y.reshape(*batch, -1))


def check_inputs(inputs: jax.Array, in_features: int, carry: Any) -> None:
  """Raises a ValueError naming `inputs` unless it is [..., I] with the carry's batch shape."""
  shape = tuple(inputs.shape)
  if inputs.ndim < 1 or shape[-1] != in_features:
    raise ValueError(f"inputs must have in_features={in_features} on the last axis; got shape "
                     f"{shape}")
  leaves = jax.tree.leaves(carry)
  if inputs.ndim > 1 and leaves:
    batch = shape[:-1]
    if tuple(leaves[0].shape[:len(batch)]) != batch:
      raise ValueError(f"inputs have batch shape {batch} but the carry has leaves of shape "
                       f"{tuple(leaves[0].shape)} (batch axes in front; from "
                       f"initialize_carry(({', '.join(map(str, batch))}, {in_features})))")


def check_clip_value(clip_value: float | None) -> None:
  """Raises ValueError unless a cell's `clip_value` is None or a finite number > 0."""
  if clip_value is not None:
    _checks.number(clip_value, "clip_value", 0, open_low=True)
