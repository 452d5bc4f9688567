r"""Retrieval-augmented QA on a 100k-fact base, against the same reader without retrieval.

  python -m experiments.train --config=experiments/configs/rag_qa.py --workdir=runs/rag_qa
  python -m experiments.train --config=experiments/configs/rag_qa.py:smoke --workdir=/tmp/s

The other rag configs (rag_editing.py, rag_bounded.py) start from this one.
"""

import ml_collections


def get_config(arg=None):
  """The config; `arg == "smoke"` gives a version that runs in seconds on a CPU."""
  c = ml_collections.ConfigDict()
  c.trainer = "rag"
  c.seed = 0
  c.stages = ("qa",)
  c.closed_book = True
  c.closed_book_all_steps = 12_000
  c.facts = ml_collections.ConfigDict(dict(num_facts=100_000, facts_per_entity=4, seed=0))
  c.retrieval = ml_collections.ConfigDict(dict(dim=1024, ngrams=2, k=8))
  c.model = ml_collections.ConfigDict(dict(dim=128, hops=2, tie_output=True))
  c.train = ml_collections.ConfigDict(dict(
      num_questions=20_000, num_absent=2_000, steps=8_000, batch_size=256,
      learning_rate=3e-3, drop_true=0.1, drop_entity=0.1, permute_words=True,
      log_every=200))
  c.eval = ml_collections.ConfigDict(dict(num_questions=5_000, num_absent=1_000))
  c.editing = ml_collections.ConfigDict(dict(
      num_edits=1_000, locality_size=5_000, finetune_steps=300,
      finetune_learning_rate=1e-3, finetune_replay=(False, True)))
  c.bounded = ml_collections.ConfigDict(dict(
      capacity=20_000, policies=("fifo", "lru"), stream_batch=1_000, hot=500,
      recent=10_000, eval_size=2_000, eval_every=20_000))
  if arg == "smoke":
    shrink(c)
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r}; use no variant or 'smoke'")
  return c


def shrink(c):
  """The smoke sizes: a 2,000-fact base and a few hundred steps."""
  c.facts.num_facts = 2_000
  c.retrieval.dim = 256
  c.model.dim = 64
  c.closed_book_all_steps = 300
  c.train.update(dict(num_questions=1_000, num_absent=150, steps=400, batch_size=128,
                      learning_rate=1e-2, log_every=100))
  c.eval.update(dict(num_questions=300, num_absent=100))
  c.editing.update(dict(num_edits=40, locality_size=200, finetune_steps=40))
  c.bounded.update(dict(capacity=600, stream_batch=200, hot=30, recent=300, eval_size=150,
                        eval_every=1_000))
