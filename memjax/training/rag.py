"""Retrieval-augmented QA, knowledge editing and bounded memory on a synthetic fact base.

`train_and_evaluate(config, workdir)` runs the stages a config enables:

1. **qa**: generates the fact base (`memjax.tasks.facts`), stores one passage
   per fact in a `memjax.retrieval.DocumentMemory` (TF-IDF keys, token
   payloads), and trains a key-value memory network reader
   (`memjax.nn.rag_reader.KVMemoryReader`) on the passages retrieved for each
   question; the same reader is trained without retrieval for comparison.
   Test questions are about facts no training question asked about.
2. **editing**: draws random edits (insert, update, delete); makes them by
   fine-tuning copies of the reader's weights (memory unedited; plain, and
   with replay of the original training questions), then by editing the
   memory only, one edit at a time, timed. For each it measures efficacy
   (the edited question gets the new answer), generalisation (paraphrased
   questions do too), locality (answers to unedited facts do not change) and
   the accuracy left on unedited test facts (the forgetting).
3. **bounded**: streams the facts into a memory smaller than the fact base,
   with an eviction policy, and checks at intervals that the memory holds
   exactly what the policy says it should, that recent facts are answered,
   and that evicted facts are answered "unknown".

The qa stage always runs (the other stages use its reader). Metrics go to
`workdir/metrics.jsonl`, the summary to `workdir/results.json`. Nothing is
checkpointed: the whole run takes minutes, and running it again starts over.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from memjax import _checks
from memjax import retrieval
from memjax.nn import rag_reader
from memjax.tasks import facts
from memjax.training import metrics

STAGES = ("qa", "editing", "bounded")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field of a rag config."""
  def field(path: str) -> Any:
    return functools.reduce(lambda node, name: node[name], path.split("."), config)

  def integer(path: str, low: int = 1) -> int:
    return _checks.integer(field(path), path, low)

  def number(path: str, low: float, *, open_low: bool = False) -> float:
    return _checks.number(field(path), path, low, open_low=open_low)

  for stage in config.stages:
    if stage not in STAGES:
      raise ValueError(f"stages must be a subset of {STAGES}; got {tuple(config.stages)}")
  num_facts = integer("facts.num_facts")
  integer("facts.facts_per_entity")
  integer("retrieval.dim")
  integer("retrieval.ngrams")
  k = integer("retrieval.k")
  if k > num_facts:
    raise ValueError(f"retrieval.k must be at most facts.num_facts={num_facts} (the memory "
                     f"holds one passage per fact); got {k}")
  integer("model.dim")
  integer("model.hops")
  integer("train.steps")
  integer("train.batch_size")
  integer("train.log_every")
  integer("closed_book_all_steps", 0)
  number("train.learning_rate", 0, open_low=True)
  train_questions = integer("train.num_questions")
  eval_questions = integer("eval.num_questions")
  integer("train.num_absent", 0)
  integer("eval.num_absent", 0)
  if train_questions + eval_questions > num_facts:
    raise ValueError("train.num_questions + eval.num_questions must be at most "
                     f"facts.num_facts={num_facts} (test facts are unseen in "
                     f"training); got {train_questions} + {eval_questions}")
  drops = (number("train.drop_true", 0), number("train.drop_entity", 0))
  if sum(drops) >= 1:
    raise ValueError("train.drop_true and train.drop_entity must be >= 0 with a sum below 1; "
                     f"got {drops}")
  if "editing" in config.stages:
    integer("editing.num_edits")
    integer("editing.locality_size")
    if integer("editing.finetune_steps", 0):
      number("editing.finetune_learning_rate", 0, open_low=True)
  if "bounded" in config.stages:
    capacity = integer("bounded.capacity")
    if capacity >= num_facts:
      raise ValueError(f"bounded.capacity must be below facts.num_facts="
                       f"{num_facts} for anything to be evicted; got {capacity}")
    for name in ("stream_batch", "recent", "eval_size", "eval_every"):
      integer(f"bounded.{name}")
    integer("bounded.hot", 0)
    for p in config.bounded.policies:
      if p not in ("fifo", "lru", "least_used"):
        raise ValueError(f"bounded.policies must be fifo/lru/least_used; got {p!r}")


# ----------------------------------------------------------------------------- system


@dataclasses.dataclass
class QASet:
  """Questions with their retrieved memories, as arrays.

  Attributes:
    question: [Q, Lq] int32 tokens.
    keys: [Q, K, Lk] int32 key tokens of the retrieved passages.
    values: [Q, K, Lv] int32 value tokens.
    mask: [Q, K] bool.
    answer: [Q] int32 answer token.
    true_slot: [Q, K] bool, slots holding the asked fact's own passage.
    entity_slot: [Q, K] bool, slots holding any passage about the asked entity.
  """
  question: np.ndarray
  keys: np.ndarray
  values: np.ndarray
  mask: np.ndarray
  answer: np.ndarray
  true_slot: np.ndarray
  entity_slot: np.ndarray

  def __len__(self) -> int:
    return int(self.answer.shape[0])

  def take(self, idx: np.ndarray) -> QASet:
    return QASet(*(getattr(self, f.name)[idx] for f in dataclasses.fields(self)))

  @staticmethod
  def concat(sets: Sequence[QASet]) -> QASet:
    return QASet(*(np.concatenate([getattr(s, f.name) for s in sets])
                   for f in dataclasses.fields(QASet)))


class RAGSystem:
  """The fact base, its document memory and the reader's vocabulary.

  Args:
    base: the fact base.
    dim: size of the TF-IDF vectors.
    ngrams: word n-grams of the encoder.
    k: passages retrieved per question.
    capacity: memory slots (default: the facts plus `headroom`).
    headroom: spare slots for inserted facts.
    policy: eviction policy.
    fill: store every fact's passage now.
    encoder: reuse a fitted encoder (else one is fitted on the statements).
  """

  QUESTION_LEN = 12
  KEY_LEN = 10
  VALUE_LEN = 1

  def __init__(self, base: facts.FactBase, *, dim: int, ngrams: int = 2, k: int = 8,
               capacity: int | None = None, headroom: int = 0, policy: str = "fifo",
               fill: bool = True, encoder: retrieval.TfidfEncoder | None = None):
    self.base = base
    self.k = k
    self.vocab = retrieval.Vocabulary(base.vocabulary())
    self.unknown = self.vocab.index[facts.UNKNOWN]
    # Words that name the same kind of thing: first names, last names, and
    # the values of each pool (see `permute_words`).
    names = [n.split() for n in (*base.entities, *base.spare_entities)]
    groups = [sorted({n[0] for n in names}), sorted({n[1] for n in names})]
    groups += [[base.values[v] for v in vals] for vals in base.pool_values.values()]
    self.pools = [np.asarray([self.vocab.index[w] for w in g], np.int32) for g in groups]
    if encoder is None:
      encoder = retrieval.TfidfEncoder(dim, ngrams=ngrams).fit(base.statements())
    self.encoder = encoder
    self.payload = retrieval.TokenPayload(self.vocab, self.KEY_LEN, self.VALUE_LEN,
                                          retrieval.split_on_words(base.values))
    n = capacity if capacity is not None else len(base) + headroom
    self.memory = retrieval.DocumentMemory(encoder, n, policy=policy, payload=self.payload,
                                           batch_size=1024)
    if fill:
      self.memory.add(base.statements(), ids=np.arange(len(base)))

  def answer_id(self, answer: str) -> int:
    return self.vocab.index[answer]

  def qa_set(self, questions: Sequence[str], answers: Sequence[str],
             fact_ids: Sequence[int] | np.ndarray, *,
             entities: Sequence[int] | np.ndarray | None = None,
             memory: retrieval.DocumentMemory | None = None,
             record_use: bool = False) -> tuple[QASet, np.ndarray]:
    """Retrieves passages for questions and builds the reader's arrays.

    Args:
      questions: Q question texts.
      answers: Q answer words ("unknown" for absent facts).
      fact_ids: Q memory ids of the facts asked about (-1 for none).
      entities: Q entity indices asked about (default: the subjects of
        `fact_ids` that are facts of the base, else -1).
      memory: the document memory to retrieve from (default: `self.memory`).
      record_use: record the retrieved slots as used.

    Returns:
      (the `QASet`, [Q, K] retrieved ids).
    """
    memory = self.memory if memory is None else memory
    got = memory.retrieve(list(questions), self.k, record_use=record_use, with_texts=False)
    keys, values, mask = memory.reader_memory(got)
    fact_ids = np.asarray(fact_ids, np.int64)
    if entities is None:
      entities = self._subject_of(fact_ids)
    entities = np.asarray(entities, np.int64)
    qa = QASet(question=self.vocab.encode(list(questions), self.QUESTION_LEN),
               keys=keys.astype(np.int32), values=values.astype(np.int32), mask=mask,
               answer=np.asarray([self.answer_id(a) for a in answers], np.int32),
               true_slot=(got.ids == fact_ids[:, None]) & (fact_ids[:, None] >= 0),
               entity_slot=(self._subject_of(got.ids) == entities[:, None])
               & (entities[:, None] >= 0))
    return qa, got.ids

  def _subject_of(self, ids: np.ndarray) -> np.ndarray:
    """Entity of each memory id that is a fact of the base; -1 otherwise."""
    ids = np.asarray(ids, np.int64)
    ok = (ids >= 0) & (ids < len(self.base))
    return np.where(ok, self.base.subject[np.where(ok, ids, 0)], -1)


def fact_questions(base: facts.FactBase, fact_ids: np.ndarray, rng: np.random.Generator, *,
                   paraphrase: bool = False) -> tuple[list[str], list[str]]:
  """One question per fact in a random (paraphrase) template, and its answer."""
  n_templates = 2 if paraphrase else 3
  templates = rng.integers(n_templates, size=len(fact_ids))
  questions = [base.question(int(f), int(t), paraphrase=paraphrase)
               for f, t in zip(fact_ids, templates)]
  return questions, [base.answer(int(f)) for f in fact_ids]


def absent_questions(base: facts.FactBase, count: int, rng: np.random.Generator
                     ) -> tuple[list[str], list[tuple[int, int]]]:
  """Questions about relations an entity does not have (answer "unknown").

  Returns:
    (questions, the (entity, relation) asked about by each).
  """
  known = base.fact_index()
  questions, pairs = [], []
  while len(questions) < count:
    e = int(rng.integers(len(base.entities)))
    r = int(rng.integers(base.num_relations))
    if (e, r) in known:
      continue
    questions.append(base.question_text(base.entities[e], r, int(rng.integers(3))))
    pairs.append((e, r))
  return questions, pairs


# ----------------------------------------------------------------------------- training


@functools.partial(nnx.jit, static_argnums=(0, 1, 2, 3))
def _build_reader(vocab_size, dim, hops, tie_output, key):
  return rag_reader.KVMemoryReader(vocab_size, dim, hops=hops, tie_output=tie_output,
                                   rngs=nnx.Rngs(key))


def make_reader(vocab_size: int, config: ml_collections.ConfigDict,
                seed: int) -> rag_reader.KVMemoryReader:
  """A fresh reader, built under `nnx.jit`: one compilation per shape, not one per initialiser."""
  return _build_reader(vocab_size, config.model.dim, config.model.hops,
                       bool(config.model.tie_output), jax.random.key(seed))


def _loss(model, batch, use_memory):
  mask = batch["mask"] if use_memory else jnp.zeros_like(batch["mask"])
  logits = model(batch["question"], batch["keys"], batch["values"], mask)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["answer"]).mean()
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["answer"])
  return loss, accuracy


@nnx.jit(static_argnames=("use_memory",))
def _train_step(model, optimizer, batch, use_memory):
  grad_fn = nnx.value_and_grad(_loss, has_aux=True)
  (loss, accuracy), grads = grad_fn(model, batch, use_memory)
  optimizer.update(model, grads)
  return loss, accuracy


@nnx.jit(static_argnames=("use_memory",))
def _predict(model, question, keys, values, mask, use_memory):
  mask = mask if use_memory else jnp.zeros_like(mask)
  return jnp.argmax(model(question, keys, values, mask), -1).astype(jnp.int32)


def predict(model: rag_reader.KVMemoryReader, qa: QASet, *, use_memory: bool = True,
            batch_size: int = 1024) -> np.ndarray:
  """The reader's answer token for each question: [Q] int32."""
  out = np.zeros(len(qa), np.int32)
  for start in range(0, len(qa), batch_size):
    part = qa.take(np.arange(start, min(start + batch_size, len(qa))))
    # Pad to 128 or `batch_size` rows, so that few shapes are ever compiled.
    pad = (128 if len(part) <= 128 < batch_size else batch_size) - len(part)
    arrays = [np.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
              for a in (part.question, part.keys, part.values, part.mask)]
    out[start:start + len(part)] = np.asarray(
        _predict(model, *arrays, use_memory=use_memory))[:len(part)]
  return out


def permute_words(arrays: Sequence[np.ndarray], pools: Sequence[np.ndarray],
                  rng: np.random.Generator) -> list[np.ndarray]:
  """Renames words by one random permutation within each pool, in all `arrays` alike.

  With the pools "first names", "last names" and each relation's values, a
  batch then tells of other people with other values, consistently across
  the question, the passages and the answer. Nothing the reader could have
  memorised about an entity helps any more: the only way to the answer is to
  read it from the retrieved passages (and every name or value word is
  trained in every role).

  Args:
    arrays: token arrays (any shapes) to rename.
    pools: disjoint arrays of token ids; each is permuted within itself.
    rng: random generator.

  Returns:
    The renamed arrays.
  """
  size = max(max(int(a.max(initial=0)) for a in arrays), max(int(p.max()) for p in pools)) + 1
  table = np.arange(size, dtype=np.int32)
  for p in pools:
    table[p] = rng.permutation(p)
  return [table[a] for a in arrays]


def _batch(qa: QASet, idx: np.ndarray, rng: np.random.Generator, drop_true: float,
           unknown: int, pools: Sequence[np.ndarray] | None = None,
           drop_entity: float = 0.0) -> dict[str, np.ndarray]:
  """A training batch in which some questions lose the passages that answer them.

  With probability `drop_true` a question loses its own passage, with
  probability `drop_entity` every passage about its entity. The question is
  then about a fact the memory does not hold, so its target becomes
  "unknown": this teaches the reader to use the null slot, which is what
  makes deleting (or evicting) a passage forget the fact. With `pools`, names
  and values are renamed (`permute_words`).
  """
  part = qa.take(idx)
  mask, answer = part.mask, part.answer
  question, keys, values = part.question, part.keys, part.values
  if drop_true > 0 or drop_entity > 0:
    u = rng.random(len(idx))
    by_fact = (u < drop_true) & part.true_slot.any(axis=1)
    by_entity = ((u >= drop_true) & (u < drop_true + drop_entity)
                 & part.entity_slot.any(axis=1))
    gone = (by_fact[:, None] & part.true_slot) | (by_entity[:, None] & part.entity_slot)
    mask = mask & ~gone
    answer = np.where(by_fact | by_entity, unknown, answer).astype(np.int32)
  if pools is not None:
    question, keys, values, answer = permute_words([question, keys, values, answer], pools, rng)
  return {"question": question, "keys": keys, "values": values,
          "mask": mask, "answer": answer}


@functools.lru_cache(maxsize=16)
def _adam(steps: int, learning_rate: float) -> optax.GradientTransformation:
  """Adam with warm-up and cosine decay; one object per setting, so that the
  jitted training step (whose trace includes it) compiles once per setting."""
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(100, steps // 10),
                                                steps, learning_rate * 0.05)
  return optax.adam(schedule)


def train_reader(model: rag_reader.KVMemoryReader, train: QASet, *, steps: int,
                 batch_size: int, learning_rate: float, seed: int, use_memory: bool = True,
                 drop_true: float = 0.0, drop_entity: float = 0.0, unknown: int = 0,
                 pools: Sequence[np.ndarray] | None = None,
                 writer: metrics.MetricWriter | None = None, tag: str = "rag",
                 log_every: int = 100, step_offset: int = 0) -> dict[str, float]:
  """Trains the reader with Adam (cosine decay) on random batches of `train`.

  Returns:
    The last logged {"loss", "accuracy"} (averages since the previous log).
  """
  optimizer = nnx.Optimizer(model, _adam(steps, learning_rate), wrt=nnx.Param)
  rng = np.random.default_rng(seed)
  progress = metrics.Progress(steps)
  losses, accs = [], []
  last = {}
  for step in range(1, steps + 1):
    idx = rng.integers(len(train), size=batch_size)
    batch = _batch(train, idx, rng, drop_true if use_memory else 0.0, unknown,
                   pools if use_memory else None, drop_entity if use_memory else 0.0)
    loss, acc = _train_step(model, optimizer, batch, use_memory=use_memory)
    losses.append(loss)
    accs.append(acc)
    if step % log_every == 0 or step == steps:
      last = {"loss": float(np.mean(jax.device_get(losses))),
              "accuracy": float(np.mean(jax.device_get(accs)))}
      losses, accs = [], []
      progress.log(step, **{f"{tag}_{k}": v for k, v in last.items()})
      if writer is not None:
        writer.write(step_offset + step, **{f"{tag}/train_{k}": v for k, v in last.items()})
  return last


# ----------------------------------------------------------------------------- stages


def _accuracy(pred: np.ndarray, answer: np.ndarray) -> float:
  return float(np.mean(pred == answer)) if len(answer) else float("nan")


def _questions_only(system: RAGSystem, base: facts.FactBase, fact_ids: np.ndarray) -> QASet:
  """Questions in every training template about `fact_ids`, with empty memories."""
  questions, answers = [], []
  for f in fact_ids:
    for t in range(3):
      questions.append(base.question(int(f), t))
      answers.append(base.answer(int(f)))
  n, k = len(questions), system.k
  empty = np.zeros((1, k, system.KEY_LEN), np.int32)
  return QASet(question=system.vocab.encode(questions, system.QUESTION_LEN),
               keys=np.broadcast_to(empty, (n, k, system.KEY_LEN)),
               values=np.broadcast_to(empty[..., :system.VALUE_LEN], (n, k, system.VALUE_LEN)),
               mask=np.zeros((n, k), bool),
               answer=np.asarray([system.answer_id(a) for a in answers], np.int32),
               true_slot=np.zeros((n, k), bool), entity_slot=np.zeros((n, k), bool))


def stage_qa(config, base: facts.FactBase, system: RAGSystem,
             writer: metrics.MetricWriter) -> tuple[dict[str, Any], dict[str, Any]]:
  """Trains the reader with and without retrieval; returns (results, state for later stages)."""
  rng = np.random.default_rng(config.seed)
  t0 = time.perf_counter()
  order = rng.permutation(len(base))
  n_train, n_eval = config.train.num_questions, config.eval.num_questions
  train_facts, test_facts = order[:n_train], order[n_train:n_train + n_eval]
  q, a = fact_questions(base, train_facts, rng)
  qa_fact, _ = system.qa_set(q, a, train_facts)
  aq, absent_pairs = absent_questions(base, config.train.num_absent, rng)
  qa_absent, _ = system.qa_set(aq, [facts.UNKNOWN] * len(aq), np.full(len(aq), -1),
                               entities=[e for e, _ in absent_pairs])
  train = QASet.concat([qa_fact, qa_absent])
  train_pairs = [(int(base.subject[f]), int(base.relation[f])) for f in train_facts]
  train_pairs += absent_pairs
  eval_sets: dict[str, QASet] = {}
  q, a = fact_questions(base, test_facts, rng)
  test_texts = (q, a, test_facts)
  eval_sets["test"], _ = system.qa_set(q, a, test_facts)
  q, a = fact_questions(base, test_facts, rng, paraphrase=True)
  eval_sets["test_paraphrase"], _ = system.qa_set(q, a, test_facts)
  seen = train_facts[:n_eval]
  q, a = fact_questions(base, seen, rng)
  eval_sets["train_facts"], _ = system.qa_set(q, a, seen)
  anywhere = rng.choice(len(base), size=n_eval, replace=False)
  q, a = fact_questions(base, anywhere, rng)
  eval_sets["all_facts"], _ = system.qa_set(q, a, anywhere)
  aq, pairs = absent_questions(base, config.eval.num_absent, rng)
  eval_sets["absent"], _ = system.qa_set(aq, [facts.UNKNOWN] * len(aq), np.full(len(aq), -1),
                                         entities=[e for e, _ in pairs])
  # The test questions once every passage about their entity is gone (as
  # after a delete of the entity, or its eviction from a bounded memory).
  gone = eval_sets["test"].take(np.flatnonzero(eval_sets["test"].entity_slot.any(axis=1)))
  gone.mask = gone.mask & ~gone.entity_slot
  gone.answer = np.full(len(gone), system.unknown, np.int32)
  eval_sets["entity_removed"] = gone
  retrieval_s = time.perf_counter() - t0
  recall = float(np.mean(eval_sets["test"].true_slot.any(axis=1)))
  logging.info("retrieved for %d questions in %.1fs; test recall@%d = %.4f",
               len(train) + sum(map(len, eval_sets.values())), retrieval_s, system.k, recall)

  results: dict[str, Any] = {"num_facts": len(base), "retrieval_recall_at_k": recall,
                             "k": system.k, "retrieval_seconds": retrieval_s}
  readers = {}
  runs = [("rag", True, train, config.train.steps)]
  if config.closed_book:
    runs.append(("closed_book", False, train, config.train.steps))
  if config.closed_book_all_steps:
    # The reader without retrieval, trained on every fact of the base (all
    # three question templates): it can only answer what its weights hold.
    runs.append(("closed_book_all", False,
                 QASet.concat([_questions_only(system, base, np.arange(len(base))),
                               qa_absent]), config.closed_book_all_steps))
  for tag, use_memory, data, steps in runs:
    model = make_reader(len(system.vocab), config, config.seed)
    t1 = time.perf_counter()
    train_reader(model, data, steps=steps, batch_size=config.train.batch_size,
                 learning_rate=config.train.learning_rate, seed=config.seed,
                 use_memory=use_memory, drop_true=config.train.drop_true,
                 drop_entity=config.train.drop_entity,
                 unknown=system.unknown, writer=writer, tag=tag,
                 pools=system.pools if config.train.permute_words else None,
                 log_every=config.train.log_every)
    results[f"{tag}/train_seconds"] = time.perf_counter() - t1
    for name, qa in eval_sets.items():
      results[f"{tag}/{name}_accuracy"] = _accuracy(predict(model, qa, use_memory=use_memory),
                                                    qa.answer)
    readers[tag] = model
    logging.info("%s: %s", tag, {k: v for k, v in results.items() if k.startswith(tag)})
  writer.write(config.train.steps, **{f"final/{k}": v for k, v in results.items()})
  state = {"reader": readers["rag"], "test": eval_sets["test"], "test_texts": test_texts,
           "train": train, "train_pairs": train_pairs}
  return results, state


def _edit_questions(base: facts.FactBase, edits: Sequence[facts.Edit], *, paraphrase: bool
                    ) -> tuple[list[str], list[str], np.ndarray]:
  """Every template's question about each edited fact, with the answer after the edit."""
  n_templates = 2 if paraphrase else 3
  questions, answers, edit_index = [], [], []
  for i, e in enumerate(edits):
    name = base.entity_name(e.entity)
    answer = base.values[e.new_value] if e.new_value >= 0 else facts.UNKNOWN
    for t in range(n_templates):
      questions.append(base.question_text(name, e.relation, t, paraphrase=paraphrase))
      answers.append(answer)
      edit_index.append(i)
  return questions, answers, np.asarray(edit_index)


def apply_edit(system: RAGSystem, edit: facts.Edit, insert_id: int) -> None:
  """Makes one edit in the document memory (and nowhere else)."""
  base = system.base
  if edit.kind == "delete":
    system.memory.delete([edit.fact])
    return
  text = base.statement_text(base.entity_name(edit.entity), edit.relation,
                             base.values[edit.new_value])
  if edit.kind == "update":
    system.memory.update([edit.fact], [text])
  else:
    system.memory.add([text], ids=[insert_id])


def _edit_scores(prefix: str, edits: Sequence[facts.Edit], edit_index: np.ndarray,
                 before: dict[str, np.ndarray], after: dict[str, np.ndarray],
                 sets: dict[str, QASet]) -> dict[str, float]:
  """Efficacy (per kind), generalisation and locality of one way of editing."""
  out = {}
  hit = after["efficacy"] == sets["efficacy"].answer
  out[f"{prefix}/efficacy"] = float(hit.mean())
  for kind in ("insert", "update", "delete"):
    sel = np.asarray([edits[i].kind == kind for i in edit_index])
    if sel.any():
      out[f"{prefix}/efficacy_{kind}"] = float(hit[sel].mean())
  general = after["generalisation"] == sets["generalisation"].answer
  out[f"{prefix}/generalisation"] = float(general.mean())
  for kind in ("insert", "update", "delete"):
    sel = np.repeat([e.kind == kind for e in edits], 2)  # two paraphrases per edit
    if sel.any():
      out[f"{prefix}/generalisation_{kind}"] = float(general[sel].mean())
  out[f"{prefix}/locality"] = float(np.mean(before["local"] == after["local"]))
  out[f"{prefix}/locality_same_entity"] = float(np.mean(before["near"] == after["near"]))
  out[f"{prefix}/local_accuracy"] = _accuracy(after["local"], sets["local"].answer)
  out[f"{prefix}/same_entity_accuracy"] = _accuracy(after["near"], sets["near"].answer)
  return out


def stage_editing(config, base: facts.FactBase, system: RAGSystem, state: dict[str, Any],
                  writer: metrics.MetricWriter) -> dict[str, Any]:
  """The same random edits made two ways: by fine-tuning the reader, and in memory.

  Fine-tuning comes first (on the unedited memory, on a copy of the reader);
  then the memory is edited and the original reader answers.
  """
  reader = state["reader"]
  cfg = config.editing
  edits = base.sample_edits(cfg.num_edits, seed=config.seed + 1)
  rng = np.random.default_rng(config.seed + 2)
  edited = {(e.entity, e.relation) for e in edits}
  edited_entities = {e.entity for e in edits}
  known = base.fact_index()
  # Locality: random unedited facts, and the other facts of the edited
  # entities (their questions retrieve the edited passages).
  pool = [i for i in rng.permutation(len(base))[:2 * cfg.locality_size]
          if (int(base.subject[i]), int(base.relation[i])) not in edited]
  local_facts = np.asarray(pool[:cfg.locality_size])
  near_facts = np.asarray(sorted(f for (e, r), f in known.items()
                                 if e in edited_entities and (e, r) not in edited))
  texts = {
      "local": (*fact_questions(base, local_facts, rng), local_facts),
      "near": (*fact_questions(base, near_facts, rng), near_facts),
  }
  eff_q, eff_a, eff_i = _edit_questions(base, edits, paraphrase=False)
  gen_q, gen_a, _ = _edit_questions(base, edits, paraphrase=True)
  texts["efficacy"] = (eff_q, eff_a, np.full(len(eff_q), -1))
  texts["generalisation"] = (gen_q, gen_a, np.full(len(gen_q), -1))

  def evaluate(model):
    sets = {name: system.qa_set(*t)[0] for name, t in texts.items()}
    return {name: predict(model, qa) for name, qa in sets.items()}, sets

  test_set = state["test"]
  before, before_sets = evaluate(reader)
  test_before = predict(reader, test_set)
  results: dict[str, Any] = {"num_edits": len(edits),
                             "kinds": {k: sum(e.kind == k for e in edits)
                                       for k in ("insert", "update", "delete")}}
  results["before/efficacy"] = _accuracy(before["efficacy"], before_sets["efficacy"].answer)
  results["before/local_accuracy"] = _accuracy(before["local"], before_sets["local"].answer)
  # The test questions about facts that were not edited: the forgetting measure.
  edited_facts = {e.fact for e in edits if e.fact >= 0}
  keep = np.asarray([int(f) not in edited_facts for f in state["test_texts"][2]])
  results["before/test_accuracy"] = _accuracy(test_before[keep], test_set.answer[keep])

  # -- by fine-tuning a copy of the reader on the edited questions (memory
  # unedited); with replay, half of each batch repeats the original training
  # questions (those about facts no edit touched), the usual guard against
  # forgetting.
  for replay in (cfg.finetune_replay if cfg.finetune_steps > 0 else ()):
    tag = "finetune_replay" if replay else "finetune"
    data = before_sets["efficacy"]
    if replay:
      pairs = state["train_pairs"]
      old = np.flatnonzero([p not in edited for p in pairs])
      old = rng.choice(old, size=min(len(old), len(data)), replace=False)
      data = QASet.concat([data, state["train"].take(old)])
    graphdef, params = nnx.split(reader)
    tuned = nnx.merge(graphdef, jax.tree.map(jnp.copy, params))
    t0 = time.perf_counter()
    last = train_reader(tuned, data, steps=cfg.finetune_steps,
                        batch_size=min(config.train.batch_size, len(data)),
                        learning_rate=cfg.finetune_learning_rate, seed=config.seed + 3,
                        writer=writer, tag=tag, log_every=config.train.log_every,
                        step_offset=config.train.steps)
    seconds = time.perf_counter() - t0
    results[f"{tag}/seconds"] = seconds
    results[f"{tag}/ms_per_edit"] = 1e3 * seconds / len(edits)
    results[f"{tag}/final_loss"] = last.get("loss", float("nan"))
    tuned_pred = {name: predict(tuned, qa) for name, qa in before_sets.items()}
    results.update(_edit_scores(tag, edits, eff_i, before, tuned_pred, before_sets))
    test_tuned = predict(tuned, test_set)
    results[f"{tag}/test_accuracy"] = _accuracy(test_tuned[keep], test_set.answer[keep])
    results[f"{tag}/test_unchanged"] = float(np.mean(test_before[keep] == test_tuned[keep]))
    logging.info("%s edits: %s", tag,
                 {k: v for k, v in results.items() if k.startswith(tag + "/")})

  # -- in memory, one edit at a time, timed
  latencies: dict[str, list[float]] = {"insert": [], "update": [], "delete": []}
  next_id = len(base)
  for e in edits:
    t0 = time.perf_counter()
    apply_edit(system, e, next_id)
    jax.block_until_ready(system.memory.memory)
    latencies[e.kind].append(time.perf_counter() - t0)
    next_id += e.kind == "insert"
  after, after_sets = evaluate(reader)
  results.update(_edit_scores("memory", edits, eff_i, before, after, after_sets))
  # The first edit of each kind compiles its function; report it apart.
  warm = np.asarray([t for v in latencies.values() for t in v[1:]])
  if warm.size:
    results["memory/edit_ms_median"] = float(1e3 * np.median(warm))
    results["memory/edit_ms_mean"] = float(1e3 * np.mean(warm))
    results["memory/edit_ms_p99"] = float(1e3 * np.percentile(warm, 99))
    results["memory/edit_ms_max"] = float(1e3 * np.max(warm))
  for kind, v in latencies.items():
    if len(v) > 1:
      results[f"memory/{kind}_ms_median"] = float(1e3 * np.median(v[1:]))
    if v:
      results[f"memory/{kind}_ms_first_call"] = float(1e3 * v[0])
  test_after = predict(reader, system.qa_set(*state["test_texts"])[0])
  results["memory/test_accuracy"] = _accuracy(test_after[keep], test_set.answer[keep])
  results["memory/test_unchanged"] = float(np.mean(test_before[keep] == test_after[keep]))
  logging.info("memory edits: %s",
               {k: v for k, v in results.items() if k.startswith("memory")})
  writer.write(config.train.steps + cfg.finetune_steps,
               **{f"editing/{k}": v for k, v in results.items() if k != "kinds"})
  return results


class PolicySimulator:
  """The eviction policies of `memjax.store`, replayed on ids in plain Python.

  The bounded-memory stage checks the store against it: after every step the
  ids in memory must be exactly the ids the simulator holds.

  Args:
    capacity: N.
    policy: "fifo", "lru" or "least_used".
  """

  def __init__(self, capacity: int, policy: str):
    self.capacity = capacity
    self.policy = policy
    self.clock = 0
    self.inserted: dict[int, int] = {}
    self.last_used: dict[int, int] = {}
    self.hits: dict[int, int] = {}

  def _victim_key(self, i: int):
    if self.policy == "fifo":
      return (self.inserted[i],)
    if self.policy == "lru":
      return (self.last_used[i], self.inserted[i])
    return (self.hits[i], self.last_used[i], self.inserted[i])

  def insert(self, ids: Sequence[int]) -> list[int]:
    """Inserts a batch; returns the evicted ids."""
    ids = list(ids)[-self.capacity:]
    overflow = len(self.inserted) + len(ids) - self.capacity
    evicted = []
    if overflow > 0:
      evicted = sorted(self.inserted, key=self._victim_key)[:overflow]
      for i in evicted:
        del self.inserted[i], self.last_used[i], self.hits[i]
    for r, i in enumerate(ids):
      self.inserted[i] = self.last_used[i] = self.clock + r
      self.hits[i] = 0
    self.clock += len(ids)
    return evicted

  def use(self, ids: np.ndarray) -> None:
    """Records one use of each present id (as `store.mark_used`)."""
    self.clock += 1
    for i in np.asarray(ids).reshape(-1).tolist():
      if i in self.inserted:
        self.last_used[i] = self.clock
        self.hits[i] += 1

  def ids(self) -> set[int]:
    return set(self.inserted)


def stage_bounded(config, base: facts.FactBase, system: RAGSystem, state: dict[str, Any],
                  writer: metrics.MetricWriter) -> dict[str, Any]:
  """Streams the facts into a bounded memory and checks accuracy and eviction."""
  reader = state["reader"]
  cfg = config.bounded
  results: dict[str, Any] = {}
  for policy in cfg.policies:
    rng = np.random.default_rng(config.seed + 4)
    bounded = RAGSystem(base, dim=system.encoder.dim, k=system.k, capacity=cfg.capacity,
                        policy=policy, fill=False, encoder=system.encoder)
    sim = PolicySimulator(cfg.capacity, policy)
    # Under "lru"/"least_used" a few old facts stay in use: they are asked
    # about after every batch, and the policy must keep them.
    hot = np.arange(cfg.hot) if policy != "fifo" else np.arange(0)
    hot_q, hot_a = fact_questions(base, hot, rng) if hot.size else ([], [])
    rows = []
    inserted = 0
    agree = True
    t0 = time.perf_counter()
    for start in range(0, len(base), cfg.stream_batch):
      ids = np.arange(start, min(start + cfg.stream_batch, len(base)))
      bounded.memory.add(base.statements(ids), ids=ids)
      sim.insert(ids.tolist())
      inserted = int(ids[-1]) + 1
      if hot.size and inserted > hot[-1]:
        _, got = bounded.qa_set(hot_q, hot_a, hot, record_use=True)
        sim.use(got)
      agree &= set(bounded.memory.ids().tolist()) == sim.ids() == set(
          np.asarray(bounded.memory.memory.ids)[np.asarray(bounded.memory.memory.valid)]
          .tolist())
      if inserted % cfg.eval_every == 0 or inserted == len(base):
        row = _bounded_eval(bounded, reader, base, sim, inserted, hot, cfg, rng)
        row["policy_agrees"] = bool(agree)
        rows.append(row)
        logging.info("bounded %s after %d facts: %s", policy, inserted, row)
        writer.write(inserted, **{f"bounded_{policy}/{k}": v for k, v in row.items()})
    results[policy] = {"rows": rows, "policy_agrees": bool(agree),
                       "seconds": time.perf_counter() - t0,
                       "final": rows[-1]}
  return results


def _bounded_eval(bounded: RAGSystem, reader, base: facts.FactBase, sim: PolicySimulator,
                  inserted: int, hot: np.ndarray, cfg, rng: np.random.Generator
                  ) -> dict[str, Any]:
  present = sim.ids()
  window = min(cfg.recent, inserted)
  recent = np.arange(inserted - window, inserted)
  row: dict[str, Any] = {"inserted": inserted, "stored": len(bounded.memory),
                         "recent_stored": float(np.mean([int(i) in present for i in recent]))}
  sample = rng.choice(recent, size=min(cfg.eval_size, len(recent)), replace=False)
  qa, _ = bounded.qa_set(*fact_questions(base, sample, rng), sample)
  row["recent_accuracy"] = _accuracy(predict(reader, qa), qa.answer)
  evicted = np.asarray([i for i in range(inserted) if i not in present], np.int64)
  row["evicted"] = int(evicted.size)
  if evicted.size:
    sample = rng.choice(evicted, size=min(cfg.eval_size, evicted.size), replace=False)
    q, _ = fact_questions(base, sample, rng)
    qa, _ = bounded.qa_set(q, [facts.UNKNOWN] * len(q), sample)
    row["evicted_answered_unknown"] = _accuracy(predict(reader, qa), qa.answer)
  old_hot = hot[hot < inserted - window] if hot.size else hot
  if old_hot.size:
    row["hot_stored"] = float(np.mean([int(i) in present for i in old_hot]))
    qa, _ = bounded.qa_set(*fact_questions(base, old_hot, rng), old_hot)
    row["hot_accuracy"] = _accuracy(predict(reader, qa), qa.answer)
  return row


def _json_default(value: Any) -> Any:
  if hasattr(value, "tolist"):
    return value.tolist()
  return str(value)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the stages of `config.stages`; writes metrics.jsonl and results.json in `workdir`.

  Returns:
    The results, as written to results.json.
  """
  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  writer = metrics.MetricWriter(os.path.join(workdir, "metrics.jsonl"), resume_step=0)
  t0 = time.perf_counter()
  base = facts.generate(config.facts.num_facts, facts_per_entity=config.facts.facts_per_entity,
                        seed=config.facts.seed)
  headroom = config.editing.num_edits if "editing" in config.stages else 0
  system = RAGSystem(base, dim=config.retrieval.dim, ngrams=config.retrieval.ngrams,
                     k=config.retrieval.k, headroom=headroom)
  build_s = time.perf_counter() - t0
  logging.info("fact base of %d facts stored in %.1fs", len(base), build_s)
  results: dict[str, Any] = {"config": config.to_dict(), "build_seconds": build_s}
  results["qa"], state = stage_qa(config, base, system, writer)
  if "editing" in config.stages:
    results["editing"] = stage_editing(config, base, system, state, writer)
  if "bounded" in config.stages:
    results["bounded"] = stage_bounded(config, base, system, state, writer)
  results["total_seconds"] = time.perf_counter() - t0
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1, default=_json_default)
  return results
