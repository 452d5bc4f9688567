"""Tests of the bAbI reader (memjax.tasks.babi)."""

import os

import numpy as np
import pytest

from memjax.tasks import babi

# The shared copy of the data lives next to the repository: <repo>/../shared/data/babi/en.
DATA_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                         "shared", "data", "babi", "en"))
needs_data = pytest.mark.skipif(not os.path.isdir(DATA_DIR),
                                reason=f"bAbI data not found in {DATA_DIR}")

STORY = """\
1 Mary moved to the bathroom.
2 John went to the hallway.
3 Where is Mary? \tbathroom\t1
4 Daniel went back to the hallway.
5 Where is Daniel? \thallway\t4
1 Sandra travelled to the office.
2 Where is Sandra?\toffice\t1
"""


def write(tmp_path, text, name="qa1_toy_train.txt"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def test_tokenize_lowercases_and_drops_punctuation():
  assert babi.tokenize("Where is Mary? ") == ["where", "is", "mary"]
  assert babi.tokenize("The kitchen is north of the office.") == [
      "the", "kitchen", "is", "north", "of", "the", "office"]


def test_parse_stories_questions_and_supporting_facts(tmp_path):
  examples = babi.parse(write(tmp_path, STORY), task=1)
  assert len(examples) == 3
  first, second, third = examples
  assert first.story == [["mary", "moved", "to", "the", "bathroom"],
                         ["john", "went", "to", "the", "hallway"]]
  assert first.question == ["where", "is", "mary"]
  assert first.answer == "bathroom"
  assert first.supporting == [0]
  # Questions are not statements: Daniel's sentence is the third statement.
  assert len(second.story) == 3 and second.supporting == [2]
  # ID 1 starts a new story.
  assert third.story == [["sandra", "travelled", "to", "the", "office"]]
  assert third.answer == "office" and third.task == 1


def test_parse_keeps_the_latest_sentences(tmp_path):
  examples = babi.parse(write(tmp_path, STORY), memory_size=2)
  second = examples[1]
  assert second.story == [["john", "went", "to", "the", "hallway"],
                          ["daniel", "went", "back", "to", "the", "hallway"]]
  assert second.supporting == [1]
  first_with_one = babi.parse(write(tmp_path, STORY), memory_size=1)[0]
  assert first_with_one.supporting == []  # its supporting fact fell out of memory


@pytest.mark.parametrize("text, why", [
    ("1 Mary moved.\nMary went home.\n", "expected 'ID text'"),
    ("1 Mary moved.\n3 John left.\n", "line ID 3 follows 1"),
    ("1 Mary moved.\n2 Where is Mary?\t\t1\n", "question line needs"),
    ("1 Mary moved.\n2 Where is Mary?\tthe hall\t1\n", "answer must be one token"),
    ("1 Mary moved.\n2 Where is Mary?\thall\t7\n", "supporting fact ID 7"),
    ("1 Mary moved.\n2 Where is Mary?\thall\tone\n", "must be numbers"),
    ("1 ...\n", "statement has no words"),
])
def test_malformed_files_name_file_and_line(tmp_path, text, why):
  path = write(tmp_path, text)
  with pytest.raises(babi.BabiFormatError) as info:
    babi.parse(path)
  message = str(info.value)
  assert why in message
  bad_line = 1 if text.count("\n") == 1 else 2
  assert f"{path}:{bad_line}:" in message


def test_find_task_files(tmp_path):
  write(tmp_path, STORY, "qa3_three-things_train.txt")
  write(tmp_path, STORY, "qa3_three-things_test.txt")
  train, test = babi.find_task_files(str(tmp_path), 3)
  assert train.endswith("qa3_three-things_train.txt") and test.endswith("_test.txt")
  assert babi.task_name(train) == "three-things"
  with pytest.raises(FileNotFoundError, match="qa4_"):
    babi.find_task_files(str(tmp_path), 4)
  with pytest.raises(FileNotFoundError, match="not a directory"):
    babi.find_task_files(str(tmp_path / "nowhere"), 3)
  with pytest.raises(ValueError, match=r"1\.\.20"):
    babi.find_task_files(str(tmp_path), 21)


def test_vocabulary():
  vocab = babi.Vocabulary(["b", "a", "b", "c"])
  assert vocab.words == [babi.NIL, "a", "b", "c"]
  assert vocab.encode(["c", "a"]) == [3, 1]
  assert vocab.decode([3, 0, 1, 0]) == ["c", "a"]
  assert "a" in vocab and "z" not in vocab and len(vocab) == 4
  with pytest.raises(KeyError, match="'z'"):
    vocab.id("z")


def test_encode_puts_the_latest_sentence_in_slot_zero(tmp_path):
  examples = babi.parse(write(tmp_path, STORY))
  vocab = babi.Vocabulary.from_examples(examples)
  arrays = babi.encode(examples, vocab, memory_size=4, sentence_size=6)
  assert arrays.story.shape == (3, 4, 6) and arrays.question.shape == (3, 6)
  np.testing.assert_array_equal(arrays.story_size, [2, 3, 1])
  assert vocab.decode(arrays.story[1, 0]) == ["daniel", "went", "back", "to", "the", "hallway"]
  assert vocab.decode(arrays.story[1, 2]) == ["mary", "moved", "to", "the", "bathroom"]
  assert not arrays.story[0, 2:].any()  # empty slots are all padding
  np.testing.assert_array_equal(arrays.memory_mask[0], [True, True, False, False])
  np.testing.assert_array_equal(arrays.supporting[:, 0], [1, 0, 0])  # slot of the fact
  assert vocab.words[arrays.answer[1]] == "hallway"
  with pytest.raises(ValueError, match="exceeds sentence_size=4"):
    babi.encode(examples, vocab, memory_size=4, sentence_size=4)


def test_batches_pad_the_last_batch_with_zero_weight(tmp_path):
  examples = babi.parse(write(tmp_path, STORY))
  vocab = babi.Vocabulary.from_examples(examples)
  arrays = babi.encode(examples, vocab, 3, 6)
  out = list(babi.batches(arrays, 2))
  assert [len(b) for b, _ in out] == [2, 2]
  np.testing.assert_array_equal(out[1][1], [1.0, 0.0])
  seen = np.concatenate([b.answer[w > 0] for b, w in babi.batches(arrays, 2, shuffle=True)])
  np.testing.assert_array_equal(np.sort(seen), np.sort(arrays.answer))


def test_sentence_table_reconstructs_the_stories(tmp_path):
  examples = babi.parse(write(tmp_path, STORY))
  vocab = babi.Vocabulary.from_examples(examples)
  a = babi.encode(examples[:2], vocab, 3, 6)
  b = babi.encode(examples[2:], vocab, 3, 6)
  sentences, (ia, ib) = babi.sentence_table(a, b)
  assert not sentences[0].any()
  assert len(sentences) == 5  # 4 distinct statements and the empty sentence
  np.testing.assert_array_equal(sentences[ia], a.story)
  np.testing.assert_array_equal(sentences[ib], b.story)


@needs_data
def test_load_task_one():
  data = babi.load(DATA_DIR, 1)
  assert (len(data.train), len(data.valid), len(data.test)) == (900, 100, 1000)
  assert data.names == {1: "single-supporting-fact"}
  assert len(data.vocab) == 20 and data.memory_size == 10 and data.sentence_size == 6
  first = data.train.take(np.array([0]))
  words = data.vocab.decode
  assert words(first.story[0, 0]) == ["john", "went", "to", "the", "hallway"]
  assert words(first.story[0, 1]) == ["mary", "moved", "to", "the", "bathroom"]
  assert words(first.question[0]) == ["where", "is", "mary"]
  assert data.vocab.words[first.answer[0]] == "bathroom"
  assert first.supporting[0, 0] == 1
  # The held-out questions are the end of the training file.
  last = babi.parse(babi.find_task_files(DATA_DIR, 1)[0], 1)[-1]
  assert words(data.valid.question[-1]) == last.question


@needs_data
def test_load_joint_and_memory_cap():
  data = babi.load(DATA_DIR, [3, 4])
  assert data.tasks == (3, 4) and data.memory_size == 50
  np.testing.assert_array_equal(np.unique(data.test.task), [3, 4])
  assert data.train.story_size.max() == 50
  assert babi.load(DATA_DIR, 3, memory_size=20).memory_size == 20
