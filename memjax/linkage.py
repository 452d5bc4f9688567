"""Temporal memory linkage of the DNC (Graves et al. 2016, Methods).

The link matrix L[i, j] records how strongly slot i was written right after
slot j; read heads follow it forwards or backwards in time.

Pure functions, written for one example; batch them with `jax.vmap`.

Shape legend: N memory slots, R read heads.

References:
  Graves et al. Hybrid computing using a neural network with dynamic external
  memory. Nature 538, 471-476, 2016. Methods, "Temporal memory linkage".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from memjax import _checks


def update_precedence(precedence: jax.typing.ArrayLike,
                      write_weights: jax.typing.ArrayLike) -> jax.Array:
  """Precedence weighting p_t = (1 - sum_i w^w_t[i]) p_{t-1} + w^w_t.

  p[i] is the degree to which slot i was the last one written.

  Args:
    precedence: [N] precedence of the previous step (p_0 = 0).
    write_weights: [N] write weighting of this step.

  Returns:
    [N] new precedence, summing to at most 1.
  """
  precedence = _checks.floating(precedence, "precedence", 1, "[N]")
  write_weights = _checks.floating(write_weights, "write_weights", 1, "[N]")
  _checks.check_dim(write_weights, 0, precedence.shape[0], "write_weights",
                    "the slot count N of precedence")
  out_dtype = jnp.result_type(precedence, write_weights)
  dtype = _checks.compute_dtype(out_dtype)
  p, ww = precedence.astype(dtype), write_weights.astype(dtype)
  return ((1 - jnp.sum(ww)) * p + ww).astype(out_dtype)


def update_link(link: jax.typing.ArrayLike, precedence: jax.typing.ArrayLike,
                write_weights: jax.typing.ArrayLike) -> jax.Array:
  """Temporal link matrix update.

  L_t[i, j] = (1 - w[i] - w[j]) L_{t-1}[i, j] + w[i] p_{t-1}[j], and
  L_t[i, i] = 0, with w the write weighting of this step and p the precedence
  of the previous step.

  Args:
    link: [N, N] link matrix of the previous step.
    precedence: [N] precedence of the previous step.
    write_weights: [N] write weighting of this step.

  Returns:
    [N, N] new link matrix with a zero diagonal.
  """
  link = _checks.floating(link, "link", 2, "[N, N]")
  n = link.shape[0]
  _checks.check_dim(link, 1, n, "link", "a square [N, N] matrix")
  precedence = _checks.floating(precedence, "precedence", 1, "[N]")
  write_weights = _checks.floating(write_weights, "write_weights", 1, "[N]")
  _checks.check_dim(precedence, 0, n, "precedence", "the slot count N of link")
  _checks.check_dim(write_weights, 0, n, "write_weights", "the slot count N of link")
  dtype = _checks.compute_dtype(link.dtype, precedence.dtype, write_weights.dtype)
  lnk, p, w = link.astype(dtype), precedence.astype(dtype), write_weights.astype(dtype)
  new = (1 - w[:, None] - w[None, :]) * lnk + w[:, None] * p[None, :]
  return (new * (1 - jnp.eye(n, dtype=dtype))).astype(link.dtype)


def directional_weights(link: jax.typing.ArrayLike,
                        read_weights: jax.typing.ArrayLike) -> tuple[jax.Array, jax.Array]:
  """Forward and backward weightings: f = L w^r, b = L^T w^r.

  Args:
    link: [N, N] link matrix.
    read_weights: [N] read weighting of the previous step, or [R, N].

  Returns:
    (forward, backward), each shaped like `read_weights`.
  """
  link = _checks.floating(link, "link", 2, "[N, N]")
  read_weights = _checks.floating(read_weights, "read_weights", (1, 2), "[N] or [R, N]")
  n = link.shape[0]
  _checks.check_dim(link, 1, n, "link", "a square [N, N] matrix")
  _checks.check_dim(read_weights, -1, n, "read_weights", "the slot count N of link")
  out_dtype = jnp.result_type(link, read_weights)
  dtype = _checks.compute_dtype(out_dtype)
  lnk, w = link.astype(dtype), read_weights.astype(dtype)
  forward = w @ lnk.T
  backward = w @ lnk
  return forward.astype(out_dtype), backward.astype(out_dtype)


def read_weights(modes: jax.typing.ArrayLike, backward: jax.typing.ArrayLike,
                 content: jax.typing.ArrayLike, forward: jax.typing.ArrayLike) -> jax.Array:
  """Read weighting as a mixture of read modes.

  w^r = pi[0] b + pi[1] c + pi[2] f, with pi a distribution over the modes
  (backward, content, forward), as ordered in the paper.

  Args:
    modes: [3] read-mode distribution pi.
    backward: [N] backward weighting b.
    content: [N] read content weighting c.
    forward: [N] forward weighting f.

  Returns:
    [N] read weighting.
  """
  modes = _checks.floating(modes, "modes", 1, "[3]")
  _checks.check_dim(modes, 0, 3, "modes", "the three read modes (backward, content, forward)")
  backward = _checks.floating(backward, "backward", 1, "[N]")
  content = _checks.floating(content, "content", 1, "[N]")
  forward = _checks.floating(forward, "forward", 1, "[N]")
  n = content.shape[0]
  _checks.check_dim(backward, 0, n, "backward", "the slot count N of content")
  _checks.check_dim(forward, 0, n, "forward", "the slot count N of content")
  out_dtype = jnp.result_type(backward, content, forward)
  mixed = modes[0] * backward + modes[1] * content + modes[2] * forward
  return mixed.astype(out_dtype)
