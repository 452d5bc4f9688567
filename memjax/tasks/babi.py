"""The bAbI question-answering tasks (Weston et al. 2015): reader, vocabulary, padded arrays.

The data are the files of Facebook AI Research's release (`tasks_1-20_v1-2`,
CC BY 3.0): any directory holding `qa{N}_{name}_train.txt` and
`qa{N}_{name}_test.txt`. Nothing is downloaded. In each file a line is
`ID text`; ID 1 starts a new story; a question line is
`ID question<TAB>answer<TAB>supporting fact IDs`.

Every question becomes one example: the statements of its story told before
it (the last `memory_size` of them, 50 as in Sukhbaatar et al. 2015), the
question and the answer. An answer is one vocabulary item even when it lists
several words (task 8 `apple,milk`, task 19 `n,w`), so every task is a
classification over the vocabulary.

Shape legend: N examples, M memory slots, L words per sentence, S supporting
facts per question.

References:
  Weston, Bordes, Chopra, Rush, van Merrienboer, Joulin, Mikolov. Towards
  AI-Complete Question Answering: A Set of Prerequisite Toy Tasks.
  arXiv:1502.05698, 2015.
  Sukhbaatar, Szlam, Weston, Fergus. End-To-End Memory Networks. NeurIPS 2015.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from memjax import _checks

NIL = "<nil>"
NUM_TASKS = 20
DEFAULT_MEMORY_SIZE = 50

_LINE = re.compile(r"^(\d+) (.*)$")
_WORD = re.compile(r"[a-z0-9']+")


class Example(NamedTuple):
  """One question with its story, as tokens.

  Attributes:
    story: the statements told before the question, oldest first, each a list
      of words (at most `memory_size` of them: the most recent ones).
    question: the question's words.
    answer: the answer, one token (may contain commas, e.g. "apple,milk").
    supporting: indices into `story` of the supporting facts that are still in
      it (oldest first); may be empty if the memory cut them off.
    task: the task number, 1-20.
  """
  story: list[list[str]]
  question: list[str]
  answer: str
  supporting: list[int]
  task: int


class BabiFormatError(ValueError):
  """A bAbI file that does not follow the format; the message names file and line."""


def tokenize(text: str) -> list[str]:
  """Lower-cased words without punctuation: "Where is Mary?" -> [where, is, mary]."""
  return _WORD.findall(text.lower())


def parse(path: str, task: int = 0, memory_size: int = DEFAULT_MEMORY_SIZE) -> list[Example]:
  """Reads one bAbI file into examples, one per question.

  Args:
    path: a bAbI file.
    task: the task number stored in each example (0 if unknown).
    memory_size: keep at most this many of the latest statements per question.

  Returns:
    The examples in file order.

  Raises:
    BabiFormatError: on a malformed line, naming the file and the line number.
    FileNotFoundError: if `path` does not exist.
  """
  if memory_size < 1:
    raise ValueError(f"memory_size must be >= 1; got {memory_size}")
  examples = []
  statements: list[list[str]] = []  # the story so far
  slot_of_id: dict[int, int] = {}   # statement line ID -> index in `statements`
  last_id = 0

  def fail(lineno: int, why: str, line: str):
    raise BabiFormatError(f"{path}:{lineno}: {why}: {line!r}")

  with open(path, encoding="utf-8") as f:
    for lineno, raw in enumerate(f, start=1):
      line = raw.rstrip("\r\n")
      if not line.strip():
        continue
      match = _LINE.match(line)
      if not match:
        fail(lineno, "expected 'ID text' (a number, a space, then text)", line)
      line_id, text = int(match.group(1)), match.group(2)
      if line_id == 1:
        statements, slot_of_id = [], {}
      elif line_id != last_id + 1:
        fail(lineno, f"line ID {line_id} follows {last_id}; expected {last_id + 1} "
             "or 1 (a new story)", line)
      last_id = line_id
      if "\t" not in text:
        words = tokenize(text)
        if not words:
          fail(lineno, "statement has no words", line)
        slot_of_id[line_id] = len(statements)
        statements.append(words)
        continue
      fields = text.split("\t")
      if len(fields) < 2 or not fields[1].strip():
        fail(lineno, "question line needs 'question<TAB>answer<TAB>supporting IDs'", line)
      question = tokenize(fields[0])
      if not question:
        fail(lineno, "question has no words", line)
      answer = fields[1].strip().lower()
      if any(c.isspace() for c in answer):
        fail(lineno, "answer must be one token (use commas between words)", line)
      support_ids = fields[2].split() if len(fields) > 2 else []
      if not all(s.isdigit() for s in support_ids):
        fail(lineno, "supporting fact IDs must be numbers", line)
      start = max(0, len(statements) - memory_size)
      supporting = []
      for s in map(int, support_ids):
        if s not in slot_of_id:
          fail(lineno, f"supporting fact ID {s} is not a statement earlier in this story", line)
        if slot_of_id[s] >= start:
          supporting.append(slot_of_id[s] - start)
      examples.append(Example([list(w) for w in statements[start:]], question, answer,
                              sorted(supporting), task))
  return examples


def _task_number(task) -> int:
  """`task` as an int in 1..20; True, 1.5 and "1" are not task 1."""
  if not _checks.is_integer(task) or not 1 <= task <= NUM_TASKS:
    raise ValueError(f"task must be an integer in 1..{NUM_TASKS}; got {task!r}")
  return int(task)


def find_task_files(data_dir: str, task: int) -> tuple[str, str]:
  """The (train, test) files of task `task` (1-20) in `data_dir`.

  Raises:
    ValueError: on a task outside 1-20 or not an integer (a bool, a float, a string).
    FileNotFoundError: when the directory or a file is missing, or several match.
  """
  task = _task_number(task)
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(
        f"bAbI data_dir {data_dir!r} is not a directory; point it at the 'en' folder of "
        "tasks_1-20_v1-2 (files qa1_single-supporting-fact_train.txt, ...)")
  paths = []
  for split in ("train", "test"):
    found = sorted(glob.glob(os.path.join(data_dir, f"qa{task}_*_{split}.txt")))
    if len(found) != 1:
      what = "no file" if not found else f"{len(found)} files"
      raise FileNotFoundError(f"{what} matching qa{task}_*_{split}.txt in {data_dir!r}")
    paths.append(found[0])
  return paths[0], paths[1]


def task_name(path: str) -> str:
  """"single-supporting-fact" from ".../qa1_single-supporting-fact_train.txt"."""
  stem = os.path.basename(path).rsplit("_", 1)[0]
  return stem.split("_", 1)[1] if "_" in stem else stem


class Vocabulary:
  """Words <-> ids; id 0 is the nil word used for padding.

  Args:
    words: the words, in any order and with repeats; stored sorted.
  """

  def __init__(self, words: Iterable[str]):
    self.words = [NIL, *sorted(set(words) - {NIL})]
    self._ids = {w: i for i, w in enumerate(self.words)}

  @classmethod
  def from_examples(cls, examples: Iterable[Example]) -> Vocabulary:
    """All words of stories, questions and answers."""
    words = set()
    for ex in examples:
      for sentence in ex.story:
        words.update(sentence)
      words.update(ex.question)
      words.add(ex.answer)
    return cls(words)

  def __len__(self) -> int:
    return len(self.words)

  def __contains__(self, word: str) -> bool:
    return word in self._ids

  def id(self, word: str) -> int:
    if word not in self._ids:
      raise KeyError(f"word {word!r} is not in the vocabulary ({len(self)} words)")
    return self._ids[word]

  def encode(self, words: Sequence[str]) -> list[int]:
    return [self.id(w) for w in words]

  def decode(self, ids: Iterable[int]) -> list[str]:
    """Words of non-zero ids (padding dropped)."""
    return [self.words[int(i)] for i in ids if int(i) != 0]


class BabiArrays(NamedTuple):
  """Padded integer arrays for a set of examples.

  Memory slot 0 holds the most recent statement, slot 1 the one before, and
  so on: the temporal encoding of a memory network then counts back from the
  question, as in Sukhbaatar et al. (2015), Sec. 4.1.

  Attributes:
    story: [N, M, L] int32 word ids, 0-padded; slot 0 is the latest statement.
    story_size: [N] int32 number of statements in memory (slots >= it are empty).
    question: [N, L] int32 word ids, 0-padded.
    answer: [N] int32 answer ids.
    supporting: [N, S] int32 memory slots of the supporting facts, -1 padded.
    task: [N] int32 task numbers.
  """
  story: np.ndarray
  story_size: np.ndarray
  question: np.ndarray
  answer: np.ndarray
  supporting: np.ndarray
  task: np.ndarray

  def __len__(self) -> int:
    return self.answer.shape[0]

  @property
  def memory_mask(self) -> np.ndarray:
    """[N, M] bool: which memory slots hold a statement."""
    return np.arange(self.story.shape[1])[None, :] < self.story_size[:, None]

  def take(self, index) -> BabiArrays:
    """The examples at `index` (an index array, slice or boolean mask)."""
    return BabiArrays(*(x[index] for x in self))


def encode(examples: Sequence[Example], vocab: Vocabulary, memory_size: int,
           sentence_size: int, supporting_size: int = 3) -> BabiArrays:
  """Pads examples into `BabiArrays` (stories most recent first).

  Args:
    examples: the examples.
    vocab: their vocabulary.
    memory_size: M; the latest M statements of a story are kept.
    sentence_size: L; longer sentences and questions raise ValueError.
    supporting_size: S; supporting facts beyond it are dropped.

  Returns:
    The arrays.
  """
  n = len(examples)
  story = np.zeros((n, memory_size, sentence_size), np.int32)
  story_size = np.zeros((n,), np.int32)
  question = np.zeros((n, sentence_size), np.int32)
  answer = np.zeros((n,), np.int32)
  supporting = np.full((n, supporting_size), -1, np.int32)
  task = np.zeros((n,), np.int32)
  for i, ex in enumerate(examples):
    sentences = ex.story[-memory_size:]
    dropped = len(ex.story) - len(sentences)
    for age, words in enumerate(reversed(sentences)):
      if len(words) > sentence_size:
        raise ValueError(f"a sentence of {len(words)} words exceeds sentence_size="
                         f"{sentence_size}: {' '.join(words)!r}")
      story[i, age, :len(words)] = vocab.encode(words)
    story_size[i] = len(sentences)
    if len(ex.question) > sentence_size:
      raise ValueError(f"a question of {len(ex.question)} words exceeds sentence_size="
                       f"{sentence_size}: {' '.join(ex.question)!r}")
    question[i, :len(ex.question)] = vocab.encode(ex.question)
    answer[i] = vocab.id(ex.answer)
    slots = [len(ex.story) - 1 - s for s in ex.supporting if s >= dropped]
    slots = slots[:supporting_size]
    supporting[i, :len(slots)] = slots
    task[i] = ex.task
  return BabiArrays(story, story_size, question, answer, supporting, task)


class BabiData(NamedTuple):
  """One or several bAbI tasks, split and encoded with one vocabulary.

  Attributes:
    train: training examples (the first 90% of each task's train file).
    valid: held-out examples (the rest of the train file).
    test: the test file's examples.
    vocab: the vocabulary of all of them.
    tasks: the task numbers, in order.
    names: {task: name}, e.g. {1: "single-supporting-fact"}.
  """
  train: BabiArrays
  valid: BabiArrays
  test: BabiArrays
  vocab: Vocabulary
  tasks: tuple[int, ...]
  names: dict[int, str]

  @property
  def memory_size(self) -> int:
    return self.train.story.shape[1]

  @property
  def sentence_size(self) -> int:
    return self.train.story.shape[2]


def load(data_dir: str, tasks: int | Sequence[int], *, memory_size: int = DEFAULT_MEMORY_SIZE,
         validation_fraction: float = 0.1) -> BabiData:
  """Reads tasks from `data_dir`, holds out validation data and encodes everything.

  The validation set is the last `validation_fraction` of each task's
  training questions (file order, so stories are rarely split), as in
  Sukhbaatar et al. (2015), Sec. 4.2 ("10% of the bAbI training set was
  held-out to form a validation set"). The memory size is `memory_size` or
  the longest story, whichever is smaller; the sentence size is the longest
  sentence or question. The vocabulary covers the train and test files.

  Args:
    data_dir: directory of `qa*_train.txt` / `qa*_test.txt` files.
    tasks: one task number (1-20) or several, each once (trained jointly).
    memory_size: the most statements kept per question.
    validation_fraction: in [0, 1).

  Returns:
    The data.
  """
  single = isinstance(tasks, (str, bytes)) or not isinstance(tasks, Iterable)
  task_list = (tasks,) if single else tuple(tasks)
  task_list = tuple(_task_number(t) for t in task_list)
  if not task_list:
    raise ValueError("tasks must name at least one task in 1..20; got none")
  if len(set(task_list)) != len(task_list):
    raise ValueError(f"tasks must not repeat a task; got {task_list}")
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"validation_fraction must be in [0, 1); got {validation_fraction}")
  train, valid, test, names = [], [], [], {}
  for t in task_list:
    train_path, test_path = find_task_files(data_dir, t)
    names[t] = task_name(train_path)
    examples = parse(train_path, t, memory_size)
    n_valid = round(validation_fraction * len(examples))
    train += examples[:len(examples) - n_valid]
    valid += examples[len(examples) - n_valid:]
    test += parse(test_path, t, memory_size)
  everything = train + valid + test
  if not train and valid:
    raise ValueError(f"no training questions left for tasks {task_list} in {data_dir!r}: "
                     f"validation_fraction={validation_fraction} held out all {len(valid)} "
                     f"training questions for validation ({len(test)} test questions); lower "
                     "it or add training questions")
  if not train or not test:
    raise ValueError(f"no questions found for tasks {task_list} in {data_dir!r} "
                     f"({len(train) + len(valid)} training, {len(test)} test questions)")
  vocab = Vocabulary.from_examples(everything)
  mem = min(memory_size, max(max(len(ex.story) for ex in everything), 1))
  sent = max(max((len(s) for ex in everything for s in ex.story), default=1),
             max(len(ex.question) for ex in everything))
  enc = lambda exs: encode(exs, vocab, mem, sent)
  return BabiData(enc(train), enc(valid), enc(test), vocab, task_list, names)


def batches(data: BabiArrays, batch_size: int, *, shuffle: bool = False,
            seed: int = 0) -> Iterator[tuple[BabiArrays, np.ndarray]]:
  """Fixed-size batches; the last one is padded with zero-weight copies.

  Args:
    data: the examples.
    batch_size: B.
    shuffle: visit the examples in a random order (from `seed`).
    seed: the shuffling seed.

  Yields:
    (batch, weight): `batch` has B examples; `weight` [B] float32 is 1 for
    real examples and 0 for padding.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1; got {batch_size}")
  n = len(data)
  order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
  for start in range(0, n, batch_size):
    index = order[start:start + batch_size]
    weight = np.ones((batch_size,), np.float32)
    if len(index) < batch_size:
      weight[len(index):] = 0.0
      index = np.concatenate([index, np.full(batch_size - len(index), index[0])])
    yield data.take(index), weight


def sentence_table(*splits: BabiArrays) -> tuple[np.ndarray, list[np.ndarray]]:
  """The distinct sentences of some splits, and every story as indices into them.

  bAbI stories reuse a few hundred sentences, so a model can embed each
  distinct sentence once per step and gather the memories: the same numbers
  as embedding every story, at a fraction of the work.

  Args:
    *splits: `BabiArrays` sharing one sentence size L.

  Returns:
    (sentences [U, L] int32 with row 0 the empty sentence, [story index
    [N, M] int32 per split]) with `sentences[index] == split.story`.
  """
  if not splits:
    raise ValueError("sentence_table needs at least one split")
  length = splits[0].story.shape[2]
  for s in splits:
    if s.story.shape[2] != length:
      raise ValueError(f"all splits must have sentence size {length}; got {s.story.shape[2]}")
  flat = [s.story.reshape(-1, length) for s in splits]
  rows = np.concatenate([np.zeros((1, length), np.int32), *flat])
  sentences, inverse = np.unique(rows, axis=0, return_inverse=True)
  inverse = inverse.reshape(-1).astype(np.int32)
  assert not sentences[0].any()  # lexicographic order puts the all-zero row first
  indices, start = [], 1
  for s, f in zip(splits, flat):
    indices.append(inverse[start:start + len(f)].reshape(s.story.shape[:2]))
    start += len(f)
  return sentences.astype(np.int32), indices
