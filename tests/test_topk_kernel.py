"""memjax.store.top_k_slots, the exact block-maxima lookup kernel, against brute force.

Keys and queries are small integers, so every score is exact in float32 and
ties are common: the kernel must return exactly the brute-force order
(score descending, then slot ascending).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax import store


def _brute_force(keys, valid, queries, k, metric="inner_product"):
  keys = np.asarray(keys, np.float64)
  queries = np.asarray(queries, np.float64)
  if metric == "cosine":
    keys = keys / np.sqrt((keys ** 2).sum(-1, keepdims=True) + 1e-12)
    queries = queries / np.sqrt((queries ** 2).sum(-1, keepdims=True) + 1e-12)
  scores = queries @ keys.T
  scores[:, ~np.asarray(valid)] = -np.inf
  slots = np.arange(keys.shape[0])
  best_scores, best_slots = [], []
  for row in scores:
    order = sorted(slots, key=lambda i, row=row: (-row[i], i))[:k]
    best_scores.append(row[order])
    best_slots.append([i if np.isfinite(row[i]) else -1 for i in order])
  return np.array(best_scores), np.array(best_slots)


@functools.partial(jax.jit, static_argnames=("k", "metric", "chunk_size"))
def _top_k(keys, valid, queries, k, metric="inner_product", chunk_size=None, slot_offset=0):
  return store.top_k_slots(keys, valid, queries, k, metric=metric, chunk_size=chunk_size,
                           slot_offset=slot_offset)


def _integer_case(seed, n, d, q, valid_fraction=0.8, low=-2, high=3):
  rng = np.random.default_rng(seed)
  keys = rng.integers(low, high, (n, d)).astype(np.float32)
  valid = rng.random(n) < valid_fraction
  queries = rng.integers(low, high, (q, d)).astype(np.float32)
  return keys, valid, queries


@pytest.mark.parametrize("n, d, q, k, chunk", [
    (1, 3, 2, 1, None),          # one slot
    (5, 4, 3, 5, None),          # k = N, one partial block
    (100, 8, 5, 7, None),        # blocks with a ragged tail
    (1000, 8, 7, 16, 64),        # many chunks, both streams, a tail
    (5000, 3, 40, 9, 320),       # Q > the query group size: several groups
    (12000, 4, 3, 2, None),      # more than 4 k 64 blocks: two-level selection
])
def test_exact_with_ties(n, d, q, k, chunk):
  keys, valid, queries = _integer_case(n, n, d, q)
  scores, slots = _top_k(keys, valid, queries, k, chunk_size=chunk)
  want_scores, want_slots = _brute_force(keys, valid, queries, k)
  np.testing.assert_array_equal(slots, want_slots)
  np.testing.assert_array_equal(scores, want_scores.astype(np.float32))


def test_all_equal_scores_return_the_lowest_valid_slots():
  n = 3000
  keys = np.ones((n, 2), np.float32)
  valid = np.ones(n, bool)
  valid[:5] = False
  scores, slots = _top_k(keys, valid, np.ones((2, 2), np.float32), 4, chunk_size=64)
  np.testing.assert_array_equal(slots, [[5, 6, 7, 8]] * 2)
  np.testing.assert_array_equal(scores, np.full((2, 4), 2.0))


def test_the_best_items_all_in_one_block_and_at_the_end():
  n, k = 4096, 8
  keys = np.zeros((n, 2), np.float32)
  keys[-k:] = [[float(i), 0.0] for i in range(1, k + 1)]  # the k best share the last block
  keys[:n - k, 0] = -1.0
  scores, slots = _top_k(keys, np.ones(n, bool), np.array([[1.0, 0.0]], np.float32), k)
  np.testing.assert_array_equal(slots, [np.arange(n - 1, n - k - 1, -1)])
  np.testing.assert_array_equal(scores, [np.arange(k, 0, -1, dtype=np.float32)])


def test_fewer_valid_than_k_and_none_valid():
  keys, _, queries = _integer_case(3, 200, 4, 3)
  valid = np.zeros(200, bool)
  valid[[7, 150]] = True
  scores, slots = _top_k(keys, valid, queries, 4)
  want_scores, want_slots = _brute_force(keys, valid, queries, 4)
  np.testing.assert_array_equal(slots, want_slots)
  assert (np.asarray(slots)[:, 2:] == -1).all() and np.isneginf(scores[:, 2:]).all()
  np.testing.assert_array_equal(scores[:, :2], want_scores[:, :2].astype(np.float32))
  scores, slots = _top_k(keys, np.zeros(200, bool), queries, 3)
  assert (np.asarray(slots) == -1).all() and np.isneginf(scores).all()


def test_cosine_against_numpy():
  rng = np.random.default_rng(4)
  keys = rng.normal(size=(3000, 6)).astype(np.float32)
  queries = rng.normal(size=(5, 6)).astype(np.float32)
  valid = rng.random(3000) < 0.9
  scores, slots = _top_k(keys, valid, queries, 10, metric="cosine", chunk_size=256)
  want_scores, want_slots = _brute_force(keys, valid, queries, 10, metric="cosine")
  np.testing.assert_array_equal(slots, want_slots)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)


def test_bfloat16_keys():
  keys, valid, queries = _integer_case(5, 700, 4, 3)
  scores, slots = _top_k(jnp.asarray(keys, jnp.bfloat16), valid,
                         jnp.asarray(queries, jnp.bfloat16), 6)
  assert scores.dtype == jnp.float32
  want_scores, want_slots = _brute_force(keys, valid, queries, 6)
  np.testing.assert_array_equal(slots, want_slots)
  np.testing.assert_array_equal(scores, want_scores.astype(np.float32))


def test_slot_offset_and_vmap():
  keys, valid, queries = _integer_case(6, 300, 4, 2)
  _, slots = _top_k(keys, valid, queries, 5, slot_offset=1000)
  _, want = _brute_force(keys, valid, queries, 5)
  np.testing.assert_array_equal(slots, np.where(want >= 0, want + 1000, -1))
  batched = jax.vmap(lambda kk, qq: store.top_k_slots(kk, jnp.asarray(valid), qq, 5))
  _, slots = batched(jnp.stack([keys, -keys]), jnp.stack([queries, queries]))
  np.testing.assert_array_equal(slots[0], want)
  np.testing.assert_array_equal(slots[1], _brute_force(-keys, valid, queries, 5)[1])


def test_working_memory_grows_like_group_times_n_over_32_not_q_times_n():
  """The Q x N score matrix is never built: beyond fixed-size chunks, the only buffer
  that grows with N is the block maxima of one query group, [group, N / 32] float32.
  With d = 8 float32 keys the group is the floor of 256 queries; Q = 1024 is four
  groups, so a buffer over all queries would be four times the bound."""
  d, q, k = 8, 1024, 8
  group = store._query_group_size(d, 4)
  assert group == 256 and q == 4 * group

  def temp_bytes(n):
    compiled = jax.jit(lambda kk, v, qq: store.top_k_slots(kk, v, qq, k)).lower(
        jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((n,), bool),
        jax.ShapeDtypeStruct((q, d), jnp.float32)).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  small, large = 1 << 18, 1 << 20
  growth = temp_bytes(large) - temp_bytes(small)
  assert growth <= 1.5 * group * (large - small) // 32 * 4, growth
  assert temp_bytes(large) < q * large * 4 / 16  # a score matrix would be 4 GiB


def test_vmap_over_masks_over_tables_alone_and_nested():
  """The three batching cases the folding rule handles besides a shared table."""
  keys, valid, queries = _integer_case(8, 200, 4, 3)
  rng = np.random.default_rng(9)
  masks = rng.random((3, 200)) < 0.6
  # One key table under many masks (valid mapped, keys not).
  _, slots = jax.vmap(lambda v: store.top_k_slots(keys, v, queries, 4))(jnp.asarray(masks))
  for i in range(3):
    np.testing.assert_array_equal(slots[i], _brute_force(keys, masks[i], queries, 4)[1])
  # Many tables, the same queries for each (keys mapped, queries not).
  tables = np.stack([keys, -keys, keys[::-1]])
  _, slots = jax.vmap(lambda kk: store.top_k_slots(kk, jnp.asarray(valid), queries, 4))(
      jnp.asarray(tables))
  for i in range(3):
    np.testing.assert_array_equal(slots[i], _brute_force(tables[i], valid, queries, 4)[1])
  # An inner vmap over (table, queries) pairs inside an outer vmap over the queries
  # alone: the outer level sees one table per inner entry, the same for every index.
  outer_queries = np.stack([queries, queries[::-1] * 2])  # [2, Q, Dk]
  inner = jax.vmap(lambda kk, qq: store.top_k_slots(kk, jnp.asarray(valid), qq, 4)[1])
  per_query = jnp.broadcast_to(jnp.asarray(outer_queries)[:, None], (2, 3, 3, 4))
  slots = jax.vmap(lambda qs: inner(jnp.asarray(tables), qs))(per_query)  # [2, 3 tables, Q, 4]
  for o in range(2):
    for t in range(3):
      np.testing.assert_array_equal(slots[o, t],
                                    _brute_force(tables[t], valid, outer_queries[o], 4)[1])


def test_score_gradients_reach_queries_and_chosen_keys():
  """d/dq sum of top-k scores = sum of the chosen keys; each chosen key gets its query."""
  rng = np.random.default_rng(10)
  keys = rng.normal(size=(300, 4)).astype(np.float32)
  valid = rng.random(300) < 0.9
  queries = rng.normal(size=(2, 4)).astype(np.float32)
  _, want = _brute_force(keys, valid, queries, 3)
  loss = lambda kk, qq: store.top_k_slots(kk, jnp.asarray(valid), qq, 3)[0].sum()
  grad_keys, grad_queries = jax.grad(loss, argnums=(0, 1))(jnp.asarray(keys),
                                                            jnp.asarray(queries))
  np.testing.assert_allclose(grad_queries, keys[want].sum(axis=1), rtol=1e-5, atol=1e-6)
  expected = np.zeros_like(keys)
  for i in range(2):
    expected[want[i]] += queries[i]
  np.testing.assert_allclose(grad_keys, expected, rtol=1e-5, atol=1e-6)
  # Cosine: the gradient of a chosen score q/|q| . k/|k| against a finite difference.
  cosine = lambda qq: store.top_k_slots(jnp.asarray(keys), jnp.asarray(valid), qq, 1,
                                        metric="cosine")[0].sum()
  g = np.asarray(jax.grad(cosine)(jnp.asarray(queries)))
  eps, step = 1e-2, np.zeros_like(queries)
  step[0, 1] = eps
  numeric = (float(cosine(jnp.asarray(queries + step))) -
             float(cosine(jnp.asarray(queries - step)))) / (2 * eps)
  np.testing.assert_allclose(g[0, 1], numeric, rtol=2e-3, atol=1e-4)
