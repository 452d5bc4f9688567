"""An approximate FIFO key-value memory: an inverted-file (IVF) index of fixed-size lists.

`memjax.store` searches exactly: every query scores every stored key, which
costs Q x N x Dk multiply-adds per lookup. `IVFMemory` trades exactness for
speed, as faiss's `IndexIVFFlat` does (Jegou, Douze, Schmid 2011; Johnson,
Douze, Jegou 2019): the key space is cut into C cells by C centroids
(k-means on a sample of keys, `kmeans`); each stored item goes into the list
of its nearest centroid, and a query scores only the items of the `probes`
lists whose centroids it is nearest to. Per query that is C + probes x L
scores instead of N.

Everything is a fixed-size array, so the index runs under `jax.jit`,
`jax.vmap` (one index per sequence and head) and `jax.lax.scan`:

* each list is a ring of L entries; an insert appends to the list of the
  item's nearest centroid, overwriting that list's oldest entry when full;
* the memory as a whole is FIFO with a capacity of N items, like a full
  `store.KVMemory` with policy "fifo": an item is live while fewer than N
  items were inserted after it (its insertion time is kept per entry);
* so the index holds the N most recent items except those pushed out of an
  overfull list (a list receiving more than L of the last N items keeps its
  most recent L): with L well above N / C (the mean list load) and balanced
  cells, few are lost. Items whose cell is not among a query's `probes`
  nearest are not found (the approximation proper).

Items are numbered by insertion time (0, 1, ... since `init` or `clear`),
like `store.KVMemory` ids assigned automatically.

Shape legend: C lists (cells), L entries per list, Dk key size, Dv value
size, B items in a batch, Q queries, K results per query, P probed lists.

References:
  Jegou, Douze, Schmid. Product quantization for nearest neighbor search.
    IEEE TPAMI 2011 (the IVF index, Sec. IV).
  Johnson, Douze, Jegou. Billion-scale similarity search with GPUs. IEEE
    Transactions on Big Data 2019.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from memjax import _checks
from memjax import store


@struct.dataclass
class IVFMemory:
  """Inverted lists of (key, value, insertion time) around fixed centroids.

  Attributes:
    centroids: [C, Dk] float32 cell centroids (fixed).
    keys: [C, L, Dk] float32 keys of the list entries.
    values: [C, L, Dv] their values.
    times: [C, L] int32 insertion time of each entry, -1 where empty.
    cursor: [C] int32 next position to write in each list (a ring).
    clock: [] int32 items inserted so far.
    capacity: N, the FIFO window (static).
    probes: P, lists a search visits by default (static).
  """
  centroids: jax.Array
  keys: jax.Array
  values: jax.Array
  times: jax.Array
  cursor: jax.Array
  clock: jax.Array
  capacity: int = struct.field(pytree_node=False, default=1)
  probes: int = struct.field(pytree_node=False, default=1)

  @property
  def num_lists(self) -> int:
    return self.keys.shape[-3]

  @property
  def list_size(self) -> int:
    return self.keys.shape[-2]


class SearchResult(NamedTuple):
  """What `search` returns for Q queries and K results each.

  Attributes:
    scores: [Q, K] float32 inner products, best first; -inf where not found.
    ids: [Q, K] int32 insertion times (item numbers); -1 where not found.
    keys: [Q, K, Dk] the items' keys; zeros where not found.
    values: [Q, K, Dv] the items' values; zeros where not found.
    found: [Q, K] bool.
  """
  scores: jax.Array
  ids: jax.Array
  keys: jax.Array
  values: jax.Array
  found: jax.Array


def init(centroids: jax.typing.ArrayLike, list_size: int, value_dim: int, capacity: int, *,
         probes: int = 1, value_dtype: jax.typing.DTypeLike = jnp.float32) -> IVFMemory:
  """An empty index over the cells of `centroids`.

  Args:
    centroids: [C, Dk] cell centroids (e.g. from `kmeans`).
    list_size: L >= 1 entries per list; a few times capacity / C.
    value_dim: Dv >= 1.
    capacity: N >= 1, the FIFO window in items.
    probes: P, lists a search visits unless told otherwise, 1 <= P <= C.
    value_dtype: dtype of the values.

  Returns:
    An empty `IVFMemory`.
  """
  centroids = _checks.floating(centroids, "centroids", (2,), "[C, Dk]").astype(jnp.float32)
  list_size = _checks.integer(list_size, "list_size")
  value_dim = _checks.integer(value_dim, "value_dim")
  capacity = _checks.integer(capacity, "capacity")
  c, d = centroids.shape
  probes = _checks.integer(probes, "probes", 1, c, "C, the list count")
  return IVFMemory(
      centroids=centroids,
      keys=jnp.zeros((c, list_size, d), jnp.float32),
      values=jnp.zeros((c, list_size, value_dim), value_dtype),
      times=jnp.full((c, list_size), -1, jnp.int32),
      cursor=jnp.zeros((c,), jnp.int32),
      clock=jnp.zeros((), jnp.int32),
      capacity=capacity, probes=probes)


def _check_index(index) -> None:
  if not isinstance(index, IVFMemory):
    raise TypeError(f"index must be a memjax.ivf.IVFMemory (from ivf.init); got "
                    f"{type(index).__name__}")


def clear(index: IVFMemory) -> IVFMemory:
  """The same index emptied (centroids kept): the start of a new document."""
  _check_index(index)
  return index.replace(times=jnp.full_like(index.times, -1), cursor=jnp.zeros_like(index.cursor),
                       clock=jnp.zeros_like(index.clock))


def assign(centroids: jax.Array, keys: jax.Array) -> jax.Array:
  """Nearest centroid by inner product of each key: [B] int32 (ties: lower index)."""
  centroids = _checks.floating(centroids, "centroids", 2, "[C, Dk]")
  keys = _checks.floating(keys, "keys", 2, "[B, Dk]")
  _checks.check_dim(keys, 1, centroids.shape[1], "keys", "the key size Dk of centroids")
  scores = jnp.einsum("bd,cd->bc", keys.astype(jnp.float32), centroids,
                      precision=jax.lax.Precision.HIGHEST)
  # The first index of the maximum: what argmax returns, several times faster on XLA:CPU.
  cells = jnp.arange(scores.shape[-1], dtype=jnp.int32)
  best = jnp.max(scores, axis=-1, keepdims=True)
  return jnp.min(jnp.where(scores == best, cells, scores.shape[-1]), axis=-1)


def insert(index: IVFMemory, keys: jax.typing.ArrayLike,
           values: jax.typing.ArrayLike) -> IVFMemory:
  """Appends a batch of items (numbered `clock + 0, 1, ...`) to their cells' lists.

  Args:
    index: the index.
    keys: [B, Dk] keys.
    values: [B, Dv] values.

  Returns:
    The new index; within a list, the oldest entries are overwritten first.
  """
  _check_index(index)
  keys = _checks.floating(keys, "keys", (2,), "[B, Dk]")
  values = _checks.as_array(values, "values")
  _checks.check_rank(values, 2, "values", "[B, Dv]")
  _checks.check_dim(keys, 1, index.keys.shape[-1], "keys", "the key size Dk of the index")
  _checks.check_dim(values, 1, index.values.shape[-1], "values", "the value size Dv of the index")
  _checks.check_dim(values, 0, keys.shape[0], "values", "one value per key")
  b = keys.shape[0]
  c, size = index.num_lists, index.list_size
  cell = assign(index.centroids, keys)  # [B]
  # Rank of each item among the batch's items of its cell, by a stable sort.
  order = jnp.argsort(cell, stable=True)
  ordered = cell[order]
  first = jnp.searchsorted(ordered, ordered, side="left").astype(jnp.int32)
  rank = jnp.zeros((b,), jnp.int32).at[order].set(jnp.arange(b, dtype=jnp.int32) - first)
  counts = jax.ops.segment_sum(jnp.ones((b,), jnp.int32), cell, num_segments=c)
  keep = rank >= counts[cell] - size  # a cell given more than L items keeps its last L
  pos = (index.cursor[cell] + rank) % size
  target = jnp.where(keep, cell * size + pos, c * size)

  def put(table, rows):
    flat = table.reshape(c * size, *table.shape[2:])
    return flat.at[target].set(rows.astype(table.dtype), mode="drop").reshape(table.shape)

  return index.replace(
      keys=put(index.keys, keys),
      values=put(index.values, values),
      times=put(index.times, index.clock + jnp.arange(b, dtype=jnp.int32)),
      cursor=(index.cursor + counts) % size,
      clock=index.clock + b)


# Gathered candidate key elements per step of `search` (a few MB: XLA:CPU
# writes a large fresh buffer far slower than it reuses a small one).
_SEARCH_ELEMENTS = 1 << 19
# Cell scores per step of the list ranking in `search`.
_CELL_SCORES = 1 << 20
# `_top_k` ranks in blocks of _RANK_BLOCK when the axis holds at least
# _RANK_BLOCK x 4 x k entries (and is a multiple of the block).
_RANK_BLOCK = 16


def _top_k(scores: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """What `jax.lax.top_k(scores, k)` returns, by blocks (`store.top_k_by_groups`) when long.

  For 4 x 256 queries (2-core Zen 3, side by side): 1,024 cell scores,
  k = 4, 2.43 -> 1.23 ms; 2,048 candidates, k = 8, 8.35 -> 3.17 ms; 512,
  k = 8, 2.94 -> 2.40.
  """
  n = scores.shape[-1]
  if n % _RANK_BLOCK or n < 4 * k * _RANK_BLOCK:
    top, where = jax.lax.top_k(scores, k)
    return top, where.astype(jnp.int32)
  return store.top_k_by_groups(scores, k, _RANK_BLOCK)


def search(index: IVFMemory, queries: jax.typing.ArrayLike, k: int,
           probes: int | None = None) -> SearchResult:
  """Approximate top-k by inner product: the best live items of the `probes` nearest lists.

  Leading batch axes are allowed: an index whose arrays lead with [G...]
  (one index per sequence and head, say) takes queries [G..., Q, Dk] and
  returns results [G..., Q, K]; the work is done in query chunks that bound
  the gathered candidates.

  Args:
    index: the index.
    queries: [Q, Dk] queries (or [G..., Q, Dk]).
    k: results per query, 1 <= k <= probes x L.
    probes: P, lists searched per query, 1 <= P <= C (default: `index.probes`).

  Returns:
    A `SearchResult`, best first.
  """
  _check_index(index)
  probes = index.probes if probes is None else probes
  queries = _checks.as_array(queries, "queries")
  _checks.check_floating(queries, "queries")
  lead = index.cursor.shape[:-1]
  if queries.ndim != len(lead) + 2 or queries.shape[:-2] != lead:
    raise ValueError(f"queries must have shape [{', '.join(map(str, lead))}{', ' if lead else ''}"
                     f"Q, Dk]; got {tuple(queries.shape)}")
  c, size = index.num_lists, index.list_size
  d = index.keys.shape[-1]
  if queries.shape[-1] != d:
    raise ValueError(f"queries must have the key size Dk={d} as last axis; got "
                     f"{queries.shape[-1]}")
  probes = _checks.integer(probes, "probes", 1, c, "C, the list count")
  k = _checks.integer(k, "k", 1, probes * size, "probes x L, the entries searched")
  g = int(np.prod(lead, dtype=np.int64))
  q = queries.shape[-2]
  queries = queries.reshape(g, q, d).astype(jnp.float32)
  centroids = index.centroids.reshape(g, c, d)
  keys = index.keys.reshape(g * c, size, d)
  values = index.values.reshape(g * c, size, -1)
  times = index.times.reshape(g * c, size)
  base = (jnp.arange(g, dtype=jnp.int32) * c)[:, None, None]
  oldest = (index.clock.reshape(g) - index.capacity)[:, None, None, None]

  def one(args):  # queries [G, q', Dk], their lists [G, q', P] -> results [G, q', K]
    chunk, rows = args
    scores = jnp.einsum("gqpld,gqd->gqpl", keys[rows], chunk,
                        precision=jax.lax.Precision.HIGHEST)  # [G, q', P, L]
    born = times[rows]
    live = (born >= 0) & (born >= oldest)
    scores = jnp.where(live, scores, -jnp.inf).reshape(*chunk.shape[:2], -1)
    top, where = _top_k(scores, k)
    found = top > -jnp.inf  # -inf: no live entry; +inf (an overflow) is still found
    row = jnp.take_along_axis(rows, where // size, axis=-1)
    pos = where % size
    return (top, jnp.where(found, times[row, pos], -1),
            jnp.where(found[..., None], keys[row, pos], 0.0),
            jnp.where(found[..., None], values[row, pos], jnp.zeros((), values.dtype)), found)

  def probed(chunk):  # [G, q', Dk] -> rows of the nearest lists [G, q', P]
    cell_scores = jnp.einsum("gqd,gcd->gqc", chunk, centroids,
                             precision=jax.lax.Precision.HIGHEST)
    return base + _top_k(cell_scores, probes)[1]

  # Queries per search step (bounded by the gathered candidates) and search
  # steps per step of the list ranking (bounded by the cell scores: ranking
  # many queries at once costs far less per query than ranking a few).
  step = max(1, min(q, _SEARCH_ELEMENTS // (g * probes * size * d)))
  steps = max(1, -(-q // step))  # Q = 0 runs one padded step and keeps none of it
  limit = max(1, _CELL_SCORES // (g * c * step))
  group = max(i for i in range(1, min(steps, limit) + 1) if steps % i == 0)
  padded = jnp.pad(queries, ((0, 0), (0, steps * step - q), (0, 0)))
  rows = jax.lax.map(probed, jnp.moveaxis(padded.reshape(g, steps // group, group * step, d),
                                          1, 0))  # [steps / group, G, group step, P]
  rows = jnp.moveaxis(rows, 0, 1).reshape(g, steps, step, probes)
  chunks = jnp.moveaxis(padded.reshape(g, steps, step, d), 1, 0)
  out = jax.lax.map(one, (chunks, jnp.moveaxis(rows, 1, 0)))

  def unfold(x):  # [steps, G, step, K, ...] -> [G..., Q, K, ...]
    x = jnp.moveaxis(x, 0, 1).reshape(g, steps * step, *x.shape[3:])[:, :q]
    return x.reshape(*lead, q, *x.shape[2:])

  return SearchResult(*(unfold(x) for x in out))


def attend(index: IVFMemory, queries: jax.Array, k: int, probes: int | None = None, *,
           scale: jax.typing.ArrayLike = 1.0) -> jax.Array:
  """Softmax over the approximate top-k scores, weighted sum of their values.

  The index is read as a constant (no gradient reaches what is stored);
  scores are recomputed from the found keys so gradients reach `queries`
  and `scale`.

  Args:
    index: the index (floating values).
    queries: [Q, Dk] (or [G..., Q, Dk] for an index with leading axes).
    k: items attended per query.
    probes: lists searched per query (default: `index.probes`).
    scale: multiplies the scores before the softmax (broadcast to [G..., Q, K]).

  Returns:
    [Q, Dv] (or [G..., Q, Dv]); zeros for a query that finds nothing.
  """
  _check_index(index)
  index = jax.lax.stop_gradient(index)
  found = search(index, jax.lax.stop_gradient(queries), k, probes)
  scores = jnp.einsum("...qd,...qkd->...qk", queries, found.keys) * scale
  weights = jax.nn.softmax(scores, axis=-1, where=found.found)
  weights = jnp.where(found.found, weights, 0)
  return jnp.einsum("...qk,...qkv->...qv", weights, found.values.astype(queries.dtype))


def kmeans(points: jax.typing.ArrayLike, num_clusters: int, *, iterations: int = 10,
           seed: int = 0) -> jax.Array:
  """Spherical k-means (centroids of unit norm, assignment by inner product).

  Lloyd's iterations from `num_clusters` distinct points drawn at random; an
  empty cluster keeps its centroid.

  Args:
    points: [P, Dk] sample keys, P >= num_clusters.
    num_clusters: C.
    iterations: Lloyd iterations.
    seed: for the initial draw.

  Returns:
    [C, Dk] float32 unit centroids.
  """
  points = _checks.floating(points, "points", (2,), "[P, Dk]").astype(jnp.float32)
  num_clusters = _checks.integer(num_clusters, "num_clusters", 1, points.shape[0],
                                 "P, the sample size")
  iterations = _checks.integer(iterations, "iterations", 0)
  seed = _checks.integer(seed, "seed", None)
  unit = lambda x: x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)
  start = jax.random.choice(jax.random.key(seed), points.shape[0], (num_clusters,),
                            replace=False)
  return _lloyd(unit(points), unit(points[start]), iterations)


@functools.partial(jax.jit, static_argnums=2)
def _lloyd(points, centroids, iterations):
  unit = lambda x: x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)

  def step(centroids, _):
    cell = assign(centroids, points)
    sums = jax.ops.segment_sum(points, cell, num_segments=centroids.shape[0])
    counts = jax.ops.segment_sum(jnp.ones_like(cell), cell, num_segments=centroids.shape[0])
    return jnp.where(counts[:, None] > 0, unit(sums), centroids), None

  return jax.lax.scan(step, centroids, None, length=iterations)[0]
