"""Argument checks shared by the pure layer.

Every check runs on static information (shape, rank, dtype), so it costs
nothing under `jax.jit` and sees the unbatched shapes under `jax.vmap`. Each
error names the argument, what was expected and what was given.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def as_array(x: jax.typing.ArrayLike, name: str) -> jax.Array:
  """Converts `x` to a JAX array, naming `name` if that is impossible."""
  if isinstance(x, jax.Array):
    return x
  try:
    return jnp.asarray(x)
  except TypeError as e:
    raise TypeError(f"{name} must be an array; got {type(x).__name__}") from e


def is_integer(value) -> bool:
  """True for a Python or NumPy integer; False for booleans, floats and arrays."""
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def integer(value, name: str, low: int | None = 1, high: int | None = None,
            what: str = "") -> int:
  """Returns `value` as a Python int, or raises a ValueError naming `name`.

  Python and NumPy integers are accepted (`np.int64(2)` is an integer; a shape
  element or a loop counter from NumPy often is one); booleans, floats and
  arrays are not. `low` and `high` bound it inclusively (None: unbounded);
  `what` is appended to the message, e.g. "the slot count N".
  """
  ok = is_integer(value)
  if ok:
    value = int(value)
    ok = (low is None or value >= low) and (high is None or value <= high)
  if not ok:
    if high is None:
      want = "an integer" if low is None else f"an integer >= {low}"
    else:
      want = f"an integer in [{low}, {high}]" if low is not None else f"an integer <= {high}"
    suffix = f" ({what})" if what else ""
    raise ValueError(f"{name} must be {want}{suffix}; got {value!r}")
  return value


def number(value, name: str, low: float | None = None, high: float | None = None, *,
           open_low: bool = False) -> float:
  """Returns `value` as a Python float, or raises a ValueError naming `name`.

  Python and NumPy reals are accepted, booleans and non-finite values are not.
  `low` and `high` bound it inclusively, or `low` exclusively with `open_low`
  (a learning rate must be > 0, a weight decay >= 0).
  """
  ok = (isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, (bool, np.bool_)) and bool(np.isfinite(value)))
  if ok:
    ok = ((low is None or (value > low if open_low else value >= low))
          and (high is None or value <= high))
  if not ok:
    parts = []
    if low is not None:
      parts.append(f"{'>' if open_low else '>='} {low:g}")
    if high is not None:
      parts.append(f"<= {high:g}")
    want = "a finite number" + (" " + " and ".join(parts) if parts else "")
    raise ValueError(f"{name} must be {want}; got {value!r}")
  return float(value)


def check_index_range(x: jax.Array, name: str, high: int, what: str, low: int = 0) -> None:
  """Raises a ValueError unless every value of `x` lies in [low, high).

  Only values that are known (not a tracer under `jax.jit`, `vmap` or `grad`)
  can be checked; traced values pass unchecked, and what the caller does with
  an out-of-range index there (clamp, drop, NaN) is its documented behaviour.
  `what` names `high`, e.g. "vocab_size".
  """
  if isinstance(x, jax.core.Tracer) or not x.size:
    return
  lo, hi = int(jnp.min(x)), int(jnp.max(x))
  if lo < low or hi >= high:
    raise ValueError(f"{name} must lie in [{low}, {what}={high}); got values from {lo} to {hi}")


def check_floating(x: jax.Array, name: str) -> None:
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must have a floating dtype (float32, bfloat16, ...); "
                    f"got {x.dtype}")


def check_integer(x: jax.Array, name: str) -> None:
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise TypeError(f"{name} must have an integer dtype; got {x.dtype}")


def check_rank(x: jax.Array, ranks: int | Sequence[int], name: str, legend: str) -> None:
  """Checks that `x.ndim` is one of `ranks`; `legend` spells the shape, e.g. '[N, W]'."""
  allowed = (ranks,) if isinstance(ranks, int) else tuple(ranks)
  if x.ndim not in allowed:
    want = " or ".join(str(r) for r in allowed)
    raise ValueError(f"{name} must have rank {want} {legend}; got rank {x.ndim} "
                     f"with shape {tuple(x.shape)}")


def check_dim(x: jax.Array, axis: int, size: int, name: str, what: str) -> None:
  """Checks `x.shape[axis] == size`; `what` says where `size` comes from."""
  if x.shape[axis] != size:
    raise ValueError(f"{name} must have size {size} on axis {axis} ({what}); got shape "
                     f"{tuple(x.shape)}")


def check_scalar(x: jax.Array, name: str) -> None:
  if x.ndim != 0:
    raise ValueError(f"{name} must be a scalar (shape ()); got shape {tuple(x.shape)}")


def floating(x: jax.typing.ArrayLike, name: str, ranks: int | Sequence[int],
             legend: str) -> jax.Array:
  """`as_array` + `check_floating` + `check_rank` in one call."""
  x = as_array(x, name)
  check_floating(x, name)
  check_rank(x, ranks, name, legend)
  return x


def scalar(x: jax.typing.ArrayLike, name: str) -> jax.Array:
  """A floating scalar; Python numbers are accepted."""
  if isinstance(x, (int, float)) and not isinstance(x, bool):
    return jnp.asarray(float(x))  # weakly typed: takes the dtype of the arrays it meets
  x = as_array(x, name)
  check_floating(x, name)
  check_scalar(x, name)
  return x


def compute_dtype(*dtypes) -> np.dtype:
  """The dtype to compute reductions, norms and softmaxes in.

  Half-precision inputs are computed in float32 and cast back by the caller;
  that keeps bfloat16 memories free of underflow in a softmax or a product.
  """
  dtype = jnp.result_type(*dtypes)
  if jnp.finfo(dtype).bits < 32:
    return jnp.dtype(jnp.float32)
  return jnp.dtype(dtype)
