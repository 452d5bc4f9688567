"""Tests for memjax.conversation: recent turns in context, earlier ones retrieved."""

import numpy as np
import pytest

from memjax import conversation
from memjax import retrieval
from memjax.tasks import facts


def test_recent_window_and_retrieval_of_earlier_turns():
  chat = conversation.ConversationMemory(context_turns=3, k=1)
  chat.add("user", "My sister Ana lives in Lisbon.")
  chat.add("assistant", "Nice, Lisbon is lovely.")
  for i in range(6):
    chat.add("user" if i % 2 else "assistant", f"filler turn number {i}")
  ctx = chat.context("Where does Ana live?")
  assert [t.index for t in ctx.recent] == [5, 6, 7]
  assert ctx.retrieved == [conversation.Turn(0, "user", "My sister Ana lives in Lisbon.")]
  assert len(ctx.scores) == 1 and ctx.scores[0] > 0.1
  assert ctx.prompt.startswith("earlier: user: My sister Ana lives in Lisbon. | recent: ")
  assert ctx.prompt.endswith("user: Where does Ana live?")
  # A turn inside the window is never retrieved again.
  assert all(t.index < 5 for t in chat.relevant("filler turn number 4", k=3)[0])


def test_threshold_returns_nothing_for_unrelated_message():
  chat = conversation.ConversationMemory(context_turns=1, k=2, threshold=0.2)
  chat.extend([("user", "I adopted a cat named Tom."), ("assistant", "Congratulations!"),
               ("user", "Thanks.")])
  assert chat.context("quantum chromodynamics").retrieved == []
  assert [t.index for t in chat.context("what is the cat called").retrieved] == [0]


def test_no_window_and_empty_memory():
  chat = conversation.ConversationMemory(context_turns=0, k=2)
  assert chat.context("hello").retrieved == [] and chat.context("hello").recent == []
  chat.add("user", "the cat sleeps")
  ctx = chat.context("where does the cat sleep")
  assert ctx.recent == [] and [t.index for t in ctx.retrieved] == [0]
  # Everything is in the window: nothing to retrieve.
  window = conversation.ConversationMemory(context_turns=5)
  window.add("user", "the cat sleeps")
  assert window.context("cat").retrieved == []


def test_capacity_evicts_oldest_turns():
  chat = conversation.ConversationMemory(context_turns=1, k=2, capacity=4)
  chat.extend([("user", f"turn {w}") for w in ("alpha", "beta", "gamma", "delta", "eps")])
  assert len(chat.memory) == 4
  with pytest.raises(KeyError):
    chat.turn(0)
  assert chat.turn(1).text == "turn beta"
  assert chat.context("alpha").retrieved == []


def test_recalls_facts_told_long_ago():
  base = facts.generate(1_000, seed=0)
  d = facts.dialogue(base, num_facts=12, num_chatter=150, seed=3)
  chat = conversation.ConversationMemory(context_turns=8, k=2)
  chat.extend(d.turns)
  recalled = []
  for q, t in zip(d.questions, d.fact_turn):
    assert t < len(d.turns) - 8  # far outside the context window
    ctx = chat.context(q)
    recalled.append(t in [x.index for x in ctx.retrieved])
    assert [x.index for x in ctx.retrieved] == sorted(x.index for x in ctx.retrieved)
  assert np.mean(recalled) == 1.0


def test_custom_encoder_and_bad_arguments():
  enc = retrieval.FunctionEncoder(lambda texts: np.ones((len(texts), 4), np.float32), 4)
  chat = conversation.ConversationMemory(context_turns=1, encoder=enc, threshold=None)
  chat.extend([("a", "x"), ("b", "y")])
  assert [t.index for t in chat.context("z").retrieved] == [0]
  with pytest.raises(ValueError, match="context_turns"):
    conversation.ConversationMemory(context_turns=-1)
  with pytest.raises(ValueError, match="k must"):
    conversation.ConversationMemory(k=0)
  with pytest.raises(TypeError, match="str"):
    chat.add("user", 3)
