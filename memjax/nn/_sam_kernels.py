"""The O(N) parts of a sparse access memory step, each one pass or less.

`memjax.nn.sam` keeps its memory in a blocked layout: slots are grouped in
blocks of G = `BLOCK` consecutive slots and each block is stored word-major,
memory[b, :, g] being the word of slot b G + g. With that layout the cosine
scores of every slot against the R read keys are one fused elementwise
multiply and a reduction over the word axis, vectorised across the G slots of
a block, and the reduction to per-block maxima happens in the same pass, so a
search reads the memory once and writes only [N / G, R] block maxima. The
per-slot inverse norms rsqrt(|M_i|^2 + eps) are state too, updated only on
the written rows, so the pass never normalises the memory.

Functions here work on one sequence (no batch axis; the cell vmaps them).
Shape legend: N slots (padded to NB G), NB blocks, G slots per block, W word
size, R read heads, K slots per head, J written slots.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Slots per block. 64 keeps the scoring pass at this CPU's memory bandwidth
# (measured: 32 and 64 fastest, 128 and more slower) and the block maxima at
# 1/(64 W) of the memory.
BLOCK = 64
# Cosine epsilon, as in `memjax.store` (x rsqrt(|x|^2 + eps)).
NORM_EPSILON = 1e-12
# last_access of the padding slots past N: never the least recently accessed.
PAD_ACCESS = np.iinfo(np.int32).max


def num_blocks(n: int) -> int:
  return -(-n // BLOCK)


def to_blocks(words: jax.Array) -> jax.Array:
  """[N, W] words -> [NB, W, G] blocked memory (padding slots are zero)."""
  n, w = words.shape
  nb = num_blocks(n)
  padded = jnp.pad(words, ((0, nb * BLOCK - n), (0, 0)))
  return padded.reshape(nb, BLOCK, w).transpose(0, 2, 1)


def from_blocks(memory: jax.Array, n: int) -> jax.Array:
  """[NB, W, G] blocked memory -> [n, W] words."""
  nb, w, g = memory.shape
  return memory.transpose(0, 2, 1).reshape(nb * g, w)[:n]


def inverse_norms(rows: jax.Array) -> jax.Array:
  """rsqrt(|row|^2 + eps) over the last axis."""
  return jax.lax.rsqrt(jnp.sum(rows * rows, axis=-1) + NORM_EPSILON)


def gather_rows(memory: jax.Array, slots: jax.Array) -> jax.Array:
  """memory [NB, W, G], slots [...] -> words [..., W]."""
  return memory[slots // BLOCK, :, slots % BLOCK]


def set_rows(memory: jax.Array, slots: jax.Array, rows: jax.Array) -> jax.Array:
  """memory with the words of `slots` [J] set to `rows` [J, W] (in place when donated)."""
  return memory.at[slots // BLOCK, :, slots % BLOCK].set(rows)


def least_recently_accessed(last_access: jax.Array, access_min: jax.Array) -> jax.Array:
  """The slot accessed longest ago: [] int32; never-accessed first, ties to the lowest slot.

  Args:
    last_access: [NB G] int32 step of each slot's last access (-1: never;
      PAD_ACCESS for padding).
    access_min: [NB] its minimum per block.
  """
  block = jnp.argmin(access_min).astype(jnp.int32)  # ties: the lowest block
  within = jax.lax.dynamic_slice_in_dim(last_access, block * BLOCK, BLOCK)
  return block * BLOCK + jnp.argmin(within).astype(jnp.int32)


def mark_accessed(last_access: jax.Array, access_min: jax.Array, slots: jax.Array,
                  step: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Sets last_access[slots] = step (slots out of range are skipped); keeps the block minima."""
  size = last_access.shape[0]
  last_access = last_access.at[slots].set(step, mode="drop")
  blocks = jnp.where(slots < size, slots, 0) // BLOCK
  starts = blocks * BLOCK
  rows = last_access[starts[:, None] + jnp.arange(BLOCK, dtype=slots.dtype)]
  return last_access, access_min.at[blocks].set(rows.min(axis=-1))


def _scores(words: jax.Array, inv_norms: jax.Array, keys: jax.Array) -> jax.Array:
  """words [..., W, G], inv_norms [..., G], keys [R, W] -> [..., R, G] cosine x |key|."""
  dots = jnp.sum(words[..., None, :, :] * keys[:, :, None], axis=-2)
  return dots * inv_norms[..., None, :]


def _maxima(memory: jax.Array, inv_norms: jax.Array, keys: jax.Array) -> jax.Array:
  """Pass 1 with a leading batch axis: [B, NB, W, G], [B, NB, G], [B, R, W] -> [B, NB, R]."""
  if memory.shape[0] == 1:  # XLA:CPU vectorises the pass badly with a unit batch axis
    return _scores(memory[0], inv_norms[0], keys[0]).max(axis=-1)[None]
  dots = jnp.sum(memory[:, :, None] * keys[:, None, :, :, None], axis=-2)
  return (dots * inv_norms[:, :, None]).max(axis=-1)


@jax.custom_batching.custom_vmap
def block_maxima(memory: jax.Array, inv_norms: jax.Array, keys: jax.Array) -> jax.Array:
  """Pass 1: [NB, R] maximum score per block and key, one fused pass over the memory.

  Under `jax.vmap` it runs as one batched pass (vmap's own rule would add a
  unit batch axis that XLA:CPU vectorises 20-40x slower).
  """
  return _scores(memory, inv_norms, keys).max(axis=-1)


@block_maxima.def_vmap
def _block_maxima_vmap(size, in_batched, memory, inv_norms, keys):
  args = [x if batched else jnp.broadcast_to(x, (size, *x.shape))
          for x, batched in zip((memory, inv_norms, keys), in_batched)]
  return _maxima(*args), True


def search(memory: jax.Array, inv_norms: jax.Array, last_access: jax.Array, keys: jax.Array,
           k: int) -> jax.Array:
  """Exact top-K slots by cosine similarity per key (ties: the lowest slot): [R, K] int32.

  Pass 1 is one fused pass over the memory producing each block's maximum
  score per key; the K best slots lie in the K blocks of highest maximum
  (each block ranked above an item's block holds an item ranked above it),
  which pass 2 rescores (K G slots per key).

  Args:
    memory: [NB, W, G] blocked memory.
    inv_norms: [NB, G] per-slot rsqrt(|M_i|^2 + eps).
    last_access: [NB G]; PAD_ACCESS marks the padding slots, which never match.
    keys: [R, W] (their norms do not change the order).
    k: K <= N.
  """
  nb = memory.shape[0]
  keys = keys.astype(memory.dtype)
  maxima = block_maxima(memory, inv_norms, keys)  # [NB, R]
  pad = last_access[(nb - 1) * BLOCK:] == PAD_ACCESS  # only the last block holds padding
  last = jnp.where(pad, -jnp.inf, _scores(memory[-1], inv_norms[-1], keys)).max(axis=-1)
  maxima = maxima.at[-1].set(last)
  count = min(k, nb)
  blocks = jnp.sort(jax.lax.top_k(maxima.T, count)[1], axis=-1)  # [R, C] ascending
  # [R, C, G]: each key against the slots of its own blocks, as in pass 1.
  dots = jnp.sum(memory[blocks] * keys[:, None, :, None], axis=-2)
  scores = dots * inv_norms[blocks]
  slots = blocks[..., None] * BLOCK + jnp.arange(BLOCK, dtype=jnp.int32)
  scores = jnp.where(last_access[slots] == PAD_ACCESS, -jnp.inf, scores)
  where = jax.lax.top_k(scores.reshape(scores.shape[0], -1), k)[1]
  return jnp.take_along_axis(slots.reshape(slots.shape[0], -1), where, axis=-1).astype(jnp.int32)


def _new_rows(old_rows, written, lra, weights, add):
  """Rows of the written slots after SAM's write: erase the LRA slot, add w a.

  old_rows [J, W] (the rows before the write), written [J] (repeats allowed),
  weights [J] -> [J, W]; repeated slots get identical rows holding the sum of
  their weights.
  """
  match = (written[:, None] == written[None, :]).astype(weights.dtype)  # [J, J]
  kept = jnp.where((written == lra)[:, None], 0, old_rows)
  return kept + (match @ weights)[:, None] * add[None, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def sparse_access(memory, inv_norms, last_access, lra, written, weights, add, keys, k):
  """SAM's write then the read's lookup and gather, differentiable in O(J W + R K W).

  Args:
    memory: [NB, W, G] blocked memory M_{t-1}.
    inv_norms: [NB, G] its inverse norms (no gradient).
    last_access: [NB G] int32 (padding marked; no gradient).
    lra: [] the least recently accessed slot (erased).
    written: [J] written slots (repeats allowed), lra among them.
    weights: [J] write weights.
    add: [W] add vector.
    keys: [R, W] read keys (only choose the slots; no gradient here).
    k: K (static).

  Returns:
    (M_t [NB, W, G], its inverse norms [NB, G], read slots [R, K] int32,
    their words in M_t [R, K, W]).
  """
  out, _ = _access_forward(memory, inv_norms, last_access, lra, written, weights, add, keys, k)
  return out


def _access_forward(memory, inv_norms, last_access, lra, written, weights, add, keys, k):
  old_rows = gather_rows(memory, written)
  rows = _new_rows(old_rows, written, lra, weights, add)
  # Set, not add: repeated slots all carry the same row, so the result does
  # not depend on the scatter order, and the inverse norms are those of the
  # stored rows.
  memory = set_rows(memory, written, rows)
  inv_norms = inv_norms.at[written // BLOCK, written % BLOCK].set(inverse_norms(rows))
  slots = search(memory, inv_norms, last_access, jax.lax.stop_gradient(keys), k)
  read = gather_rows(memory, slots)
  return (memory, inv_norms, slots, read), (old_rows, written, lra, weights, add, slots)


def _fwd(memory, inv_norms, last_access, lra, written, weights, add, keys, k):
  values = [x.value for x in (memory, inv_norms, last_access, lra, written, weights, add, keys)]
  out, res = _access_forward(*values, k)
  # The residual's structure (not its data) records whether M_{t-1} needs a
  # cotangent: a dense one is built only then.
  return out, (res, () if memory.perturbed else None)


def num_slots(memory: jax.Array) -> int:
  """Slots of a blocked memory, NB G."""
  return memory.shape[0] * memory.shape[-1]


def _bwd(k, res, cts):
  del k
  (old_rows, written, lra, weights, add, slots), memory_perturbed = res
  ct_memory, _, _, ct_read = cts  # the inverse norms and slots get no gradient
  symbolic = jax.custom_derivatives.SymbolicZero
  dense = not isinstance(ct_memory, symbolic)
  read_zero = isinstance(ct_read, symbolic)
  j = written.shape[0]
  flat_slots = slots.reshape(-1)
  # Cotangent of each written slot's new row: the memory's, plus the reads of it.
  ct_rows = gather_rows(ct_memory, written) if dense else jnp.zeros((j, add.shape[0]), add.dtype)
  read_hits = None
  if not read_zero:
    read_hits = (written[:, None] == flat_slots[None, :]).astype(add.dtype)  # [J, R K]
    ct_rows = ct_rows + read_hits @ ct_read.reshape(-1, add.shape[0])
  # Repeated slots: one stored row, so its cotangent goes to the first copy only.
  first = jnp.argmax(written[None, :] == written[:, None], axis=-1) == jnp.arange(j)
  ct_rows = jnp.where(first[:, None], ct_rows, 0)
  _, vjp = jax.vjp(lambda o, w, a: _new_rows(o, written, lra, w, a), old_rows, weights, add)
  ct_old, ct_weights, ct_add = vjp(ct_rows)
  ct_prev = None
  if memory_perturbed is not None:
    # One scatter that sets every touched row (repeats get equal values), so
    # its updates depend on every read of the incoming cotangent and XLA
    # updates it in place instead of copying it.
    base = ct_memory if dense else jnp.zeros(ct_memory.aval.shape, ct_memory.aval.dtype)
    same = (written[:, None] == written[None, :]).astype(ct_old.dtype)
    rows = [same @ ct_old]  # the written rows depend on M_{t-1} only through old_rows
    targets = [written]
    if not read_zero:  # rows read but not written: their cotangent plus the reads'
      size = num_slots(base)
      hits = (flat_slots[:, None] == flat_slots[None, :]).astype(ct_old.dtype)
      rows.append(gather_rows(base, flat_slots) + hits @ ct_read.reshape(-1, add.shape[0]))
      targets.append(jnp.where(read_hits.sum(axis=0) > 0, size, flat_slots))
    targets = jnp.concatenate(targets)
    ct_prev = base.at[targets // BLOCK, :, targets % BLOCK].set(
        jnp.concatenate(rows), mode="drop")
  return (ct_prev, None, None, None, None, ct_weights, ct_add, None)


sparse_access.defvjp(_fwd, _bwd, symbolic_zeros=True)
