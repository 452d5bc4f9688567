"""The approximate IVF memory: exact when it searches every list, FIFO, ring lists."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memjax import ivf
from memjax.nn import transformer


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_search_of_every_list_equals_brute_force_over_the_fifo_window():
  rng = np.random.default_rng(0)
  c, d, capacity, k = 4, 8, 40, 5
  centroids = ivf.kmeans(_unit(rng.normal(size=(64, d))), c, seed=1)
  # Lists as long as the window: nothing is pushed out early, so with every
  # list probed the search is exact over the last `capacity` items.
  index = ivf.init(centroids, capacity, 3, capacity, probes=c)
  keys = rng.normal(size=(100, d)).astype(np.float32)
  values = rng.normal(size=(100, 3)).astype(np.float32)
  insert = jax.jit(ivf.insert)
  for start in range(0, 100, 25):
    index = insert(index, keys[start:start + 25], values[start:start + 25])
  assert int(index.clock) == 100
  queries = rng.normal(size=(7, d)).astype(np.float32)
  got = jax.jit(lambda i, q: ivf.search(i, q, k))(index, queries)
  live = np.arange(100 - capacity, 100)  # item ids = insertion times
  scores = queries.astype(np.float64) @ keys[live].T.astype(np.float64)
  want = live[np.argsort(-scores, axis=1, kind="stable")[:, :k]]
  np.testing.assert_array_equal(got.ids, want)
  np.testing.assert_allclose(got.scores, np.sort(scores, axis=1)[:, ::-1][:, :k], rtol=1e-5)
  np.testing.assert_allclose(got.values, values[want], rtol=1e-6)
  np.testing.assert_allclose(got.keys, keys[want], rtol=1e-6)
  assert bool(got.found.all())


def test_full_list_keeps_its_most_recent_items_and_probes_limit_the_search():
  centroids = jnp.asarray([[1.0, 0.0], [-1.0, 0.0]])
  index = ivf.init(centroids, 3, 1, 100)
  insert = jax.jit(ivf.insert)
  search = jax.jit(ivf.search, static_argnums=(2, 3))
  # Items 0-4 near (1, 0) go to cell 0, item 5 = (-1, 0) to cell 1; two per batch.
  items = np.asarray([[1.0, 0.1 * i] for i in range(5)] + [[-1.0, 0.0]], np.float32)
  for start in range(0, 6, 2):
    index = insert(index, items[start:start + 2], np.arange(start, start + 2,
                                                           dtype=np.float32)[:, None])
  # Cell 0 holds 3 entries: items 2, 3, 4 survive, items 0 and 1 were overwritten.
  found = search(index, jnp.asarray([[1.0, 0.0]]), 5, 2)
  assert sorted(np.asarray(found.ids[0][found.found[0]]).tolist()) == [2, 3, 4, 5]
  np.testing.assert_array_equal(found.values[0, :, 0], np.where(found.found[0], found.ids[0], 0))
  best = search(index, jnp.asarray([[0.0, 1.0]]), 5, 2)
  np.testing.assert_array_equal(best.ids[0], [4, 3, 2, 5, -1])  # y = 0.4, 0.3, 0.2; then 0
  np.testing.assert_allclose(best.scores[0, :4], [0.4, 0.3, 0.2, 0.0], rtol=1e-6, atol=1e-7)
  # One probe: only cell 0 is searched (the tie of the two cells goes to the lower).
  found = search(index, jnp.asarray([[0.0, -1.0]]), 3, 1)
  assert set(np.asarray(found.ids[0]).tolist()) == {2, 3, 4}  # not 5, though it scores higher
  # Cleared: nothing is found, the centroids stay.
  empty = ivf.clear(index)
  assert not bool(search(empty, jnp.asarray([[1.0, 0.0]]), 5, 2).found.any())
  np.testing.assert_array_equal(empty.centroids, centroids)


def test_batched_search_equals_search_of_each_index_and_kmeans_finds_clusters():
  rng = np.random.default_rng(2)
  directions = _unit(rng.normal(size=(3, 6)))
  points = _unit(np.repeat(directions, 40, axis=0) + 0.05 * rng.normal(size=(120, 6)))
  centroids = np.asarray(ivf.kmeans(points, 3, iterations=10, seed=0))
  # Every true direction has a centroid within a small angle.
  assert (directions @ centroids.T).max(axis=1).min() > 0.99
  one = ivf.init(centroids, 16, 6, 32, probes=2)
  batch = jax.tree.map(lambda x: jnp.broadcast_to(x, (2, 3, *x.shape)), one)
  keys = rng.normal(size=(2, 3, 20, 6)).astype(np.float32)
  batch = jax.vmap(jax.vmap(ivf.insert))(batch, keys, keys)
  queries = rng.normal(size=(2, 3, 9, 6)).astype(np.float32)
  got = ivf.search(batch, queries, 4)
  search = jax.jit(ivf.search, static_argnums=2)
  for b in range(2):
    for h in range(3):
      single = jax.tree.map(lambda x, b=b, h=h: x[b, h], batch)
      want = search(single, queries[b, h], 4)
      np.testing.assert_array_equal(got.ids[b, h], want.ids)
      np.testing.assert_allclose(got.scores[b, h], want.scores, rtol=1e-6)
  with pytest.raises(ValueError, match="probes"):
    ivf.search(one, queries[0, 0], 4, probes=4)


def test_block_with_an_index_of_every_list_equals_the_exact_block():
  model = transformer.MemoryTransformer(40, 16, 1, 2, window=8, memory_layers=(0,), top_k=4,
                                        key_conv=2, rngs=nnx.Rngs(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 40, size=(2, 64)), jnp.int32)
  centroids = transformer.fit_index_centroids(model, tokens, 8)
  assert centroids[0].shape == (2, 8, 8)
  resets = jnp.zeros((2, 8), bool).at[1, 4].set(True)
  exact, _ = model(tokens, model.init_state(2, 48), resets=resets)
  state = model.init_state(2, 48, centroids=centroids, list_size=48, probes=8)
  assert state[0].memory is None
  approx, state = model(tokens, state, resets=resets)
  np.testing.assert_allclose(approx, exact, rtol=1e-5, atol=1e-5)
  # The FIFO window holds the last 48 of 64 items (32 after the reset in sequence 1).
  assert np.asarray(state[0].index.clock).tolist() == [[64, 64], [32, 32]]


def test_blockwise_top_k_equals_lax_top_k_ties_included():
  rng = np.random.default_rng(3)
  # Few distinct values, so most ranks are ties (broken toward the lower index).
  scores = rng.integers(0, 6, size=(3, 5, 1024)).astype(np.float32)
  scores[0, 0] = -np.inf
  scores[1, 2, 700] = 9.0  # a lone best entry late in the axis
  for k in (1, 4, 16):
    top, where = jax.jit(ivf._top_k, static_argnums=1)(jnp.asarray(scores), k)
    want = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    np.testing.assert_array_equal(where, want)
    np.testing.assert_array_equal(top, np.take_along_axis(scores, want, axis=-1))


def test_search_over_many_lists_equals_brute_force_over_the_probed_lists():
  rng = np.random.default_rng(4)
  c, size, d, probes, k, n = 256, 128, 8, 4, 6, 2000
  centroids = np.asarray(ivf.kmeans(_unit(rng.normal(size=(4 * c, d))), c, seed=0))
  index = ivf.init(centroids, size, 2, n, probes=probes)
  keys = rng.normal(size=(n, d)).astype(np.float32)
  index = jax.jit(ivf.insert)(index, keys, keys[:, :2])
  times = np.asarray(index.times)
  assert (times >= 0).sum() == n  # no list overflowed: every item is in its cell's list
  cell_of = np.empty(n, int)
  cell_of[times[times >= 0]] = np.nonzero(times >= 0)[0]
  queries = rng.normal(size=(9, d)).astype(np.float32)
  got = jax.jit(lambda i, q: ivf.search(i, q, k))(index, queries)
  for i, query in enumerate(queries.astype(np.float64)):
    cells = np.argsort(-(centroids.astype(np.float64) @ query), kind="stable")[:probes]
    items = np.nonzero(np.isin(cell_of, cells))[0]
    scores = keys[items].astype(np.float64) @ query
    want = items[np.argsort(-scores, kind="stable")[:k]]
    np.testing.assert_array_equal(got.ids[i], want)
    np.testing.assert_allclose(got.scores[i], np.sort(scores)[::-1][:k], rtol=1e-5)
