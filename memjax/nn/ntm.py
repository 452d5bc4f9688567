"""The Neural Turing Machine as a Flax NNX recurrent cell.

`NTMCell` owns the controller, the projections to and from the memory
interface and the learned initial state; the memory arithmetic is the pure
layer's: `addressing.ntm_weights` (eqs. 5-9), `access.read` (eq. 2) and
`access.write` (eqs. 3-4).

Each step, all heads address the previous memory M_{t-1}: the read heads
read it and the write heads then erase/add into it, giving M_t (the order of
the paper's figure 2 and of most public NTMs). The read vectors feed the
output of this step and the controller input of the next.

Shape legend: B batch, I input features, O output features, C controller
units, N memory slots, W word size, R read heads, H write heads, S shift-kernel
size (2 x shift_range + 1), T time.

References:
  Graves, Wayne, Danihelka. Neural Turing Machines. arXiv:1410.5401, 2014.
  Collier, Beel. Implementing Neural Turing Machines. ICANN 2018
  (arXiv:1807.08518): constant memory initialisation converges fastest.
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from memjax import access
from memjax import addressing
from memjax.nn import controllers

MEMORY_INITS = ("constant", "learned", "random")
# The constant of the `constant` memory initialisation (Collier & Beel 2018).
CONSTANT_MEMORY_VALUE = 1e-6


class NTMState(NamedTuple):
  """The recurrent state of an `NTMCell`.

  Attributes:
    controller: the controller's state (`LSTMState` or `()`).
    memory: [B, N, W] memory matrix.
    read_weights: [B, R, N] read weightings of the last step.
    write_weights: [B, H, N] write weightings of the last step.
    read_vectors: [B, R, W] read vectors of the last step.
  """
  controller: Any
  memory: jax.Array
  read_weights: jax.Array
  write_weights: jax.Array
  read_vectors: jax.Array


def _batched(fn, *in_axes):
  """vmap over the head axis, then the batch axis."""
  return jax.vmap(jax.vmap(fn, in_axes=in_axes), in_axes=tuple(0 for _ in in_axes))


def validate_memory_options(memory_size: int, word_size: int, num_read_heads: int,
                            num_write_heads: int, controller_size: int, memory_init: str,
                            controller: str, shift_range: int | None = None) -> None:
  """Raises ValueError naming the first bad option (shared with the configs)."""
  for name, value, low in (("memory_size", memory_size, 1), ("word_size", word_size, 1),
                           ("num_read_heads", num_read_heads, 1),
                           ("num_write_heads", num_write_heads, 1),
                           ("controller_size", controller_size, 1)):
    if not isinstance(value, int) or value < low:
      raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
  if memory_init not in MEMORY_INITS:
    raise ValueError(f"memory_init must be one of {MEMORY_INITS}; got {memory_init!r}")
  if controller not in controllers.CONTROLLERS:
    raise ValueError(f"controller must be one of {controllers.CONTROLLERS}; got {controller!r}")
  if shift_range is not None:
    if not isinstance(shift_range, int) or shift_range < 0:
      raise ValueError(f"shift_range must be an integer >= 0; got {shift_range!r}")
    if 2 * shift_range + 1 > memory_size:
      raise ValueError(f"shift_range {shift_range} allows {2 * shift_range + 1} shifts, more "
                       f"than the memory_size N={memory_size} slots")


class NTMCell(nnx.RNNCellBase):
  """A Neural Turing Machine step: controller, heads, memory (Graves et al. 2014).

  Args:
    in_features: I, the size of the external input.
    out_features: O, the size of the output (logits).
    memory_size: N, the number of memory slots.
    word_size: W, the size of a memory word.
    num_read_heads: R.
    num_write_heads: H.
    shift_range: largest shift a head can make in one step; shifts go from
      -shift_range to +shift_range (S = 2 x shift_range + 1 <= N).
    controller: 'lstm' (default) or 'feedforward'.
    controller_size: C, the controller's units.
    memory_init: 'constant' (every entry 1e-6), 'learned' (a trained [N, W]
      parameter) or 'random' (truncated normal, std 0.5, drawn per sequence
      from the `rngs` given to `initialize_carry`).
    clip_value: controller outputs (the interface pre-activations) and the
      output logits are clipped to [-clip_value, clip_value]; None: no clip.
    rngs: parameter initialisation.
  """

  def __init__(self, in_features: int, out_features: int, *, memory_size: int = 128,
               word_size: int = 20, num_read_heads: int = 1, num_write_heads: int = 1,
               shift_range: int = 1, controller: str = "lstm", controller_size: int = 100,
               memory_init: str = "constant", clip_value: float | None = 20.0,
               rngs: nnx.Rngs):
    validate_memory_options(memory_size, word_size, num_read_heads, num_write_heads,
                            controller_size, memory_init, controller, shift_range)
    self.in_features = in_features
    self.out_features = out_features
    self.memory_size = memory_size
    self.word_size = word_size
    self.num_read_heads = num_read_heads
    self.num_write_heads = num_write_heads
    self.shift_range = shift_range
    self.memory_init = memory_init
    self.clip_value = clip_value
    n, w, r, h = memory_size, word_size, num_read_heads, num_write_heads
    s = 2 * shift_range + 1
    # Per head: key [W], strength, gate, shift [S], gamma; write heads add erase [W], add [W].
    self._address_size = w + s + 3
    self.controller = controllers.make_controller(controller, in_features + r * w,
                                                  controller_size, rngs=rngs)
    self.interface = nnx.Linear(controller_size, (r + h) * self._address_size + h * 2 * w,
                                rngs=rngs)
    self.output = nnx.Linear(controller_size + r * w, out_features, rngs=rngs)
    normal = jax.nn.initializers.normal(0.1)
    self.initial_read_vectors = nnx.Param(normal(rngs.params(), (r, w)))
    # Learned initial weightings (softmax of these logits), starting focused on slot 0.
    logits = jnp.zeros((r + h, n)).at[:, 0].set(5.0)
    self.initial_weight_logits = nnx.Param(logits)
    if memory_init == "learned":
      self.initial_memory = nnx.Param(normal(rngs.params(), (n, w)))

  @property
  def num_feature_axes(self) -> int:
    return 1

  def initialize_carry(self, input_shape: tuple[int, ...], rngs: nnx.Rngs | None = None,
                       carry_init: Any = None) -> NTMState:
    """The initial state for inputs of shape `input_shape` ([B, I]; [I] for one sequence).

    Args:
      input_shape: the shape of one step's input; all but the last axis are batch.
      rngs: needed only with memory_init='random' (the `carry` stream, else `params`).
      carry_init: unused (the initial state is set by `memory_init`).
    """
    del carry_init
    batch = tuple(input_shape[:-1])
    n, w, r = self.memory_size, self.word_size, self.num_read_heads
    if self.memory_init == "constant":
      memory = jnp.full((n, w), CONSTANT_MEMORY_VALUE, jnp.float32)
    elif self.memory_init == "learned":
      memory = self.initial_memory[...]
    else:
      if rngs is None:
        raise ValueError("memory_init='random' needs `rngs` in initialize_carry")
      key = rngs() if isinstance(rngs, nnx.RngStream) else (
          rngs.carry() if "carry" in rngs else rngs.params())
      memory = 0.5 * jax.random.truncated_normal(key, -2.0, 2.0, (*batch, n, w))
    weights = jax.nn.softmax(self.initial_weight_logits[...], axis=-1)
    reads = jnp.tanh(self.initial_read_vectors[...])
    expand = lambda x: jnp.broadcast_to(x, (*batch, *x.shape))
    return NTMState(
        controller=self.controller.initial_state(batch),
        memory=jnp.broadcast_to(memory, (*batch, n, w)),
        read_weights=expand(weights[:r]),
        write_weights=expand(weights[r:]),
        read_vectors=expand(reads),
    )

  def _clip(self, x: jax.Array) -> jax.Array:
    if self.clip_value is None:
      return x
    return jnp.clip(x, -self.clip_value, self.clip_value)

  def __call__(self, carry: NTMState, inputs: jax.Array) -> tuple[NTMState, jax.Array]:
    """One step.

    Args:
      carry: the previous `NTMState` (batch shape [B]).
      inputs: [B, I] this step's input.

    Returns:
      (the new `NTMState`, [B, O] output logits).
    """
    batch = inputs.shape[:-1]
    if len(batch) != 1:  # one sequence, or several batch axes: flatten to one
      flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[len(batch):]), carry)
      new, y = self(flat, inputs.reshape(-1, inputs.shape[-1]))
      return (jax.tree.map(lambda x: x.reshape(*batch, *x.shape[1:]), new),
              y.reshape(*batch, -1))
    b = batch[0]
    r, h, w, a = self.num_read_heads, self.num_write_heads, self.word_size, self._address_size
    controller_in = jnp.concatenate([inputs, carry.read_vectors.reshape(b, r * w)], axis=-1)
    controller_state, hidden = self.controller(carry.controller, controller_in)
    iface = self._clip(self.interface(hidden))
    address = iface[:, :(r + h) * a].reshape(b, r + h, a)
    erase_add = iface[:, (r + h) * a:].reshape(b, h, 2 * w)
    key = jnp.tanh(address[..., :w])
    strength = jax.nn.softplus(address[..., w])
    gate = jax.nn.sigmoid(address[..., w + 1])
    gamma = 1.0 + jax.nn.softplus(address[..., w + 2])
    shift_w = jax.nn.softmax(address[..., w + 3:], axis=-1)
    erase = jax.nn.sigmoid(erase_add[..., :w])
    add = jnp.tanh(erase_add[..., w:])

    prev_w = jnp.concatenate([carry.read_weights, carry.write_weights], axis=1)
    heads = _batched(addressing.ntm_weights, None, 0, 0, 0, 0, 0, 0)
    new_w = heads(carry.memory, prev_w, key, strength, gate, shift_w, gamma)  # [B, R+H, N]
    read_w, write_w = new_w[:, :r], new_w[:, r:]
    reads = jax.vmap(access.read)(carry.memory, read_w)
    memory = jax.vmap(access.write)(carry.memory, write_w, erase, add)
    y = self._clip(self.output(jnp.concatenate([hidden, reads.reshape(b, r * w)], axis=-1)))
    return NTMState(controller_state, memory, read_w, write_w, reads), y
