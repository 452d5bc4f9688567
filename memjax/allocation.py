"""Dynamic memory allocation of the DNC (Graves et al. 2016, Methods).

Pure functions, written for one example; batch them with `jax.vmap`.

Shape legend: N memory slots, R read heads.

References:
  Graves et al. Hybrid computing using a neural network with dynamic external
  memory. Nature 538, 471-476, 2016. Methods, "Dynamic memory allocation".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from memjax import _checks

# Usage is mapped to eps + (1 - eps) * u before allocation so that a fully
# used memory still has a well-defined (tiny) allocation gradient.
USAGE_EPSILON = 1e-6


def retention(free_gates: jax.typing.ArrayLike, read_weights: jax.typing.ArrayLike) -> jax.Array:
  """Memory retention vector psi = prod_i (1 - f_i w^r_i).

  Args:
    free_gates: [R] free gates in [0, 1], one per read head.
    read_weights: [R, N] read weightings of the previous step.

  Returns:
    [N] retention in [0, 1]: how much of each slot the read heads keep.
  """
  free_gates = _checks.floating(free_gates, "free_gates", 1, "[R]")
  read_weights = _checks.floating(read_weights, "read_weights", 2, "[R, N]")
  _checks.check_dim(read_weights, 0, free_gates.shape[0], "read_weights",
                    "the read-head count R of free_gates")
  dtype = _checks.compute_dtype(free_gates.dtype, read_weights.dtype)
  psi = jnp.prod(1 - free_gates.astype(dtype)[:, None] * read_weights.astype(dtype), axis=0)
  return psi.astype(jnp.result_type(free_gates, read_weights))


def update_usage(usage: jax.typing.ArrayLike, write_weights: jax.typing.ArrayLike,
                 free_gates: jax.typing.ArrayLike,
                 read_weights: jax.typing.ArrayLike) -> jax.Array:
  """Usage vector update (DNC Methods, eq. for u_t).

  u_t = (u_{t-1} + w^w_{t-1} - u_{t-1} * w^w_{t-1}) * psi_t,
  psi_t = prod_i (1 - f_t^i w^{r,i}_{t-1}).

  Args:
    usage: [N] usage of the previous step, in [0, 1].
    write_weights: [N] write weighting of the previous step.
    free_gates: [R] free gates of this step.
    read_weights: [R, N] read weightings of the previous step.

  Returns:
    [N] new usage, in [0, 1].
  """
  usage = _checks.floating(usage, "usage", 1, "[N]")
  write_weights = _checks.floating(write_weights, "write_weights", 1, "[N]")
  n = usage.shape[0]
  _checks.check_dim(write_weights, 0, n, "write_weights", "the slot count N of usage")
  psi = retention(free_gates, read_weights)
  _checks.check_dim(read_weights, 1, n, "read_weights", "the slot count N of usage")
  dtype = _checks.compute_dtype(usage.dtype, write_weights.dtype)
  u, ww = usage.astype(dtype), write_weights.astype(dtype)
  return ((u + ww - u * ww) * psi.astype(dtype)).astype(usage.dtype)


def allocation_weights(usage: jax.typing.ArrayLike) -> jax.Array:
  """Allocation weighting: prefer the least-used slots (DNC Methods, eq. for a_t).

  With phi the slot indices sorted by ascending usage,
  a[phi_j] = (1 - u[phi_j]) prod_{i<j} u[phi_i]. The sort order is treated as
  a constant: gradients flow through the usage values only (as in the paper).
  Usage is first mapped to eps + (1 - eps) u, with eps = `USAGE_EPSILON`.

  Args:
    usage: [N] usage in [0, 1].

  Returns:
    [N] allocation weighting: non-negative, sums to at most 1.
  """
  usage = _checks.floating(usage, "usage", 1, "[N]")
  dtype = _checks.compute_dtype(usage.dtype)
  u = USAGE_EPSILON + (1 - USAGE_EPSILON) * usage.astype(dtype)
  order = jax.lax.stop_gradient(jnp.argsort(u))
  sorted_u = u[order]
  # Exclusive cumulative product: prod_{i<j} sorted_u[i].
  before = jnp.concatenate([jnp.ones((1,), dtype), jax.lax.cumprod(sorted_u)[:-1]])
  sorted_alloc = (1 - sorted_u) * before
  alloc = jnp.zeros_like(sorted_alloc).at[order].set(sorted_alloc)
  return alloc.astype(usage.dtype)


def write_weights(content_w: jax.typing.ArrayLike, allocation_w: jax.typing.ArrayLike,
                  write_gate: jax.typing.ArrayLike,
                  allocation_gate: jax.typing.ArrayLike) -> jax.Array:
  """Write weighting from content and allocation (DNC Methods, eq. for w^w_t).

  w^w = g^w (g^a a + (1 - g^a) c).

  Args:
    content_w: [N] write content weighting c.
    allocation_w: [N] allocation weighting a.
    write_gate: scalar g^w in [0, 1]: whether to write at all.
    allocation_gate: scalar g^a in [0, 1]: allocation versus content.

  Returns:
    [N] write weighting, summing to at most 1.
  """
  content_w = _checks.floating(content_w, "content_w", 1, "[N]")
  allocation_w = _checks.floating(allocation_w, "allocation_w", 1, "[N]")
  _checks.check_dim(allocation_w, 0, content_w.shape[0], "allocation_w",
                    "the slot count N of content_w")
  write_gate = _checks.scalar(write_gate, "write_gate")
  allocation_gate = _checks.scalar(allocation_gate, "allocation_gate")
  out_dtype = jnp.result_type(content_w, allocation_w)
  mixed = allocation_gate * allocation_w + (1 - allocation_gate) * content_w
  return (write_gate * mixed).astype(out_dtype)
