"""The Differentiable Neural Computer as a Flax NNX recurrent cell.

`DNCCell` owns the controller, the interface and output projections and the
learned initial read vectors; the memory arithmetic is the pure layer's:
`allocation` (usage, allocation, write weighting), `access` (erase/add write,
read), `linkage` (precedence, temporal links, forward/backward weightings)
and `addressing.content_weights`.

Each step follows the paper's order: the controller sees the input and the
previous read vectors; the write head frees, allocates and writes (M_{t-1} ->
M_t); the link matrix and precedence are updated; the read heads then read
M_t, mixing content lookup with forward and backward traversal of the links.

Shape legend: B batch, I input features, O output features, C controller
units, N memory slots, W word size, R read heads.

References:
  Graves et al. Hybrid computing using a neural network with dynamic external
  memory. Nature 538, 471-476, 2016 (Methods).
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from memjax import _checks
from memjax import access
from memjax import addressing
from memjax import allocation
from memjax import linkage
from memjax.nn import _batching
from memjax.nn import controllers
from memjax.nn import ntm


class DNCState(NamedTuple):
  """The recurrent state of a `DNCCell`.

  Attributes:
    controller: the controller's state (`LSTMState` or `()`).
    memory: [B, N, W] memory matrix.
    usage: [B, N] usage u_t.
    link: [B, N, N] temporal link matrix L_t.
    precedence: [B, N] precedence p_t.
    read_weights: [B, R, N] read weightings of the last step.
    write_weights: [B, N] write weighting of the last step.
    read_vectors: [B, R, W] read vectors of the last step.
  """
  controller: Any
  memory: jax.Array
  usage: jax.Array
  link: jax.Array
  precedence: jax.Array
  read_weights: jax.Array
  write_weights: jax.Array
  read_vectors: jax.Array


def _oneplus(x: jax.Array) -> jax.Array:
  return 1.0 + jax.nn.softplus(x)


class DNCCell(nnx.RNNCellBase):
  """A Differentiable Neural Computer step with one write head (Graves et al. 2016).

  Args:
    in_features: I, the size of the external input.
    out_features: O, the size of the output (logits).
    memory_size: N, the number of memory slots.
    word_size: W, the size of a memory word.
    num_read_heads: R.
    controller: 'lstm' (default) or 'feedforward'.
    controller_size: C, the controller's units.
    memory_init: 'constant' (every entry 1e-6), 'learned' or 'random' (as in
      `NTMCell`).
    clip_value: controller outputs (the interface pre-activations) and the
      output logits are clipped to [-clip_value, clip_value] (the paper clips
      at 20); None: no clip.
    rngs: parameter initialisation.
  """

  def __init__(self, in_features: int, out_features: int, *, memory_size: int = 32,
               word_size: int = 20, num_read_heads: int = 1, controller: str = "lstm",
               controller_size: int = 100, memory_init: str = "constant",
               clip_value: float | None = 20.0, rngs: nnx.Rngs):
    in_features = _checks.integer(in_features, "in_features")
    out_features = _checks.integer(out_features, "out_features")
    ntm.validate_memory_options(memory_size, word_size, num_read_heads, 1, controller_size,
                                memory_init, controller)
    _batching.check_clip_value(clip_value)
    self.in_features = in_features
    self.out_features = out_features
    self.memory_size = memory_size
    self.word_size = word_size
    self.num_read_heads = num_read_heads
    self.memory_init = memory_init
    self.clip_value = clip_value
    n, w, r = memory_size, word_size, num_read_heads
    # Interface: read keys [R, W], read strengths [R], write key [W], write strength,
    # erase [W], write vector [W], free gates [R], allocation gate, write gate, modes [R, 3].
    self._interface_size = r * w + 3 * w + 5 * r + 3
    self.controller = controllers.make_controller(controller, in_features + r * w,
                                                  controller_size, rngs=rngs)
    self.interface = nnx.Linear(controller_size, self._interface_size, rngs=rngs)
    self.output = nnx.Linear(controller_size + r * w, out_features, rngs=rngs)
    normal = jax.nn.initializers.normal(0.1)
    self.initial_read_vectors = nnx.Param(normal(rngs.params(), (r, w)))
    if memory_init == "learned":
      self.initial_memory = nnx.Param(normal(rngs.params(), (n, w)))

  @property
  def num_feature_axes(self) -> int:
    return 1

  def initialize_carry(self, input_shape: tuple[int, ...], rngs: nnx.Rngs | None = None,
                       carry_init: Any = None) -> DNCState:
    """The initial state: empty memory, zero usage, links, precedence and weightings.

    Args:
      input_shape: the shape of one step's input; all but the last axis are batch.
      rngs: needed only with memory_init='random' (see `ntm.initial_memory`).
      carry_init: unused.
    """
    del carry_init
    batch = tuple(input_shape[:-1])
    n, w, r = self.memory_size, self.word_size, self.num_read_heads
    memory = ntm.initial_memory(self, batch, rngs)
    zeros = lambda *shape: jnp.zeros((*batch, *shape), jnp.float32)
    return DNCState(
        controller=self.controller.initial_state(batch),
        memory=jnp.broadcast_to(memory, (*batch, n, w)),
        usage=zeros(n),
        link=zeros(n, n),
        precedence=zeros(n),
        read_weights=zeros(r, n),
        write_weights=zeros(n),
        read_vectors=jnp.broadcast_to(jnp.tanh(self.initial_read_vectors[...]), (*batch, r, w)),
    )

  def _clip(self, x: jax.Array) -> jax.Array:
    if self.clip_value is None:
      return x
    return jnp.clip(x, -self.clip_value, self.clip_value)

  def __call__(self, carry: DNCState, inputs: jax.Array) -> tuple[DNCState, jax.Array]:
    """One step.

    Args:
      carry: the previous `DNCState` (batch shape [B]).
      inputs: [B, I] this step's input.

    Returns:
      (the new `DNCState`, [B, O] output logits).
    """
    inputs = _checks.as_array(inputs, "inputs")
    _batching.check_inputs(inputs, self.in_features, carry)
    if inputs.ndim != 2:  # one sequence, or several batch axes: flatten to one
      return _batching.with_one_batch_axis(self, carry, inputs)
    b = inputs.shape[0]
    r, w = self.num_read_heads, self.word_size
    controller_in = jnp.concatenate([inputs, carry.read_vectors.reshape(b, r * w)], axis=-1)
    controller_state, hidden = self.controller(carry.controller, controller_in)
    iface = self._clip(self.interface(hidden))
    sizes = [r * w, r, w, 1, w, w, r, 1, 1, 3 * r]
    parts = jnp.split(iface, np.cumsum(sizes)[:-1].tolist(), axis=-1)
    read_keys = parts[0].reshape(b, r, w)
    read_strengths = _oneplus(parts[1])
    write_key = parts[2]
    write_strength = _oneplus(parts[3][:, 0])
    erase = jax.nn.sigmoid(parts[4])
    write_vector = parts[5]
    free_gates = jax.nn.sigmoid(parts[6])
    allocation_gate = jax.nn.sigmoid(parts[7][:, 0])
    write_gate = jax.nn.sigmoid(parts[8][:, 0])
    modes = jax.nn.softmax(parts[9].reshape(b, r, 3), axis=-1)

    usage = jax.vmap(allocation.update_usage)(carry.usage, carry.write_weights, free_gates,
                                              carry.read_weights)
    write_content = jax.vmap(addressing.content_weights)(carry.memory, write_key,
                                                         write_strength)
    alloc = jax.vmap(allocation.allocation_weights)(usage)
    write_w = jax.vmap(allocation.write_weights)(write_content, alloc, write_gate,
                                                 allocation_gate)
    memory = jax.vmap(access.write)(carry.memory, write_w, erase, write_vector)
    link = jax.vmap(linkage.update_link)(carry.link, carry.precedence, write_w)
    precedence = jax.vmap(linkage.update_precedence)(carry.precedence, write_w)
    forward, backward = jax.vmap(linkage.directional_weights)(link, carry.read_weights)
    read_content = jax.vmap(jax.vmap(addressing.content_weights, in_axes=(None, 0, 0)))(
        memory, read_keys, read_strengths)
    read_w = jax.vmap(jax.vmap(linkage.read_weights))(modes, backward, read_content, forward)
    reads = jax.vmap(access.read)(memory, read_w)
    y = self._clip(self.output(jnp.concatenate([hidden, reads.reshape(b, r * w)], axis=-1)))
    new = DNCState(controller_state, memory, usage, link, precedence, read_w, write_w, reads)
    return new, y
