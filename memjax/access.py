"""Reading and erase/add writing of a memory matrix (NTM, Graves et al. 2014, 3.1-3.2).

Pure functions, written for one example; batch them with `jax.vmap`.

Shape legend: N memory slots, W word size, R read heads, H write heads.

References:
  Graves, Wayne, Danihelka. Neural Turing Machines. arXiv:1410.5401, 2014.
  Graves et al. Hybrid computing using a neural network with dynamic external
  memory. Nature 538, 2016 (same write, Methods "Reading and writing").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from memjax import _checks


def read(memory: jax.typing.ArrayLike, weights: jax.typing.ArrayLike) -> jax.Array:
  """Read vectors: weighted sums of memory rows (NTM eq. 2).

  r = sum_i w[i] M[i].

  Args:
    memory: [N, W] memory.
    weights: [N] one read weighting, or [R, N] one per read head.

  Returns:
    [W] or [R, W] read vectors.
  """
  memory = _checks.floating(memory, "memory", 2, "[N, W]")
  weights = _checks.floating(weights, "weights", (1, 2), "[N] or [R, N]")
  _checks.check_dim(weights, -1, memory.shape[0], "weights", "the slot count N of memory")
  out_dtype = jnp.result_type(memory, weights)
  dtype = _checks.compute_dtype(out_dtype)
  return (weights.astype(dtype) @ memory.astype(dtype)).astype(out_dtype)


def write(memory: jax.typing.ArrayLike, weights: jax.typing.ArrayLike,
          erase: jax.typing.ArrayLike, add: jax.typing.ArrayLike) -> jax.Array:
  """Erase then add (NTM eqs. 3-4).

  M' = M * (1 - w e^T) + w a^T. With H write heads ([H, N], [H, W], [H, W]) all
  erasures apply first, multiplied together (their order does not matter),
  then all additions: M' = M * prod_h (1 - w_h e_h^T) + sum_h w_h a_h^T.

  Args:
    memory: [N, W] memory.
    weights: [N] write weighting, or [H, N] for H heads.
    erase: [W] (or [H, W]) erase vector with entries in [0, 1].
    add: [W] (or [H, W]) add vector.

  Returns:
    [N, W] new memory.
  """
  memory = _checks.floating(memory, "memory", 2, "[N, W]")
  weights = _checks.floating(weights, "weights", (1, 2), "[N] or [H, N]")
  erase = _checks.floating(erase, "erase", weights.ndim, "matching weights: [W] or [H, W]")
  add = _checks.floating(add, "add", weights.ndim, "matching weights: [W] or [H, W]")
  n, w = memory.shape
  _checks.check_dim(weights, -1, n, "weights", "the slot count N of memory")
  _checks.check_dim(erase, -1, w, "erase", "the word size W of memory")
  _checks.check_dim(add, -1, w, "add", "the word size W of memory")
  if weights.ndim == 2:
    _checks.check_dim(erase, 0, weights.shape[0], "erase", "the head count H of weights")
    _checks.check_dim(add, 0, weights.shape[0], "add", "the head count H of weights")
  else:
    weights, erase, add = weights[None], erase[None], add[None]
  dtype = _checks.compute_dtype(memory.dtype, weights.dtype, erase.dtype, add.dtype)
  m, ww, e, a = (x.astype(dtype) for x in (memory, weights, erase, add))
  keep = jnp.prod(1 - ww[:, :, None] * e[:, None, :], axis=0)  # [N, W]
  return (m * keep + ww.T @ a).astype(memory.dtype)
