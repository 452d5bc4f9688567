"""Shared plumbing for the recurrent cells."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax


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
