"""Tests for memjax.tasks.retrieval: layouts by hand, invariants on random batches, errors."""

import numpy as np
import pytest

from memjax.tasks import retrieval

VOCAB = retrieval.RetrievalVocab(num_keys=16, num_values=8, num_filler=4)


def test_vocab_ranges_and_chance():
  assert VOCAB.size == 28
  assert (VOCAB.first_key, VOCAB.first_value) == (4, 20)
  assert VOCAB.chance == 1 / 8
  with pytest.raises(ValueError, match="num_values must be an integer >= 1"):
    retrieval.RetrievalVocab(num_values=0)


def test_evaluation_layout_by_hand():
  # segment_length=1: no offset. P=2, distance 5: pairs at 0-3, queries at 6-9.
  batch = retrieval.evaluation_batch(0, 1, 5, 2, vocab=VOCAB)
  t = batch.tokens[0]
  assert batch.tokens.shape == (1, 10) == (1, retrieval.evaluation_length(5, 2))
  k1, v1, k2, v2 = t[:4]
  np.testing.assert_array_equal(t[6:10], [k1, v1, k2, v2])
  assert k1 != k2 and 4 <= min(k1, k2) and max(k1, k2) < 20
  assert 20 <= min(v1, v2) and max(v1, v2) < 28
  assert np.all(t[4:6] < 4)  # filler
  np.testing.assert_array_equal(np.nonzero(batch.mask[0])[0], [6, 8])
  assert (batch.targets[0, 6], batch.targets[0, 8]) == (v1, v2)
  np.testing.assert_array_equal(batch.distances[0, [6, 8]], [5, 5])  # 6 - 1, 8 - 3
  assert batch.distances[0, ~batch.mask[0]].tolist() == [-1] * 8
  np.testing.assert_array_equal(batch.targets[0, :-1], t[1:])


def _check_queries(batch, vocab):
  """Every query key occurs exactly twice; its target is its pair's value at its distance."""
  for b in range(batch.tokens.shape[0]):
    t = batch.tokens[b]
    for q in np.nonzero(batch.mask[b])[0]:
      key = t[q]
      assert vocab.first_key <= key < vocab.first_value
      where = np.nonzero(t == key)[0]
      assert len(where) == 2 and where[1] == q
      assert batch.targets[b, q] == t[where[0] + 1] == t[q + 1]
      assert batch.distances[b, q] == q - (where[0] + 1)
    keys = t[(t >= vocab.first_key) & (t < vocab.first_value)]
    assert len(keys) == 2 * batch.mask[b].sum()  # keys occur only in pairs and queries


def test_evaluation_batch_with_several_distances():
  distances = (16, 40, 100)
  batch = retrieval.evaluation_batch(3, 4, distances, 3, vocab=VOCAB, segment_length=8)
  assert batch.tokens.shape[1] % 8 == 0
  assert batch.tokens.shape[1] == retrieval.evaluation_length(distances, 3, 8)
  _check_queries(batch, VOCAB)
  got, counts = np.unique(batch.distances[batch.mask], return_counts=True)
  np.testing.assert_array_equal(got, distances)
  np.testing.assert_array_equal(counts, [12, 12, 12])
  # The pairs start at a random offset below the segment length.
  first_key = np.argmax(batch.tokens >= VOCAB.first_key, axis=1)
  assert np.all(first_key < 8) and len(set(first_key)) > 1


def test_passkey_is_one_pair():
  batch = retrieval.passkey_batch(1, 3, 50, vocab=VOCAB, segment_length=16)
  np.testing.assert_array_equal(batch.mask.sum(1), [1, 1, 1])
  _check_queries(batch, VOCAB)
  assert np.all(batch.distances[batch.mask] == 50)


def test_batches_are_deterministic_from_the_seed():
  a = retrieval.evaluation_batch(5, 2, (20, 60), 2, vocab=VOCAB, segment_length=4)
  b = retrieval.evaluation_batch(5, 2, (20, 60), 2, vocab=VOCAB, segment_length=4)
  c = retrieval.evaluation_batch(6, 2, (20, 60), 2, vocab=VOCAB, segment_length=4)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)
  t1 = retrieval.training_batch(np.random.default_rng(9), 3, 64, 5, vocab=VOCAB)
  t2 = retrieval.training_batch(9, 3, 64, 5, vocab=VOCAB)
  np.testing.assert_array_equal(t1.tokens, t2.tokens)


def test_training_batch_invariants():
  batch = retrieval.training_batch(0, 64, 128, 8, min_pairs=2, vocab=VOCAB)
  assert batch.tokens.shape == (64, 128)
  assert batch.tokens.dtype == np.int32
  assert batch.tokens.min() >= 0 and batch.tokens.max() < VOCAB.size
  _check_queries(batch, VOCAB)
  pairs = batch.mask.sum(1)
  assert pairs.min() >= 2 and pairs.max() <= 8 and len(set(pairs)) > 3
  d = batch.distances[batch.mask]
  assert d.min() >= 1 and d.max() < 128
  # Distances spread over the sequence, short and long.
  assert (d < 32).any() and (d > 96).any()


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="put queries on top of pairs"):
    retrieval.evaluation_batch(0, 1, 5, 4, vocab=VOCAB)  # 5 < 2 * 4 - 1
  with pytest.raises(ValueError, match="put queries on top of pairs"):
    retrieval.evaluation_batch(0, 1, (40, 41), 2, vocab=VOCAB)
  with pytest.raises(ValueError, match=r"at most vocab\.num_keys"):
    retrieval.evaluation_batch(0, 1, (100, 200), 9, vocab=VOCAB)
  with pytest.raises(ValueError, match="distances must name at least one"):
    retrieval.evaluation_batch(0, 1, (), 1, vocab=VOCAB)
  with pytest.raises(ValueError, match="length must be an integer >= 32"):
    retrieval.training_batch(0, 1, 16, 8, vocab=VOCAB)
  with pytest.raises(ValueError, match="length must be even"):
    retrieval.training_batch(0, 1, 33, 8, vocab=VOCAB)
  with pytest.raises(ValueError, match="max_pairs must be at most"):
    retrieval.training_batch(0, 1, 128, 17, vocab=VOCAB)
  with pytest.raises(ValueError, match="batch must be an integer >= 1"):
    retrieval.training_batch(0, 0, 128, 2, vocab=VOCAB)
