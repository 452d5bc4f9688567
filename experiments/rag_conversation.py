r"""Conversation memory example: remembering what was said beyond the context window.

  python -m experiments.rag_conversation [--turns=300 --facts=10 --context=8]

A user mentions a few facts early in a long chat (synthetic, from
`memjax.tasks.facts.dialogue`); at the end they ask about them. A model that
sees only the last `--context` turns has lost them; `ConversationMemory`
retrieves the turns that told them and builds the prompt. The script prints,
per question, the turn that told the fact, the turns retrieved, and the
recall over all questions; then one full prompt.
"""

from __future__ import annotations

from absl import app
from absl import flags

from memjax import conversation
from memjax.tasks import facts

_TURNS = flags.DEFINE_integer("turns", 300, "Turns of small talk.")
_FACTS = flags.DEFINE_integer("facts", 10, "Facts told (and asked about).")
_CONTEXT = flags.DEFINE_integer("context", 8, "Turns that fit in the model's context.")
_K = flags.DEFINE_integer("k", 2, "Earlier turns retrieved per message.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")


def main(argv):
  del argv
  base = facts.generate(5_000, seed=_SEED.value)
  dialogue = facts.dialogue(base, num_facts=_FACTS.value, num_chatter=_TURNS.value,
                            seed=_SEED.value)
  chat = conversation.ConversationMemory(context_turns=_CONTEXT.value, k=_K.value)
  chat.extend(dialogue.turns)
  print(f"{len(dialogue.turns)} turns; the context holds the last {_CONTEXT.value}")
  hits = 0
  ctx = None
  for question, told in zip(dialogue.questions, dialogue.fact_turn):
    ctx = chat.context(question)
    found = [t.index for t in ctx.retrieved]
    hits += told in found
    print(f"  told at turn {told:3d} | {question:50s} | retrieved turns {found}")
  print(f"recall: {hits}/{len(dialogue.questions)} questions found the turn that told their fact")
  print("\nthe last prompt:\n" + ctx.prompt.replace(" | ", "\n  "))


if __name__ == "__main__":
  app.run(main)
