"""Conversation memory: the last turns stay in context, older ones are retrieved when relevant.

A model with a context of C turns forgets turn t once t < T - C. The
`ConversationMemory` keeps every turn (up to a capacity, then evicting per
the store's policy) in a `memjax.retrieval.DocumentMemory`; for a new
message it returns the last C turns plus the k earlier turns that match the
message best, and a prompt that lays them out for a generator.

Example:

  chat = ConversationMemory(context_turns=4, k=2)
  chat.add("user", "My sister Ana lives in Lisbon.")
  ... many turns later ...
  ctx = chat.context("Where does Ana live again?")
  ctx.retrieved   -> [Turn(index=0, speaker="user", text="My sister Ana lives in Lisbon.")]
  ctx.prompt      -> "earlier: user: My sister Ana lives in Lisbon. | recent: ... |
                      user: Where does Ana live again?"
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from memjax import _checks
from memjax import retrieval


class Turn(NamedTuple):
  """One turn of a dialogue: its position (0 = first), speaker and text."""
  index: int
  speaker: str
  text: str


class Context(NamedTuple):
  """What a model sees for a new message.

  Attributes:
    recent: the last `context_turns` turns, oldest first.
    retrieved: earlier turns relevant to the message, oldest first.
    scores: their retrieval scores, in the same order.
    prompt: `recent` and `retrieved` laid out with the message.
  """
  recent: list[Turn]
  retrieved: list[Turn]
  scores: list[float]
  prompt: str


class ConversationMemory:
  """Stores the turns of a dialogue and retrieves the relevant earlier ones.

  Args:
    context_turns: C >= 0, the turns that fit in the model's context; they are
      always returned, and never returned again by retrieval.
    k: earlier turns retrieved per message.
    encoder: text encoder; default a hashed bag of words without English
      stopwords (a dialogue has no corpus to fit idf on beforehand).
    capacity: turns kept in memory; beyond it the policy evicts.
    policy: the store's eviction policy ("fifo", "lru", "least_used").
    threshold: retrieve only turns scoring at least this (cosine, in [-1, 1]).
    payload: optional payload of each turn (see `DocumentMemory`).
  """

  def __init__(self, context_turns: int = 8, *, k: int = 3,
               encoder: retrieval.Encoder | None = None, capacity: int = 2048,
               policy: str = "fifo", threshold: float | None = 0.1,
               payload: Callable[[Sequence[str]], np.ndarray] | None = None):
    context_turns = _checks.integer(context_turns, "context_turns", 0)
    k = _checks.integer(k, "k")
    retrieval.check_threshold(threshold)
    if encoder is None:
      encoder = retrieval.HashedBagOfWords(4096, stopwords=retrieval.ENGLISH_STOPWORDS)
    self.context_turns = context_turns
    self.k = k
    self.threshold = threshold
    self.memory = retrieval.DocumentMemory(encoder, capacity, policy=policy, payload=payload,
                                           batch_size=256)
    self._speakers: dict[int, str] = {}
    self._recent: list[Turn] = []
    self.num_turns = 0

  def add(self, speaker: str, text: str) -> Turn:
    """Appends a turn to the dialogue."""
    if not isinstance(speaker, str) or not isinstance(text, str):
      raise TypeError("speaker and text must be str; got "
                      f"{type(speaker).__name__} and {type(text).__name__}")
    turn = Turn(self.num_turns, speaker, text)
    self.memory.add([text], ids=[turn.index])
    self._speakers[turn.index] = speaker
    if len(self._speakers) > len(self.memory):  # the insert evicted a turn
      for i in [i for i in self._speakers if i not in self.memory]:
        del self._speakers[i]
    self._recent = [*self._recent, turn][-self.context_turns:] if self.context_turns else []
    self.num_turns += 1
    return turn

  def extend(self, turns: Sequence[tuple[str, str]]) -> list[Turn]:
    """Appends several (speaker, text) turns."""
    return [self.add(s, t) for s, t in turns]

  def turn(self, index: int) -> Turn:
    """A stored turn by index (KeyError once evicted)."""
    return Turn(index, self._speakers[index], self.memory.text(index))

  def recent(self) -> list[Turn]:
    """The last `context_turns` turns, oldest first."""
    return list(self._recent)

  def relevant(self, message: str, k: int | None = None) -> tuple[list[Turn], list[float]]:
    """The k earlier (out-of-context) turns that match `message` best, best first."""
    if not isinstance(message, str):
      raise TypeError(f"message must be a str; got {type(message).__name__}")
    k = self.k if k is None else _checks.integer(k, "k")
    first_recent = self.num_turns - len(self._recent)
    if first_recent <= 0 or len(self.memory) == 0:
      return [], []
    # Ask for enough results that k remain after dropping the in-context turns.
    got = self.memory.retrieve([message], k + len(self._recent), threshold=self.threshold)
    turns, scores = [], []
    for i, score in zip(got.ids[0], got.scores[0]):
      if 0 <= i < first_recent and len(turns) < k:
        turns.append(self.turn(int(i)))
        scores.append(float(score))
    return turns, scores

  def context(self, message: str, k: int | None = None, *, speaker: str = "user") -> Context:
    """The recent turns, the relevant earlier turns (oldest first) and a prompt.

    The message itself is not stored; `add` it afterwards to keep it.
    """
    if not isinstance(speaker, str):
      raise TypeError(f"speaker must be a str; got {type(speaker).__name__}")
    turns, scores = self.relevant(message, k)
    order = np.argsort([t.index for t in turns], kind="stable")
    turns = [turns[i] for i in order]
    scores = [scores[i] for i in order]
    recent = self.recent()
    parts = []
    if turns:
      parts.append("earlier: " + " | ".join(f"{t.speaker}: {t.text}" for t in turns))
    if recent:
      parts.append("recent: " + " | ".join(f"{t.speaker}: {t.text}" for t in recent))
    parts.append(f"{speaker}: {message}")
    return Context(recent=recent, retrieved=turns, scores=scores, prompt=" | ".join(parts))
