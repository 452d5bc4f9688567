"""Content and location addressing of a memory matrix (NTM, Graves et al. 2014).

Pure functions, written for one example; batch them with `jax.vmap`.

Shape legend: N memory slots, W word size, S shift-kernel size (odd).

The pipeline of the NTM paper, section 3.3, is

    content_weights (eq. 5-6) -> interpolate (eq. 7) -> shift (eq. 8)
      -> sharpen (eq. 9)

and `ntm_weights` runs all four.

References:
  Graves, Wayne, Danihelka. Neural Turing Machines. arXiv:1410.5401, 2014.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from memjax import _checks

# Added under the square root of a squared norm: keeps the norm (and its
# gradient) finite for an all-zero row or key.
NORM_EPSILON = 1e-8
# Added to a weighting before its logarithm in `sharpen`.
SHARPEN_EPSILON = 1e-8


def _norm(x: jax.Array, axis: int = -1) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=axis) + NORM_EPSILON)


def cosine_similarity(memory: jax.typing.ArrayLike, key: jax.typing.ArrayLike) -> jax.Array:
  """Cosine similarity of `key` with every memory row (NTM eq. 6).

  K[u, v] = u . v / (|u| |v|); norms carry a small epsilon, so a zero key or a
  zero row has similarity 0 and finite gradients.

  Args:
    memory: [N, W] memory matrix.
    key: [W] lookup key.

  Returns:
    [N] similarities in [-1, 1], in the dtype of `memory` and `key`.
  """
  memory = _checks.floating(memory, "memory", 2, "[N, W]")
  key = _checks.floating(key, "key", 1, "[W]")
  _checks.check_dim(key, 0, memory.shape[1], "key", "the word size W of memory")
  out_dtype = jnp.result_type(memory, key)
  dtype = _checks.compute_dtype(out_dtype)
  m, k = memory.astype(dtype), key.astype(dtype)
  sim = (m @ k) / (_norm(m) * _norm(k))
  return sim.astype(out_dtype)


def content_weights(memory: jax.typing.ArrayLike, key: jax.typing.ArrayLike,
                    strength: jax.typing.ArrayLike) -> jax.Array:
  """Content-based weighting: softmax over slots of strength x similarity (NTM eq. 5).

  Args:
    memory: [N, W] memory matrix.
    key: [W] lookup key.
    strength: scalar key strength beta >= 0 (a module usually passes
      `1 + softplus(x)`); larger values focus the weighting.

  Returns:
    [N] weighting: non-negative, sums to 1.
  """
  strength = _checks.scalar(strength, "strength")
  sim = cosine_similarity(memory, key)
  dtype = _checks.compute_dtype(sim.dtype)
  logits = strength.astype(dtype) * sim.astype(dtype)
  return jax.nn.softmax(logits).astype(sim.dtype)


def interpolate(content_w: jax.typing.ArrayLike, prev_w: jax.typing.ArrayLike,
                gate: jax.typing.ArrayLike) -> jax.Array:
  """Interpolation with the previous weighting (NTM eq. 7).

  w_g = g w_c + (1 - g) w_{t-1}.

  Args:
    content_w: [N] content weighting.
    prev_w: [N] weighting of the previous step.
    gate: scalar interpolation gate g in [0, 1].

  Returns:
    [N] gated weighting.
  """
  content_w = _checks.floating(content_w, "content_w", 1, "[N]")
  prev_w = _checks.floating(prev_w, "prev_w", 1, "[N]")
  _checks.check_dim(prev_w, 0, content_w.shape[0], "prev_w", "the slot count N of content_w")
  gate = _checks.scalar(gate, "gate")
  out_dtype = jnp.result_type(content_w, prev_w)
  return (gate * content_w + (1 - gate) * prev_w).astype(out_dtype)


def shift(w: jax.typing.ArrayLike, shift_w: jax.typing.ArrayLike) -> jax.Array:
  """Rotation by a circular convolution with a shift weighting (NTM eq. 8).

  w~[i] = sum_j w[j] s[(i - j) mod N], with the shift kernel centred:
  `shift_w[S // 2]` keeps weight in place and `shift_w[S // 2 + d]` moves it
  d slots forward (slot i to slot i + d mod N).

  Args:
    w: [N] weighting.
    shift_w: [S] distribution over the shifts -(S // 2), ..., S // 2; S odd.

  Returns:
    [N] shifted weighting.
  """
  w = _checks.floating(w, "w", 1, "[N]")
  shift_w = _checks.floating(shift_w, "shift_w", 1, "[S]")
  size = shift_w.shape[0]
  if size % 2 != 1:
    raise ValueError(f"shift_w must have an odd length S (centred kernel); got S={size}")
  out_dtype = jnp.result_type(w, shift_w)
  dtype = _checks.compute_dtype(out_dtype)
  half = size // 2
  w = w.astype(dtype)
  rolled = jnp.stack([jnp.roll(w, offset) for offset in range(-half, half + 1)])  # [S, N]
  return (shift_w.astype(dtype) @ rolled).astype(out_dtype)


def sharpen(w: jax.typing.ArrayLike, gamma: jax.typing.ArrayLike) -> jax.Array:
  """Sharpening: w^gamma renormalised (NTM eq. 9).

  Computed as softmax(gamma * log(w + eps)), which equals
  w^gamma / sum(w^gamma) up to eps and cannot underflow to 0/0 for large gamma
  or a weighting of zeros.

  Args:
    w: [N] non-negative weighting.
    gamma: scalar sharpening exponent >= 1.

  Returns:
    [N] sharpened weighting: non-negative, sums to 1.
  """
  w = _checks.floating(w, "w", 1, "[N]")
  gamma = _checks.scalar(gamma, "gamma")
  dtype = _checks.compute_dtype(w.dtype)
  logits = gamma.astype(dtype) * jnp.log(w.astype(dtype) + SHARPEN_EPSILON)
  return jax.nn.softmax(logits).astype(w.dtype)


def ntm_weights(memory: jax.typing.ArrayLike, prev_w: jax.typing.ArrayLike,
                key: jax.typing.ArrayLike, strength: jax.typing.ArrayLike,
                gate: jax.typing.ArrayLike, shift_w: jax.typing.ArrayLike,
                gamma: jax.typing.ArrayLike) -> jax.Array:
  """One NTM head's addressing, eqs. 5-9 in order.

  Args:
    memory: [N, W] memory.
    prev_w: [N] the head's weighting at the previous step.
    key: [W] key; strength: scalar; gate: scalar in [0, 1];
    shift_w: [S] shift distribution; gamma: scalar >= 1.

  Returns:
    [N] the head's new weighting.
  """
  w_c = content_weights(memory, key, strength)
  w_g = interpolate(w_c, prev_w, gate)
  return sharpen(shift(w_g, shift_w), gamma)
