"""Tests for memjax.tasks.facts: the seeded fact base, its questions, edits and dialogues."""

import re

import numpy as np
import pytest

from memjax import retrieval
from memjax.tasks import facts


@pytest.fixture(scope="module")
def big():
  return facts.generate(100_000, seed=0)


def test_hundred_thousand_distinct_facts(big):
  assert len(big) == 100_000
  pairs = big.subject.astype(np.int64) * 100 + big.relation
  assert np.unique(pairs).size == 100_000
  assert len(big.entities) == 25_000
  # Every entity holds exactly facts_per_entity = 4 relations.
  assert np.bincount(big.subject, minlength=25_000).tolist() == [4] * 25_000
  # Every value comes from its relation's pool.
  for r, rel in enumerate(big.relations):
    sel = big.relation == r
    assert np.isin(big.value[sel], big.pool_values[rel.pool]).all()
  assert len(set(big.entities) | set(big.spare_entities)) == 25_000 + 2_000


def test_deterministic_from_seed():
  a, b, c = (facts.generate(2_000, seed=s) for s in (3, 3, 4))
  assert a.entities == b.entities and a.values == b.values
  np.testing.assert_array_equal(a.value, b.value)
  np.testing.assert_array_equal(a.relation, b.relation)
  assert a.entities != c.entities


def test_statements_and_questions(big):
  vocab = set(big.vocabulary())
  for f in range(0, 100_000, 9_973):
    name, value = big.entities[big.subject[f]], big.answer(f)
    statement = big.statement(f)
    assert name in statement and value in statement.split()
    for t in range(3):
      q = big.question(f, t)
      assert name in q and value not in q.split()
    paraphrases = {big.question(f, t, paraphrase=True) for t in range(2)}
    assert not paraphrases & {big.question(f, t) for t in range(3)}
    for text in (statement, *paraphrases):
      assert set(retrieval.tokenize(text)) <= vocab


def test_templates_are_distinct_per_relation():
  for rel in facts.RELATIONS:
    assert len(set(rel.questions)) == 3 and len(set(rel.paraphrases)) == 2
    assert not set(rel.questions) & set(rel.paraphrases)
    assert "{e}" in rel.statement and "{v}" in rel.statement
  # Invented words never collide with the English of the templates.
  base = facts.generate(1_000, seed=1)
  english = set(re.findall(r"[a-z]+", " ".join(
      t for r in facts.RELATIONS for t in (r.statement, *r.questions, *r.paraphrases))))
  names = {w for n in base.entities for w in n.split()}
  assert not (names | set(base.values)) & english


def test_sample_edits(big):
  edits = big.sample_edits(1_000, seed=5)
  assert len(edits) == 1_000
  assert len({(e.entity, e.relation) for e in edits}) == 1_000
  known = big.fact_index()
  kinds = {e.kind for e in edits}
  assert kinds == {"insert", "update", "delete"}
  new_entities = 0
  for e in edits:
    pool = big.pool_values[big.relations[e.relation].pool]
    if e.kind == "insert":
      assert (e.entity, e.relation) not in known and e.old_value == -1 and e.fact == -1
      assert e.new_value in pool
      new_entities += e.entity >= len(big.entities)
    else:
      assert known[(e.entity, e.relation)] == e.fact
      assert e.old_value == big.value[e.fact]
      if e.kind == "update":
        assert e.new_value in pool and e.new_value != e.old_value
      else:
        assert e.new_value == -1
  assert new_entities > 0
  assert big.sample_edits(1_000, seed=5) == edits
  assert big.sample_edits(1_000, seed=6) != edits
  with pytest.raises(ValueError, match="kinds"):
    big.sample_edits(3, seed=0, kinds=("rename",))


def test_dialogue():
  base = facts.generate(500, seed=2)
  d = facts.dialogue(base, num_facts=5, num_chatter=40, seed=1)
  assert len(d.turns) == 45 and len(d.questions) == 5
  assert len(set(d.facts)) == 5
  for q, a, t, f in zip(d.questions, d.answers, d.fact_turn, d.facts):
    assert d.turns[t] == ("user", base.statement(f))
    assert q in {base.question(f, i) for i in range(3)}
    assert a == base.answer(f)
    assert t < 40 // 2 + 5  # told in the first half
  chatter = [text for i, (_, text) in enumerate(d.turns) if i not in d.fact_turn]
  assert len(chatter) == 40 and not set(chatter) & {base.statement(f) for f in d.facts}


def test_bad_arguments():
  with pytest.raises(ValueError, match="num_facts"):
    facts.generate(0)
  with pytest.raises(ValueError, match="facts_per_entity"):
    facts.generate(10, facts_per_entity=17)
