"""Running a recurrent cell over a padded batch of sequences.

`run_cell` is `nnx.RNN` made lean for training: one `jax.lax.scan` over time,
optionally rematerialised (`remat=True` keeps only the carry of each step
for the backward pass and recomputes the rest, which is faster on a CPU,
where the step's intermediates would otherwise be written out and copied),
and optionally collecting a function of every step's carry (for plots).

With `hoist=True` and a cell that exposes its linear layers
(`hoisted_linears()` and `step_with_deltas`, as `NTMCell` does), the backward
pass is hand-scheduled: the forward scan keeps each step's carry and the
inputs and outputs of the linear layers, a reverse scan recomputes each step
(taking the layers' outputs from the forward scan instead of doing the
products again) and takes the gradients of the carry and of the layers'
outputs only, and the layers' weight gradients are then one large matrix
product each over all (time, batch) rows, instead of T small products
accumulated inside the loop.

Shape legend: B batch, T time, I input features, O output features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from memjax import _checks


def _promote_carry(cell: nnx.RNNCellBase, carry: Any, inputs: jax.Array) -> Any:
  """A half-precision carry cast to the dtypes the cell returns (once, before the loop).

  A bfloat16 carry given to a cell with float32 parameters comes back float32
  from the first step, and a scan needs one carry type throughout.
  """
  half = lambda x: jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32
  if not any(half(x) for x in jax.tree.leaves(carry)):
    return carry  # the common case: no extra trace of a step
  out = jax.eval_shape(lambda c, x: cell(c, x)[0], carry, inputs[:, 0])
  return jax.tree.map(lambda c, o: c.astype(o.dtype) if c.dtype != o.dtype else c, carry, out)


def run_cell(cell: nnx.RNNCellBase, inputs: jax.Array, *, initial_carry: Any = None,
             remat: bool = False, collect: Callable[[Any], Any] | None = None,
             unroll: int = 1, hoist: bool = False,
             steps: jax.Array | None = None) -> tuple[Any, jax.Array, Any]:
  """Runs `cell` over the time axis of `inputs`.

  Args:
    cell: a cell with `initialize_carry` and `__call__(carry, x) -> (carry, y)`.
    inputs: [B, T, I] batch-major inputs.
    initial_carry: the starting carry; default `cell.initialize_carry((B, I))`.
      A half-precision carry that the cell's parameters would promote (bfloat16
      with float32 weights) is cast to the dtypes the cell returns.
    remat: recompute each step's intermediates in the backward pass instead
      of storing them.
    collect: a function of each step's new carry whose results are stacked
      over time (leading axis T), e.g. `lambda c: c.read_weights`.
    unroll: steps per iteration of the underlying loop.
    hoist: take the linear layers' weight gradients out of the time loop
      (cells with `hoisted_linears` and `step_with_deltas` only; ignored when
      `collect` is given or the cell lacks them). Same values and gradients
      up to float rounding; each step is recomputed in the backward pass as
      with `remat`, except the linear layers' products, whose outputs the
      forward pass keeps (NTM training 1.04-1.14x faster, side by side).
    steps: with `hoist`, an int32 scalar (may be traced): run only the first
      `steps` time steps, in both passes; the outputs after them are zeros
      and the final carry is the carry after `steps` steps. A training loss
      that scores no output after `steps` gets exactly the same value and
      gradients, for less work when a padded batch is shorter than T.

  Returns:
    (final carry, [B, T, O] outputs, the collected values or None).
  """
  inputs = _checks.as_array(inputs, "inputs")
  if inputs.ndim != 3:
    raise ValueError(f"inputs must have rank 3 [B, T, I]; got shape {tuple(inputs.shape)}")
  unroll = _checks.integer(unroll, "unroll")
  if steps is not None:
    if isinstance(steps, (bool, int, float, np.bool_, np.number)):
      steps = _checks.integer(steps, "steps", 0, inputs.shape[1], "T, the time steps of inputs")
    else:  # an array (maybe traced): only its dtype and shape can be checked
      steps = _checks.as_array(steps, "steps")
      _checks.check_integer(steps, "steps")
      _checks.check_scalar(steps, "steps")
  carry = initial_carry
  if carry is None:
    carry = cell.initialize_carry((inputs.shape[0], inputs.shape[2]))
  carry = _promote_carry(cell, carry, inputs)

  if hoist and collect is None and hasattr(cell, "step_with_deltas"):
    xs = jnp.swapaxes(inputs, 0, 1)
    steps = jnp.asarray(xs.shape[0] if steps is None else steps, jnp.int32)
    carry, ys = _hoisted_scan(cell, carry, xs, steps)
    return carry, jnp.swapaxes(ys, 0, 1), None
  if steps is not None:
    raise ValueError("steps needs hoist=True, no collect, and a cell with step_with_deltas")

  def step(c, x):
    c, y = cell(c, x)
    return c, (y, collect(c) if collect is not None else None)

  if remat:
    step = jax.checkpoint(step, policy=jax.checkpoint_policies.nothing_saveable)
  carry, (ys, collected) = jax.lax.scan(step, carry, jnp.swapaxes(inputs, 0, 1),
                                        unroll=unroll)
  return carry, jnp.swapaxes(ys, 0, 1), collected


def _hoisted_scan(cell: nnx.RNNCellBase, carry: Any, xs: jax.Array,
                  steps: jax.Array) -> tuple[Any, jax.Array]:
  """`cell` over the first `steps` of time-major `xs` [T, B, I], with a hand-scheduled backward."""
  graphdef, params = nnx.split(cell)
  length = xs.shape[0]

  def forward(params, carry, xs, steps):
    cell = nnx.merge(graphdef, params)
    layers = cell.hoisted_linears()

    def recorded_step(c, x):
      # The step, keeping the linear layers' outputs: the backward pass's recomputation
      # of the step takes them from the buffers instead of doing the products again.
      outs = [None] * len(layers)

      def dense(i, v):
        outs[i] = layers[i](v)
        return outs[i]

      new, y, layer_inputs = cell.step_with_deltas(c, x, None, dense)
      return new, y, layer_inputs, tuple(outs)

    # Shapes of one step's outputs, for the buffers the loop writes into.
    shapes = jax.eval_shape(recorded_step, carry, xs[0])
    buffers = jax.tree.map(lambda a: jnp.zeros((length, *a.shape), a.dtype),
                           (shapes[1], carry, shapes[2], shapes[3]))

    def body(t, state):
      c, bufs = state
      new, y, layer_inputs, outs = recorded_step(c, xs[t])
      bufs = jax.tree.map(lambda buf, v: buf.at[t].set(v), bufs, (y, c, layer_inputs, outs))
      return new, bufs

    final, (ys, carries, layer_inputs, outs) = jax.lax.fori_loop(0, steps, body,
                                                                 (carry, buffers))
    return (final, ys), (params, carries, xs, layer_inputs, outs, steps)

  def backward(residuals, cotangents):
    params, carries, xs, layer_inputs, outs, steps = residuals
    d_final, d_ys = cotangents
    cell = nnx.merge(graphdef, params)
    layers = cell.hoisted_linears()
    # Transposed kernels, made once: x-gradients inside the loop become plain products.
    kernels_t = jax.lax.optimization_barrier([layer.kernel[...].T for layer in layers])

    d_deltas = tuple(jnp.zeros((length, xs.shape[1], layer.out_features), d_ys.dtype)
                     for layer in layers)

    def body(i, state):
      d_carry, d_xs, d_deltas = state
      t = steps - 1 - i
      c = jax.tree.map(lambda buf: buf[t], carries)
      zeros = tuple(d[0] for d in d_deltas)  # any [B, out] array of zeros' shape
      zeros = tuple(jnp.zeros_like(z) for z in zeros)
      dense = lambda j, v: _recorded_dense(v, outs[j][t], kernels_t[j])
      _, vjp = jax.vjp(lambda c, x, deltas: cell.step_with_deltas(c, x, deltas, dense)[:2],
                       c, xs[t], zeros)
      d_prev, d_x, d_step = vjp((d_carry, d_ys[t]))
      d_xs = d_xs.at[t].set(d_x)
      d_deltas = tuple(d.at[t].set(v) for d, v in zip(d_deltas, d_step))
      return d_prev, d_xs, d_deltas

    d_carry, d_xs, d_deltas = jax.lax.fori_loop(0, steps, body,
                                                (d_final, jnp.zeros_like(xs), d_deltas))
    grad_cell = nnx.merge(graphdef, jax.tree.map(jnp.zeros_like, params))
    for layer, x_in, d_out in zip(grad_cell.hoisted_linears(), layer_inputs, d_deltas):
      layer.kernel.set_value(jnp.einsum("tbi,tbo->io", x_in, d_out))
      if layer.bias is not None:
        layer.bias.set_value(jnp.sum(d_out, axis=(0, 1)))
    return nnx.split(grad_cell)[1], d_carry, d_xs, None

  @jax.custom_vjp
  def run(params, carry, xs, steps):
    return forward(params, carry, xs, steps)[0]

  run.defvjp(forward, backward)
  return run(params, carry, xs, steps)


@jax.custom_vjp
def _recorded_dense(x: jax.Array, y: jax.Array, kernel_t: jax.Array) -> jax.Array:
  """A linear layer's output `y` on `x`, recorded by the forward loop, as a function of x.

  Used inside `_hoisted_scan`'s reverse loop: the value is the recorded `y`
  (no product), the backward gives x's gradient `d_y @ kernel_t` only (the
  weight gradients are taken after the loop; the zeros returned for `y` and
  `kernel_t` are never used).
  """
  del x, kernel_t
  return y


def _recorded_fwd(x, y, kernel_t):
  del x
  return y, kernel_t


def _recorded_bwd(kernel_t, d_y):
  return d_y @ kernel_t, jnp.zeros_like(d_y), jnp.zeros_like(kernel_t)


_recorded_dense.defvjp(_recorded_fwd, _recorded_bwd)
