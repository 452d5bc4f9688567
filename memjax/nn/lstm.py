"""A plain LSTM baseline with the interface of the memory cells.

`LSTMCell` maps (carry, x) to (carry, logits) like `NTMCell` and `DNCCell`,
so the algorithmic-task trainer runs all three the same way.

Shape legend: B batch, I input features, O output features, C units per layer.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from memjax import _checks
from memjax.nn import _batching
from memjax.nn import controllers


class LSTMCell(nnx.RNNCellBase):
  """Stacked LSTM layers and a linear read-out to logits.

  Args:
    in_features: I.
    out_features: O.
    hidden_size: C, units per layer.
    num_layers: how many LSTM layers are stacked.
    clip_value: the logits are clipped to [-clip_value, clip_value]; None: no clip.
    rngs: parameter initialisation.
  """

  def __init__(self, in_features: int, out_features: int, *, hidden_size: int = 256,
               num_layers: int = 1, clip_value: float | None = 20.0, rngs: nnx.Rngs):
    in_features = _checks.integer(in_features, "in_features")
    out_features = _checks.integer(out_features, "out_features")
    hidden_size = _checks.integer(hidden_size, "hidden_size")
    num_layers = _checks.integer(num_layers, "num_layers")
    _batching.check_clip_value(clip_value)
    self.in_features = in_features
    self.out_features = out_features
    self.clip_value = clip_value
    sizes = [in_features] + [hidden_size] * num_layers
    self.layers = nnx.List([controllers.LSTMController(sizes[i], hidden_size, rngs=rngs)
                            for i in range(num_layers)])
    self.output = nnx.Linear(hidden_size, out_features, rngs=rngs)

  @property
  def num_feature_axes(self) -> int:
    return 1

  def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None,
                       carry_init: Any = None) -> tuple[controllers.LSTMState, ...]:
    """Zero states, one `LSTMState` per layer, for inputs shaped `input_shape`."""
    del rngs, carry_init
    batch = tuple(input_shape[:-1])
    return tuple(layer.initial_state(batch) for layer in self.layers)

  def __call__(self, carry: tuple[controllers.LSTMState, ...],
               inputs: jax.Array) -> tuple[tuple[controllers.LSTMState, ...], jax.Array]:
    """One step: inputs [B, I] -> (new carry, [B, O] logits)."""
    inputs = _checks.as_array(inputs, "inputs")
    if not isinstance(carry, (tuple, list)) or len(carry) != len(self.layers):
      got = f"{len(carry)} states" if isinstance(carry, (tuple, list)) else type(carry).__name__
      raise ValueError(f"carry must hold one LSTMState per layer ({len(self.layers)}, from "
                       f"initialize_carry); got {got}")
    _batching.check_inputs(inputs, self.in_features, carry)
    h = inputs
    states = []
    for layer, state in zip(self.layers, carry):
      state, h = layer(state, h)
      states.append(state)
    y = self.output(h)
    if self.clip_value is not None:
      y = jnp.clip(y, -self.clip_value, self.clip_value)
    return tuple(states), y
