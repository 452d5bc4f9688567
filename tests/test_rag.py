"""Tests for the retrieval-augmented reader and its trainer (memjax.training.rag)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.configs import rag_bounded
from experiments.configs import rag_editing
from experiments.configs import rag_qa
from memjax import retrieval
from memjax.nn import rag_reader
from memjax.tasks import facts
from memjax.training import rag


@pytest.fixture(scope="module")
def reader():
  return rag_reader.KVMemoryReader(20, 8, hops=2, rngs=nnx.Rngs(0))


@nnx.jit
def _logits(model, question, keys, values, mask):
  return model(question, keys, values, mask)


def test_reader_shapes_and_masking(reader):
  rng = np.random.default_rng(1)
  question = rng.integers(1, 20, size=(3, 5)).astype(np.int32)
  keys = rng.integers(0, 20, size=(3, 4, 6)).astype(np.int32)
  values = rng.integers(0, 20, size=(3, 4, 1)).astype(np.int32)
  mask = np.array([[True, True, False, False]] * 3)
  logits = _logits(reader, question, keys, values, mask)
  assert logits.shape == (3, 20) and logits.dtype == jnp.float32
  # Masked slots are ignored: changing them changes nothing.
  other = keys.copy()
  other[:, 2:] = rng.integers(0, 20, size=(3, 2, 6))
  np.testing.assert_allclose(_logits(reader, question, other, values, mask), logits, rtol=1e-6)
  # With nothing retrieved the reader reads only its null slot.
  empty = np.zeros_like(mask)
  att = reader.attention(question, keys, values, empty)
  np.testing.assert_allclose(att, np.eye(5)[[0, 0, 0]], atol=1e-7)
  np.testing.assert_allclose(_logits(reader, question, keys, values, empty),
                             _logits(reader, question, other, values, empty), rtol=1e-6)
  # Padding tokens (id 0) do not count.
  padded = np.concatenate([question, np.zeros((3, 2), np.int32)], axis=1)
  np.testing.assert_allclose(_logits(reader, padded, keys, values, mask), logits, rtol=1e-6)


def test_reader_rejects_bad_shapes(reader):
  q = np.ones((2, 3), np.int32)
  k = np.ones((2, 4, 5), np.int32)
  v = np.ones((2, 4, 1), np.int32)
  m = np.ones((2, 4), bool)
  with pytest.raises(ValueError, match="keys"):
    reader(q, k[0], v, m)
  with pytest.raises(ValueError, match="mask"):
    reader(q, k, v, m[:, :3])
  with pytest.raises(ValueError, match="question"):
    reader(q[:1], k, v, m)
  with pytest.raises(TypeError, match="question"):
    reader(q.astype(np.float32), k, v, m)
  with pytest.raises(ValueError, match="hops"):
    rag_reader.KVMemoryReader(5, 4, hops=0, rngs=nnx.Rngs(0))


def test_permute_words_is_a_consistent_renaming():
  pools = [np.array([3, 4, 5]), np.array([7, 8])]
  rng = np.random.default_rng(0)
  a = np.array([[1, 3, 4, 7], [5, 5, 8, 2]])
  b = np.array([3, 8, 9])
  pa, pb = rag.permute_words([a, b], pools, rng)
  mapping = {}
  for x, y in zip(np.concatenate([a.ravel(), b]), np.concatenate([pa.ravel(), pb])):
    assert mapping.setdefault(int(x), int(y)) == int(y)  # one image per word
  assert all(mapping[w] == w for w in (1, 2, 9))  # outside the pools: unchanged
  assert {mapping[w] for w in (3, 4, 5)} == {3, 4, 5} and {mapping[7], mapping[8]} == {7, 8}


@pytest.mark.parametrize("policy", ["fifo", "lru", "least_used"])
def test_policy_simulator_agrees_with_the_store(policy):
  mem = retrieval.DocumentMemory(retrieval.HashedBagOfWords(256), 6, policy=policy)
  sim = rag.PolicySimulator(6, policy)
  rng = np.random.default_rng(2)
  words = [f"w{i}" for i in range(30)]
  next_id = 0
  for _ in range(12):
    n = 2
    ids = list(range(next_id, next_id + n))
    next_id += n
    mem.add([f"{words[i]} {words[i + 1]}" for i in ids], ids=ids)
    sim.insert(ids)
    got = mem.retrieve([f"w{rng.integers(next_id)}"], k=2, record_use=True, with_texts=False)
    sim.use(got.ids)
    assert set(mem.ids().tolist()) == sim.ids()


def test_validate_config():
  rag.validate_config(rag_qa.get_config("smoke"))
  rag.validate_config(rag_editing.get_config())
  rag.validate_config(rag_bounded.get_config())
  bad = rag_qa.get_config("smoke")
  bad.train.num_questions = bad.facts.num_facts
  with pytest.raises(ValueError, match="num_questions"):
    rag.validate_config(bad)
  bad = rag_bounded.get_config("smoke")
  bad.bounded.capacity = bad.facts.num_facts
  with pytest.raises(ValueError, match="capacity"):
    rag.validate_config(bad)
  bad = rag_qa.get_config("smoke")
  bad.train.drop_entity = 0.95
  with pytest.raises(ValueError, match="drop_entity"):
    rag.validate_config(bad)
  bad = rag_qa.get_config("smoke")
  bad.stages = ("qa", "nope")
  with pytest.raises(ValueError, match="stages"):
    rag.validate_config(bad)
  with pytest.raises(ValueError, match="variant"):
    rag_qa.get_config("huge")


def test_edit_questions_and_apply_edit():
  base = facts.generate(400, seed=0)
  system = rag.RAGSystem(base, dim=128, k=4, headroom=4)
  edits = base.sample_edits(6, seed=0)
  q, a, idx = rag._edit_questions(base, edits, paraphrase=True)
  assert len(q) == 12 and idx.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
  for question, answer, i in zip(q, a, idx):
    e = edits[i]
    assert base.entity_name(e.entity) in question
    assert answer == (facts.UNKNOWN if e.kind == "delete" else base.values[e.new_value])
  next_id = len(base)
  for e in edits:
    rag.apply_edit(system, e, next_id)
    if e.kind == "insert":
      text = system.memory.text(next_id)
      assert text == base.statement_text(base.entity_name(e.entity), e.relation,
                                         base.values[e.new_value])
      next_id += 1
    elif e.kind == "update":
      assert base.values[e.new_value] in system.memory.text(e.fact).split()
    else:
      assert e.fact not in system.memory
  # An empty memory passed in is searched (it once fell back to system.memory: len 0 is falsy).
  empty = retrieval.DocumentMemory(system.encoder, 8, payload=system.payload)
  qa, ids = system.qa_set(q[:2], a[:2], np.array([-1, -1]), memory=empty)
  assert (ids == -1).all() and not qa.mask.any()
  assert (system.qa_set(q[:2], a[:2], np.array([-1, -1]))[1] >= 0).any()


@pytest.mark.slow
def test_smoke_run_learns_edits_and_bounds(tmp_path):
  config = rag_qa.get_config("smoke")
  config.stages = ("qa", "editing", "bounded")
  config.closed_book_all_steps = 0
  config.bounded.policies = ("lru",)
  config.editing.finetune_replay = (False,)
  results = rag.train_and_evaluate(config, str(tmp_path))
  qa = results["qa"]
  # The reader answers questions about facts it never trained on, through retrieval.
  assert qa["rag/test_accuracy"] > 0.85
  assert qa["rag/test_accuracy"] > qa["closed_book/test_accuracy"] + 0.7
  ed = results["editing"]
  assert ed["memory/efficacy"] > 0.8 and ed["memory/locality"] > 0.97
  assert ed["memory/efficacy_delete"] > 0.8
  # Fine-tuning the weights on the edits disturbs more unedited answers.
  assert ed["finetune/locality"] < ed["memory/locality"]
  final = results["bounded"]["lru"]["final"]
  assert results["bounded"]["lru"]["policy_agrees"]
  assert final["stored"] == config.bounded.capacity and final["hot_stored"] == 1.0
  assert final["recent_accuracy"] > 0.85
  saved = json.load(open(os.path.join(tmp_path, "results.json")))
  assert saved["qa"]["rag/test_accuracy"] == qa["rag/test_accuracy"]
  rows = [json.loads(x) for x in open(os.path.join(tmp_path, "metrics.jsonl"))]
  assert any("rag/train_loss" in r for r in rows)
  assert jax.device_count() >= 1
