"""Sparse Access Memory (SAM, Rae et al. 2016): an NTM whose heads touch K slots.

Each step, every read head reads only the K slots whose words are most
similar to its key (found exactly, by one fused pass over the memory, see
`memjax.nn._sam_kernels`), and the write touches only the slots read at the
previous step plus the least recently accessed slot. Everything after the
lookup costs O(R K W), so a step costs one pass over the memory plus
O(R K W) however large N is. The memory is updated in place (donate the
state) and the backward pass is sparse: within a step no [N, W] array is
built (the reads see the write through an index match over the R K + 1
written rows); under backpropagation through time the memory's cotangent is
one [N, W] buffer updated in place at the touched rows, as in section 3.3 of
the paper.

The step, for one sequence (the cell vmaps it over the batch), following
section 3 of the paper:

    write   w^W = alpha (gamma mean_r w^R_{t-1} + (1 - gamma) 1[LRA])     (sparse)
            M_t = (1 - 1[LRA] 1^T) o M_{t-1} + w^W a^T
    read    idx_r = top-K slots of cosine(M_t, k_r)         (no gradient)
            w^R_r = softmax(beta_r cosine(M_t[idx_r], k_r)) over the K
            r_r = sum_j w^R_r[j] M_t[idx_r[j]]
    usage   last_access[i] = t for slots read or written with weight > delta;
            LRA = argmin_i last_access[i] (ties: lowest slot)

Shape legend: B batch, I input features, O output features, C controller
units, N memory slots, W word size, R read heads, K slots per read head,
J = R K + 1 slots written.

References:
  Rae, Hunt, Harley, Danihelka, Senior, Wayne, Graves, Lillicrap. Scaling
  Memory-Augmented Neural Networks with Sparse Reads and Writes. NIPS 2016
  (arXiv:1610.09027).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from memjax import _checks
from memjax import access
from memjax import addressing
from memjax.nn import _batching
from memjax.nn import _sam_kernels

# A slot counts as accessed when its read or write weight exceeds this (the
# paper's delta).
ACCESS_THRESHOLD = 0.005


class SAMState(NamedTuple):
  """The recurrent state of a `SAMCell` (batch axes in front of every field).

  The memory is stored in blocks of G = `BLOCK` slots, word-major inside a
  block (memory[b, :, g] is the word of slot b G + g), padded to NB G >= N
  slots; `memory_words` gives the [N, W] view.

  Attributes:
    hidden: [B, C] controller output h.
    cell: [B, C] controller cell c.
    memory: [B, NB, W, G] memory words, blocked.
    inv_norms: [B, NB, G] rsqrt(|M_i|^2 + eps) of every slot.
    last_access: [B, NB G] int32 step of each slot's last access (-1: never;
      `PAD_ACCESS` for the padding slots past N).
    access_min: [B, NB] int32 minimum of last_access per block.
    read_indices: [B, R, K] int32 slots read at the last step.
    read_weights: [B, R, K] their weights.
    read_vectors: [B, R, W] read vectors of the last step.
    step: [B] int32 steps taken.
  """
  hidden: jax.Array
  cell: jax.Array
  memory: jax.Array
  inv_norms: jax.Array
  last_access: jax.Array
  access_min: jax.Array
  read_indices: jax.Array
  read_weights: jax.Array
  read_vectors: jax.Array
  step: jax.Array


BLOCK = _sam_kernels.BLOCK
PAD_ACCESS = _sam_kernels.PAD_ACCESS


def make_state(words: jax.typing.ArrayLike, last_access: jax.typing.ArrayLike,
               read_indices: jax.typing.ArrayLike, read_weights: jax.typing.ArrayLike,
               read_vectors: jax.typing.ArrayLike, step: jax.typing.ArrayLike,
               hidden: jax.typing.ArrayLike, cell: jax.typing.ArrayLike) -> SAMState:
  """A `SAMState` for one sequence (no batch axis) from a plain [N, W] memory.

  Args:
    words: [N, W] memory.
    last_access: [N] int32 step of each slot's last access (-1: never).
    read_indices: [R, K] int32; read_weights: [R, K]; read_vectors: [R, W].
    step: [] int32.
    hidden, cell: [C] controller state.

  Returns:
    the state, memory blocked and padded.
  """
  words = jnp.asarray(words, jnp.float32)
  last_access = jnp.asarray(last_access, jnp.int32)
  n = words.shape[0]
  if words.ndim != 2 or last_access.shape != (n,):
    raise ValueError(f"words must be [N, W] and last_access [N]; got {words.shape} and "
                     f"{last_access.shape}")
  pad = _sam_kernels.num_blocks(n) * BLOCK - n
  last_access = jnp.pad(last_access, (0, pad), constant_values=PAD_ACCESS)
  memory = _sam_kernels.to_blocks(words)
  return SAMState(
      hidden=jnp.asarray(hidden, jnp.float32), cell=jnp.asarray(cell, jnp.float32),
      memory=memory, inv_norms=_sam_kernels.inverse_norms(jnp.swapaxes(memory, -1, -2)),
      last_access=last_access, access_min=last_access.reshape(-1, BLOCK).min(axis=-1),
      read_indices=jnp.asarray(read_indices, jnp.int32),
      read_weights=jnp.asarray(read_weights, jnp.float32),
      read_vectors=jnp.asarray(read_vectors, jnp.float32), step=jnp.asarray(step, jnp.int32))


def memory_words(memory: jax.Array, n: int) -> jax.Array:
  """The [..., N, W] words of a blocked memory [..., NB, W, G] holding N slots."""
  lead = memory.shape[:-3]
  flat = memory.reshape(-1, *memory.shape[-3:])
  words = jax.vmap(lambda m: _sam_kernels.from_blocks(m, n))(flat)
  return words.reshape(*lead, n, memory.shape[-2])


def least_recently_accessed(last_access: jax.Array, access_min: jax.Array) -> jax.Array:
  """The slot accessed longest ago (never-accessed first, ties to the lowest): [] int32.

  Args:
    last_access: [NB G] int32 (see `SAMState`).
    access_min: [NB] int32 its minimum per block.
  """
  return _sam_kernels.least_recently_accessed(last_access, access_min)


def write_weights(lra: jax.Array, prev_indices: jax.Array, prev_weights: jax.Array,
                  write_gate: jax.Array, interp_gate: jax.Array) -> tuple[jax.Array, jax.Array]:
  """SAM's sparse write weighting: the previous read slots and the LRA slot.

  w^W = alpha (gamma mean_r w^R_{t-1} + (1 - gamma) 1[LRA]).

  Args:
    lra: [] the least recently accessed slot.
    prev_indices: [R, K] slots read at the previous step.
    prev_weights: [R, K] their read weights.
    write_gate: [] alpha in [0, 1].
    interp_gate: [] gamma in [0, 1]: previous read slots vs the LRA slot.

  Returns:
    (written slots [J] int32, write weights [J]), J = R K + 1, the LRA slot last.
  """
  r = prev_indices.shape[0]
  indices = jnp.concatenate([prev_indices.reshape(-1), lra[None]]).astype(jnp.int32)
  weights = write_gate * jnp.concatenate([
      interp_gate * prev_weights.reshape(-1) / r, (1 - interp_gate)[None]])
  return indices, weights


def sam_step(state: SAMState, key_read: jax.Array, strengths: jax.Array, add: jax.Array,
             write_gate: jax.Array, interp_gate: jax.Array, k: int) -> SAMState:
  """One memory step for one sequence (no batch axis): write, then read, then usage.

  Touches the memory only through `_sam_kernels.sparse_access`: the write and
  the gather of the K R read rows (in place when the state is donated), one
  fused pass for the lookup, and a backward pass of O(J W + R K W) (a dense
  [N, W] cotangent exists only when the previous memory itself needs one,
  i.e. under backpropagation through time, and is then updated in place).
  The controller fields of `state` are passed through.
  """
  t = state.step
  lra = least_recently_accessed(state.last_access, state.access_min)
  written, write_w = write_weights(lra, state.read_indices, state.read_weights, write_gate,
                                   interp_gate)
  memory, inv_norms, indices, rows = _sam_kernels.sparse_access(
      state.memory, state.inv_norms, state.last_access, lra, written, write_w, add, key_read, k)
  weights = jax.vmap(addressing.content_weights)(rows, key_read, strengths)  # eq. 5 over K
  reads = jax.vmap(access.read)(rows, weights)
  size = state.last_access.shape[0]
  touched = jnp.concatenate([
      jnp.where(jax.lax.stop_gradient(weights) > ACCESS_THRESHOLD, indices, size).reshape(-1),
      jnp.where(jax.lax.stop_gradient(write_w) > ACCESS_THRESHOLD, written, size)])
  last_access, access_min = _sam_kernels.mark_accessed(state.last_access, state.access_min,
                                                       touched, t)
  return state._replace(memory=memory, inv_norms=jax.lax.stop_gradient(inv_norms),
                        last_access=last_access, access_min=access_min, read_indices=indices,
                        read_weights=weights, read_vectors=reads, step=t + 1)


class SAMCell(nnx.RNNCellBase):
  """A sparse access memory cell: LSTM controller, R sparse read heads, one sparse write.

  Args:
    in_features: I.
    out_features: O.
    memory_size: N.
    word_size: W.
    num_read_heads: R.
    k: K slots per read head (the paper uses 4 to 8).
    controller_size: C.
    clip_value: the interface pre-activations and the output are clipped to
      [-clip_value, clip_value]; None: no clip.
    rngs: parameter initialisation.
  """

  def __init__(self, in_features: int, out_features: int, *, memory_size: int = 128,
               word_size: int = 20, num_read_heads: int = 1, k: int = 4,
               controller_size: int = 100, clip_value: float | None = 20.0,
               rngs: nnx.Rngs):
    in_features = _checks.integer(in_features, "in_features")
    out_features = _checks.integer(out_features, "out_features")
    memory_size = _checks.integer(memory_size, "memory_size")
    word_size = _checks.integer(word_size, "word_size")
    num_read_heads = _checks.integer(num_read_heads, "num_read_heads")
    k = _checks.integer(k, "k")
    controller_size = _checks.integer(controller_size, "controller_size")
    if k > memory_size:
      raise ValueError(f"k must be at most memory_size={memory_size}; got {k}")
    _batching.check_clip_value(clip_value)
    self.in_features = in_features
    self.out_features = out_features
    self.memory_size = memory_size
    self.word_size = word_size
    self.num_read_heads = num_read_heads
    self.k = k
    self.controller_size = controller_size
    self.clip_value = clip_value
    r, w, c = num_read_heads, word_size, controller_size
    self.gates = nnx.Linear(in_features + r * w + c, 4 * c, rngs=rngs)
    # Per read head: key [W], strength; then add [W], write gate, interpolation gate.
    self.interface = nnx.Linear(c, r * (w + 1) + w + 2, rngs=rngs)
    self.output = nnx.Linear(c + r * w, out_features, rngs=rngs)

  @property
  def num_feature_axes(self) -> int:
    return 1

  def initialize_carry(self, input_shape: tuple[int, ...], rngs: nnx.Rngs | None = None,
                       carry_init=None) -> SAMState:
    """The initial state for inputs of shape `input_shape` ([B, I]): empty memory."""
    del rngs, carry_init
    batch = tuple(input_shape[:-1])
    n, w, r, k, c = (self.memory_size, self.word_size, self.num_read_heads, self.k,
                     self.controller_size)
    zeros = lambda *shape, dtype=jnp.float32: jnp.zeros((*batch, *shape), dtype)
    # The previous reads start on slots 0..K-1 with zero weight: the first
    # write then goes to the least recently accessed slot alone.
    indices = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (*batch, r, k))
    nb = _sam_kernels.num_blocks(n)
    last_access = jnp.where(jnp.arange(nb * BLOCK) < n, -1, PAD_ACCESS).astype(jnp.int32)
    access_min = last_access.reshape(nb, BLOCK).min(axis=-1)
    return SAMState(
        hidden=zeros(c), cell=zeros(c), memory=zeros(nb, w, BLOCK),
        inv_norms=jnp.full((*batch, nb, BLOCK), 1 / jnp.sqrt(_sam_kernels.NORM_EPSILON)),
        last_access=jnp.broadcast_to(last_access, (*batch, nb * BLOCK)),
        access_min=jnp.broadcast_to(access_min, (*batch, nb)), read_indices=indices,
        read_weights=zeros(r, k), read_vectors=zeros(r, w), step=zeros(dtype=jnp.int32))

  def _clip(self, x: jax.Array) -> jax.Array:
    return x if self.clip_value is None else jnp.clip(x, -self.clip_value, self.clip_value)

  def __call__(self, carry: SAMState, inputs: jax.Array) -> tuple[SAMState, jax.Array]:
    """One step: (state, x [B, I]) -> (new state, y [B, O])."""
    inputs = _checks.as_array(inputs, "inputs")
    _batching.check_inputs(inputs, self.in_features, carry)
    if inputs.ndim != 2:  # one sequence, or several batch axes: flatten to one
      return _batching.with_one_batch_axis(self, carry, inputs)
    b = inputs.shape[0]
    r, w = self.num_read_heads, self.word_size
    z = self.gates(jnp.concatenate(
        [inputs, carry.read_vectors.reshape(b, r * w), carry.hidden], axis=-1))
    i, f, g, o = jnp.split(z, 4, axis=-1)
    cell = jax.nn.sigmoid(f + 1.0) * carry.cell + jax.nn.sigmoid(i) * jnp.tanh(g)
    hidden = jax.nn.sigmoid(o) * jnp.tanh(cell)
    iface = self._clip(self.interface(hidden))
    heads = iface[:, :r * (w + 1)].reshape(b, r, w + 1)
    key_read = jnp.tanh(heads[..., :w])
    strengths = jax.nn.softplus(heads[..., w])
    add = jnp.tanh(iface[:, r * (w + 1):r * (w + 1) + w])
    write_gate = jax.nn.sigmoid(iface[:, -2])
    interp_gate = jax.nn.sigmoid(iface[:, -1])
    step = jax.vmap(sam_step, in_axes=(0, 0, 0, 0, 0, 0, None))
    new = step(carry, key_read, strengths, add, write_gate, interp_gate, self.k)
    new = new._replace(hidden=hidden, cell=cell)
    y = self._clip(self.output(jnp.concatenate(
        [hidden, new.read_vectors.reshape(b, r * w)], axis=-1)))
    return new, y
