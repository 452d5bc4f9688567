"""The store's fast paths give exactly the general results.

FIFO eviction reads the order off a ring buffer when the memory is one (no
top_k); these tests compare it with the top_k over every slot on ring and
non-ring memories, alone and under vmap with a mix of both. The lookup's
query groups are checked against a NumPy argsort with more queries than one
group, small keys (Dk = 16, a transformer head) and several memories under
vmap. A donated lookup-then-insert step compiles without copies of the
tables only with `memjax.xla.IN_PLACE_MEMORY`, as the store's docstring says.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax import store
from memjax import xla
from tests import hlo

N, DK = 96, 16


def _reference_order(memory, count):
  """FIFO order from its definition: free slots by index, then oldest insertion first."""
  valid = np.asarray(memory.valid)
  born = np.asarray(memory.inserted_at)
  free = [int(s) for s in np.flatnonzero(~valid)]
  used = sorted(np.flatnonzero(valid), key=lambda s: born[s])
  return np.asarray((free + [int(s) for s in used])[:count])


def _fill(memory, total, batch, rng):
  insert = jax.jit(store.insert)
  for _ in range(total // batch):
    keys = rng.normal(size=(batch, DK)).astype(np.float32)
    memory = insert(memory, keys, keys)
  return memory


def _histories():
  rng = np.random.default_rng(0)
  empty = store.init(N, DK, DK)
  partial = _fill(empty, 40, 8, rng)  # a prefix: ring
  full = _fill(empty, 96, 32, rng)  # exactly full: ring starting at 0
  wrapped = _fill(empty, 200, 8, rng)  # rotated ring
  holes = store.delete(wrapped, jnp.asarray([150, 7, 190]))  # deleted items: not a ring
  keys = rng.normal(size=(8, DK)).astype(np.float32)
  masked = store.insert(partial, keys, keys,
                        mask=jnp.asarray([1, 0, 1, 1, 0, 1, 1, 1], bool))
  masked = _fill(masked, 64, 8, rng)  # full after a masked insert: still a ring
  refilled = store.insert(holes, keys, keys)  # holes filled out of order: not a ring
  return {"empty": empty, "partial": partial, "full": full, "wrapped": wrapped,
          "holes": holes, "masked": masked, "refilled": refilled}


def test_fifo_order_equals_definition_on_ring_and_non_ring_memories():
  histories = _histories()
  order = jax.jit(store.eviction_order, static_argnums=1)
  is_ring = {name: bool(store._ring_start(m.valid, m.inserted_at)[0])
             for name, m in histories.items()}
  # The fast path is taken where it should be, and not elsewhere.
  assert is_ring == {"empty": True, "partial": True, "full": True, "wrapped": True,
                     "holes": False, "masked": True, "refilled": False}
  for name, memory in histories.items():
    for count in (1, 8, 57, N):
      np.testing.assert_array_equal(order(memory, count), _reference_order(memory, count),
                                    err_msg=f"{name}, count {count}")


def test_fifo_order_under_vmap_with_ring_and_non_ring_mixed():
  histories = _histories()
  names = ["wrapped", "holes", "partial", "refilled"]
  stacked = jax.tree.map(lambda *x: jnp.stack(x), *(histories[n] for n in names))
  got = jax.jit(jax.vmap(lambda m: store.eviction_order(m, 24)))(stacked)
  for row, name in zip(np.asarray(got), names):
    np.testing.assert_array_equal(row, _reference_order(histories[name], 24), err_msg=name)
  # All rings: the ring path runs for the whole batch, nested vmap included.
  rings = ["wrapped", "partial", "full", "masked"]
  stacked = jax.tree.map(lambda *x: jnp.stack(x).reshape(2, 2, *x[0].shape),
                         *(histories[n] for n in rings))
  got = jax.jit(jax.vmap(jax.vmap(lambda m: store.eviction_order(m, 24))))(stacked)
  for row, name in zip(np.asarray(got).reshape(4, 24), rings):
    np.testing.assert_array_equal(row, _reference_order(histories[name], 24), err_msg=name)


def test_lookup_many_small_queries_per_head_matches_argsort():
  # 3 x 2 memories (sequence x head) of 600 slots, 300 queries each: more
  # queries than one group of the kernel, small keys, half the slots valid.
  rng = np.random.default_rng(1)
  b, h, n, q, k = 3, 2, 600, 300, 5
  keys = rng.normal(size=(b, h, n, DK)).astype(np.float32)
  queries = rng.normal(size=(b, h, q, DK)).astype(np.float32)
  memory = jax.tree.map(lambda x: jnp.broadcast_to(x, (b, h, *x.shape)),
                        store.init(n, DK, DK))
  fill = jax.jit(jax.vmap(jax.vmap(store.insert)))
  memory = fill(memory, keys[:, :, :n // 2], keys[:, :, :n // 2])
  look = jax.jit(jax.vmap(jax.vmap(lambda m, x: store.lookup(m, x, k))))
  got = look(memory, queries)
  scores = np.einsum("bhqd,bhnd->bhqn", queries.astype(np.float64),
                     keys[:, :, :n // 2].astype(np.float64))
  want = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
  np.testing.assert_array_equal(got.indices, want)
  np.testing.assert_allclose(got.scores, np.take_along_axis(scores, want, -1), rtol=1e-5,
                             atol=1e-5)


def test_lookup_over_many_large_tables_walks_them_one_by_one_and_matches_argsort():
  # 4 x 4 memories of 4,096 slots and 256 queries each: each table holds
  # _MIN_MAPPED_SLOTS slots or more, so the kernel maps over the 16 tables.
  rng = np.random.default_rng(2)
  b, h, n, q, k, dk = 4, 4, 4096, 256, 6, 8
  assert n >= store._MIN_MAPPED_SLOTS
  keys = rng.normal(size=(b, h, n, dk)).astype(np.float32)
  queries = rng.normal(size=(b, h, q, dk)).astype(np.float32)
  live = n - 1000  # the last 1,000 slots stay empty
  memory = jax.tree.map(lambda x: jnp.broadcast_to(x, (b, h, *x.shape)),
                        store.init(n, dk, 1))
  fill = jax.jit(jax.vmap(jax.vmap(store.insert)))
  memory = fill(memory, keys[:, :, :live], keys[:, :, :live, :1])
  got = jax.jit(jax.vmap(jax.vmap(lambda m, x: store.lookup(m, x, k))))(memory, queries)
  scores = np.einsum("bhqd,bhnd->bhqn", queries.astype(np.float64),
                     keys[:, :, :live].astype(np.float64))
  want = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
  np.testing.assert_array_equal(got.indices, want)
  np.testing.assert_allclose(got.scores, np.take_along_axis(scores, want, -1), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_array_equal(got.values[..., 0],
                                np.take_along_axis(keys[..., 0], want.reshape(b, h, -1),
                                                   -1).reshape(want.shape))


def _table_copies(compile_options):
  """Copies of an [N, DK] table in a donated lookup-then-insert step, and its results."""
  memory = store.insert(store.init(N, DK, DK), jnp.eye(8, DK), jnp.eye(8, DK))

  def step(memory, queries, keys, values):
    found = store.lookup(memory, queries, 2)
    return store.insert(memory, keys, values), found.ids

  args = (jnp.eye(3, DK), 2.0 * jnp.eye(2, DK), 3.0 * jnp.eye(2, DK))
  compiled = jax.jit(step, donate_argnums=0,
                     compiler_options=compile_options).lower(memory, *args).compile()
  copies = hlo.copies_of(compiled, (N, DK))
  new, ids = compiled(memory, *args)  # the program inspected above, not a second compile
  return copies, new, ids


def test_in_place_memory_option_makes_a_lookup_then_insert_step_copy_nothing():
  """The claim of the store's docstring: without the option XLA:CPU copies the tables."""
  if jax.default_backend() != "cpu":
    pytest.skip("the option is XLA:CPU's")
  default, new_default, ids_default = _table_copies(None)
  in_place, new, ids = _table_copies(xla.cpu_options(xla.IN_PLACE_MEMORY))
  assert default, "XLA's default now writes in place: the docstring's advice may go"
  assert not in_place
  # Same results either way: queries e_0..e_2 find items 0..2 first; the two
  # new items land in slots 8 and 9 with ids 8 and 9.
  np.testing.assert_array_equal(ids[:, 0], [0, 1, 2])
  np.testing.assert_array_equal(ids, ids_default)
  np.testing.assert_array_equal(new.keys[8:10], 2.0 * np.eye(2, DK))
  np.testing.assert_array_equal(new.ids[8:10], [8, 9])
  np.testing.assert_array_equal(new.keys, new_default.keys)
