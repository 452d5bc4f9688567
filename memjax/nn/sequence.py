"""Running a recurrent cell over a padded batch of sequences.

`run_cell` is `nnx.RNN` made lean for training: one `jax.lax.scan` over time,
optionally rematerialised (`remat=True` keeps only the carry of each step
for the backward pass and recomputes the rest, which is faster on a CPU,
where the step's intermediates would otherwise be written out and copied),
and optionally collecting a function of every step's carry (for plots).

With `hoist=True` and a cell that exposes its linear layers
(`hoisted_linears()` and `step_with_deltas`, as `NTMCell` does), the backward
pass is hand-scheduled: the forward scan keeps each step's carry and the
inputs of the linear layers, a reverse scan recomputes each step and takes
the gradients of the carry and of the layers' outputs only, and the layers'
weight gradients are then one large matrix product each over all (time,
batch) rows, instead of T small products accumulated inside the loop.

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
             unroll: int = 1, hoist: bool = False) -> tuple[Any, jax.Array, Any]:
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
    hoist: take the linear layers' weight gradients out of the time loop
      (cells with `hoisted_linears` and `step_with_deltas` only; ignored when
      `collect` is given or the cell lacks them). Same values and gradients
      up to float rounding; each step is recomputed in the backward pass as
      with `remat`.

  Returns:
    (final carry, [B, T, O] outputs, the collected values or None).
  """
  if inputs.ndim != 3:
    raise ValueError(f"inputs must have rank 3 [B, T, I]; got shape {tuple(inputs.shape)}")
  carry = initial_carry
  if carry is None:
    carry = cell.initialize_carry((inputs.shape[0], inputs.shape[2]))

  if hoist and collect is None and hasattr(cell, "step_with_deltas"):
    carry, ys = _hoisted_scan(cell, carry, jnp.swapaxes(inputs, 0, 1))
    return carry, jnp.swapaxes(ys, 0, 1), None

  def step(c, x):
    c, y = cell(c, x)
    return c, (y, collect(c) if collect is not None else None)

  if remat:
    step = jax.checkpoint(step, policy=jax.checkpoint_policies.nothing_saveable)
  carry, (ys, collected) = jax.lax.scan(step, carry, jnp.swapaxes(inputs, 0, 1),
                                        unroll=unroll)
  return carry, jnp.swapaxes(ys, 0, 1), collected


def _hoisted_scan(cell: nnx.RNNCellBase, carry: Any, xs: jax.Array) -> tuple[Any, jax.Array]:
  """`lax.scan` of `cell` over time-major `xs` [T, B, I] with a hand-scheduled backward."""
  graphdef, params = nnx.split(cell)

  def forward(params, carry, xs):
    cell = nnx.merge(graphdef, params)

    def step(c, x):
      new, y, layer_inputs = cell.step_with_deltas(c, x, None)
      return new, (y, c, layer_inputs)

    final, (ys, carries, layer_inputs) = jax.lax.scan(step, carry, xs)
    return (final, ys), (params, carries, xs, layer_inputs)

  def backward(residuals, cotangents):
    params, carries, xs, layer_inputs = residuals
    d_final, d_ys = cotangents
    cell = nnx.merge(graphdef, params)
    layers = cell.hoisted_linears()
    kernels = [layer.kernel[...] for layer in layers]
    # Transposed copies, made once: x-gradients inside the loop become plain products.
    kernels_t = jax.lax.optimization_barrier([k.T for k in kernels])
    biases = [None if layer.bias is None else layer.bias[...] for layer in layers]

    def dense(i, v):
      y = _dense_no_weight_grad(v, kernels[i], kernels_t[i])
      return y if biases[i] is None else y + biases[i]

    def step_back(d_carry, inp):
      c, x, d_y = inp
      zeros = tuple(jnp.zeros((x.shape[0], layer.out_features), d_y.dtype) for layer in layers)
      _, vjp = jax.vjp(lambda c, x, deltas: cell.step_with_deltas(c, x, deltas, dense)[:2],
                       c, x, zeros)
      d_prev, d_x, d_deltas = vjp((d_carry, d_y))
      return d_prev, (d_x, d_deltas)

    d_carry, (d_xs, d_deltas) = jax.lax.scan(step_back, d_final, (carries, xs, d_ys),
                                             reverse=True)
    grad_cell = nnx.merge(graphdef, jax.tree.map(jnp.zeros_like, params))
    for layer, x_in, d_out in zip(grad_cell.hoisted_linears(), layer_inputs, d_deltas):
      layer.kernel.set_value(jnp.einsum("tbi,tbo->io", x_in, d_out))
      if layer.bias is not None:
        layer.bias.set_value(jnp.sum(d_out, axis=(0, 1)))
    return nnx.split(grad_cell)[1], d_carry, d_xs

  @jax.custom_vjp
  def run(params, carry, xs):
    return forward(params, carry, xs)[0]

  run.defvjp(forward, backward)
  return run(params, carry, xs)


@jax.custom_vjp
def _dense_no_weight_grad(x: jax.Array, kernel: jax.Array, kernel_t: jax.Array) -> jax.Array:
  """x @ kernel whose backward gives x's gradient only, as a product with `kernel_t`.

  Used inside `_hoisted_scan`'s reverse loop, where the weight gradients are
  taken after the loop (the zeros returned for them are never used).
  """
  return x @ kernel


def _dense_fwd(x, kernel, kernel_t):
  return x @ kernel, (kernel, kernel_t)


def _dense_bwd(residuals, d_y):
  kernel, kernel_t = residuals
  return d_y @ kernel_t, jnp.zeros_like(kernel), jnp.zeros_like(kernel_t)


_dense_no_weight_grad.defvjp(_dense_fwd, _dense_bwd)
