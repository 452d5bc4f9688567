r"""Time per knowledge edit: editing the document memory against fine-tuning the reader.

  flock -x /work/cpu.lock python -m benchmarks.rag_edit_latency
  python -m benchmarks.rag_edit_latency --num_facts=2000 --num_edits=50 --dim=256   # quick

Setting (issue 7): the 100k-fact base of `memjax.tasks.facts` in a
`memjax.retrieval.DocumentMemory` (TF-IDF keys of 1,024 floats, word and
bigram features, token payloads, room for the inserted facts), 1,000 random
edits (insert, update, delete). Each memory edit is timed on its own, from
the text of the new fact to the memory's tables updated (encoding, payload,
the store's jit-compiled `insert`/`update`/`delete`, `block_until_ready`);
each function is compiled beforehand on a dummy passage. Fine-tuning is
`memjax.training.rag.train_reader` on the same edits' questions (three
templates each), with the settings of experiments/configs/rag_editing.py
(300 Adam steps of 256 questions, model dim 128, two hops): its time is
divided by the number of edits. Both run in this process, one after the
other; the printed ratio is fine-tuning time per edit over the memory's
median time per edit.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app
from absl import flags

from experiments.configs import rag_editing
from memjax.tasks import facts
from memjax.training import rag

_FACTS = flags.DEFINE_integer("num_facts", 100_000, "Facts in the base.")
_EDITS = flags.DEFINE_integer("num_edits", 1_000, "Random edits.")
_DIM = flags.DEFINE_integer("dim", 1024, "TF-IDF vector size.")
_FT_STEPS = flags.DEFINE_integer("finetune_steps", 300, "Fine-tuning steps.")


def main(argv):
  del argv
  config = rag_editing.get_config()
  base = facts.generate(_FACTS.value, seed=0)
  t0 = time.perf_counter()
  system = rag.RAGSystem(base, dim=_DIM.value, k=config.retrieval.k,
                         headroom=_EDITS.value + 1)
  print(f"memory of {len(base):,} passages x {_DIM.value} floats built in "
        f"{time.perf_counter() - t0:.1f}s")
  # Compile insert, update and delete once, on a dummy passage.
  dummy = 2**30
  system.memory.add(["warm up"], ids=[dummy])
  system.memory.update([dummy], ["warm up again"])
  system.memory.delete([dummy])
  jax.block_until_ready(system.memory.memory)

  edits = base.sample_edits(_EDITS.value, seed=config.seed + 1)
  times: dict[str, list[float]] = {"insert": [], "update": [], "delete": []}
  next_id = len(base)
  for e in edits:
    t = time.perf_counter()
    rag.apply_edit(system, e, next_id)
    jax.block_until_ready(system.memory.memory)
    times[e.kind].append(time.perf_counter() - t)
    next_id += e.kind == "insert"
  every = np.asarray([t for v in times.values() for t in v]) * 1e3
  print(f"\nmemory edits ({len(edits)}), ms per edit:")
  print(f"  {'kind':8s} {'count':>6s} {'median':>8s} {'p90':>8s} {'p99':>8s} {'max':>8s}")
  for kind, v in [*times.items(), ("all", list(every / 1e3))]:
    ms = np.asarray(v) * 1e3
    if ms.size:
      print(f"  {kind:8s} {ms.size:6d} {np.median(ms):8.3f} {np.percentile(ms, 90):8.3f} "
            f"{np.percentile(ms, 99):8.3f} {ms.max():8.3f}")
  print(f"  total {every.sum() / 1e3:.2f}s")

  questions, answers, _ = rag._edit_questions(base, edits, paraphrase=False)
  data, _ = system.qa_set(questions, answers, np.full(len(questions), -1))
  def finetune():
    reader = rag.make_reader(len(system.vocab), config, config.seed)
    t = time.perf_counter()
    rag.train_reader(reader, data, steps=_FT_STEPS.value, batch_size=config.train.batch_size,
                     learning_rate=config.editing.finetune_learning_rate, seed=0,
                     log_every=_FT_STEPS.value)
    return time.perf_counter() - t

  # The first run compiles the training step (the schedule is part of it).
  print(f"\nfine-tuning, first run (compiles): {finetune():.1f}s")
  ft = finetune()
  ft_ms = 1e3 * ft / len(edits)
  print(f"\nfine-tuning on the {len(questions)} edited questions: {ft:.1f}s for "
        f"{_FT_STEPS.value} steps = {ft_ms:.1f} ms per edit")
  print(f"ratio fine-tuning / memory (median per edit): {ft_ms / np.median(every):.0f}x")


if __name__ == "__main__":
  app.run(main)
