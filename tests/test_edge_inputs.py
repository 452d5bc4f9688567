"""Edge inputs: NumPy integers, empty batches, overflowing scores, out-of-range indices.

Each case was found by a probe of the public API, where it used to raise a
raw error (ZeroDivisionError, a scan type mismatch), to give a silently wrong
answer (a +inf score "not found", an id clamped or dropped), or to reject a
valid argument (`np.int64(2)` "not an integer").
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memjax import _checks
from memjax import ivf
from memjax import retrieval
from memjax import store
from memjax.nn import memn2n
from memjax.nn import ntm
from memjax.nn import product_keys
from memjax.nn import sam
from memjax.nn import sequence
from memjax.nn import transformer
from memjax.tasks import algorithmic


def _brute_top_k(keys, valid, queries, k):
  """NumPy: scores and slots of the k best valid keys per query (ties: lower slot)."""
  scores = np.where(valid[None], np.asarray(queries, np.float64) @ np.asarray(keys).T, -np.inf)
  slots = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(scores, slots, axis=1), slots


def test_integer_check_takes_numpy_integers_and_nothing_else():
  assert _checks.integer(np.int64(3), "k") == 3 and type(_checks.integer(np.int32(3), "k")) is int
  for bad in (True, 2.0, np.array(2), "2", None):
    with pytest.raises(ValueError, match="k must be an integer"):
      _checks.integer(bad, "k")
  with pytest.raises(ValueError, match=r"k must be an integer in \[1, 4\] \(the slot count\); "
                                       r"got 5"):
    _checks.integer(5, "k", 1, 4, "the slot count")


def test_number_check_bounds_reals_and_rejects_booleans_and_non_finite_values():
  assert _checks.number(np.float32(0.5), "lr", 0, open_low=True) == 0.5
  assert type(_checks.number(np.int64(2), "x")) is float
  assert _checks.number(0, "decay", 0) == 0.0  # the bound itself: inclusive by default
  for bad in (True, float("nan"), float("inf"), "0.1", None, np.array(0.1)):
    with pytest.raises(ValueError, match="lr must be a finite number"):
      _checks.number(bad, "lr")
  with pytest.raises(ValueError, match="lr must be a finite number > 0; got 0"):
    _checks.number(0, "lr", 0, open_low=True)
  with pytest.raises(ValueError, match=r"f must be a finite number >= 0 and <= 1; got 1\.5"):
    _checks.number(1.5, "f", 0, 1)


def test_numpy_integer_sizes_give_the_same_results_as_python_ints():
  rng = np.random.default_rng(0)
  keys = rng.normal(size=(6, 3)).astype(np.float32)
  values = rng.normal(size=(6, 2)).astype(np.float32)
  queries = rng.normal(size=(2, 3)).astype(np.float32)
  plain = store.insert(store.init(8, 3, 2), keys, values)
  numpy_sized = store.insert(store.init(np.int64(8), np.int32(3), np.int64(2)), keys, values)
  got = store.lookup(numpy_sized, queries, np.int64(4))
  want_scores, want_slots = _brute_top_k(keys, np.ones(6, bool), queries, 4)
  np.testing.assert_array_equal(got.indices, want_slots)
  np.testing.assert_allclose(got.scores, want_scores, rtol=1e-6)
  np.testing.assert_array_equal(got.indices, store.lookup(plain, queries, 4).indices)
  np.testing.assert_array_equal(store.eviction_order(plain, np.int64(3)), [6, 7, 0])

  centroids = ivf.kmeans(jnp.asarray(keys), np.int64(2))
  index = ivf.insert(ivf.init(centroids, np.int64(4), np.int64(2), np.int64(8),
                              probes=np.int64(2)), keys, values)
  found = ivf.search(index, queries, np.int64(4), probes=np.int64(2))
  np.testing.assert_array_equal(found.ids, want_slots)  # 2 of 2 lists probed: exact
  assert retrieval.chunk_text("a b c d e", np.int64(2), np.int64(1)) == ["a b", "b c", "c d",
                                                                         "d e"]


def test_empty_query_batches_give_empty_results():
  rng = np.random.default_rng(1)
  memory = store.insert(store.init(8, 3, 2), rng.normal(size=(5, 3)), rng.normal(size=(5, 2)))
  result = store.lookup(memory, jnp.zeros((0, 3)), 2)
  assert result.values.shape == (0, 2, 2) and result.ids.shape == (0, 2)
  assert store.attend(memory, jnp.zeros((0, 3)), 2).shape == (0, 2)
  grad = jax.grad(lambda q: store.attend(memory, q, 2).sum())(jnp.zeros((0, 3)))
  assert grad.shape == (0, 3)
  per_sequence = jax.vmap(lambda q: store.lookup(memory, q, 2).ids)(jnp.zeros((3, 0, 3)))
  assert per_sequence.shape == (3, 0, 2)
  scores, slots = store.top_k_slots(memory.keys, memory.valid, jnp.zeros((0, 3)), 2)
  assert scores.shape == slots.shape == (0, 2)

  index = ivf.init(jnp.eye(3)[:2], 4, 2, 8)
  assert ivf.search(index, jnp.zeros((0, 3)), 2).values.shape == (0, 2, 2)

  pkm = product_keys.ProductKeyMemory(4, 3, num_sub_keys=4, query_size=4, num_heads=1, k=2,
                                      rngs=nnx.Rngs(0))
  assert pkm(jnp.zeros((0, 4))).shape == (0, 3)

  model = transformer.MemoryTransformer(10, 8, 1, 2, window=4, rngs=nnx.Rngs(0))
  logits, _ = model(jnp.zeros((0, 8), jnp.int32), model.init_state(0, 32))
  assert logits.shape == (0, 8, 10)


def test_a_score_that_overflows_to_inf_is_found():
  keys = jnp.array([[1.0, 0.0], [3e38, 3e38], [0.0, 1.0]])
  memory = store.insert(store.init(4, 2, 1), keys, jnp.array([[1.0], [2.0], [3.0]]))
  query = jnp.array([[3e38, 3e38]])  # . key 1 overflows to +inf; . keys 0 and 2 give 3e38
  got = store.lookup(memory, query, 4)
  assert got.found.tolist() == [[True, True, True, False]]
  assert got.ids.tolist() == [[1, 0, 2, -1]]
  assert got.scores[0, 0] == np.inf and np.isfinite(got.scores[0, 1])
  np.testing.assert_array_equal(got.values[0, :3, 0], [2.0, 1.0, 3.0])

  index = ivf.insert(ivf.init(jnp.eye(2), 4, 1, 8, probes=2), keys, jnp.ones((3, 1)))
  found = ivf.search(index, query, 3)
  assert found.found.tolist() == [[True, True, True]] and found.ids[0, 0] == 1
  assert found.scores[0, 0] == np.inf


def test_top_k_slots_checks_its_arguments_and_matches_numpy():
  rng = np.random.default_rng(2)
  keys = rng.normal(size=(40, 3)).astype(np.float32)
  valid = rng.random(40) < 0.7
  queries = rng.normal(size=(3, 3)).astype(np.float32)
  scores, slots = store.top_k_slots(keys, valid, queries, 5)
  want_scores, want_slots = _brute_top_k(keys, valid, queries, 5)
  np.testing.assert_array_equal(slots, want_slots)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
  bad = [
      (lambda: store.top_k_slots(keys, valid, queries[:, :2], 5), ValueError, "queries"),
      (lambda: store.top_k_slots(keys, valid[:30], queries, 5), ValueError, "valid"),
      (lambda: store.top_k_slots(keys, valid.astype(np.int32), queries, 5), TypeError, "bool"),
      (lambda: store.top_k_slots(keys, valid, queries, 41), ValueError, "N=40"),
      (lambda: store.top_k_slots(keys, valid, queries, 5, metric="l2"), ValueError, "metric"),
      (lambda: store.top_k_slots(keys, valid, queries, 5, chunk_size=0), ValueError,
       "chunk_size"),
      (lambda: store.eviction_order(store.init(4, 3, 1), 5), ValueError, "count"),
  ]
  for call, error, word in bad:
    with pytest.raises(error, match=word):
      call()


def test_ivf_insert_and_assign_check_sizes():
  index = ivf.init(jnp.eye(3)[:2], 4, 2, 8)
  with pytest.raises(ValueError, match="keys must have size 3 on axis 1"):
    ivf.insert(index, jnp.ones((2, 4)), jnp.ones((2, 2)))
  with pytest.raises(ValueError, match="values must have size 2 on axis 1"):
    ivf.insert(index, jnp.ones((2, 3)), jnp.ones((2, 5)))
  with pytest.raises(ValueError, match="values must have size 2 on axis 0"):
    ivf.insert(index, jnp.ones((2, 3)), jnp.ones((3, 2)))
  with pytest.raises(ValueError, match="keys must have size 3"):
    ivf.assign(index.centroids, jnp.ones((2, 5)))
  np.testing.assert_array_equal(ivf.assign(index.centroids, jnp.array([[0.0, 2.0, 0.0],
                                                                       [1.0, 0.0, 0.0]])), [1, 0])


def test_out_of_range_indices_raise_when_known():
  table = jnp.arange(12.0).reshape(4, 3)
  ids = jnp.array([[1, 3, 0]])
  # Bag of words: rows 1 and 3 summed (the padding id 0 adds nothing).
  np.testing.assert_allclose(memn2n.encode_sentences(table, ids, "bow"), [[12.0, 14.0, 16.0]])
  for dense in (True, False):
    with pytest.raises(ValueError, match=r"ids must lie in \[0, the vocabulary size V of "
                                         r"table=4\); got values from 1 to 4"):
      memn2n.encode_sentences(table, jnp.array([[1, 4]]), "bow", dense=dense)
  jax.jit(memn2n.encode_sentences, static_argnums=2)(table, jnp.array([[1, 4]]), "bow")

  encoder = memn2n.SentenceEncoder(6, 3, memory_size=2, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(encoder.time_encoding(jnp.array([1, 0])),
                                encoder.temporal[...][::-1])
  with pytest.raises(ValueError, match=r"time must lie in \[0, memory_size=2\)"):
    encoder.time_encoding(jnp.array([2]))

  values = jnp.arange(8.0).reshape(4, 2)
  out = product_keys.read_values(values, jnp.array([[0, 3]]), jnp.array([[0.25, 0.75]]))
  np.testing.assert_allclose(out, [[0.25 * 0 + 0.75 * 6, 0.25 * 1 + 0.75 * 7]])
  with pytest.raises(ValueError, match=r"indices must lie in \[0, the slot count N"):
    product_keys.read_values(values, jnp.array([[0, 4]]), jnp.array([[0.5, 0.5]]))
  with pytest.raises(ValueError, match="weights must have the shape of indices"):
    product_keys.read_values(values, jnp.array([[0, 1]]), jnp.array([[1.0]]))

  pkm = product_keys.ProductKeyMemory(4, 3, num_sub_keys=4, query_size=4, num_heads=1, k=2,
                                      rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="x must have in_features=4"):
    pkm(jnp.ones((2, 5)))


def test_documents_and_ids_are_checked():
  with pytest.raises(TypeError, match="documents must be a sequence of str"):
    retrieval.chunk_documents("one long text", 3)
  with pytest.raises(TypeError, match="text must be a str"):
    retrieval.chunk_text(["a b"], 3)
  memory = retrieval.DocumentMemory(retrieval.HashedBagOfWords(64), 4)
  with pytest.raises(TypeError, match="ids must be integers; got dtype float64"):
    memory.add(["red apple", "blue sky"], ids=[1.5, 2.0])
  np.testing.assert_array_equal(memory.add(["red apple", "blue sky"], ids=np.array([5, 9])),
                                [5, 9])
  memory.delete([])
  assert memory.retrieve(["apple"], 1).ids.tolist() == [[5]]


def test_zero_sizes_are_errors_not_defaults():
  with pytest.raises(ValueError, match="segment_length must be an integer >= 1"):
    transformer.MemoryTransformer(10, 8, 1, 2, window=4, segment_length=0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="mlp_features must be an integer >= 1"):
    transformer.MemoryTransformer(10, 8, 1, 2, window=4, mlp_features=0, rngs=nnx.Rngs(0))


def test_a_bfloat16_carry_is_promoted_to_the_cells_dtype():
  cell = ntm.NTMCell(3, 2, memory_size=6, word_size=4, controller_size=8, rngs=nnx.Rngs(0))
  inputs = jax.random.uniform(jax.random.key(1), (2, 5, 3)).astype(jnp.bfloat16)
  half = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating)
                      else x, cell.initialize_carry((2, 3)))
  widen = lambda tree: jax.tree.map(
      lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)
  want_carry, want, _ = sequence.run_cell(cell, inputs.astype(jnp.float32),
                                          initial_carry=widen(half))
  for hoist in (False, True):
    carry, out, _ = sequence.run_cell(cell, inputs, initial_carry=half, hoist=hoist)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    for got, ref in zip(jax.tree.leaves(carry), jax.tree.leaves(want_carry)):
      assert got.dtype == ref.dtype


def test_task_lengths_of_zero_are_errors_not_defaults():
  rng = np.random.default_rng(0)
  copy = algorithmic.CopyTask(bits=3, min_length=1, max_length=4)
  assert copy.time_steps(0) == 1 and copy.time_steps() == 9
  with pytest.raises(ValueError, match="length must be an integer >= 1; got 0"):
    copy.sample(rng, 2, length=0)
  with pytest.raises(ValueError, match="time_steps=0 is too short"):
    copy.sample(rng, 2, time_steps=0)
  repeat = algorithmic.RepeatCopyTask(bits=3, min_length=1, max_length=3, min_repeats=1,
                                      max_repeats=2)
  with pytest.raises(ValueError, match="repeats must be an integer >= 1"):
    repeat.sample(rng, 2, repeats=0)
  assert copy.sample(rng, 2, length=np.int64(3)).inputs.shape[0] == 2


def _block():
  return transformer.MemoryAugmentedBlock(8, 2, window=4, top_k=2, rngs=nnx.Rngs(0))


def _kv_reader():
  return memn2n.KeyValueReader(4, rngs=nnx.Rngs(0))


MODULE_CASES = [
    # (name, call, words the ValueError must contain)
    ("word ids scalar", lambda: memn2n.encode_sentences(jnp.ones((4, 3)), jnp.array(1)),
     ["ids", "rank >= 1"]),
    ("address mask", lambda: memn2n.address(jnp.ones(3), jnp.ones((5, 3)), jnp.ones(4, bool)),
     ["mask", "[N] = (5,)", "(4,)"]),
    ("random time rate", lambda: memn2n.random_time(jax.random.key(0), 3, 5, 1.0),
     ["rate", "[0, 1)", "1.0"]),
    ("encoder memory size", lambda: memn2n.SentenceEncoder(6, 3, memory_size=-1,
                                                           rngs=nnx.Rngs(0)),
     ["memory_size", ">= 0", "-1"]),
    ("time encoding without times", lambda: memn2n.SentenceEncoder(
        6, 3, memory_size=2, rngs=nnx.Rngs(0)).time_encoding(None), ["time indices", "slot"]),
    ("time encoding too many slots", lambda: memn2n.SentenceEncoder(
        6, 3, memory_size=2, rngs=nnx.Rngs(0)).time_encoding(None, 5), ["5 memory slots", "2"]),
    ("memn2n memory shape", lambda: memn2n.MemN2N(6, 4, memory_size=3, rngs=nnx.Rngs(0)).answer(
        jnp.ones((2, 3, 4)), jnp.ones((2, 4)), jnp.ones((2, 3), bool)), ["memory", "[B, M"]),
    ("memn2n question shape", lambda: memn2n.MemN2N(6, 4, hops=1, tying="adjacent",
                                                    memory_size=3, rngs=nnx.Rngs(0)).answer(
        jnp.ones((2, 3, 2, 4)), jnp.ones((3, 4)), jnp.ones((2, 3), bool)),
     ["question", "(2, 4)", "(3, 4)"]),
    ("kv reader keys", lambda: _kv_reader()(jnp.ones((2, 4)), jnp.ones((2, 3, 5)),
                                            jnp.ones((2, 3, 5)), jnp.ones((2, 3), bool)),
     ["keys", "[B, N, d]", "(2, 3, 5)"]),
    ("index centroids rank", lambda: transformer.empty_index(1, jnp.ones((3, 4)), 8, 4, 1),
     ["centroids", "[H, C, E]", "(3, 4)"]),
    ("block centroids heads", lambda: _block().init_state(1, 8, centroids=jnp.ones((3, 2, 4))),
     ["centroids", "H=2", "(3, 2, 4)"]),
    ("block probes x list size", lambda: _block().init_state(
        1, 8, centroids=jnp.ones((2, 2, 4)), list_size=1, probes=1),
     ["probes x list_size", "top_k=2", "1 x 1"]),
    ("block list size zero", lambda: _block().init_state(
        1, 8, centroids=jnp.ones((2, 2, 4)), list_size=0), ["list_size", ">= 1", "0"]),
    ("retrieve without memory", lambda: _block().retrieve(jnp.ones((1, 4, 8)),
                                                          _block().init_state(1)),
     ["retrieve", "memory"]),
    ("block x features", lambda: _block()(jnp.ones((1, 4, 6)), _block().init_state(1, 8)),
     ["x", "D=8", "(1, 4, 6)"]),
    ("block state batch", lambda: _block()(jnp.ones((2, 4, 8)), _block().init_state(1, 8)),
     ["state has batch 1", "x has batch 2"]),
    ("sam state shapes", lambda: sam.make_state(jnp.ones((4, 3)), jnp.zeros(5, jnp.int32),
                                                jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2)),
                                                jnp.ones((1, 3)), 0, jnp.ones(4), jnp.ones(4)),
     ["words", "last_access", "(5,)"]),
    ("sam k", lambda: sam.SAMCell(3, 2, memory_size=4, k=5, rngs=nnx.Rngs(0)),
     ["k", "memory_size=4", "5"]),
    ("run_cell rank", lambda: sequence.run_cell(
        ntm.NTMCell(3, 2, memory_size=4, word_size=2, controller_size=4, rngs=nnx.Rngs(0)),
        jnp.ones((2, 3))), ["inputs", "rank 3", "(2, 3)"]),
]


@pytest.mark.parametrize("name, call, words", MODULE_CASES, ids=[c[0] for c in MODULE_CASES])
def test_module_errors_name_the_argument(name, call, words):
  with pytest.raises(ValueError) as info:
    call()
  for word in words:
    assert word in str(info.value), (name, str(info.value))


def test_unbatched_steps_and_encodings_without_time():
  cell = sam.SAMCell(3, 2, memory_size=8, word_size=4, k=2, controller_size=6, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(2), (3,))
  one, y = cell(cell.initialize_carry((3,)), x)            # one sequence, no batch axis
  batch, y_batch = cell(cell.initialize_carry((1, 3)), x[None])
  assert y.shape == (2,)
  np.testing.assert_allclose(y, y_batch[0], rtol=1e-6, atol=1e-7)
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(batch)):
    np.testing.assert_allclose(a, b[0], rtol=1e-6, atol=1e-7)
  plain = memn2n.SentenceEncoder(6, 3, memory_size=0, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(plain.time_encoding(jnp.array([[0, 1]])), np.zeros((1, 2, 3)))
