"""Product-key memory layer (Lample et al. 2019).

A memory of N = n^2 slots whose keys are the Cartesian product of two sets of
n sub-keys, so the exact top-k over all N keys costs two searches over n:

    q = [q1; q2]  (each half Dq/2)
    s1 = C1 q1, s2 = C2 q2                          [n] each
    the k best of s1 and of s2 -> k x k candidates s1[i] + s2[j], slot i n + j
    the k best candidates -> softmax -> weighted sum of their value rows

(the k best sums are always among the k x k: a pair (i, j) with i outside
the k best of s1 is beaten by the k pairs (i', j) with i' among them). Several
heads, each with its own query projection and sub-keys, read the same value
table and their reads are summed.

The value table is the only large array (N x Dv). Given a mesh, it lives
split by slot over a mesh axis and the read runs as a `jax.shard_map`: each
shard sums the rows it owns and one psum of [B, Dv] gives the output, so the
table is never gathered (its gradient stays sharded too).

Shape legend: B batch, I input features, H heads, Dq query size, n sub-keys
per half, N = n^2 slots, K slots read per head, Dv value size.

References:
  Lample, Sablayrolles, Ranzato, Denoyer, Jegou. Large Memory Layers with
  Product Keys. NeurIPS 2019 (arXiv:1907.05242).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from memjax import _checks


class ProductKeyResult(NamedTuple):
  """What `product_key_top_k` returns.

  Attributes:
    scores: [..., K] float32 best scores s1[i] + s2[j], best first.
    indices: [..., K] int32 slots i n + j.
  """
  scores: jax.Array
  indices: jax.Array


def product_key_top_k(query: jax.typing.ArrayLike, sub_keys: jax.typing.ArrayLike,
                      k: int) -> ProductKeyResult:
  """Exact top-k of q . key over the n^2 product keys (Lample et al. 2019, section 3.2).

  Args:
    query: [..., Dq] queries (Dq even); the first half meets the first
      sub-key set, the second half the second.
    sub_keys: [2, n, Dq / 2] the two sub-key sets.
    k: results, 1 <= k <= n.

  Returns:
    A `ProductKeyResult`; slot i n + j has key [sub_keys[0, i]; sub_keys[1, j]].
    The k scores are exact; among equal scores, the pair whose halves rank
    higher in their own top-k comes first.
  """
  query = _checks.as_array(query, "query")
  _checks.check_floating(query, "query")
  if query.ndim < 1:
    raise ValueError(f"query must have rank >= 1 [..., Dq]; got shape {tuple(query.shape)}")
  sub_keys = _checks.floating(sub_keys, "sub_keys", 3, "[2, n, Dq/2]")
  _checks.check_dim(sub_keys, 0, 2, "sub_keys", "the two halves of a product key")
  half = sub_keys.shape[2]
  _checks.check_dim(query, -1, 2 * half, "query", "twice the sub-key size")
  n = sub_keys.shape[1]
  k = _checks.integer(k, "k", 1, n, "n, the sub-keys per half")
  dtype = _checks.compute_dtype(query.dtype, sub_keys.dtype)
  q = query.astype(dtype)
  s1 = q[..., :half] @ sub_keys[0].astype(dtype).T  # [..., n]
  s2 = q[..., half:] @ sub_keys[1].astype(dtype).T
  top1, i1 = jax.lax.top_k(s1, k)
  top2, i2 = jax.lax.top_k(s2, k)
  # Row-major k x k candidates: lower i first, then lower j, as top_k prefers.
  pair = (top1[..., :, None] + top2[..., None, :]).reshape(*top1.shape[:-1], k * k)
  slot = (i1[..., :, None] * n + i2[..., None, :]).reshape(pair.shape)
  scores, where = jax.lax.top_k(pair, k)
  return ProductKeyResult(scores.astype(jnp.float32),
                          jnp.take_along_axis(slot, where, axis=-1).astype(jnp.int32))


def read_values(values: jax.Array, indices: jax.Array, weights: jax.Array, *,
                mesh: Mesh | None = None, axis: str = "memory") -> jax.Array:
  """Sum of weighted value rows: out[b] = sum_j weights[b, j] values[indices[b, j]].

  Args:
    values: [N, Dv] value table (split by slot over `axis` of `mesh` if given).
    indices: [B, J] int slots.
    weights: [B, J] weights.
    mesh: when given, the read runs per shard and ends in one psum.
    axis: the mesh axis the slots are split over.

  Returns:
    [B, Dv].
  """
  values = _checks.floating(values, "values", 2, "[N, Dv]")
  indices = _checks.as_array(indices, "indices")
  _checks.check_integer(indices, "indices")
  _checks.check_rank(indices, 2, "indices", "[B, J]")
  weights = _checks.floating(weights, "weights", 2, "[B, J]")
  if weights.shape != indices.shape:
    raise ValueError(f"weights must have the shape of indices {tuple(indices.shape)}; got "
                     f"{tuple(weights.shape)}")
  _checks.check_index_range(indices, "indices", values.shape[0], "the slot count N of values")
  if mesh is None:
    return jnp.einsum("bj,bjv->bv", weights, values[indices].astype(weights.dtype))
  n = values.shape[0]
  shards = mesh.shape[axis]
  if n % shards:
    raise ValueError(f"the value table's N={n} slots must split evenly over the {shards} "
                     f"devices of mesh axis {axis!r}")

  def local(values, indices, weights):
    offset = jax.lax.axis_index(axis) * values.shape[0]
    rel = indices - offset
    mine = (rel >= 0) & (rel < values.shape[0])
    rows = values[jnp.where(mine, rel, 0)].astype(weights.dtype)
    part = jnp.einsum("bj,bjv->bv", jnp.where(mine, weights, 0), rows)
    return jax.lax.psum(part, axis)

  return jax.shard_map(local, mesh=mesh, in_specs=(P(axis, None), P(), P()),
                       out_specs=P())(values, indices, weights)


class ProductKeyMemory(nnx.Module):
  """A product-key memory layer: x [..., I] -> [..., Dv] (Lample et al. 2019).

  Per head: query = BatchNorm(W_h x) (the paper's query network; BatchNorm
  keeps queries spread over the sub-keys), the exact top-k over N = n^2
  product keys, softmax over the k scores, weighted sum of the k value rows.
  The heads' reads are summed.

  Args:
    in_features: I.
    value_size: Dv (the output size).
    num_sub_keys: n; the memory has n^2 slots.
    query_size: Dq (even).
    num_heads: H.
    k: slots read per head.
    mesh: optional mesh; the value table is then split by slot over `axis`.
    axis: the mesh axis for the value table.
    value_init_scale: standard deviation of the initial values (the paper
      uses N(0, 1/Dv)); default Dv ** -0.5.
    rngs: parameter initialisation.
  """

  def __init__(self, in_features: int, value_size: int, *, num_sub_keys: int = 128,
               query_size: int = 64, num_heads: int = 4, k: int = 32,
               mesh: Mesh | None = None, axis: str = "memory",
               value_init_scale: float | None = None, rngs: nnx.Rngs):
    in_features = _checks.integer(in_features, "in_features")
    value_size = _checks.integer(value_size, "value_size")
    num_sub_keys = _checks.integer(num_sub_keys, "num_sub_keys")
    query_size = _checks.integer(query_size, "query_size")
    num_heads = _checks.integer(num_heads, "num_heads")
    k = _checks.integer(k, "k")
    if query_size % 2:
      raise ValueError(f"query_size must be even (two halves); got {query_size}")
    if k > num_sub_keys:
      raise ValueError(f"k must be at most num_sub_keys={num_sub_keys}; got {k}")
    if value_init_scale is not None:
      _checks.number(value_init_scale, "value_init_scale", 0)
    self.in_features = in_features
    self.num_sub_keys = num_sub_keys
    self.num_slots = num_sub_keys ** 2
    self.num_heads = num_heads
    self.query_size = query_size
    self.k = k
    self.mesh = mesh
    self.axis = axis
    self.query = nnx.Linear(in_features, num_heads * query_size, rngs=rngs)
    self.query_norm = nnx.BatchNorm(num_heads * query_size, rngs=rngs)
    half = query_size // 2
    # Sub-keys uniform on the sphere's scale, as in the paper's initialisation.
    bound = half ** -0.5
    self.sub_keys = nnx.Param(jax.random.uniform(
        rngs.params(), (num_heads, 2, num_sub_keys, half), jnp.float32, -bound, bound))
    scale = value_size ** -0.5 if value_init_scale is None else value_init_scale
    init = functools.partial(jax.random.normal, shape=(self.num_slots, value_size),
                             dtype=jnp.float32)
    if mesh is None:
      values = init(rngs.params()) * scale
    else:
      if self.num_slots % mesh.shape[axis]:
        raise ValueError(f"num_sub_keys^2 = {self.num_slots} slots must split evenly over the "
                         f"{mesh.shape[axis]} devices of mesh axis {axis!r}")
      sharding = NamedSharding(mesh, P(axis, None))
      values = jax.jit(lambda key: init(key) * scale, out_shardings=sharding)(rngs.params())
    self.values = nnx.Param(values)

  def _check_x(self, x: jax.typing.ArrayLike) -> jax.Array:
    x = _checks.as_array(x, "x")
    _checks.check_floating(x, "x")
    if x.ndim < 1 or x.shape[-1] != self.in_features:
      raise ValueError(f"x must have in_features={self.in_features} on the last axis; got shape "
                       f"{tuple(x.shape)}")
    return x

  def lookup(self, x: jax.Array) -> ProductKeyResult:
    """The k slots each head reads: scores and indices [B, H, K] for x [B, I]."""
    return self._lookup(self._check_x(x))

  def _lookup(self, x: jax.Array) -> ProductKeyResult:
    q = self.query_norm(self.query(x)).reshape(*x.shape[:-1], self.num_heads, self.query_size)
    heads = jax.vmap(product_key_top_k, in_axes=(-2, 0, None), out_axes=-2)
    return heads(q, self.sub_keys[...], self.k)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x [..., I] -> [..., Dv]."""
    x = self._check_x(x)
    batch = x.shape[:-1]
    if not math.prod(batch):  # an empty batch reads nothing
      return jnp.zeros((*batch, self.values.shape[1]), self.values.dtype)
    flat = x.reshape(-1, x.shape[-1])
    found = self._lookup(flat)  # [B, H, K]
    weights = jax.nn.softmax(found.scores, axis=-1)
    b = flat.shape[0]
    out = read_values(self.values[...], found.indices.reshape(b, -1),
                      weights.reshape(b, -1), mesh=self.mesh, axis=self.axis)
    return out.reshape(*batch, -1)
