"""memjax.store: by hand, against NumPy, and against a plain-Python dictionary model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import initialize
from hypothesis.stateful import invariant
from hypothesis.stateful import rule
from jax.test_util import check_grads

from memjax import store

# Jitted once per module: eager dispatch of many small ops is slower than one compile.
_insert = jax.jit(store.insert)
_lookup = jax.jit(store.lookup, static_argnames=("k", "metric", "chunk_size"))
_mark_used = jax.jit(store.mark_used)
_update = jax.jit(store.update)
_delete = jax.jit(store.delete)


def _onehot_keys(slots, dim=4):
  return jnp.eye(dim)[np.asarray(slots)]


def _stored_ids(memory):
  return sorted(int(i) for i in np.asarray(memory.ids)[np.asarray(memory.valid)])


class TestInsert:

  def test_fills_free_slots_lowest_index_first(self):
    memory = store.init(4, 2, 1)
    memory = _insert(memory, jnp.ones((2, 2)), jnp.array([[10.0], [11.0]]))
    np.testing.assert_array_equal(memory.valid, [True, True, False, False])
    np.testing.assert_array_equal(memory.ids, [0, 1, -1, -1])
    memory = _delete(memory, jnp.array([0]))
    memory = _insert(memory, jnp.ones((1, 2)), jnp.array([[12.0]]))
    np.testing.assert_array_equal(memory.ids, [2, 1, -1, -1])  # the freed slot 0 first
    np.testing.assert_array_equal(memory.values[:, 0], [12.0, 11.0, 0.0, 0.0])

  def test_never_overwrites_while_free_slots_exist(self):
    memory = store.init(5, 2, 1, policy="lru")
    for i in range(5):
      memory = _insert(memory, jnp.ones((1, 2)), jnp.array([[float(i)]]))
      assert int(store.size(memory)) == i + 1

  def test_fifo_is_a_ring(self):
    memory = store.init(3, 2, 1, policy="fifo")
    memory = _insert(memory, jnp.ones((3, 2)), jnp.arange(3.0)[:, None])
    memory = _insert(memory, jnp.ones((2, 2)), jnp.arange(3.0, 5.0)[:, None])
    np.testing.assert_array_equal(memory.ids, [3, 4, 2])
    memory = _insert(memory, jnp.ones((2, 2)), jnp.arange(5.0, 7.0)[:, None])
    np.testing.assert_array_equal(memory.ids, [6, 4, 5])

  def test_lru_keeps_what_was_used(self):
    memory = store.init(3, 4, 1, policy="lru")
    memory = _insert(memory, _onehot_keys([0, 1, 2]), jnp.zeros((3, 1)))
    # Use item 0 (the oldest): the next insert evicts item 1 instead.
    memory = _mark_used(memory, _lookup(memory, _onehot_keys([0]), 1).indices)
    memory = _insert(memory, _onehot_keys([3]), jnp.zeros((1, 1)))
    assert _stored_ids(memory) == [0, 2, 3]

  def test_least_used_keeps_what_was_used_most(self):
    memory = store.init(3, 4, 1, policy="least_used")
    memory = _insert(memory, _onehot_keys([0, 1, 2]), jnp.zeros((3, 1)))
    for slot in (0, 0, 1):
      memory = _mark_used(memory, jnp.array([slot]))
    # Hits: item 0 twice, item 1 once, item 2 never: item 2 goes first, then 1.
    memory = _insert(memory, _onehot_keys([3]), jnp.zeros((1, 1)))
    assert _stored_ids(memory) == [0, 1, 3]
    memory = _insert(memory, _onehot_keys([0]), jnp.zeros((1, 1)))
    # Item 3 is new (0 hits) and goes before item 1 (1 hit).
    assert _stored_ids(memory) == [0, 1, 4]

  def test_a_batch_larger_than_memory_keeps_its_last_items(self):
    memory = _insert(store.init(3, 2, 1), jnp.ones((5, 2)), jnp.arange(5.0)[:, None])
    assert _stored_ids(memory) == [2, 3, 4]
    assert int(memory.next_id) == 5 and int(memory.clock) == 5

  def test_mask_and_given_ids(self):
    memory = store.init(4, 2, 1)
    memory = _insert(memory, jnp.ones((3, 2)), jnp.arange(3.0)[:, None],
                          ids=jnp.array([7, 8, 9]), mask=jnp.array([True, False, True]))
    assert _stored_ids(memory) == [7, 9]
    assert int(memory.next_id) == 10  # automatic ids never collide with given ones
    np.testing.assert_array_equal(memory.values[:2, 0], [0.0, 2.0])


class TestUpdateDelete:

  def test_update_and_delete_by_id(self):
    memory = _insert(store.init(4, 4, 1), _onehot_keys([0, 1, 2]), jnp.zeros((3, 1)))
    memory = _update(memory, jnp.array([1, 42]), keys=_onehot_keys([3, 3]),
                          values=jnp.array([[5.0], [6.0]]))
    result = _lookup(memory, _onehot_keys([3]), 1)
    assert int(result.ids[0, 0]) == 1 and float(result.values[0, 0, 0]) == 5.0
    memory = _delete(memory, jnp.array([1, 99]))
    assert _stored_ids(memory) == [0, 2]
    result = _lookup(memory, _onehot_keys([3]), 3)
    assert 1 not in np.asarray(result.ids).tolist()

  def test_slots_of(self):
    memory = _insert(store.init(4, 2, 1), jnp.ones((2, 2)), jnp.zeros((2, 1)))
    np.testing.assert_array_equal(store.slots_of(memory, jnp.array([1, 0, 5, -1])),
                                  [1, 0, -1, -1])


class TestLookup:

  def test_against_numpy(self):
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(37, 8)).astype(np.float32)
    queries = rng.normal(size=(5, 8)).astype(np.float32)
    memory = _insert(store.init(40, 8, 2), keys, rng.normal(size=(37, 2)).astype(np.float32))
    for metric in ("inner_product", "cosine"):
      if metric == "cosine":
        scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
            keys / np.linalg.norm(keys, axis=1, keepdims=True)).T
      else:
        scores = queries @ keys.T
      want = np.argsort(-scores, axis=1, kind="stable")[:, :6]
      for chunk in (None, 1, 4, 7, 40):
        result = _lookup(memory, queries, k=6, metric=metric, chunk_size=chunk)
        np.testing.assert_array_equal(result.indices, want)
        np.testing.assert_array_equal(result.ids, want)
        np.testing.assert_allclose(result.scores, np.take_along_axis(scores, want, 1),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(result.values, memory.values[want])

  def test_fewer_valid_items_than_k(self):
    memory = _insert(store.init(6, 2, 1), jnp.array([[1.0, 0.0], [0.0, 1.0]]),
                          jnp.array([[1.0], [2.0]]))
    result = _lookup(memory, jnp.array([1.0, 0.0]), 4, chunk_size=4)
    np.testing.assert_array_equal(result.found, [True, True, False, False])
    np.testing.assert_array_equal(result.indices, [0, 1, -1, -1])
    np.testing.assert_array_equal(result.ids, [0, 1, -1, -1])
    np.testing.assert_array_equal(result.scores[2:], [-np.inf, -np.inf])
    np.testing.assert_array_equal(result.values[:, 0], [1.0, 2.0, 0.0, 0.0])

  def test_ties_go_to_the_lower_slot(self):
    memory = _insert(store.init(8, 2, 1), jnp.ones((8, 2)), jnp.zeros((8, 1)))
    for chunk in (None, 3):
      result = _lookup(memory, jnp.ones((1, 2)), 5, chunk_size=chunk)
      np.testing.assert_array_equal(result.indices, [[0, 1, 2, 3, 4]])

  def test_invalid_slots_never_returned_even_with_best_keys(self):
    memory = _insert(store.init(4, 2, 1), jnp.array([[10.0, 0], [1, 0], [2, 0]]),
                          jnp.zeros((3, 1)))
    memory = _delete(memory, jnp.array([0]))
    result = _lookup(memory, jnp.array([[1.0, 0.0]]), 3)
    np.testing.assert_array_equal(result.ids, [[2, 1, -1]])

  def test_score_matrix_is_never_built_whole(self):
    n, q, chunk = 4096, 8, 256
    memory = store.init(n, 4, 1)
    jaxpr = jax.make_jaxpr(lambda m, x: store.lookup(m, x, 4, chunk_size=chunk))(
        memory, jnp.ones((q, 4)))
    largest = max(_largest_intermediate(jaxpr.jaxpr), 0)
    assert largest <= q * chunk * 2, largest  # Q x chunk (+ merge buffers), never Q x N
    assert largest < q * n

  def test_integer_values(self):
    memory = _insert(store.init(3, 2, 1, value_dtype=jnp.int32),
                          jnp.eye(2), jnp.array([[5], [9]]))
    result = _lookup(memory, jnp.array([0.0, 1.0]), 2)
    np.testing.assert_array_equal(result.values[:, 0], [9, 5])


def _largest_intermediate(jaxpr) -> int:
  """Elements of the largest array any equation outputs, sub-jaxprs included (not inputs)."""
  largest = 0
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      largest = max(largest, int(np.prod(var.aval.shape)))
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (list, tuple)) else [param]):
        inner = getattr(sub, "jaxpr", None)
        if inner is not None:
          largest = max(largest, _largest_intermediate(getattr(inner, "jaxpr", inner)))
  return largest


class TestAttend:

  def _memory(self):
    rng = np.random.default_rng(1)
    keys = rng.normal(size=(6, 3)).astype(np.float32)
    values = rng.normal(size=(6, 2)).astype(np.float32)
    return _insert(store.init(8, 3, 2), keys, values), keys, values

  def test_against_numpy(self):
    memory, keys, values = self._memory()
    q = np.array([[0.5, -1.0, 0.3], [1.0, 1.0, 0.0]], np.float32)
    out = store.attend(memory, q, 3, scale=2.0)
    for i in range(2):
      s = keys @ q[i]
      top = np.argsort(-s)[:3]
      p = np.exp(2 * s[top] - (2 * s[top]).max())
      p /= p.sum()
      np.testing.assert_allclose(out[i], p @ values[top], rtol=1e-5, atol=1e-6)

  def test_gradients(self):
    memory, _, _ = self._memory()
    with jax.enable_x64(True):
      q = jnp.array([[0.5, -1.0, 0.3]], jnp.float64)
      check_grads(jax.jit(lambda x: store.attend(memory, x, 3)), (q,), order=1, atol=1e-4,
                  rtol=1e-4, eps=1e-4)
    # The memory's stored values get gradient only through the k selected slots.
    read = lambda values: store.attend(memory.replace(values=values), q.astype(jnp.float32), 3)
    grad = jax.grad(lambda values: read(values).sum())(memory.values)
    nonzero = np.flatnonzero(np.abs(np.asarray(grad)).sum(axis=1))
    assert len(nonzero) == 3

  def test_empty_memory_reads_zeros(self):
    memory = store.init(4, 3, 2)
    out = store.attend(memory, jnp.ones((2, 3)), 2)
    np.testing.assert_array_equal(out, np.zeros((2, 2)))
    grad = jax.grad(lambda x: store.attend(memory, x, 2).sum())(jnp.ones((2, 3)))
    assert np.all(np.isfinite(np.asarray(grad)))


# --- the dictionary model -----------------------------------------------------------------

N_SLOTS, KEY_DIM, BATCH, QUERIES, TOP_K, CHUNK = 5, 4, 3, 2, 3, 2


class DictModel:
  """memjax.store's documented semantics, as a plain dictionary."""

  def __init__(self, num_slots: int, policy: str):
    self.num_slots, self.policy = num_slots, policy
    self.items: dict[int, dict] = {}
    self.clock = 0
    self.next_id = 0

  def _eviction_key(self, item_id):
    it = self.items[item_id]
    if self.policy == "fifo":
      return (it["inserted_at"],)
    if self.policy == "lru":
      return (it["last_used"], it["inserted_at"])
    return (it["hits"], it["last_used"], it["inserted_at"])

  def insert(self, keys, values, mask, ids=None):
    rows = [i for i in range(len(keys)) if mask[i]]
    new_ids = [int(ids[i]) for i in rows] if ids is not None else [
        self.next_id + r for r in range(len(rows))]
    entries = [(new_ids[r], self.clock + r, keys[i], values[i]) for r, i in enumerate(rows)]
    kept = entries[-self.num_slots:]
    free = self.num_slots - len(self.items)
    victims = sorted(self.items, key=self._eviction_key)[:max(0, len(kept) - free)]
    evicted = set(victims)
    for v in victims:
      del self.items[v]
    for item_id, time, key, value in kept:
      self.items[item_id] = dict(key=np.asarray(key, np.float64), value=np.asarray(value),
                                 inserted_at=time, last_used=time, hits=0)
    self.clock += len(rows)
    if new_ids:
      self.next_id = max(self.next_id, max(new_ids) + 1)
    return evicted

  def lookup(self, queries, k, metric):
    out = []
    for q in np.asarray(queries, np.float64):
      scored = []
      for item_id, it in self.items.items():
        key = it["key"]
        if metric == "cosine":
          s = q @ key / (np.linalg.norm(q) * np.linalg.norm(key))
        else:
          s = q @ key
        scored.append((s, item_id))
      scored.sort(key=lambda t: -t[0])
      out.append(scored[:k])
    return out

  def mark_used(self, ids):
    self.clock += 1
    for item_id in ids:
      if item_id in self.items:
        self.items[item_id]["hits"] += 1
        self.items[item_id]["last_used"] = self.clock


class StoreMachine(RuleBasedStateMachine):
  """Random operation sequences; what lookup returns always matches the model."""

  policy = "fifo"

  @initialize()
  def start(self):
    self.memory = store.init(N_SLOTS, KEY_DIM, 2, policy=self.policy)
    self.model = DictModel(N_SLOTS, self.policy)
    self.deleted: set[int] = set()
    self.rng = np.random.default_rng(0)

  def _keys(self, n):
    # Continuous random keys: no score ties, so the order is the model's to decide.
    return self.rng.normal(size=(n, KEY_DIM)).astype(np.float32)

  @rule(mask=st.lists(st.booleans(), min_size=BATCH, max_size=BATCH))
  def insert(self, mask):
    keys = self._keys(BATCH)
    values = self.rng.normal(size=(BATCH, 2)).astype(np.float32)
    before = set(self.model.items)
    evicted = self.model.insert(keys, values, mask)
    self.memory = _insert(self.memory, keys, values, mask=np.array(mask))
    stored = set(_stored_ids(self.memory))
    assert before - stored == evicted  # evicted exactly per the policy
    assert stored == set(self.model.items)

  @rule(offset=st.integers(0, 3), mask=st.lists(st.booleans(), min_size=BATCH, max_size=BATCH))
  def insert_with_ids(self, offset, mask):
    ids = np.arange(BATCH, dtype=np.int32) + int(self.model.next_id) + offset
    keys = self._keys(BATCH)
    values = self.rng.normal(size=(BATCH, 2)).astype(np.float32)
    self.model.insert(keys, values, mask, ids=ids)
    self.memory = _insert(self.memory, keys, values, ids=ids, mask=np.array(mask))

  @rule(metric=st.sampled_from(["inner_product", "cosine"]), use=st.booleans())
  def lookup(self, metric, use):
    queries = self._keys(QUERIES)
    result = _lookup(self.memory, queries, k=TOP_K, metric=metric, chunk_size=CHUNK)
    expected = self.model.lookup(queries, TOP_K, metric)
    for q in range(QUERIES):
      want = expected[q]
      found = np.asarray(result.found[q])
      assert found.sum() == len(want)
      got_ids = np.asarray(result.ids[q])[found].tolist()
      assert got_ids == [i for _, i in want]
      np.testing.assert_allclose(np.asarray(result.scores[q])[found], [s for s, _ in want],
                                 rtol=1e-4, atol=1e-4)
      for j, (_, item_id) in enumerate(want):
        np.testing.assert_allclose(result.values[q, j], self.model.items[item_id]["value"])
      assert not set(got_ids) & self.deleted  # deleted ids never come back
    if use:
      self.memory = _mark_used(self.memory, result.indices)
      self.model.mark_used([int(i) for i in np.asarray(result.ids).ravel() if i >= 0])

  @rule(which=st.lists(st.integers(0, 30), min_size=BATCH, max_size=BATCH, unique=True))
  def update(self, which):
    ids = np.array(which, np.int32)
    keys = self._keys(BATCH)
    values = self.rng.normal(size=(BATCH, 2)).astype(np.float32)
    self.memory = _update(self.memory, ids, keys=keys, values=values)
    for i, item_id in enumerate(which):
      if item_id in self.model.items:
        self.model.items[item_id]["key"] = keys[i].astype(np.float64)
        self.model.items[item_id]["value"] = values[i]

  @rule(which=st.lists(st.integers(0, 30), min_size=BATCH, max_size=BATCH),
        mask=st.lists(st.booleans(), min_size=BATCH, max_size=BATCH))
  def delete(self, which, mask):
    self.memory = _delete(self.memory, np.array(which, np.int32), mask=np.array(mask))
    for item_id, m in zip(which, mask):
      if m and item_id in self.model.items:
        del self.model.items[item_id]
        self.deleted.add(item_id)

  @invariant()
  def same_items(self):
    if not hasattr(self, "memory"):
      return
    assert _stored_ids(self.memory) == sorted(self.model.items)
    assert int(store.size(self.memory)) == len(self.model.items) <= N_SLOTS


class FifoMachine(StoreMachine):
  policy = "fifo"


class LruMachine(StoreMachine):
  policy = "lru"


class LeastUsedMachine(StoreMachine):
  policy = "least_used"


_machine_settings = settings(stateful_step_count=25)
TestFifoMachine = _machine_settings(FifoMachine).TestCase
TestLruMachine = _machine_settings(LruMachine).TestCase
TestLeastUsedMachine = _machine_settings(LeastUsedMachine).TestCase


@pytest.mark.parametrize("policy", ["fifo", "lru", "least_used"])
def test_model_agrees_on_a_long_fixed_sequence(policy):
  """A deterministic 60-operation run, so a failure reproduces without hypothesis."""
  rng = np.random.default_rng(7)
  memory = store.init(N_SLOTS, KEY_DIM, 2, policy=policy)
  model = DictModel(N_SLOTS, policy)
  for step in range(60):
    keys = rng.normal(size=(BATCH, KEY_DIM)).astype(np.float32)
    values = rng.normal(size=(BATCH, 2)).astype(np.float32)
    mask = rng.uniform(size=BATCH) < 0.7
    if step % 3 == 0:
      model.insert(keys, values, mask)
      memory = _insert(memory, keys, values, mask=mask)
    elif step % 3 == 1:
      result = _lookup(memory, keys[:QUERIES], k=TOP_K, metric="inner_product",
                       chunk_size=CHUNK)
      want = model.lookup(keys[:QUERIES], TOP_K, "inner_product")
      for q in range(QUERIES):
        got = [int(i) for i in np.asarray(result.ids[q]) if i >= 0]
        assert got == [i for _, i in want[q]]
      memory = _mark_used(memory, result.indices)
      model.mark_used([int(i) for i in np.asarray(result.ids).ravel() if i >= 0])
    else:
      victim = int(rng.integers(0, model.next_id + 1))
      memory = _delete(memory, np.array([victim, -1, -1], np.int32))
      model.items.pop(victim, None)
    assert _stored_ids(memory) == sorted(model.items)
