"""The key-value store (`memjax.store`) sharded by slot over a device mesh.

A `KVMemory` whose per-slot tables are split over one mesh axis: shard s of S
holds slots [s N/S, (s+1) N/S) of `keys`, `values`, `valid`, `ids`, ... with
`NamedSharding(mesh, P(axis, None))` (and `P(axis)` for the [N] tables); the
scalars `clock` and `next_id` are replicated. Every operation here returns
exactly what the same `memjax.store` operation returns on the unsharded
memory (same slots, ids, scores, values; the semantics are documented in
`memjax.store`), while each device only touches its own slots:

* `lookup`: every shard finds its best blocks of slots by a local matmul pass
  (`jax.shard_map`), the shards agree on the global best blocks by exchanging
  Q x K block maxima, every shard rescores the winning blocks it owns, and a
  merge of Q x K candidates per shard gives the result. Nothing of size Q x N
  or N x Dk ever moves between devices (a plain `top_k(q @ keys.T)` on a
  sharded table would gather the Q x N score matrix onto every device).
* `insert`: each shard proposes its first B slots in eviction order, the B
  globally first are chosen from the S x B proposals, and each shard writes
  the items that landed in its slots.
* `update`, `delete`, `mark_used`: each shard applies the ids or slot indices
  it owns; no communication.

Multi-host: build the mesh over `jax.devices()` after
`jax.distributed.initialize`; the functions are the same. Inputs given as
host (NumPy) arrays are replicated with `replicate`.

Shape legend: N slots (a multiple of 32 x the shard count S), Dk key size,
Dv value size, B items in a batch, Q queries, K results per query.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from memjax import _checks
from memjax import store
from memjax.store import KVMemory
from memjax.store import LookupResult

MEMORY_AXIS = "memory"
# Slots per shard must be a multiple of this, so that shards hold whole
# blocks of the store's lookup and their blocks are the unsharded ones.
SLOT_MULTIPLE = store._BLOCK
_SLOT_FIELDS = ("keys", "values", "valid", "ids", "inserted_at", "last_used", "hits")


def _check_layout(mesh: Mesh, axis: str, num_slots: int | None = None) -> int:
  if not isinstance(mesh, Mesh):
    raise TypeError(f"mesh must be a jax.sharding.Mesh; got {type(mesh).__name__}")
  if axis not in mesh.shape:
    raise ValueError(f"axis must name a mesh axis {tuple(mesh.shape)}; got {axis!r}")
  shards = mesh.shape[axis]
  if num_slots is not None and num_slots % (shards * SLOT_MULTIPLE):
    raise ValueError(
        f"num_slots must be a multiple of {SLOT_MULTIPLE} x the {shards} shards of mesh axis "
        f"{axis!r} (= {shards * SLOT_MULTIPLE}); got {num_slots}")
  return shards


def specs(axis: str = MEMORY_AXIS, policy: str = "fifo") -> KVMemory:
  """The `PartitionSpec` of every field of a sharded memory, as a KVMemory pytree."""
  return KVMemory(keys=P(axis, None), values=P(axis, None), valid=P(axis), ids=P(axis),
                  inserted_at=P(axis), last_used=P(axis), hits=P(axis), clock=P(),
                  next_id=P(), policy=policy)


def shardings(mesh: Mesh, axis: str = MEMORY_AXIS, policy: str = "fifo") -> KVMemory:
  """The `NamedSharding` of every field of a sharded memory, as a KVMemory pytree."""
  _check_layout(mesh, axis)
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs(axis, policy))


def init(num_slots: int, key_dim: int, value_dim: int, *, mesh: Mesh,
         axis: str = MEMORY_AXIS, policy: str = "fifo",
         key_dtype: jax.typing.DTypeLike = jnp.float32,
         value_dtype: jax.typing.DTypeLike = jnp.float32) -> KVMemory:
  """An empty memory created directly in its shards (no device holds it whole).

  Args: as `memjax.store.init`, plus the `mesh` and the mesh `axis` the slots
  are split over; `num_slots` must be a multiple of 32 x the axis size.
  """
  _check_layout(mesh, axis, num_slots)
  make = functools.partial(store.init, num_slots, key_dim, value_dim, policy=policy,
                           key_dtype=key_dtype, value_dtype=value_dtype)
  return jax.jit(make, out_shardings=shardings(mesh, axis, policy))()


def shard(memory: KVMemory, mesh: Mesh, axis: str = MEMORY_AXIS) -> KVMemory:
  """Places an (unsharded) memory onto the mesh, split by slot."""
  _check_memory(memory)
  _check_layout(mesh, axis, memory.num_slots)
  return jax.device_put(memory, shardings(mesh, axis, memory.policy))


def replicate(x: jax.typing.ArrayLike, mesh: Mesh) -> jax.Array:
  """A host array as an array replicated over `mesh` (what multi-host jit needs).

  Every process must pass the same value. Arrays already on devices (and
  tracers) are returned as they are.
  """
  if isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
    return x
  return jax.make_array_from_process_local_data(NamedSharding(mesh, P()), np.asarray(x))


def _check_memory(memory: KVMemory) -> None:
  if not isinstance(memory, KVMemory):
    raise TypeError(f"memory must be a memjax.store.KVMemory; got {type(memory).__name__}")
  _checks.check_rank(memory.keys, 2, "memory.keys", "[N, Dk]")


def _run(fn, memory: KVMemory, args, out_specs, mesh: Mesh, axis: str, gathered: bool = False):
  """`fn(local_memory, offset, *args)` on every shard; `args` are replicated.

  `gathered`: the replicated outputs are computed from `all_gather` results,
  identically on every shard, which shard_map cannot infer by itself.
  """
  shards = _check_layout(mesh, axis, memory.num_slots)
  local_slots = memory.num_slots // shards

  def body(local, *rest):
    offset = jax.lax.axis_index(axis).astype(jnp.int32) * local_slots
    return fn(local, offset, *rest)

  in_specs = (specs(axis, memory.policy), *(P() for _ in args))
  return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                       check_vma=not gathered)(memory, *args)


# ------------------------------------------------------------------- lookup


def _local_candidates(keys, valid, queries, k, metric, chunk, axis, offset):
  """One shard's part of `store.top_k_slots` for one query group."""
  local_slots = keys.shape[0]
  local_blocks = local_slots // store._BLOCK
  shards = jax.lax.axis_size(axis)
  count = min(k, local_blocks * shards)
  # 1. This shard's best blocks (ascending), with their maxima.
  maxima = store._block_maxima(keys, valid, queries[None], metric, chunk)[0]
  mine = store._best_blocks(maxima, min(k, local_blocks))
  mine_max = jnp.take_along_axis(maxima, mine, axis=1)
  first_block = offset // store._BLOCK
  # 2. The global best blocks: shard order = block order, so top_k's tie rule
  #    (lower position first) is the store's (lower block first).
  all_max = _gather_rows(mine_max, axis)
  all_blocks = _gather_rows(mine + first_block, axis)
  where = jax.lax.top_k(all_max, count)[1]
  best = jnp.sort(jnp.take_along_axis(all_blocks, where, axis=1), axis=1)
  # 3. Rescore the winners this shard owns, exactly as the unsharded store does.
  local = best - first_block
  owned = (local >= 0) & (local < local_blocks)
  scores, slots = store._rescore(keys, valid, queries[None], jnp.where(owned, local, 0)[None],
                                 metric)
  scores, slots = scores[0], slots[0]
  scores = jnp.where(jnp.repeat(owned, store._BLOCK, axis=1), scores, -jnp.inf)
  top, pos = jax.lax.top_k(scores, k)
  return top, jnp.take_along_axis(slots, pos, axis=1) + offset


def _gather_rows(x, axis):
  """[Q, C] per shard -> [Q, S C], shard 0 first."""
  gathered = jax.lax.all_gather(x, axis)  # [S, Q, C]
  return jnp.moveaxis(gathered, 0, 1).reshape(x.shape[0], -1)


@functools.partial(jax.jit, static_argnames=("k", "metric", "chunk_size", "mesh", "axis"))
def _lookup(memory, queries, k, metric, chunk_size, mesh, axis):
  d = memory.key_dim

  def fn(local, offset, queries):
    if metric == "cosine":
      queries = store._normalize(queries)
    queries = queries.astype(local.keys.dtype)
    q = queries.shape[0]
    group = store._query_group_size(d, jnp.dtype(local.keys.dtype).itemsize)
    chunk = store._stream_chunk(min(q, group), d, chunk_size)
    run = functools.partial(_local_candidates, local.keys, local.valid, k=k, metric=metric,
                            chunk=chunk, axis=axis, offset=offset)
    if q <= group:
      top, slots = run(queries)
    else:
      groups = -(-q // group)
      padded = jnp.pad(queries, ((0, groups * group - q), (0, 0))).reshape(groups, group, d)
      top, slots = jax.lax.map(run, padded)
      top, slots = top.reshape(-1, k)[:q], slots.reshape(-1, k)[:q]
    # 4. Merge the shards' candidates: shard order = slot order.
    all_top, all_slots = _gather_rows(top, axis), _gather_rows(slots, axis)
    scores, where = jax.lax.top_k(all_top, k)
    slots = jnp.where(scores > -jnp.inf, jnp.take_along_axis(all_slots, where, axis=1), -1)
    # 5. Values and ids come from the owning shard.
    n_local = local.num_slots
    local_slot = slots - offset
    owned = (slots >= 0) & (local_slot >= 0) & (local_slot < n_local)
    safe = jnp.clip(local_slot, 0, n_local - 1)
    owner = jax.lax.all_gather(owned, axis)  # [S, Q, K]
    ids = jax.lax.all_gather(jnp.where(owned, local.ids[safe], -1), axis)
    values = jax.lax.all_gather(local.values[safe], axis)  # [S, Q, K, Dv]
    shard_of = jnp.argmax(owner, axis=0)
    ids = jnp.where(owner.any(axis=0), jnp.take_along_axis(ids, shard_of[None], 0)[0], -1)
    values = jnp.take_along_axis(values, shard_of[None, ..., None], 0)[0]
    found = slots >= 0
    values = jnp.where(found[..., None], values, jnp.zeros((), values.dtype))
    return LookupResult(scores=scores, indices=slots.astype(jnp.int32), ids=ids,
                        values=values, found=found)

  return _run(fn, memory, (queries,), P(), mesh, axis, gathered=True)


def lookup(memory: KVMemory, queries: jax.typing.ArrayLike, k: int, *, mesh: Mesh,
           axis: str = MEMORY_AXIS, metric: str = "inner_product",
           chunk_size: int | None = None) -> LookupResult:
  """Exact top-k items for each query; equals `memjax.store.lookup` on the whole memory.

  Args:
    memory: a memory sharded over `axis` of `mesh` (see `init`, `shard`).
    queries: [Q, Dk] (or [Dk]) queries, replicated.
    k: results per query, 1 <= k <= N.
    mesh: the mesh.
    axis: the mesh axis the slots are split over.
    metric: "inner_product" or "cosine".
    chunk_size: slots each shard scores at once (as in `memjax.store.lookup`).

  Returns:
    A replicated `LookupResult`, best first; slot indices are global.
  """
  _check_memory(memory)
  queries = _checks.floating(replicate(queries, mesh), "queries", (1, 2), "[Q, Dk] or [Dk]")
  _checks.check_dim(queries, -1, memory.key_dim, "queries", "the key size Dk of memory")
  k = store._check_k(k, memory.num_slots)
  store._check_metric(metric)
  chunk_size = store._check_chunk_size(chunk_size)
  single = queries.ndim == 1
  if single:
    queries = queries[None]
  if queries.shape[0] == 0:  # nothing to search for
    none = jnp.zeros((0, k), jnp.int32)
    result = LookupResult(scores=jnp.zeros((0, k), jnp.float32), indices=none, ids=none,
                          values=jnp.zeros((0, k, memory.value_dim), memory.values.dtype),
                          found=jnp.zeros((0, k), bool))
  else:
    result = _lookup(memory, queries, k, metric, chunk_size, mesh, axis)
  if single:
    result = jax.tree.map(lambda x: x[0], result)
  return result


# ------------------------------------------------------------------ writing


def _order_keys(memory: KVMemory, slots: jax.Array, offset) -> tuple[jax.Array, ...]:
  """Sort keys of `slots` under the memory's eviction policy (see store.eviction_order)."""
  occupied = memory.valid[slots].astype(jnp.int32)
  inserted, used, hits = memory.inserted_at[slots], memory.last_used[slots], memory.hits[slots]
  global_slot = slots + offset
  if memory.policy == "fifo":
    return (occupied, inserted, global_slot)
  if memory.policy == "lru":
    return (occupied, used, inserted, global_slot)
  return (occupied, hits, used, inserted, global_slot)


def _global_order(local: KVMemory, offset, count: int, axis: str) -> jax.Array:
  """The first `count` global slots an insert fills: [count] int32."""
  proposals = store.eviction_order(local, min(count, local.num_slots))
  keys = tuple(jax.lax.all_gather(x, axis).reshape(-1)
               for x in _order_keys(local, proposals, offset))
  return jax.lax.sort(keys, num_keys=len(keys))[-1][:count]


@functools.partial(jax.jit, static_argnames=("mesh", "axis", "auto_ids"))
def _insert(memory, keys, values, ids, mask, mesh, axis, auto_ids):
  def fn(local, offset, keys, values, ids, mask):
    n = local.num_slots * jax.lax.axis_size(axis)
    batch = keys.shape[0]
    take = min(batch, n)
    # The same bookkeeping as store.insert, over the global eviction order.
    rank = jnp.cumsum(mask.astype(jnp.int32)) - 1
    count = rank[-1] + 1
    if auto_ids:
      ids = local.next_id + rank
    dropped = jnp.maximum(count - n, 0)
    keep = mask & (rank >= dropped)
    order = _global_order(local, offset, take, axis)
    target = jnp.where(keep, order[jnp.clip(rank - dropped, 0, take - 1)], -1)
    time = local.clock + rank
    local_target = target - offset
    mine = keep & (local_target >= 0) & (local_target < local.num_slots)
    local_target = jnp.where(mine, local_target, local.num_slots)

    def put(table, rows):
      return table.at[local_target].set(rows.astype(table.dtype), mode="drop")

    next_id = jnp.maximum(local.next_id, jnp.max(jnp.where(mask, ids + 1, 0), initial=0))
    return local.replace(
        keys=put(local.keys, keys), values=put(local.values, values),
        valid=put(local.valid, jnp.ones((batch,), bool)), ids=put(local.ids, ids),
        inserted_at=put(local.inserted_at, time), last_used=put(local.last_used, time),
        hits=put(local.hits, jnp.zeros((batch,), jnp.int32)),
        clock=local.clock + count, next_id=next_id.astype(jnp.int32))

  return _run(fn, memory, (keys, values, ids, mask), specs(axis, memory.policy), mesh, axis)


def insert(memory: KVMemory, keys: jax.typing.ArrayLike, values: jax.typing.ArrayLike, *,
           mesh: Mesh, axis: str = MEMORY_AXIS, ids: jax.typing.ArrayLike | None = None,
           mask: jax.typing.ArrayLike | None = None) -> KVMemory:
  """Adds a batch of items, evicting per the policy when full (`memjax.store.insert`).

  Args:
    memory: a sharded memory.
    keys: [B, Dk] keys; values: [B, Dv] values (replicated).
    mesh, axis: the layout of `memory`.
    ids: optional [B] int ids (unique, >= 0, not in memory); default: numbered
      from `memory.next_id` in batch order.
    mask: optional [B] bool; False rows are not inserted.

  Returns:
    The new sharded memory.
  """
  _check_memory(memory)
  keys = store._check_rows(replicate(keys, mesh), "keys", memory.key_dim, "key size Dk")
  batch = keys.shape[0]
  values = store._check_rows(replicate(values, mesh), "values", memory.value_dim,
                             "value size Dv", batch, floating=False)
  mask = store._batch_mask(None if mask is None else replicate(mask, mesh), batch)
  if batch == 0:
    return memory
  auto_ids = ids is None
  ids = (jnp.zeros((batch,), jnp.int32) if auto_ids
         else store._batch_ids(replicate(ids, mesh), "ids", batch))
  return _insert(memory, keys, values, ids, mask, mesh, axis, auto_ids)


@functools.partial(jax.jit, static_argnames=("mesh", "axis"))
def _update(memory, ids, new, mask, mesh, axis):
  def fn(local, offset, ids, new, mask):
    del offset
    return store.update(local, ids, mask=mask, **new)
  return _run(fn, memory, (ids, new, mask), specs(axis, memory.policy), mesh, axis)


def update(memory: KVMemory, ids: jax.typing.ArrayLike, *, mesh: Mesh,
           axis: str = MEMORY_AXIS, keys: jax.typing.ArrayLike | None = None,
           values: jax.typing.ArrayLike | None = None,
           mask: jax.typing.ArrayLike | None = None) -> KVMemory:
  """Replaces keys and/or values of the items with these ids (`memjax.store.update`).

  Each shard updates the ids it holds; absent ids are ignored.
  """
  _check_memory(memory)
  ids = store._batch_ids(replicate(ids, mesh), "ids")
  batch = ids.shape[0]
  if keys is None and values is None:
    raise ValueError("update needs keys or values (or both); got neither")
  mask = store._batch_mask(None if mask is None else replicate(mask, mesh), batch)
  new = {}
  if keys is not None:
    new["keys"] = store._check_rows(replicate(keys, mesh), "keys", memory.key_dim,
                                    "key size Dk", batch)
  if values is not None:
    new["values"] = store._check_rows(replicate(values, mesh), "values", memory.value_dim,
                                      "value size Dv", batch, floating=False)
  return _update(memory, ids, new, mask, mesh, axis)


@functools.partial(jax.jit, static_argnames=("mesh", "axis"))
def _delete(memory, ids, mask, mesh, axis):
  def fn(local, offset, ids, mask):
    del offset
    return store.delete(local, ids, mask=mask)
  return _run(fn, memory, (ids, mask), specs(axis, memory.policy), mesh, axis)


def delete(memory: KVMemory, ids: jax.typing.ArrayLike, *, mesh: Mesh,
           axis: str = MEMORY_AXIS, mask: jax.typing.ArrayLike | None = None) -> KVMemory:
  """Removes the items with these ids (`memjax.store.delete`); absent ids are ignored."""
  _check_memory(memory)
  ids = store._batch_ids(replicate(ids, mesh), "ids")
  mask = store._batch_mask(None if mask is None else replicate(mask, mesh), ids.shape[0])
  return _delete(memory, ids, mask, mesh, axis)


@functools.partial(jax.jit, static_argnames=("mesh", "axis"))
def _mark_used(memory, indices, mesh, axis):
  def fn(local, offset, indices):
    local_index = indices - offset
    inside = (indices >= 0) & (local_index >= 0) & (local_index < local.num_slots)
    return store.mark_used(local, jnp.where(inside, local_index, -1))
  return _run(fn, memory, (indices,), specs(axis, memory.policy), mesh, axis)


def mark_used(memory: KVMemory, indices: jax.typing.ArrayLike, *, mesh: Mesh,
              axis: str = MEMORY_AXIS) -> KVMemory:
  """Records one use of each global slot in `indices` (`memjax.store.mark_used`)."""
  _check_memory(memory)
  indices = _checks.as_array(replicate(indices, mesh), "indices")
  _checks.check_integer(indices, "indices")
  return _mark_used(memory, indices.reshape(-1).astype(jnp.int32), mesh, axis)


@functools.partial(jax.jit, static_argnames=("mesh", "axis"))
def _slots_of(memory, ids, mesh, axis):
  def fn(local, offset, ids):
    found = store.slots_of(local, ids)
    found = jnp.where(found >= 0, found + offset, -1)
    return jnp.max(jax.lax.all_gather(found, axis), axis=0)
  return _run(fn, memory, (ids,), P(), mesh, axis, gathered=True)


def slots_of(memory: KVMemory, ids: jax.typing.ArrayLike, *, mesh: Mesh,
             axis: str = MEMORY_AXIS) -> jax.Array:
  """Global slot of each id: [B] int32, -1 where absent (`memjax.store.slots_of`)."""
  _check_memory(memory)
  return _slots_of(memory, store._batch_ids(replicate(ids, mesh), "ids"), mesh, axis)


def size(memory: KVMemory) -> jax.Array:
  """Number of items in memory, [] int32."""
  _check_memory(memory)
  return jnp.sum(memory.valid, dtype=jnp.int32)


# ------------------------------------------------------------ checkpointing


def save(directory: str | os.PathLike, memory: KVMemory) -> None:
  """Writes a sharded memory with Orbax; each process writes the shards it holds.

  Args:
    directory: a new directory (absolute path, or relative to the working
      directory); it must not exist yet.
    memory: the memory.
  """
  import orbax.checkpoint as ocp

  _check_memory(memory)
  directory = os.path.abspath(os.fspath(directory))
  meta = {"policy": memory.policy, "num_slots": memory.num_slots,
          "key_dim": memory.key_dim, "value_dim": memory.value_dim,
          "key_dtype": jnp.dtype(memory.keys.dtype).name,
          "value_dtype": jnp.dtype(memory.values.dtype).name}
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    checkpointer.save(directory, ocp.args.Composite(
        tables=ocp.args.StandardSave(_as_dict(memory)), meta=ocp.args.JsonSave(meta)))


def restore(directory: str | os.PathLike, *, mesh: Mesh, axis: str = MEMORY_AXIS) -> KVMemory:
  """Reads a memory written by `save` onto `mesh`, which may have another shard count.

  Each device reads only its own slots.
  """
  import orbax.checkpoint as ocp

  directory = os.path.abspath(os.fspath(directory))
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    meta = checkpointer.restore(directory, ocp.args.Composite(meta=ocp.args.JsonRestore()))
    meta = meta["meta"]
    if isinstance(meta, str | bytes):
      meta = json.loads(meta)
    _check_layout(mesh, axis, meta["num_slots"])
    target = shardings(mesh, axis, meta["policy"])
    shapes = jax.eval_shape(lambda: store.init(
        meta["num_slots"], meta["key_dim"], meta["value_dim"], policy=meta["policy"],
        key_dtype=jnp.dtype(meta["key_dtype"]), value_dtype=jnp.dtype(meta["value_dtype"])))
    abstract = {name: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(target, name))
                for name, x in _as_dict(shapes).items()}
    tables = checkpointer.restore(directory, ocp.args.Composite(
        tables=ocp.args.StandardRestore(abstract)))["tables"]
  return KVMemory(**tables, policy=meta["policy"])


def _as_dict(memory: KVMemory) -> dict:
  return {name: getattr(memory, name) for name in (*_SLOT_FIELDS, "clock", "next_id")}
