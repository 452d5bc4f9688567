"""Sparse Access Memory (SAM, Rae et al. 2016): an NTM whose heads touch K slots.

Each step, every read head reads only the K slots whose words are most
similar to its key (found exactly by `memjax.store.top_k_slots`), and the
write touches only the slots read at the previous step plus the least
recently accessed slot. Everything after the lookup costs O(R K W), so a
step costs one lookup plus O(R K W) however large N is; the gradient never
materialises an [N, W] array (the reads see the write through an index match
over the R K + 1 written rows, not through the dense memory).

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

from memjax import access
from memjax import addressing
from memjax import store
from memjax.nn import _batching

# A slot counts as accessed when its read or write weight exceeds this (the
# paper's delta).
ACCESS_THRESHOLD = 0.005


class SAMState(NamedTuple):
  """The recurrent state of a `SAMCell` (batch axes in front of every field).

  Attributes:
    hidden: [B, C] controller output h.
    cell: [B, C] controller cell c.
    memory: [B, N, W] memory words.
    last_access: [B, N] int32 step of each slot's last access (-1: never).
    read_indices: [B, R, K] int32 slots read at the last step.
    read_weights: [B, R, K] their weights.
    read_vectors: [B, R, W] read vectors of the last step.
    step: [B] int32 steps taken.
  """
  hidden: jax.Array
  cell: jax.Array
  memory: jax.Array
  last_access: jax.Array
  read_indices: jax.Array
  read_weights: jax.Array
  read_vectors: jax.Array
  step: jax.Array


def least_recently_accessed(last_access: jax.Array) -> jax.Array:
  """The slot accessed longest ago (never-accessed first, ties to the lowest): [] int32."""
  return jnp.argmin(last_access).astype(jnp.int32)


def sparse_write(memory: jax.Array, lra: jax.Array, prev_indices: jax.Array,
                 prev_weights: jax.Array, add: jax.Array, write_gate: jax.Array,
                 interp_gate: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """SAM's write: erase the least recently accessed slot, add a to the written slots.

  Args:
    memory: [N, W].
    lra: [] the least recently accessed slot.
    prev_indices: [R, K] slots read at the previous step.
    prev_weights: [R, K] their read weights.
    add: [W] the add vector a.
    write_gate: [] alpha in [0, 1].
    interp_gate: [] gamma in [0, 1]: previous read slots vs the LRA slot.

  Returns:
    (new memory [N, W], written slots [J], write weights [J]).
  """
  r = prev_indices.shape[0]
  indices = jnp.concatenate([prev_indices.reshape(-1), lra[None]])
  weights = write_gate * jnp.concatenate([
      interp_gate * prev_weights.reshape(-1) / r, (1 - interp_gate)[None]])
  erased = memory.at[lra].set(0)
  return erased.at[indices].add(weights[:, None] * add[None, :]), indices, weights


def rows_after_write(memory: jax.Array, rows: jax.Array, lra: jax.Array,
                     written: jax.Array, weights: jax.Array, add: jax.Array) -> jax.Array:
  """Rows `rows` of the memory after `sparse_write`, computed from the old memory.

  The same numbers as gathering from the new memory, but differentiable with
  respect to the write in O(|rows| J W) and with no [N, W] cotangent.

  Args:
    memory: [N, W] memory before the write.
    rows: [...] slot indices.
    lra, written, weights, add: the write (see `sparse_write`).

  Returns:
    [..., W].
  """
  old = jnp.where((rows == lra)[..., None], 0, memory[rows])
  match = (rows[..., None] == written).astype(add.dtype)  # [..., J]
  return old + (match @ weights)[..., None] * add


def sparse_read(memory: jax.Array, keys: jax.Array, strengths: jax.Array, k: int,
                rows_of=None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """SAM's read: per head, softmax of beta x cosine over the K most similar slots.

  Args:
    memory: [N, W] memory to search (no gradient flows through the search).
    keys: [R, W] read keys.
    strengths: [R] key strengths beta >= 0.
    k: K slots per head.
    rows_of: optional function slot indices [R, K] -> rows [R, K, W] (e.g.
      `rows_after_write`); default gathers from `memory`.

  Returns:
    (indices [R, K] int32, weights [R, K], read vectors [R, W]).
  """
  n = memory.shape[0]
  _, indices = store.top_k_slots(jax.lax.stop_gradient(memory), jnp.ones((n,), bool),
                                 jax.lax.stop_gradient(keys), k, metric="cosine")
  # Every slot is valid, so all K are found.
  rows = memory[indices] if rows_of is None else rows_of(indices)  # [R, K, W]
  content = jax.vmap(addressing.content_weights)(rows, keys, strengths)  # eq. 5 over K
  reads = jax.vmap(access.read)(rows, content)
  return indices, content, reads


def sam_step(state: SAMState, key_read: jax.Array, strengths: jax.Array, add: jax.Array,
             write_gate: jax.Array, interp_gate: jax.Array, k: int) -> SAMState:
  """One memory step for one sequence (no batch axis): write, then read, then usage.

  The controller fields of `state` are passed through.
  """
  t = state.step
  lra = least_recently_accessed(state.last_access)
  memory, written, write_w = sparse_write(state.memory, lra, state.read_indices,
                                          state.read_weights, add, write_gate, interp_gate)
  rows_of = lambda rows: rows_after_write(state.memory, rows, lra, written, write_w, add)
  indices, weights, reads = sparse_read(memory, key_read, strengths, k, rows_of)
  n = memory.shape[0]
  touched = jnp.concatenate([
      jnp.where(jax.lax.stop_gradient(weights) > ACCESS_THRESHOLD, indices, n).reshape(-1),
      jnp.where(jax.lax.stop_gradient(write_w) > ACCESS_THRESHOLD, written, n)])
  last_access = state.last_access.at[touched].set(t, mode="drop")
  return state._replace(memory=memory, last_access=last_access, read_indices=indices,
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
    for name, value in (("in_features", in_features), ("out_features", out_features),
                        ("memory_size", memory_size), ("word_size", word_size),
                        ("num_read_heads", num_read_heads), ("k", k),
                        ("controller_size", controller_size)):
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    if k > memory_size:
      raise ValueError(f"k must be at most memory_size={memory_size}; got {k}")
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
    return SAMState(hidden=zeros(c), cell=zeros(c), memory=zeros(n, w),
                    last_access=jnp.full((*batch, n), -1, jnp.int32), read_indices=indices,
                    read_weights=zeros(r, k), read_vectors=zeros(r, w),
                    step=zeros(dtype=jnp.int32))

  def _clip(self, x: jax.Array) -> jax.Array:
    return x if self.clip_value is None else jnp.clip(x, -self.clip_value, self.clip_value)

  def __call__(self, carry: SAMState, inputs: jax.Array) -> tuple[SAMState, jax.Array]:
    """One step: (state, x [B, I]) -> (new state, y [B, O])."""
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
