"""Running a recurrent cell over a padded batch of sequences.

`run_cell` is `nnx.RNN` made lean for training: one `jax.lax.scan` over time,
optionally rematerialised (`remat=True` keeps only the carry of each step
for the backward pass and recomputes the rest, which is faster on a CPU,
where the step's intermediates would otherwise be written out and copied),
and optionally collecting a function of every step's carry (for plots).

Shape legend: B batch, T time, I input features, O output features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def run_cell(cell: nnx.RNNCellBase, inputs: jax.Array, *, initial_carry: Any = None,
             remat: bool = False, collect: Callable[[Any], Any] | None = None,
             unroll: int = 1) -> tuple[Any, jax.Array, Any]:
  """Runs `cell` over the time axis of `inputs`.

  Args:
    cell: a cell with `initialize_carry` and `__call__(carry, x) -> (carry, y)`.
    inputs: [B, T, I] batch-major inputs.
    initial_carry: the starting carry; default `cell.initialize_carry((B, I))`.
    remat: recompute each step's intermediates in the backward pass instead
      of storing them.
    collect: a function of each step's new carry whose results are stacked
      over time (leading axis T), e.g. `lambda c: c.read_weights`.
    unroll: steps per iteration of the underlying loop.

  Returns:
    (final carry, [B, T, O] outputs, the collected values or None).
  """
  if inputs.ndim != 3:
    raise ValueError(f"inputs must have rank 3 [B, T, I]; got shape {tuple(inputs.shape)}")
  carry = initial_carry
  if carry is None:
    carry = cell.initialize_carry((inputs.shape[0], inputs.shape[2]))

  def step(c, x):
    c, y = cell(c, x)
    return c, (y, collect(c) if collect is not None else None)

  if remat:
    step = jax.checkpoint(step, policy=jax.checkpoint_policies.nothing_saveable)
  carry, (ys, collected) = jax.lax.scan(step, carry, jnp.swapaxes(inputs, 0, 1),
                                        unroll=unroll)
  return carry, jnp.swapaxes(ys, 0, 1), collected
