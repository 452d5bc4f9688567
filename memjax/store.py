"""A key-value memory: insert with eviction, update and delete by id, exact top-k lookup.

`KVMemory` is a pytree of fixed-size tables, so every operation here is a
pure function that compiles once per shape and runs under `jax.jit`,
`jax.vmap` (one memory per sequence or per head) and `jax.lax.scan`.

Shape legend: N slots, Dk key size, Dv value size, B items in a batch,
Q queries, K results per query.

Semantics, in the words of a Python dictionary `{id: (key, value)}` of at
most N items:

* `insert` adds a batch of new items. They go into free slots first (lowest
  slot index first) and, once the memory is full, into the slots the eviction
  policy names, in its order:

  - ``"fifo"``: the oldest insertion first (a ring buffer);
  - ``"lru"``: the least recently used first (inserted, or returned by a
    lookup that was passed to `mark_used`), ties broken by insertion order;
  - ``"least_used"``: the fewest `mark_used` hits first, ties broken by least
    recent use, then insertion order.

  The order is taken before the batch is written, so items of one batch never
  evict each other; if a batch brings more than N items, only its last N are
  kept. Ids are given by the caller (unique, non-negative, not in memory) or
  numbered from `memory.next_id` upwards in batch order.
* `update` replaces the key and/or value of items that are present, by id;
  `delete` removes them. Ids that are absent are ignored (inside `jit` there
  is nobody to raise to; `slots_of` tells which ids are present).
* `lookup` returns, per query, the K highest-scoring valid items, best first,
  exactly (no approximation), computed chunk by chunk so that the Q x N score
  matrix is never built whole. Ties go to the lower slot index. When fewer
  than K items are valid, the missing results have `found == False`, index
  and id -1, score -inf and zero values.
* `mark_used` records that some slots were used (for ``"lru"`` and
  ``"least_used"``); `lookup` itself changes nothing.
* `attend` is the differentiable read for models: a softmax over the top-K
  scores, weighting the K values.

Writing in place: donate the memory (`jax.jit(step, donate_argnums=...)`)
and the tables are updated in place. On the CPU, a jitted function that
both reads the memory (`lookup`, `attend`) and then writes it (`insert`,
`update`, `delete`) needs one more thing: XLA:CPU's default copy insertion
cannot see that the read ends before the write, and copies the tables it
reads and writes (each twice, for a `lookup` then an `insert`) on every
call. Compile such a step with
`compiler_options=memjax.xla.cpu_options(memjax.xla.IN_PLACE_MEMORY)` (None
off the CPU or where XLA rejects the option, which leaves XLA's defaults)::

  options = memjax.xla.cpu_options(memjax.xla.IN_PLACE_MEMORY)
  step = jax.jit(read_then_write, donate_argnums=0, compiler_options=options)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from memjax import _checks

POLICIES = ("fifo", "lru", "least_used")
METRICS = ("inner_product", "cosine")
# A lookup scores at most this many (query, slot) pairs at once.
DEFAULT_CHUNK_ELEMENTS = 1 << 22
_NORM_EPSILON = 1e-12


@struct.dataclass
class KVMemory:
  """A fixed-size key-value table with per-slot bookkeeping.

  Attributes:
    keys: [N, Dk] keys (floating).
    values: [N, Dv] values (any dtype).
    valid: [N] bool, whether a slot holds an item.
    ids: [N] int32 item ids, -1 in free slots.
    inserted_at: [N] int32 logical time of insertion, -1 in free slots.
    last_used: [N] int32 logical time of the last insertion or recorded use.
    hits: [N] int32 uses recorded by `mark_used` since insertion.
    clock: [] int32 logical time; advances by one per inserted item and per
      `mark_used` call.
    next_id: [] int32 the next automatically assigned id.
    policy: eviction policy, one of `POLICIES` (static: part of the treedef).
  """
  keys: jax.Array
  values: jax.Array
  valid: jax.Array
  ids: jax.Array
  inserted_at: jax.Array
  last_used: jax.Array
  hits: jax.Array
  clock: jax.Array
  next_id: jax.Array
  policy: str = struct.field(pytree_node=False, default="fifo")

  @property
  def num_slots(self) -> int:
    return self.keys.shape[-2]

  @property
  def key_dim(self) -> int:
    return self.keys.shape[-1]

  @property
  def value_dim(self) -> int:
    return self.values.shape[-1]


class LookupResult(NamedTuple):
  """What `lookup` returns for Q queries and K results each.

  Attributes:
    scores: [Q, K] float32 similarity, best first; -inf where not found.
    indices: [Q, K] int32 slot indices; -1 where not found.
    ids: [Q, K] int32 item ids; -1 where not found.
    values: [Q, K, Dv] the items' values; zeros where not found.
    found: [Q, K] bool.
  """
  scores: jax.Array
  indices: jax.Array
  ids: jax.Array
  values: jax.Array
  found: jax.Array


def init(num_slots: int, key_dim: int, value_dim: int, *, policy: str = "fifo",
         key_dtype: jax.typing.DTypeLike = jnp.float32,
         value_dtype: jax.typing.DTypeLike = jnp.float32) -> KVMemory:
  """An empty memory of `num_slots` slots.

  Args:
    num_slots: N >= 1.
    key_dim: Dk >= 1.
    value_dim: Dv >= 1.
    policy: eviction policy once full, one of "fifo", "lru", "least_used".
    key_dtype: a floating dtype for the keys.
    value_dtype: any dtype for the values (integer values are fine, e.g.
      answer tokens; `attend` needs floating values).

  Returns:
    An empty `KVMemory`.
  """
  num_slots = _checks.integer(num_slots, "num_slots")
  key_dim = _checks.integer(key_dim, "key_dim")
  value_dim = _checks.integer(value_dim, "value_dim")
  if policy not in POLICIES:
    raise ValueError(f"policy must be one of {POLICIES}; got {policy!r}")
  if not jnp.issubdtype(key_dtype, jnp.floating):
    raise TypeError(f"key_dtype must be a floating dtype; got {jnp.dtype(key_dtype)}")
  n = num_slots
  minus_one = jnp.full((n,), -1, jnp.int32)
  return KVMemory(
      keys=jnp.zeros((n, key_dim), key_dtype),
      values=jnp.zeros((n, value_dim), value_dtype),
      valid=jnp.zeros((n,), bool),
      ids=minus_one,
      inserted_at=minus_one,
      last_used=minus_one,
      hits=jnp.zeros((n,), jnp.int32),
      clock=jnp.zeros((), jnp.int32),
      next_id=jnp.zeros((), jnp.int32),
      policy=policy,
  )


def _check_memory(memory: KVMemory) -> None:
  if not isinstance(memory, KVMemory):
    raise TypeError(f"memory must be a memjax.store.KVMemory; got {type(memory).__name__}")
  _checks.check_rank(memory.keys, 2, "memory.keys", "[N, Dk] (vmap over any batch axis)")


def _batch_mask(mask, batch: int) -> jax.Array:
  if mask is None:
    return jnp.ones((batch,), bool)
  mask = _checks.as_array(mask, "mask")
  if mask.dtype != jnp.bool_:
    raise TypeError(f"mask must have dtype bool; got {mask.dtype}")
  _checks.check_rank(mask, 1, "mask", "[B]")
  _checks.check_dim(mask, 0, batch, "mask", "the batch size B")
  return mask


def _batch_ids(ids, name: str, batch: int | None = None) -> jax.Array:
  ids = _checks.as_array(ids, name)
  _checks.check_integer(ids, name)
  _checks.check_rank(ids, 1, name, "[B]")
  if batch is not None:
    _checks.check_dim(ids, 0, batch, name, "the batch size B")
  return ids.astype(jnp.int32)


def _check_rows(x, name: str, width: int, what: str, batch: int | None = None,
                floating: bool = True) -> jax.Array:
  x = _checks.as_array(x, name)
  if floating:
    _checks.check_floating(x, name)
  _checks.check_rank(x, 2, name, f"[B, {what}]")
  _checks.check_dim(x, 1, width, name, f"the {what} of memory")
  if batch is not None:
    _checks.check_dim(x, 0, batch, name, "the batch size B")
  return x


def eviction_order(memory: KVMemory, count: int) -> jax.Array:
  """The first `count` slots an insert would fill, in order: [count] int32.

  Free slots first (by index), then occupied slots in the policy's order;
  0 <= count <= N.
  """
  _check_memory(memory)
  n = memory.num_slots
  count = _checks.integer(count, "count", 0, n, "the slot count N")
  slot = jnp.arange(n, dtype=jnp.int32)
  if memory.policy == "fifo":
    return _fifo_order(memory.valid, memory.inserted_at, count)
  occupied = memory.valid.astype(jnp.int32)
  if memory.policy == "lru":
    keys = (occupied, memory.last_used, memory.inserted_at, slot)
  else:  # least_used
    keys = (occupied, memory.hits, memory.last_used, memory.inserted_at, slot)
  # Free slots have inserted_at == last_used == -1 and hits == 0, so after the
  # leading `occupied` key they sort by slot index.
  return jax.lax.sort(keys, num_keys=len(keys))[-1][:count]


def _fifo_order_top_k(valid: jax.Array, inserted_at: jax.Array, count: int) -> jax.Array:
  """FIFO order of any memory, [..., count]: one integer key, a top_k (O(N log count))."""
  n = valid.shape[-1]
  slot = jnp.arange(n, dtype=jnp.int32)
  big = jnp.int32(2**30)
  score = jnp.where(valid, -inserted_at, big - slot)
  return jax.lax.top_k(score, count)[1].astype(jnp.int32)


def _ring_start(valid: jax.Array, inserted_at: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Whether a memory is a ring buffer, and where its FIFO order starts: ([...], [...]).

  A memory filled by inserts alone (no delete, no mask) is either a prefix of
  m valid slots, oldest first, with free slots after it (order: m, m + 1, ...,
  then 0, 1, ...), or full with insertion times increasing around the ring
  from the oldest slot c (order: c, c + 1, ... mod N). In both cases the
  order is (start + i) mod N, exactly what `_fifo_order_top_k` returns.
  """
  n = valid.shape[-1]
  slot = jnp.arange(n, dtype=jnp.int32)
  m = jnp.sum(valid, axis=-1, dtype=jnp.int32)
  prefix = jnp.all(valid == (slot < m[..., None]), axis=-1)
  rising = inserted_at[..., 1:] > inserted_at[..., :-1]
  prefix_rising = jnp.all(rising | (slot[1:] >= m[..., None]), axis=-1)
  # Full: exactly one place where the time drops, going around the ring.
  drops = jnp.sum(jnp.roll(inserted_at, -1, axis=-1) < inserted_at, axis=-1)
  full_ring = (m == n) & (drops <= 1)
  # The first slot of the oldest item (argmin, written as min + compare: faster on XLA:CPU).
  oldest = jnp.min(inserted_at, axis=-1, keepdims=True)
  first = jnp.min(jnp.where(inserted_at == oldest, slot, n), axis=-1)
  start = jnp.where(m == n, first, m)
  return (prefix & prefix_rising) | full_ring, start


def _fifo_order(valid: jax.Array, inserted_at: jax.Array, count: int) -> jax.Array:
  """FIFO eviction order, [..., count]: O(N) checks and O(count) when the memory is a ring.

  Same result as `_fifo_order_top_k` always: when every memory of the batch
  is a ring buffer (`_ring_start`), the order is read off the ring; otherwise
  the top_k runs. Under `jax.vmap` the mapped axis joins the batch, so one
  `lax.cond` decides for all (vmap would otherwise run both branches).
  """

  @jax.custom_batching.custom_vmap
  def run(valid, inserted_at):
    ring, start = _ring_start(valid, inserted_at)
    n = valid.shape[-1]

    def from_ring(_):
      return (start[..., None] + jnp.arange(count, dtype=jnp.int32)) % n

    return jax.lax.cond(jnp.all(ring), from_ring,
                        lambda _: _fifo_order_top_k(valid, inserted_at, count), None)

  @run.def_vmap
  def _fold(size, in_batched, valid, inserted_at):
    valid_b, time_b = in_batched
    if not valid_b:
      valid = jnp.broadcast_to(valid, (size, *valid.shape))
    if not time_b:
      inserted_at = jnp.broadcast_to(inserted_at, (size, *inserted_at.shape))
    return run(valid, inserted_at), True

  return run(valid, inserted_at)


def insert(memory: KVMemory, keys: jax.typing.ArrayLike, values: jax.typing.ArrayLike, *,
           ids: jax.typing.ArrayLike | None = None,
           mask: jax.typing.ArrayLike | None = None) -> KVMemory:
  """Adds a batch of items, evicting per the memory's policy when full.

  Args:
    memory: the memory.
    keys: [B, Dk] keys.
    values: [B, Dv] values.
    ids: optional [B] int ids, unique, >= 0 and not already in memory (not
      checked). By default items are numbered `memory.next_id + 0, 1, ...` in
      batch order (masked-out items take no number).
    mask: optional [B] bool; False rows are not inserted.

  Returns:
    The new memory.
  """
  _check_memory(memory)
  keys = _check_rows(keys, "keys", memory.key_dim, "key size Dk")
  batch = keys.shape[0]
  values = _check_rows(values, "values", memory.value_dim, "value size Dv", batch,
                       floating=False)
  mask = _batch_mask(mask, batch)
  if batch == 0:
    return memory
  n = memory.num_slots
  rank = jnp.cumsum(mask.astype(jnp.int32)) - 1  # position among the inserted items
  count = rank[-1] + 1
  if ids is None:
    ids = memory.next_id + rank
  else:
    ids = _batch_ids(ids, "ids", batch)
  # Keep only the last N inserted items; they fill the first slots of the order.
  dropped = jnp.maximum(count - n, 0)
  keep = mask & (rank >= dropped)
  order = eviction_order(memory, min(batch, n))
  target = jnp.where(keep, order[jnp.clip(rank - dropped, 0, min(batch, n) - 1)], n)
  time = memory.clock + rank

  def put(table, rows):
    return table.at[target].set(rows.astype(table.dtype), mode="drop")

  next_id = jnp.maximum(memory.next_id, jnp.max(jnp.where(mask, ids + 1, 0), initial=0))
  return memory.replace(
      keys=put(memory.keys, keys),
      values=put(memory.values, values),
      valid=put(memory.valid, jnp.ones((batch,), bool)),
      ids=put(memory.ids, ids),
      inserted_at=put(memory.inserted_at, time),
      last_used=put(memory.last_used, time),
      hits=put(memory.hits, jnp.zeros((batch,), jnp.int32)),
      clock=memory.clock + count,
      next_id=next_id.astype(jnp.int32),
  )


def slots_of(memory: KVMemory, ids: jax.typing.ArrayLike) -> jax.Array:
  """Slot index of each id: [B] int32, -1 where the id is not in memory.

  Costs B x N comparisons.
  """
  _check_memory(memory)
  ids = _batch_ids(ids, "ids")
  match = (memory.ids[None, :] == ids[:, None]) & memory.valid[None, :] & (ids[:, None] >= 0)
  return jnp.where(match.any(axis=1), jnp.argmax(match, axis=1), -1).astype(jnp.int32)


def update(memory: KVMemory, ids: jax.typing.ArrayLike, *,
           keys: jax.typing.ArrayLike | None = None,
           values: jax.typing.ArrayLike | None = None,
           mask: jax.typing.ArrayLike | None = None) -> KVMemory:
  """Replaces the keys and/or values of the items with these ids.

  Ids not in memory are ignored. Usage statistics are left as they are.

  Args:
    memory: the memory.
    ids: [B] int ids.
    keys: optional [B, Dk] new keys.
    values: optional [B, Dv] new values.
    mask: optional [B] bool; False rows are skipped.

  Returns:
    The new memory.
  """
  _check_memory(memory)
  ids = _batch_ids(ids, "ids")
  batch = ids.shape[0]
  if keys is None and values is None:
    raise ValueError("update needs keys or values (or both); got neither")
  mask = _batch_mask(mask, batch)
  slots = slots_of(memory, ids)
  target = jnp.where(mask & (slots >= 0), slots, memory.num_slots)
  new = {}
  if keys is not None:
    keys = _check_rows(keys, "keys", memory.key_dim, "key size Dk", batch)
    new["keys"] = memory.keys.at[target].set(keys.astype(memory.keys.dtype), mode="drop")
  if values is not None:
    values = _check_rows(values, "values", memory.value_dim, "value size Dv", batch,
                         floating=False)
    new["values"] = memory.values.at[target].set(values.astype(memory.values.dtype),
                                                 mode="drop")
  return memory.replace(**new)


def delete(memory: KVMemory, ids: jax.typing.ArrayLike, *,
           mask: jax.typing.ArrayLike | None = None) -> KVMemory:
  """Removes the items with these ids; their slots become free. Absent ids are ignored."""
  _check_memory(memory)
  ids = _batch_ids(ids, "ids")
  mask = _batch_mask(mask, ids.shape[0])
  slots = slots_of(memory, ids)
  target = jnp.where(mask & (slots >= 0), slots, memory.num_slots)

  def clear(table, fill):
    return table.at[target].set(fill, mode="drop")

  return memory.replace(
      keys=clear(memory.keys, 0),
      values=clear(memory.values, 0),
      valid=clear(memory.valid, False),
      ids=clear(memory.ids, -1),
      inserted_at=clear(memory.inserted_at, -1),
      last_used=clear(memory.last_used, -1),
      hits=clear(memory.hits, 0),
  )


def mark_used(memory: KVMemory, indices: jax.typing.ArrayLike) -> KVMemory:
  """Records one use of each slot in `indices` (any shape; -1 entries ignored).

  Advances the clock by one; every slot named gets `last_used = clock` (the
  new clock) and one hit per time it is named. Pass `LookupResult.indices`
  to count what a lookup returned.
  """
  _check_memory(memory)
  indices = _checks.as_array(indices, "indices")
  _checks.check_integer(indices, "indices")
  flat = indices.reshape(-1).astype(jnp.int32)
  n = memory.num_slots
  target = jnp.where((flat >= 0) & (flat < n), flat, n)
  target = jnp.where(memory.valid[jnp.clip(target, 0, n - 1)], target, n)
  clock = memory.clock + 1
  return memory.replace(
      last_used=memory.last_used.at[target].set(clock, mode="drop"),
      hits=memory.hits.at[target].add(1, mode="drop"),
      clock=clock,
  )


def size(memory: KVMemory) -> jax.Array:
  """Number of items in memory, [] int32."""
  _check_memory(memory)
  return jnp.sum(memory.valid, dtype=jnp.int32)


def _check_k(k, n: int) -> int:
  k = _checks.integer(k, "k")
  if k > n:
    raise ValueError(f"k must be at most the slot count N={n}; got k={k}")
  return k


def _check_metric(metric: str) -> None:
  if metric not in METRICS:
    raise ValueError(f"metric must be one of {METRICS}; got {metric!r}")


def _check_chunk_size(chunk_size) -> int | None:
  if chunk_size is None:
    return None
  return _checks.integer(chunk_size, "chunk_size", what="or None")


def _normalize(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + _NORM_EPSILON)


# How `top_k_slots` finds the exact top-k without a top-k over every score.
# Slots are grouped in blocks of _BLOCK. The k best items lie in the k blocks
# with the highest block maximum (ties to the lower block): each block ranked
# above an item's block holds an item ranked above that item, so fewer than k
# blocks can outrank it. Pass 1 is a plain matmul per chunk reduced to block
# maxima (no top-k, no sort); the k best blocks are found among them, two
# levels deep (super-blocks of _SUPER blocks, same argument); pass 2 rescores
# the k x _BLOCK candidates of each query and takes their top k.
#
# The kernel works on a leading batch axis (queries [B, Q, Dk]; keys [N, Dk]
# shared by all B, or [B, N, Dk]); under `jax.vmap` a custom rule folds the
# mapped axis into it, so the chunks stay dynamic slices (vmap's default rule
# would turn them into gathers, several times slower).
_BLOCK = 32
_SUPER = 64
# Chunks scored by independent matmuls in one loop step: XLA:CPU runs
# independent ops concurrently, so this is how one device uses several cores.
_STREAMS = 2
# The block-maxima buffer stays under this fraction of the key table; more
# queries than fit are processed in groups, but never fewer than
# _MIN_QUERY_GROUP per pass: with small keys (Dk = 16, a transformer head) a
# pass over the table costs few flops per byte read, so it pays to score many
# queries per pass (the buffer is then at most _MIN_QUERY_GROUP x N / 8 bytes).
_BLOCK_MAX_FRACTION = 1 / 16
_MIN_QUERY_GROUP = 256
# Gathered key elements per rescoring step (bounds the pass-2 buffer).
_RESCORE_ELEMENTS = 1 << 21
# Per-stream chunk: scores computed by one matmul, and key elements it reads.
# The keys of a step stay within about one core's L2 (1 MB of float32): with
# 128-wide keys and 256 queries, 2,048 slots per stream instead of 4,096 made
# the kernel 1.08x faster over one 1M-slot table and 1.15-1.5x over 8-32
# tables of 64k (2 cores, side by side); smaller keys were not affected.
_CHUNK_SCORES = 1 << 20
_CHUNK_KEY_ELEMENTS = 1 << 18
_HIGHEST = jax.lax.Precision.HIGHEST
# With one table per batch entry (one per sequence and head, say), the kernel
# walks the entries one by one (`lax.map`), each with the chunk of a single
# table, provided each table spans _MIN_MAPPED_SLOTS slots or more; smaller
# tables keep the batched form (`bqd,bcd->bqc`), whose loop is short anyway. A
# batched matmul of B chunks is slower than B single-table ones: on the
# 2-core Zen 3 VM (2026-12-07, 256 queries per table, side by side, results
# identical, best of 6-8 calls) mapping was 1.38x faster for 2 tables of 64k x
# 16, 1.31x for 4 x 64k x 16, 1.23x for 4 x 64k x 64, 1.31x for 8 x 64k x 16,
# 1.43x for 2 x 1M x 16, 1.25x for 4 x 8k x 16 and 1.12x for 8 x 4k x 16.
# (Earlier, on a Zen 4 VM, only tables whose batched chunk fell under 512
# slots were mapped: 32 tables of 64k x 128 1.75x, 16 tables 1.45x; 8 such
# tables with a batched chunk of 512 were 0.93x mapped, and 32 tables of 2k
# slots 0.88x.)
_MIN_MAPPED_SLOTS = 4096


def _query_group_size(key_dim: int, itemsize: int) -> int:
  """Queries per pass over the table; depends on the key layout only, never on N."""
  per_query = 4 / _BLOCK  # bytes of block maxima per slot and query
  return max(_MIN_QUERY_GROUP, int(_BLOCK_MAX_FRACTION * key_dim * itemsize / per_query))


def _stream_chunk(num_queries: int, key_dim: int, chunk_size: int | None,
                  batch: int = 1) -> int:
  """Slots per stream and step; `num_queries` x `batch` queries share each step."""
  if chunk_size is None:
    chunk = min(_CHUNK_SCORES // max(num_queries * batch, 1),
                _CHUNK_KEY_ELEMENTS // (key_dim * batch))
  else:
    chunk = chunk_size // _STREAMS
  return max(_BLOCK, chunk // _BLOCK * _BLOCK)


def _block_maxima(keys: jax.Array, valid: jax.Array, queries: jax.Array, metric: str,
                  chunk: int) -> jax.Array:
  """Pass 1: [B, Q, NB'] float32 maximum score per block of _BLOCK slots.

  keys [N, Dk] and valid [N] (shared) or [B, N, Dk] and [B, N]; queries
  [B, Q, Dk]. NB' is the block count rounded up to a multiple of _SUPER;
  invalid slots and padding score -inf.
  """
  shared = keys.ndim == 2
  n = keys.shape[-2]
  b, q = queries.shape[:2]
  num_blocks = -(-n // _BLOCK)
  padded_blocks = -(-num_blocks // _SUPER) * _SUPER

  def maxima(start, size):
    kc = jax.lax.dynamic_slice_in_dim(keys, start, size, axis=keys.ndim - 2)
    vc = jax.lax.dynamic_slice_in_dim(valid, start, size, axis=valid.ndim - 1)
    if metric == "cosine":
      kc = _normalize(kc).astype(keys.dtype)
    spec = "bqd,cd->bqc" if shared else "bqd,bcd->bqc"
    s = jnp.einsum(spec, queries, kc, precision=_HIGHEST, preferred_element_type=jnp.float32)
    s = jnp.where(vc[..., None, :], s, -jnp.inf)
    if size % _BLOCK:
      s = jnp.pad(s, ((0, 0), (0, 0), (0, -size % _BLOCK)), constant_values=-jnp.inf)
    return s.reshape(b, q, -1, _BLOCK).max(axis=-1)

  def put(table, start, size):
    return jax.lax.dynamic_update_slice_in_dim(table, maxima(start, size), start // _BLOCK,
                                               axis=2)

  table = jnp.full((b, q, padded_blocks), -jnp.inf, jnp.float32)
  steps = n // (_STREAMS * chunk)
  per_stream = steps * chunk
  if steps:
    def body(i, table):
      for stream in range(_STREAMS):
        table = put(table, stream * per_stream + i * chunk, chunk)
      return table
    table = jax.lax.fori_loop(0, steps, body, table)
  start = _STREAMS * per_stream
  while start < n:  # the tail: fewer than _STREAMS chunks
    size = min(chunk, n - start)
    table = put(table, start, size)
    start += size
  return table


def top_k_by_groups(x: jax.Array, k: int, group: int) -> tuple[jax.Array, jax.Array]:
  """What `jax.lax.top_k(x, k)` returns (ties: the lower index), via maxima of groups.

  The k best entries lie in the k groups of `group` consecutive entries with
  the highest maximum (ties: the lower group): each group ranked above an
  entry's group holds an entry ranked above it. So a top-k over the n /
  group maxima and one over the k x group entries of the chosen groups (in
  ascending order, which keeps the ties) replace the top-k over all n, which
  XLA:CPU runs slowly for small k. The last axis must be a multiple of
  `group` and hold at least k groups.

  Returns:
    (values [..., k], indices [..., k] int32), best first.
  """
  lead = x.shape[:-1]
  grouped = x.reshape(*lead, -1, group)
  groups = jnp.sort(jax.lax.top_k(grouped.max(axis=-1), k)[1], axis=-1)
  candidates = jnp.take_along_axis(grouped, groups[..., None], axis=-2)
  top, where = jax.lax.top_k(candidates.reshape(*lead, -1), k)
  first = jnp.take_along_axis(groups, where // group, axis=-1) * group
  return top, (first + where % group).astype(jnp.int32)


def _best_blocks(maxima: jax.Array, count: int) -> jax.Array:
  """The `count` blocks of highest maximum (ties: lower block), [..., count] ascending."""
  if maxima.shape[-1] <= 4 * count * _SUPER:
    blocks = jax.lax.top_k(maxima, count)[1]
  else:
    blocks = top_k_by_groups(maxima, count, _SUPER)[1]
  return jnp.sort(blocks, axis=-1).astype(jnp.int32)


def _rescore(keys: jax.Array, valid: jax.Array, queries: jax.Array, blocks: jax.Array,
             metric: str) -> tuple[jax.Array, jax.Array]:
  """Pass 2: scores and slots of every slot in `blocks`, in ascending slot order.

  keys [N, Dk] and valid [N] (shared) or [B, N, Dk] and [B, N]; queries
  [B, Q, Dk]; blocks [B, Q, J]. Returns ([B, Q, C] float32 scores, -inf for
  invalid slots; [B, Q, C] int32 slots), C = J x _BLOCK.
  """
  n, d = keys.shape[-2:]
  b, q = queries.shape[:2]
  width = blocks.shape[-1] * _BLOCK
  shared = keys.ndim == 2
  owner = jnp.repeat(jnp.arange(b, dtype=jnp.int32), q)

  def one(args):
    query, query_blocks, table = args
    slots = (query_blocks[:, None] * _BLOCK
             + jnp.arange(_BLOCK, dtype=jnp.int32)).reshape(-1)
    safe = jnp.minimum(slots, n - 1)
    where = safe if shared else (table, safe)
    ok = (slots < n) & valid[where]
    rows = keys[where].astype(jnp.float32)
    if metric == "cosine":  # rounded to the key dtype, as in pass 1
      rows = _normalize(rows).astype(keys.dtype).astype(jnp.float32)
    s = jnp.matmul(rows, query.astype(jnp.float32), precision=_HIGHEST)
    return jnp.where(ok, s, -jnp.inf), slots

  batch = max(1, _RESCORE_ELEMENTS // (width * d))
  scores, slots = jax.lax.map(
      one, (queries.reshape(b * q, d), blocks.reshape(b * q, -1), owner), batch_size=batch)
  return scores.reshape(b, q, width), slots.reshape(b, q, width)


def _top_k_group(keys, valid, queries, k, metric, chunk):
  count = min(k, -(-keys.shape[-2] // _BLOCK))
  blocks = _best_blocks(_block_maxima(keys, valid, queries, metric, chunk), count)
  scores, slots = _rescore(keys, valid, queries, blocks, metric)
  top, where = jax.lax.top_k(scores, k)
  return top, jnp.take_along_axis(slots, where, axis=-1)


def _exact_top_k(keys, valid, queries, k, metric, chunk_size, group):
  """keys [N, Dk] or [B, N, Dk], queries [B, Q, Dk] -> ([B, Q, k], [B, Q, k])."""
  b, q, d = queries.shape
  if not b * q:  # nothing to search for (the kernel below reshapes by B and Q)
    return jnp.full((b, q, k), -jnp.inf, jnp.float32), jnp.full((b, q, k), -1, jnp.int32)
  if keys.ndim == 3 and b > 1 and chunk_size is None and keys.shape[1] >= _MIN_MAPPED_SLOTS:
    def one_table(args):
      scores, slots = _exact_top_k(args[0], args[1], args[2][None], k, metric, None, group)
      return scores[0], slots[0]
    return jax.lax.map(one_table, (keys, valid, queries))
  chunk = _stream_chunk(min(q, group), d, chunk_size, batch=b)
  if q <= group:
    return _top_k_group(keys, valid, queries, k, metric, chunk)
  groups = -(-q // group)
  padded = jnp.pad(queries, ((0, 0), (0, groups * group - q), (0, 0)))
  padded = jnp.moveaxis(padded.reshape(b, groups, group, d), 1, 0)
  scores, slots = jax.lax.map(lambda g: _top_k_group(keys, valid, g, k, metric, chunk), padded)
  unfold = lambda x: jnp.moveaxis(x, 0, 1).reshape(b, groups * group, k)[:, :q]
  return unfold(scores), unfold(slots)


def _select(keys, valid, queries, k, metric, chunk_size, group):
  """`_exact_top_k` that stays a batched kernel under any number of `jax.vmap`s.

  The choice is constant under differentiation (zero tangents).
  """

  @jax.custom_batching.custom_vmap
  def run(keys, valid, queries):
    return _exact_top_k(keys, valid, queries, k, metric, chunk_size, group)

  @run.def_vmap
  def _fold(size, in_batched, keys, valid, queries):
    keys_b, valid_b, queries_b = in_batched
    if valid_b and not keys_b:  # rare: one key table under many masks
      keys, keys_b = jnp.broadcast_to(keys, (size, *keys.shape)), True
    if keys_b and not valid_b:
      valid = jnp.broadcast_to(valid, (size, *valid.shape))
    if not queries_b:
      queries = jnp.broadcast_to(queries, (size, *queries.shape))
    b, q, d = queries.shape[1:]
    n = keys.shape[-2]
    if not keys_b:
      if keys.ndim == 2:  # a shared table: the mapped axis is more batch
        out = run(keys, valid, queries.reshape(size * b, q, d))
        return tuple(x.reshape(size, b, q, k) for x in out), (True, True)
      # One table per batch entry, the same for every mapped index: fold into Q.
      out = run(keys, valid, jnp.moveaxis(queries, 0, 1).reshape(b, size * q, d))
      return (tuple(jnp.moveaxis(x.reshape(b, size, q, k), 1, 0) for x in out),
              (True, True))
    if keys.ndim == 3:  # one table per mapped index, shared by its batch: fold B into Q
      out = run(keys, valid, queries.reshape(size, b * q, d))
    else:  # one table per (mapped index, batch entry)
      out = run(keys.reshape(size * b, n, d), valid.reshape(size * b, n),
                queries.reshape(size * b, q, d))
    return tuple(x.reshape(size, b, q, k) for x in out), (True, True)

  @jax.custom_jvp
  def constant(keys, valid, queries):
    return run(keys, valid, queries)

  @constant.defjvp
  def _zero_tangents(primals, tangents):
    del tangents
    scores, slots = constant(*primals)
    return (scores, slots), (jnp.zeros_like(scores),
                             np.zeros(slots.shape, jax.dtypes.float0))

  return constant(keys, valid, queries)


def top_k_slots(keys: jax.Array, valid: jax.Array, queries: jax.Array, k: int, *,
                metric: str = "inner_product", chunk_size: int | None = None,
                slot_offset: jax.typing.ArrayLike = 0) -> tuple[jax.Array, jax.Array]:
  """Exact top-k of `queries @ keys.T` over valid slots, chunk by chunk.

  The building block of `lookup` (and of the sharded store, which runs it on
  each shard). At most `chunk_size` slots are scored at a time, so the Q x N
  score matrix is never built whole: a first pass keeps only each block's
  maximum score (a buffer of at most 1/16 of the key table, or of 256
  queries x N / 8 bytes where that is more: small keys), a second pass
  rescores the slots of the k best blocks per query (see the note above).
  Scores are those of the second pass (float32, HIGHEST precision); their
  gradient flows to `queries` and the chosen keys, the choice is constant.

  Args:
    keys: [N, Dk] keys.
    valid: [N] bool.
    queries: [Q, Dk] queries (already normalised for cosine).
    k: results per query, k <= N.
    metric: "inner_product" or "cosine" (keys are normalised chunk by chunk).
    chunk_size: slots scored at once; default keeps Q x chunk and chunk x Dk
      near 2M elements.
    slot_offset: added to the returned slot indices.

  Returns:
    (scores [Q, k] float32, slots [Q, k] int32); -inf and -1 past the valid items.
  """
  keys = _checks.floating(keys, "keys", 2, "[N, Dk]")
  valid = _checks.as_array(valid, "valid")
  _checks.check_rank(valid, 1, "valid", "[N]")
  _checks.check_dim(valid, 0, keys.shape[0], "valid", "the slot count N of keys")
  if valid.dtype != jnp.bool_:
    raise TypeError(f"valid must be a bool mask; got dtype {valid.dtype}")
  queries = _checks.floating(queries, "queries", 2, "[Q, Dk]")
  _checks.check_dim(queries, 1, keys.shape[1], "queries", "the key size Dk of keys")
  k = _check_k(k, keys.shape[0])
  _check_metric(metric)
  chunk_size = _check_chunk_size(chunk_size)
  d = queries.shape[1]
  if metric == "cosine":
    queries = _normalize(queries)
  queries = queries.astype(keys.dtype)
  group = _query_group_size(d, jnp.dtype(keys.dtype).itemsize)
  scores, slots = _select(keys, valid, queries[None], k, metric, chunk_size, group)
  scores, slots = scores[0], slots[0]
  # Invalid slots score -inf; a valid score that overflowed to +inf is found.
  found = scores > -jnp.inf
  # The same scores, now differentiable in the queries and the chosen keys.
  rows = keys[jnp.where(found, slots, 0)].astype(jnp.float32)
  if metric == "cosine":
    rows = _normalize(rows).astype(keys.dtype).astype(jnp.float32)
  live = jnp.einsum("qd,qkd->qk", queries.astype(jnp.float32), rows, precision=_HIGHEST)
  scores = jnp.where(jnp.isfinite(scores), scores + (live - jax.lax.stop_gradient(live)),
                     scores)  # inf - inf would be NaN
  slots = jnp.where(found, slots + slot_offset, -1).astype(jnp.int32)
  return scores, slots


def lookup(memory: KVMemory, queries: jax.typing.ArrayLike, k: int, *,
           metric: str = "inner_product", chunk_size: int | None = None) -> LookupResult:
  """Exact top-k items for each query.

  Args:
    memory: the memory.
    queries: [Q, Dk] queries (or [Dk] for one; the result then has no Q axis).
    k: results per query, 1 <= k <= N.
    metric: "inner_product" (maximum inner product search) or "cosine".
    chunk_size: slots scored at once (default: Q x chunk <= 4M scores).

  Returns:
    A `LookupResult`, best first.
  """
  _check_memory(memory)
  queries = _checks.floating(queries, "queries", (1, 2), "[Q, Dk] or [Dk]")
  _checks.check_dim(queries, -1, memory.key_dim, "queries", "the key size Dk of memory")
  single = queries.ndim == 1  # k, metric and chunk_size: checked by top_k_slots
  if single:
    queries = queries[None]
  scores, slots = top_k_slots(memory.keys, memory.valid, queries, k, metric=metric,
                              chunk_size=chunk_size)
  result = gather(memory, scores, slots)
  if single:
    result = jax.tree.map(lambda x: x[0], result)
  return result


def gather(memory: KVMemory, scores: jax.Array, slots: jax.Array) -> LookupResult:
  """Builds a `LookupResult` from scores and slot indices (-1 = not found)."""
  found = slots >= 0
  safe = jnp.clip(slots, 0, memory.num_slots - 1)
  values = memory.values[safe]
  values = jnp.where(found[..., None], values, jnp.zeros((), values.dtype))
  ids = jnp.where(found, memory.ids[safe], -1)
  return LookupResult(scores=scores, indices=slots, ids=ids, values=values, found=found)


def attend(memory: KVMemory, queries: jax.typing.ArrayLike, k: int, *,
           metric: str = "inner_product", scale: jax.typing.ArrayLike = 1.0,
           chunk_size: int | None = None) -> jax.Array:
  """Differentiable read: softmax over the top-k scores, weighted sum of values.

  The top-k selection is a constant (no gradient flows through the choice);
  scores are recomputed from the selected keys, so gradients reach `queries`,
  `scale` and, through the gather, the memory's keys and values.

  Args:
    memory: the memory (floating values).
    queries: [Q, Dk] or [Dk].
    k: number of items attended per query.
    metric: "inner_product" or "cosine".
    scale: multiplies the scores before the softmax (an inverse temperature).
    chunk_size: passed to `lookup`.

  Returns:
    [Q, Dv] (or [Dv]) read vectors; zeros for a query that finds nothing.
  """
  _check_memory(memory)
  if not jnp.issubdtype(memory.values.dtype, jnp.floating):
    raise TypeError(f"attend needs floating memory.values; got {memory.values.dtype}")
  found = lookup(jax.lax.stop_gradient(memory), jax.lax.stop_gradient(queries), k,
                 metric=metric, chunk_size=chunk_size)
  queries = jnp.asarray(queries)
  dtype = _checks.compute_dtype(queries.dtype, memory.keys.dtype)
  safe = jnp.clip(found.indices, 0, memory.num_slots - 1)
  keys = memory.keys[safe].astype(dtype)  # [(Q,) K, Dk]
  q = queries.astype(dtype)
  if metric == "cosine":
    keys, q = _normalize(keys).astype(dtype), _normalize(q).astype(dtype)
  scores = jnp.einsum("...d,...kd->...k", q, keys) * scale
  weights = jax.nn.softmax(scores, axis=-1, where=found.found)
  weights = jnp.where(found.found, weights, 0)
  values = memory.values[safe].astype(dtype)
  out = jnp.einsum("...k,...kv->...v", weights, values)
  return out.astype(jnp.result_type(queries.dtype, memory.values.dtype))
