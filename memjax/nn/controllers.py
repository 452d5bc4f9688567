"""Controllers for the memory cells: an LSTM and a feed-forward network.

A controller maps (state, input) to (state, output); the memory cells feed it
the external input concatenated with the previous read vectors.

Shape legend: B batch, I input features, C controller units.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from memjax import _checks


class LSTMState(NamedTuple):
  """State of an `LSTMController`: hidden output `h` and cell `c`, each [B, C]."""
  h: jax.Array
  c: jax.Array


class LSTMController(nnx.Module):
  """An LSTM with its four gates computed by one matrix product.

  Args:
    in_features: I, the input size.
    size: C, the number of units.
    forget_bias: added to the forget gate's pre-activation, so that the cell
      remembers by default early in training.
    rngs: parameter initialisation.
  """

  def __init__(self, in_features: int, size: int, *, forget_bias: float = 1.0,
               rngs: nnx.Rngs):
    in_features = _checks.integer(in_features, "in_features")
    size = _checks.integer(size, "size")
    _checks.number(forget_bias, "forget_bias")
    self.in_features = in_features
    self.size = size
    self.forget_bias = forget_bias
    self.gates = nnx.Linear(in_features + size, 4 * size, rngs=rngs)

  def initial_state(self, batch_shape: tuple[int, ...], dtype=jnp.float32) -> LSTMState:
    zeros = jnp.zeros((*batch_shape, self.size), dtype)
    return LSTMState(zeros, zeros)

  @property
  def linear(self) -> nnx.Linear:
    """The controller's one linear layer (its input is `linear_input(state, x)`)."""
    return self.gates

  def linear_input(self, state: LSTMState, x: jax.Array) -> jax.Array:
    return jnp.concatenate([x, state.h], axis=-1)

  def __call__(self, state: LSTMState, x: jax.Array) -> tuple[LSTMState, jax.Array]:
    """One step: x [B, I] -> (new state, h [B, C])."""
    return self.activate(state, self.gates(self.linear_input(state, x)))

  def activate(self, state: LSTMState, z: jax.Array) -> tuple[LSTMState, jax.Array]:
    """The step after the linear layer: gates' pre-activations z [B, 4C] -> (state, h)."""
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f + self.forget_bias) * state.c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return LSTMState(h, c), h


class FeedForwardController(nnx.Module):
  """A one-hidden-layer feed-forward controller (its state is empty).

  Args:
    in_features: I, the input size.
    size: C, the number of hidden units (tanh).
    rngs: parameter initialisation.
  """

  def __init__(self, in_features: int, size: int, *, rngs: nnx.Rngs):
    in_features = _checks.integer(in_features, "in_features")
    size = _checks.integer(size, "size")
    self.in_features = in_features
    self.size = size
    self.hidden = nnx.Linear(in_features, size, rngs=rngs)

  def initial_state(self, batch_shape: tuple[int, ...], dtype=jnp.float32) -> tuple:
    del batch_shape, dtype
    return ()

  @property
  def linear(self) -> nnx.Linear:
    """The controller's one linear layer (its input is `linear_input(state, x)`)."""
    return self.hidden

  def linear_input(self, state: tuple, x: jax.Array) -> jax.Array:
    del state
    return x

  def __call__(self, state: tuple, x: jax.Array) -> tuple[tuple, jax.Array]:
    """One step: x [B, I] -> ((), h [B, C])."""
    return self.activate(state, self.hidden(x))

  def activate(self, state: tuple, z: jax.Array) -> tuple[tuple, jax.Array]:
    """The step after the linear layer: pre-activations z [B, C] -> ((), h)."""
    return state, jnp.tanh(z)


CONTROLLERS = ("lstm", "feedforward")


def make_controller(kind: str, in_features: int, size: int, *,
                    rngs: nnx.Rngs) -> LSTMController | FeedForwardController:
  """Builds the controller named `kind` ('lstm' or 'feedforward')."""
  if kind == "lstm":
    return LSTMController(in_features, size, rngs=rngs)
  if kind == "feedforward":
    return FeedForwardController(in_features, size, rngs=rngs)
  raise ValueError(f"controller must be one of {CONTROLLERS}; got {kind!r}")
