"""Tests for memjax.retrieval: chunking, encoders, the document memory, assembly."""

import hashlib
import math

import numpy as np
import pytest

from memjax import retrieval
from memjax import store

DOCS = [
    "the cat sat on the mat",
    "a dog chased the cat",
    "quantum computers use qubits",
    "the mat was red",
    "dogs and cats are pets",
    "qubits can be entangled",
]


def test_tokenize():
  assert retrieval.tokenize("Where's Rex? In Lisbon, 2024!") == [
      "where", "s", "rex", "in", "lisbon", "2024"]
  with pytest.raises(TypeError, match="text"):
    retrieval.tokenize(3)


def test_chunk_text():
  text = "a b c d e f g"
  assert retrieval.chunk_text(text, 3) == ["a b c", "d e f", "g"]
  assert retrieval.chunk_text(text, 3, overlap=1) == ["a b c", "c d e", "e f g"]
  assert retrieval.chunk_text(text, 7, overlap=2) == [text]
  assert retrieval.chunk_text(text, 4, overlap=3) == ["a b c d", "b c d e", "c d e f",
                                                      "d e f g"]
  assert retrieval.chunk_text("...", 3) == []
  with pytest.raises(ValueError, match="max_tokens"):
    retrieval.chunk_text(text, 0)
  with pytest.raises(ValueError, match="overlap"):
    retrieval.chunk_text(text, 3, overlap=3)


def test_chunk_documents():
  passages, source = retrieval.chunk_documents(["a b c d", "", "e"], 2)
  assert passages == ["a b", "c d", "e"]
  assert source == [0, 0, 2]


def test_features_with_ngrams():
  assert retrieval.features(["a", "b", "c"], 2) == ["a", "b", "c", "a_b", "b_c"]
  assert retrieval.features(["a", "b", "c"], 3)[-1] == "a_b_c"


def test_stable_hash_is_keyed_blake2b():
  enc = retrieval.HashedBagOfWords(1000, seed=7)
  digest = hashlib.blake2b(b"cat", digest_size=8, key=(7).to_bytes(8, "little")).digest()
  h = int.from_bytes(digest, "little")
  assert enc.bucket("cat") == (h % 1000, -1.0 if h >> 63 else 1.0)


def test_hashed_bag_of_words_by_hand():
  enc = retrieval.HashedBagOfWords(64, normalize=False)
  (ba, sa), (bb, sb) = enc.bucket("a"), enc.bucket("b")
  expected = np.zeros(64, np.float32)
  expected[ba] += 2 * sa
  expected[bb] += sb
  np.testing.assert_allclose(enc(["a b a"])[0], expected)
  # One bucket: every feature lands in it with its sign.
  one = retrieval.HashedBagOfWords(1, normalize=False)
  assert one(["a b a"])[0, 0] == 2 * one.bucket("a")[1] + one.bucket("b")[1]
  unsigned = retrieval.HashedBagOfWords(1, normalize=False, signed=False)
  assert unsigned(["a b a"])[0, 0] == 3.0
  normed = retrieval.HashedBagOfWords(64)(["a b a", "zzz"])
  np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, rtol=1e-6)
  sub = retrieval.HashedBagOfWords(64, normalize=False, sublinear_tf=True)
  assert sub(["a a a"])[0, ba] == pytest.approx(sa * (1 + math.log(3)))


def test_stopwords_are_dropped():
  enc = retrieval.HashedBagOfWords(256, stopwords=retrieval.ENGLISH_STOPWORDS)
  np.testing.assert_array_equal(enc(["the cat is on the mat"]), enc(["cat mat"]))


def _explicit_tfidf(fit_docs, docs):
  """TF-IDF over an explicit vocabulary, written from the definition."""
  vocab = sorted({w for d in fit_docs for w in retrieval.tokenize(d)})
  n = len(fit_docs)
  df = {w: sum(w in retrieval.tokenize(d) for d in fit_docs) for w in vocab}
  out = np.zeros((len(docs), len(vocab)))
  for i, d in enumerate(docs):
    words = retrieval.tokenize(d)
    for j, w in enumerate(vocab):
      c = words.count(w)
      if c:
        out[i, j] = (1 + math.log(c)) * (math.log((1 + n) / (1 + df[w])) + 1)
  return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_tfidf_matches_explicit_vocabulary():
  enc = retrieval.TfidfEncoder(1 << 20).fit(DOCS)
  words = {w for d in DOCS for w in retrieval.tokenize(d)}
  assert len({enc.bucket(w)[0] for w in words}) == len(words)  # no collisions here
  queries = [*DOCS, "the cat cat and the qubits"]
  hashed = enc(queries)
  explicit = _explicit_tfidf(DOCS, queries)
  # Hashing permutes coordinates and flips signs, which inner products ignore.
  np.testing.assert_allclose(hashed @ hashed.T, explicit @ explicit.T, atol=1e-5)
  assert enc.idf["the"] == pytest.approx(math.log(7 / 4) + 1)


def test_tfidf_drops_unseen_words():
  enc = retrieval.TfidfEncoder(128).fit(DOCS)
  np.testing.assert_allclose(enc(["where is the cat"]), enc(["the cat"]))
  with_unseen = retrieval.TfidfEncoder(128, unseen_idf=2.0).fit(DOCS)
  assert not np.allclose(with_unseen(["where is the cat"]), with_unseen(["the cat"]))
  with pytest.raises(ValueError, match="fitted"):
    retrieval.TfidfEncoder(8)(["x"])
  with pytest.raises(ValueError, match="at least one"):
    retrieval.TfidfEncoder(8).fit([])


def test_tfidf_observe_adds_only_new_features():
  enc = retrieval.TfidfEncoder(1 << 16).fit(DOCS)
  before = dict(enc.idf)
  old_vectors = enc(DOCS)
  assert enc.observe(["the zebra and the cat", "zebra okapi"]) == 2
  assert enc.idf["zebra"] == enc.idf["okapi"] == pytest.approx(math.log(7 / 2) + 1)
  assert {f: enc.idf[f] for f in before} == before
  np.testing.assert_array_equal(enc(DOCS), old_vectors)
  # A document memory shows the passages it stores to the encoder.
  grows = retrieval.DocumentMemory(retrieval.TfidfEncoder(256).fit(DOCS), 8)
  grows.add([*DOCS, "zebras graze"])
  assert grows.retrieve(["zebras"], k=1).ids[0, 0] == 6
  fixed = retrieval.DocumentMemory(retrieval.TfidfEncoder(256).fit(DOCS), 8, observe=False)
  fixed.add([*DOCS, "zebras graze"])
  assert fixed.retrieve(["zebras"], k=1).scores[0, 0] == 0.0


def test_tfidf_bigrams():
  enc = retrieval.TfidfEncoder(1 << 16, ngrams=2).fit(["ana silva", "ana costa", "rui silva"])
  v = enc(["ana silva", "ana costa", "rui silva", "silva ana"])
  # The bigram makes the exact name score highest, above a shared word and
  # above the same words in the other order.
  s = v[0] @ v.T
  assert s[0] == pytest.approx(1.0) and s[0] > s[3] > max(s[1], s[2])


def test_function_encoder():
  enc = retrieval.FunctionEncoder(lambda texts: np.ones((len(texts), 3)), 3)
  assert enc(["a", "b"]).shape == (2, 3) and enc(["a"]).dtype == np.float32
  with pytest.raises(ValueError, match=r"\(2, 4\)"):
    retrieval.FunctionEncoder(lambda texts: np.ones((len(texts), 3)), 4)(["a", "b"])
  with pytest.raises(TypeError, match="floating"):
    retrieval.FunctionEncoder(lambda texts: np.ones((len(texts), 3), int), 3)(["a"])
  with pytest.raises(TypeError, match="callable"):
    retrieval.FunctionEncoder(3, 3)
  with pytest.raises(TypeError, match="one str"):
    enc("abc")


@pytest.fixture(scope="module")
def encoder():
  return retrieval.TfidfEncoder(256).fit(DOCS)


def test_retrieve_matches_brute_force(encoder):
  mem = retrieval.DocumentMemory(encoder, 8)
  ids = mem.add(DOCS)
  np.testing.assert_array_equal(ids, np.arange(6))
  queries = ["cat on a mat", "qubits", "pets like dogs", "nothing known here"]
  got = mem.retrieve(queries, k=3)
  scores = encoder(queries) @ encoder(DOCS).T
  for q in range(len(queries)):
    order = np.argsort(-scores[q], kind="stable")[:3]
    np.testing.assert_allclose(got.scores[q], scores[q, order], atol=1e-5)
    assert [got.texts[q][i] for i in range(3)] == [DOCS[i] for i in got.ids[q]]
  assert got.ids[1, 0] in (2, 5)
  # Default payload: the item id.
  np.testing.assert_array_equal(got.payload[..., 0], got.ids)


def test_threshold(encoder):
  mem = retrieval.DocumentMemory(encoder, 8)
  mem.add(DOCS)
  got = mem.retrieve(["qubits entangled"], k=6, threshold=0.2)
  scores = (encoder(["qubits entangled"]) @ encoder(DOCS).T)[0]
  assert set(got.ids[0][got.found[0]].tolist()) == set(np.flatnonzero(scores >= 0.2).tolist())
  assert (got.ids[0][~got.found[0]] == -1).all()
  assert np.isneginf(got.scores[0][~got.found[0]]).all()
  assert len(got.texts[0]) == got.found[0].sum()


def test_update_and_delete(encoder):
  mem = retrieval.DocumentMemory(encoder, 8)
  mem.add(DOCS)
  mem.update([2], ["the dog is red"])
  assert mem.text(2) == "the dog is red"
  got = mem.retrieve(["quantum computers use qubits"], k=1)
  assert got.ids[0, 0] == 5  # item 2 no longer talks of quantum computers
  mem.delete([5, 99])
  assert 5 not in mem and len(mem) == 5
  got = mem.retrieve(["qubits"], k=8)
  assert 5 not in got.ids[0] and got.found[0].sum() == 5
  with pytest.raises(KeyError, match="99"):
    mem.update([99], ["x"])
  with pytest.raises(ValueError, match="already stored"):
    mem.add(["x"], ids=[1])
  assert mem.add(["new words"])[0] == 6  # numbering continues after the largest id


@pytest.mark.parametrize("policy", ["fifo", "lru"])
def test_eviction_keeps_texts_in_sync(encoder, policy):
  mem = retrieval.DocumentMemory(encoder, 4, policy=policy)
  mem.add(DOCS[:4])
  if policy == "lru":
    assert mem.retrieve(["cat sat"], k=1, record_use=True).ids[0, 0] == 0  # uses item 0
  mem.add(DOCS[4:])
  stored = set(np.asarray(mem.memory.ids)[np.asarray(mem.memory.valid)].tolist())
  assert set(mem.ids().tolist()) == stored
  expected = {2, 3, 4, 5} if policy == "fifo" else {0, 3, 4, 5}
  assert stored == expected
  # A batch larger than the memory keeps its last items only.
  mem.add(["w1", "w2", "w3", "w4", "w5"], ids=[10, 11, 12, 13, 14])
  assert set(mem.ids().tolist()) == {11, 12, 13, 14}


def test_edits_reuse_the_memory_buffers(encoder):
  mem = retrieval.DocumentMemory(encoder, 8)
  mem.add(DOCS)
  before = mem.memory.keys
  mem.update([0], ["a new text"])
  assert before.is_deleted()  # donated: updated in place, not copied


def test_token_payload_and_reader_memory():
  vocab = retrieval.Vocabulary(["ana", "lives", "in", "lisbon", "porto", "rui"])
  payload = retrieval.TokenPayload(vocab, 4, 1, retrieval.split_on_words({"lisbon", "porto"}))
  enc = retrieval.HashedBagOfWords(64)
  mem = retrieval.DocumentMemory(enc, 4, payload=payload)
  mem.add(["ana lives in lisbon", "rui lives in porto"])
  got = mem.retrieve(["where does ana live"], k=3)
  keys, values, mask = mem.reader_memory(got)
  assert keys.shape == (1, 3, 4) and values.shape == (1, 3, 1)
  np.testing.assert_array_equal(mask[0], [True, True, False])
  first = int(np.flatnonzero(got.ids[0] == 0)[0])
  assert vocab.decode(keys[0, first]) == "ana lives in"
  assert vocab.decode(values[0, first]) == "lisbon"
  assert vocab.encode(["ana zzz"], 3).tolist() == [[2, 1, 0]]
  with pytest.raises(TypeError, match="TokenPayload"):
    retrieval.DocumentMemory(enc, 4).reader_memory(got)
  with pytest.raises(ValueError, match="payload_width"):
    retrieval.DocumentMemory(enc, 4, payload=lambda texts: np.zeros((len(texts), 2)))


def test_sentence_level_payload():
  vocab = retrieval.Vocabulary(["a", "b"])
  payload = retrieval.TokenPayload(vocab, 3, 3)
  np.testing.assert_array_equal(payload(["a b"]), [[2, 3, 0, 2, 3, 0]])
  keys, values = payload.key_value(payload(["a b"]))
  np.testing.assert_array_equal(keys, values)


def test_concatenate():
  passages = ["one two three", "four five", "six"]
  assert retrieval.concatenate("why ?", passages) == (
      "context: one two three | four five | six question: why ?")
  # 4 words of template + question leave 4 for passages: the second is cut.
  assert retrieval.concatenate("why ?", passages, max_tokens=7) == (
      "context: one two three | four question: why ?")
  assert retrieval.concatenate("why", passages, max_tokens=3) == "context:  question: why"
  with pytest.raises(ValueError, match="max_tokens"):
    retrieval.concatenate("a b c", passages, max_tokens=2)


def test_memory_arguments(encoder):
  with pytest.raises(TypeError, match="encoder"):
    retrieval.DocumentMemory(lambda t: t, 4)
  with pytest.raises(ValueError, match="metric"):
    retrieval.DocumentMemory(encoder, 4, metric="l2")
  mem = retrieval.DocumentMemory(encoder, 4)
  with pytest.raises(ValueError, match="k must"):
    mem.retrieve(["x"], k=0)
  with pytest.raises(ValueError, match="one entry per text"):
    mem.add(["a", "b"], ids=[1])
  assert isinstance(mem.memory, store.KVMemory)
