"""Tests of memory networks (memjax.nn.memn2n) against NumPy written from the papers' equations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from memjax.nn import memn2n

V, D, M, L = 12, 6, 5, 4


def np_position_weights(length, d):
  """l_kj = 2 [(1 - j/J) - (k/d)(1 - 2j/J)], Sukhbaatar et al. Sec. 4.1 (times 2), looped."""
  out = np.zeros((length, d))
  for j in range(1, length + 1):
    for k in range(1, d + 1):
      out[j - 1, k - 1] = 2 * ((1 - j / length) - (k / d) * (1 - 2 * j / length))
  return out


def np_encode(table, ids, encoding="position"):
  words = [int(i) for i in ids if i != 0]
  if not words:
    return np.zeros(table.shape[1])
  weights = (np_position_weights(len(words), table.shape[1]) if encoding == "position"
             else np.ones((len(words), table.shape[1])))
  return sum(weights[j] * table[w] for j, w in enumerate(words))


def np_softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def random_batch(rng, batch=3):
  story = np.zeros((batch, M, L), np.int32)
  sizes = rng.integers(1, M + 1, size=batch)
  for b in range(batch):
    for s in range(sizes[b]):
      n = rng.integers(1, L + 1)
      story[b, s, :n] = rng.integers(1, V, size=n)
  question = np.zeros((batch, L), np.int32)
  question[:, :3] = rng.integers(1, V, size=(batch, 3))
  mask = np.arange(M)[None] < sizes[:, None]
  return story, question, mask


def test_position_weights_match_the_paper_formula():
  ids = np.array([[5, 2, 7, 0, 0], [3, 0, 0, 0, 0]])
  got = np.asarray(memn2n.sentence_weights(ids, 4))
  np.testing.assert_allclose(got[0, :3], np_position_weights(3, 4), atol=1e-6)
  np.testing.assert_allclose(got[1, :1], np_position_weights(1, 4), atol=1e-6)
  assert not got[0, 3:].any() and not got[1, 1:].any()  # padding has weight 0
  # A hand-worked entry: J = 3, j = 1, k = 2, d = 4: 2 [(1 - 1/3) - (2/4)(1 - 2/3)] = 1.
  assert got[0, 0, 1] == pytest.approx(1.0)
  assert memn2n.POSITION_SCALE == 2.0
  bow = np.asarray(memn2n.sentence_weights(ids, 4, "bow"))
  np.testing.assert_array_equal(bow[:, :, 0], ids != 0)


def test_encode_sentences_matches_numpy():
  rng = np.random.default_rng(0)
  table = rng.normal(size=(V, D)).astype(np.float32)
  ids = np.array([[3, 1, 4, 1], [5, 9, 0, 0], [0, 0, 0, 0]])
  for encoding in ("position", "bow"):
    want = np.stack([np_encode(table, s, encoding) for s in ids])
    for dense in (None, True, False):  # one-hot counts or gathered rows: the same numbers
      got = np.asarray(memn2n.encode_sentences(table, ids, encoding, dense))
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  with pytest.raises(TypeError, match="ids must have an integer dtype"):
    memn2n.encode_sentences(table, ids.astype(np.float32))
  with pytest.raises(ValueError, match="encoding must be one of"):
    memn2n.encode_sentences(table, ids, "lstm")


def test_masked_softmax():
  scores = np.array([1.0, 3.0, -2.0, 0.5], np.float32)
  mask = np.array([True, True, False, True])
  got = np.asarray(memn2n.masked_softmax(scores, mask))
  want = np.zeros(4)
  want[mask] = np_softmax(scores[mask])
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert got[2] == 0.0
  np.testing.assert_array_equal(memn2n.masked_softmax(scores, np.zeros(4, bool)), np.zeros(4))
  huge = np.array([1e4, -1e4, 3e4], np.float32)  # stable for large scores
  assert np.all(np.isfinite(memn2n.masked_softmax(huge, np.ones(3, bool))))
  half = memn2n.masked_softmax(jnp.asarray(scores, jnp.bfloat16), mask)
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(half, np.float32), want, atol=1e-2)
  with pytest.raises(ValueError, match="mask must have the shape of scores"):
    memn2n.masked_softmax(scores, mask[:3])


def test_masked_softmax_with_zero_entries_left_out():
  # Three entries with score 0 that are not in the array: the weights are the
  # first four of a softmax over seven (NumPy), the masked one still 0.
  scores = np.array([1.0, 3.0, -2.0, 0.5], np.float32)
  mask = np.array([True, True, False, True])
  full = np.concatenate([np.where(mask, scores, -np.inf), np.zeros(3)])
  want = (np.exp(full) / np.exp(full).sum())[:4]
  got = np.asarray(memn2n.masked_softmax(scores, mask, extra_zeros=3))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert got[2] == 0.0 and got.sum() < 1.0
  # All scores far below zero: the zero entries take the weight (no overflow).
  low = np.array([-20.0, -30.0], np.float32)
  got = np.asarray(memn2n.masked_softmax(low, np.ones(2, bool), extra_zeros=2))
  np.testing.assert_allclose(got, np.exp(low) / (np.exp(low).sum() + 2.0), rtol=1e-5)
  assert np.all(got > 0)
  with pytest.raises(ValueError, match="extra_zeros must be an integer >= 0"):
    memn2n.masked_softmax(scores, mask, extra_zeros=-1)


def test_a_memory_cut_after_its_last_story_gives_the_whole_memorys_answers():
  # total_slots: the memory's first S slots stand for all M, the rest empty.
  rng = np.random.default_rng(7)
  for model in (memn2n.MemN2N(V, D, hops=3, memory_size=M, rngs=nnx.Rngs(0)),
                memn2n.KeyValueMemoryNetwork(V, D, hops=2, memory_size=M, rngs=nnx.Rngs(0))):
    story, question, _ = random_batch(rng)
    mask = np.arange(M)[None] < np.array([[2], [3], [1]])  # stories of at most 3 sentences
    time = np.array([0, 2, 3, 3, 4])
    whole = model(story, question, mask, time=time)
    memory = model.embed_memory(story[:, :3])
    u = model.embed_question(question)
    cut = model.answer(memory, u, mask[:, :3], time=time[:3], total_slots=M)
    np.testing.assert_allclose(cut.logits, whole.logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cut.attention, whole.attention[:, :, :3], rtol=1e-5, atol=1e-7)
    plain = model.answer(memory, u, mask[:, :3], time=time[:3])  # 3 slots, not M
    assert not np.allclose(plain.logits, whole.logits, rtol=1e-3)
    linear = model.answer(memory, u, mask[:, :3], time=time[:3], total_slots=M, linear=True)
    np.testing.assert_allclose(linear.logits, model(story, question, mask, time=time,
                                                    linear=True).logits, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="total_slots must be an integer in"):
      model.answer(memory, u, mask[:, :3], total_slots=M + 1)


def test_read_memory_and_linear_addressing():
  rng = np.random.default_rng(1)
  query = rng.normal(size=D).astype(np.float32)
  keys = rng.normal(size=(M, D)).astype(np.float32)
  values = rng.normal(size=(M, 3)).astype(np.float32)
  mask = np.array([True, True, True, False, False])
  read, weights = memn2n.read_memory(query, keys, values, mask)
  p = np.zeros(M)
  p[:3] = np_softmax(keys[:3] @ query)
  np.testing.assert_allclose(weights, p, rtol=1e-5)
  np.testing.assert_allclose(read, p @ values, rtol=1e-5, atol=1e-6)
  # Linear start: the raw scores, zero on empty slots; also as a traced flag.
  linear = np.where(mask, keys @ query, 0.0)
  np.testing.assert_allclose(memn2n.address(query, keys, mask, True), linear, rtol=1e-5)
  traced = jax.jit(memn2n.address)(query, keys, mask, jnp.asarray(True))
  np.testing.assert_allclose(traced, linear, rtol=1e-5)
  with pytest.raises(ValueError, match="keys must have size 6 on axis 1"):
    memn2n.read_memory(query, keys[:, :4], values, mask)
  with pytest.raises(ValueError, match="values must have size 5 on axis 0"):
    memn2n.read_memory(query, keys, values[:4], mask)


def test_gradients_of_the_read():
  rng = np.random.default_rng(2)
  query = jnp.asarray(rng.normal(size=D))
  keys = jnp.asarray(rng.normal(size=(M, D)))
  values = jnp.asarray(rng.normal(size=(M, 3)))
  mask = jnp.array([True, False, True, True, True])
  with jax.enable_x64(True):
    args = [jnp.asarray(a, jnp.float64) for a in (query, keys, values)]
    check_grads(jax.jit(lambda q, k, v: memn2n.read_memory(q, k, v, mask)[0]), args,
                order=1, modes=["rev"])
    check_grads(jax.jit(lambda s: memn2n.masked_softmax(s, mask)), [args[1][:, 0]], order=1)


def np_random_time(rng, n, memory_size, rate):
  """The reference code's noise: a sorted random subset of n + b time indices."""
  blanks = rng.integers(int(np.ceil(n * rate))) if n else 0
  times = np.sort(rng.permutation(n + blanks)[:n])
  return np.minimum(times, memory_size - 1)


def test_random_time():
  key = jax.random.key(0)
  np.testing.assert_array_equal(memn2n.random_time(key, 7, 7, 0.0), np.arange(7))
  # Stories of at most 10 sentences get no blanks: ceil(0.1 n) = 1 allows only 0.
  np.testing.assert_array_equal(memn2n.random_time(key, 10, 50, 0.1), np.arange(50))
  keys = jax.random.split(key, 2000)
  times = np.asarray(jax.vmap(lambda k: memn2n.random_time(k, 30, 50, 0.1))(keys))
  assert np.all(np.diff(times[:, :30], axis=1) >= 1)  # order kept, no two share a time
  np.testing.assert_array_equal(times[:, 30:], np.broadcast_to(np.arange(30, 50), (2000, 20)))
  # b is uniform on {0, 1, 2}: the oldest sentence sits at 29 + b with b's law.
  rng = np.random.default_rng(0)
  want = np.array([np_random_time(rng, 30, 50, 0.1)[-1] for _ in range(6000)])
  got = times[:, 29]
  for value in (29, 30, 31):
    assert np.mean(got == value) == pytest.approx(np.mean(want == value), abs=0.04)
  # The newest sentence is moved back by a blank with P = E[b / (30 + b)] ~ 1/31.
  assert np.mean(times[:, 0] > 0) == pytest.approx(np.mean(
      [np_random_time(rng, 30, 50, 0.1)[0] > 0 for _ in range(6000)]), abs=0.015)
  capped = np.asarray(jax.vmap(lambda k: memn2n.random_time(k, 50, 50, 0.1))(keys))
  assert capped.max() == 49 and np.all(np.diff(capped, axis=1) >= 0)


def np_memn2n(model, story, question, mask, time, tying, attend_empty):
  """The forward pass of Sukhbaatar et al. (Sec. 2), one example at a time.

  With `attend_empty`, empty slots are zero vectors inside the softmax.
  """
  enc = [(np.asarray(e.embedding[...]), np.asarray(e.temporal[...])) for e in model.encoders]
  logits, attention = [], []
  for b in range(story.shape[0]):
    if tying == "adjacent":
      u = np_encode(enc[0][0], question[b])
      pairs = [(enc[k], enc[k + 1]) for k in range(model.hops)]
      out = enc[-1][0]
    else:
      u = np_encode(np.asarray(model.question_encoder.embedding[...]), question[b])
      pairs = [(enc[0], enc[1])] * model.hops
      out = np.asarray(model.output[...])
    hops = []
    valid = np.arange(story.shape[1]) if attend_empty else np.flatnonzero(mask[b])
    for (a_table, a_time), (c_table, c_time) in pairs:
      m = np.stack([(np_encode(a_table, story[b, i]) + a_time[time[i]]) * mask[b, i]
                    for i in valid])
      c = np.stack([(np_encode(c_table, story[b, i]) + c_time[time[i]]) * mask[b, i]
                    for i in valid])
      p = np_softmax(m @ u)
      o = p @ c
      u = (np.asarray(model.hop_map[...]) @ u if tying == "layerwise" else u) + o
      full = np.zeros(story.shape[1])
      full[valid] = p
      hops.append(full)
    logits.append(out @ u)
    attention.append(np.stack(hops))
  return np.stack(logits), np.stack(attention)


@pytest.mark.parametrize("tying, attend_empty", [("adjacent", True), ("layerwise", True),
                                                 ("adjacent", False)])
def test_memn2n_matches_numpy(tying, attend_empty):
  rng = np.random.default_rng(3)
  model = memn2n.MemN2N(V, D, hops=3, memory_size=M, tying=tying, attend_empty=attend_empty,
                        rngs=nnx.Rngs(0))
  story, question, mask = random_batch(rng)
  time = np.array([0, 2, 2, 3, 4])
  out = model(story, question, mask, time=time)
  logits, attention = np_memn2n(model, story, question, mask, time, tying, attend_empty)
  np.testing.assert_allclose(out.logits, logits, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(out.attention, attention, rtol=1e-4, atol=1e-6)
  assert out.logits.shape == (3, V) and out.attention.shape == (3, 3, M)


def test_memn2n_weight_tying_layout():
  model = memn2n.MemN2N(V, D, hops=3, memory_size=M, rngs=nnx.Rngs(0))
  assert model.memory_tables == 4  # E_0..E_3: B = A^1, A^{k+1} = C^k, W^T = C^3
  state = nnx.state(model, nnx.Param)
  sizes = sum(x.size for x in jax.tree.leaves(state))
  assert sizes == 4 * (V * D + M * D)
  layerwise = memn2n.MemN2N(V, D, hops=3, memory_size=M, tying="layerwise", rngs=nnx.Rngs(0))
  sizes = sum(x.size for x in jax.tree.leaves(nnx.state(layerwise, nnx.Param)))
  assert sizes == 2 * (V * D + M * D) + V * D + V * D + D * D  # A, C (+time), B, W, H


def test_memn2n_ignores_empty_slots_and_padding():
  rng = np.random.default_rng(4)
  model = memn2n.MemN2N(V, D, hops=2, memory_size=M, rngs=nnx.Rngs(1))
  story, question, mask = random_batch(rng)
  assert not mask.all()
  noisy = story.copy()
  noisy[~mask] = rng.integers(1, V, size=(int((~mask).sum()), L))  # junk in empty slots
  np.testing.assert_allclose(model(story, question, mask).logits,
                             model(noisy, question, mask).logits, rtol=1e-5)
  out = model(story, question, mask)
  empty = np.asarray(out.attention)[np.broadcast_to(~mask[:, None, :], out.attention.shape)]
  np.testing.assert_allclose(np.asarray(out.attention).sum(-1), 1.0, rtol=1e-5)
  assert np.all(empty > 0)  # empty slots take part in the softmax (score 0) ...
  masked = memn2n.MemN2N(V, D, hops=2, memory_size=M, attend_empty=False, rngs=nnx.Rngs(1))
  out = masked(story, question, mask)
  assert np.all(np.asarray(out.attention)[np.broadcast_to(~mask[:, None, :],
                                                          out.attention.shape)] == 0.0)
  out = model(story, question, mask, linear=True)  # ... but add 0 in linear start
  assert np.all(np.asarray(out.attention)[np.broadcast_to(~mask[:, None, :],
                                                          out.attention.shape)] == 0.0)


def np_kv(model, story, question, mask):
  """Miller et al. (2016) Sec. 3.1: key addressing, value reading, q <- R_j (q + o)."""
  key_table = np.asarray(model.key_encoder.embedding[...])
  key_time = np.asarray(model.key_encoder.temporal[...])
  value_table = np.asarray(model.value_encoder.embedding[...])
  value_time = np.asarray(model.value_encoder.temporal[...])
  maps = np.asarray(model.reader.hop_maps[...])
  logits = []
  for b in range(story.shape[0]):
    q = np_encode(key_table, question[b])
    valid = np.flatnonzero(mask[b])
    keys = np.stack([np_encode(key_table, story[b, i]) + key_time[i] for i in valid])
    values = np.stack([np_encode(value_table, story[b, i]) + value_time[i] for i in valid])
    for r in maps:
      q = r @ (q + np_softmax(keys @ q) @ values)
    logits.append(np.asarray(model.output[...]) @ q)
  return np.stack(logits)


def test_key_value_network_matches_numpy():
  rng = np.random.default_rng(5)
  model = memn2n.KeyValueMemoryNetwork(V, D, hops=2, memory_size=M, attend_empty=False,
                                       rngs=nnx.Rngs(2))
  # Move R_j away from the identity so the test sees them.
  model.reader.hop_maps[...] = model.reader.hop_maps[...] + 0.3 * jax.random.normal(
      jax.random.key(9), (2, D, D))
  story, question, mask = random_batch(rng)
  out = model(story, question, mask)
  np.testing.assert_allclose(out.logits, np_kv(model, story, question, mask), rtol=1e-4,
                             atol=1e-5)
  assert out.attention.shape == (3, 2, M)


def test_key_value_reader_temperature_matches_numpy_and_has_gradients():
  """One hop with R = I and a learned inverse temperature s: q + softmax(s K q) V."""
  rng = np.random.default_rng(0)
  q, keys, values = rng.normal(size=4), rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
  valid = np.array([True, False, True, True, False])
  reader = memn2n.KeyValueReader(4, hops=1, learn_temperature=True)
  reader.log_scale[...] = jnp.log(jnp.array([1.7]))
  p = np_softmax(np.where(valid, 1.7 * keys @ q, -np.inf))
  f = lambda q, k, v: reader(q[None], k[None], v[None], valid[None])[0][0]
  args = tuple(jnp.asarray(x, jnp.float32) for x in (q, keys, values))
  np.testing.assert_allclose(f(*args), q + p @ values, rtol=1e-5, atol=1e-6)
  check_grads(jax.jit(f), args, order=1, modes="rev", atol=1e-2, rtol=1e-2)


def test_key_value_reader_random_hop_maps_are_linear_layers_transposed():
  # hop_init='random' draws what nnx.Linear(d, d) draws, one per hop, and R_j = K_j^T.
  reader = memn2n.KeyValueReader(6, hops=2, hop_init="random", rngs=nnx.Rngs(3))
  rngs = nnx.Rngs(3)
  for h in range(2):
    kernel = nnx.Linear(6, 6, use_bias=False, rngs=rngs).kernel[...]
    np.testing.assert_array_equal(reader.hop_maps[h], kernel.T)
  assert reader.log_scale is None
  with pytest.raises(ValueError, match="needs `rngs`"):
    memn2n.KeyValueReader(6, hop_init="random")
  with pytest.raises(ValueError, match="hop_init"):
    memn2n.KeyValueReader(6, hop_init="zeros")


def test_key_value_reader_takes_embedded_memories():
  reader = memn2n.KeyValueReader(4, hops=1)
  query = jnp.array([[1.0, 0.0, 0.0, 0.0]])
  keys = jnp.array([[[10.0, 0, 0, 0], [0, 10.0, 0, 0], [20.0, 0, 0, 0]]])
  values = jnp.array([[[0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]])
  mask = jnp.array([[True, True, False]])  # the best key is masked out
  state, attention = reader(query, keys, values, mask)
  p = np_softmax(np.array([10.0, 0.0]))
  np.testing.assert_allclose(attention[0, 0], [p[0], p[1], 0.0], rtol=1e-5)
  np.testing.assert_allclose(state[0], [1.0, p[0], p[1], 0.0], rtol=1e-5)  # R = I: q + o
  with pytest.raises(ValueError, match="values must have the shape of keys"):
    reader(query, keys, values[:, :2], mask)
  with pytest.raises(ValueError, match="mask must have shape"):
    reader(query, keys, values, mask[:, :2])
  with pytest.raises(ValueError, match="query must have shape"):
    reader(query[:, :3], keys, values, mask)


def test_modules_run_under_jit_and_vmap_over_parameters():
  rng = np.random.default_rng(6)
  story, question, mask = random_batch(rng)
  model = memn2n.MemN2N(V, D, memory_size=M, rngs=nnx.Rngs(0))
  graphdef, _ = nnx.split(model)
  stacked = jax.vmap(lambda k: nnx.split(memn2n.MemN2N(
      V, D, memory_size=M, rngs=nnx.Rngs(params=k)))[1])(jax.random.split(jax.random.key(0), 2))

  @jax.jit
  def run(params):
    return nnx.merge(graphdef, params)(story, question, mask).logits

  logits = jax.vmap(run)(stacked)
  first = nnx.merge(graphdef, jax.tree.map(lambda x: x[0], stacked))
  np.testing.assert_allclose(logits[0], first(story, question, mask).logits, rtol=1e-5, atol=1e-6)
  assert not np.allclose(logits[0], logits[1])


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="tying must be one of"):
    memn2n.MemN2N(V, D, tying="rnn", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="hops must be an integer >= 1"):
    memn2n.MemN2N(V, D, hops=0, rngs=nnx.Rngs(0))
  model = memn2n.MemN2N(V, D, memory_size=M, rngs=nnx.Rngs(0))
  story, question, mask = random_batch(np.random.default_rng(0))
  with pytest.raises(ValueError, match="mask must have shape"):
    model(story, question, mask[:, :3])
  with pytest.raises(ValueError, match="built for memory_size=5"):
    model(np.zeros((3, 7, L), np.int32), question, np.ones((3, 7), bool))
