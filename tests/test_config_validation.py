"""Error branches of the trainers' `validate_config` and of the bAbI reader not tested elsewhere.

Each case loads a shipped config (experiments/configs), checks that it validates, changes
a field or two and expects the ValueError of one branch. The launcher's
`trainer_module` picks the validator from `config.trainer`. Nothing is compiled. The
bAbI reader cases use small files written to tmp_path.
"""

import functools
import importlib
import os

import pytest

from experiments import train
from memjax.tasks import babi


def _shipped(spec, tmp_path):
  """The config "module" or "module:variant" of experiments/configs."""
  module, _, variant = spec.partition(":")
  config = importlib.import_module(f"experiments.configs.{module}").get_config(variant or None)
  if config.trainer == "babi":
    config.data_dir = str(tmp_path)  # any existing directory passes validate_config
  return config


def _validate(config):
  train.trainer_module(config).validate_config(config)


def _override(config, changes):
  for path, value in changes.items():
    *parents, name = path.split(".")
    node = functools.reduce(getattr, parents, config)
    try:
      node[name] = value
    except TypeError:  # a float for an int field: replace the typed field
      del node[name]
      node[name] = value


def case(spec, changes, match):
  return pytest.param(spec, changes, match, id=f"{spec}-{','.join(changes)}")


ALGORITHMIC = [
    case("ntm_copy:smoke", {"task.width": 3}, "bad option for task 'copy'"),
    case("ntm_copy:smoke", {"model.hidden_size": 16}, r"unknown option\(s\) for model 'ntm'"),
    case("dnc_copy:smoke", {"model.shift_range": 1}, r"unknown option\(s\) for model 'dnc'"),
    case("ntm_copy:smoke", {"model.memory_init": "zeros"}, "memory_init must be one of"),
    case("lstm_copy:smoke", {"model.word_size": 8}, r"unknown option\(s\) for model 'lstm'"),
    case("lstm_copy:smoke", {"model.num_layers": 0}, "model.num_layers must be an integer >= 1"),
    case("ntm_copy:smoke", {"model.clip_value": 0.0}, "model.clip_value must be > 0 or None"),
    case("ntm_copy:smoke", {"keep_checkpoints": 0}, "keep_checkpoints must be an integer >= 1"),
    case("ntm_copy:smoke", {"num_steps": 60.0}, "num_steps must be an integer >= 1"),
    case("ntm_copy:smoke", {"cpu_devices": 3}, "cpu_devices must be an integer >= 1 dividing"),
    case("ntm_copy:smoke", {"steps_after_convergence": -5},
         "steps_after_convergence must be an integer >= 0"),
    case("ntm_copy:smoke", {"lr_after_convergence": 0.0},
         "lr_after_convergence must be a finite number > 0"),
    case("ntm_copy:smoke", {"num_steps": 62}, "num_steps=62 must be a multiple of steps_per_call"),
    case("ntm_copy:smoke", {"checkpoint_every": 12}, "checkpoint_every=12 must be a multiple"),
    case("ntm_copy:smoke", {"steps_after_convergence": 7},
         "steps_after_convergence=7 must be a multiple"),
    case("ntm_copy:smoke", {"optimizer.lr_decay_every": True},
         "optimizer.lr_decay_every must be an integer >= 0"),
    case("ntm_copy:smoke", {"optimizer.grad_clip_norm": 0.0},
         "optimizer.grad_clip_norm must be > 0 or None"),
    case("ntm_copy:smoke", {"stop_at_bit_errors": -0.5}, "stop_at_bit_errors must be >= 0"),
    case("ntm_copy:smoke", {"eval_lengths": (4, 0)}, "eval_lengths must hold integers >= 1"),
    case("ntm_associative_recall:smoke", {"curriculum.start": 2},
         "needs a task with a max_length; 'associative_recall' has none"),
    case("ntm_copy", {"curriculum.start": 21},
         r"curriculum.start must be 0 \(off\) or an integer in \[1, 20\]"),
    case("ntm_copy", {"curriculum.start": 4, "curriculum.increment": 0},
         "curriculum.increment must be an integer >= 1"),
    case("ntm_copy", {"curriculum.start": 4, "curriculum.window": 1001},
         r"curriculum.window must be an integer in \[1, error_window=1000\]"),
    case("ntm_copy", {"curriculum.start": 4, "curriculum.threshold": 0.0},
         "curriculum.threshold must be > 0"),
    case("ntm_copy:smoke", {"spike_guard.every": True}, "spike_guard.every must be an integer"),
    case("ntm_priority_sort:smoke", {"spike_guard.max_rollbacks": 2.0},
         "spike_guard.max_rollbacks must be an integer >= 0"),
    case("ntm_copy:smoke", {"seed": 0.5}, "seed must be an integer"),
    # Booleans are not integers (True == 1 passed isinstance(int) and comparisons).
    case("lstm_copy:smoke", {"model.hidden_size": True},
         "model.hidden_size must be an integer >= 1"),
    case("ntm_copy:smoke", {"cpu_devices": True}, "cpu_devices must be an integer >= 1 dividing"),
    case("ntm_copy:smoke", {"scan_groups": True}, "scan_groups must be an integer >= 1 such"),
    case("ntm_copy:smoke", {"steps_after_convergence": True},
         "steps_after_convergence must be an integer >= 0"),
    case("ntm_copy:smoke", {"lr_after_convergence": None},
         "lr_after_convergence must be a finite number > 0; got None"),
    case("ntm_copy:smoke", {"eval_lengths": (4, True)}, "eval_lengths must hold integers >= 1"),
    case("ntm_copy", {"curriculum.start": True},
         r"curriculum.start must be an integer \(0: off\); got True"),
    case("ntm_associative_recall:smoke", {"curriculum.start": False},
         r"curriculum.start must be an integer \(0: off\); got False"),
    case("ntm_copy", {"curriculum.start": 4, "curriculum.increment": True},
         "curriculum.increment must be an integer >= 1"),
    case("ntm_copy", {"curriculum.start": 4, "curriculum.window": True},
         r"curriculum.window must be an integer in \[1, error_window=1000\]"),
    case("ntm_copy:smoke", {"seed": True}, "seed must be an integer"),
]

BABI = [
    case("memn2n_babi", {"restart_batching": "pmap"}, "restart_batching must be 'vmap' or 'map'"),
    case("memn2n_babi", {"memory_buckets": (4, 0)}, "memory_buckets must hold integers >= 1"),
    case("memn2n_babi", {"embed": "lazy"}, "config.embed must be 'auto', 'table' or 'batch'"),
    case("memn2n_babi", {"optimizer": "rmsprop"}, "config.optimizer must be one of"),
    case("memn2n_babi", {"tying": "none"}, "config.tying must be one of"),
    case("memn2n_babi", {"embed_dim": 0}, "config.embed_dim must be an integer >= 1"),
    case("memn2n_babi", {"eval_batch_size": 0}, "config.eval_batch_size must be an integer >= 1"),
    case("memn2n_babi", {"linear_start_epochs": -1},
         "config.linear_start_epochs must be an integer >= 0"),
    case("memn2n_babi", {"validation_fraction": 0.0},
         r"config.validation_fraction must be in \(0, 1\)"),
    case("memn2n_babi", {"learning_rate": 0.0}, "config.learning_rate must be a finite number > 0"),
    case("memn2n_babi", {"init_std": -0.1}, "config.init_std must be a finite number > 0"),
    case("memn2n_babi", {"data_dir": ""}, "config.data_dir '' is not a directory"),
    case("memn2n_babi", {"memory_buckets": (True,)}, "memory_buckets must hold integers >= 1"),
    case("memn2n_babi", {"hops": True}, "config.hops must be an integer >= 1"),
    case("memn2n_babi", {"workers": 0},
         r"config.workers must be an integer >= 1 \(1: train in this process\); got 0"),
    case("memn2n_babi", {"workers": True}, "config.workers must be an integer >= 1"),
    case("memn2n_babi", {"weight_decay": -0.1}, "config.weight_decay must be a finite number >= 0"),
]

MT = "memory_transformer_retrieval:smoke"
MEMORY_TRANSFORMER = [
    case(MT, {"train.phases": ()}, "train.phases must list at least one"),
    case(MT, {"train.phases": ((3, 16),)}, r"each train phase must be \(steps, length, batch\)"),
    case(MT, {"train.phases": ((0, 16, 4),)},
         r"train phase \(0, 16, 4\): steps must be an integer >= 1; got 0"),
    case(MT, {"train.phases": ((3, 16, True),)},
         r"train phase \(3, 16, True\): batch must be an integer >= 1; got True"),
    case(MT, {"train.phases": ((3, 8, 4),)}, r"length must be at least 4 \* train.max_pairs=16"),
    case(MT, {"train.memory_size": 2},
         r"train.memory_size must be an integer >= 4 \(at least model.top_k\); got 2"),
    case(MT, {"vocab.num_keys": 3}, "train.max_pairs=4 exceeds vocab.num_keys=3"),
    case(MT, {"vocab.num_filler": 0}, "vocab.num_filler must be an integer >= 1"),
    # Zero heads or a zero segment length used to raise ZeroDivisionError.
    case(MT, {"model.num_heads": 0}, "model.num_heads must be an integer >= 1; got 0"),
    case(MT, {"train.segment_length": 0}, "train.segment_length must be an integer >= 1"),
    case(MT, {"model.features": True}, "model.features must be an integer >= 1; got True"),
    case(MT, {"model.window": 16.0}, "model.window must be an integer >= 1; got 16.0"),
    case(MT, {"model.num_memory_slots": -1}, "model.num_memory_slots must be an integer >= 0"),
    case(MT, {"model.mlp_features": -8}, "model.mlp_features must be an integer >= 1"),
    case(MT, {"model.qk_scale_init": -1.0}, "model.qk_scale_init must be a finite number > 0"),
    case(MT, {"model.memory_layers": (1,)},
         r"each of model.memory_layers must be an integer in \[0, 0\] \(a layer of the 1\)"),
    case(MT, {"train.min_pairs": 5}, "train.max_pairs must be an integer >= 5"),
    case(MT, {"train.learning_rate": -1e-3}, "train.learning_rate must be a finite number > 0"),
    case(MT, {"train.scalar_lr_multiplier": 0},
         "train.scalar_lr_multiplier must be a finite number > 0"),
    case(MT, {"train.final_lr_fraction": 1.5},
         "train.final_lr_fraction must be a finite number >= 0 and <= 1; got 1.5"),
    case(MT, {"train.grad_clip": float("nan")}, "train.grad_clip must be a finite number > 0"),
    case(MT, {"train.weight_decay": -0.1}, "train.weight_decay must be a finite number >= 0"),
    case(MT, {"train.warmup_steps": -1}, "train.warmup_steps must be an integer >= 0"),
    case(MT, {"train.log_every": 0}, "train.log_every must be an integer >= 1"),
    case(MT, {"eval.segment_length": 0}, "eval.segment_length must be an integer >= 1"),
    case(MT, {"eval.suites.memory.pairs_per_distance": 100},
         "eval suite 'memory': 2 distances x 100 pairs exceed vocab.num_keys=128"),
    case(MT, {"eval.suites.memory.batch": 0}, "eval suite 'memory': batch must be an integer"),
    case(MT, {"eval.suites.memory.distances": ()},
         "eval suite 'memory': distances must name at least one distance"),
    case(MT, {"eval.suites.memory.distances": (8, -40)},
         "eval suite 'memory': each distance must be an integer >= 1; got -40"),
    case(MT, {"eval.suites.memory.memory_size": 2},
         "eval suite 'memory': memory_size must be an integer >= 4"),
    # The search method was checked only when the suite ran, after training.
    case(MT, {"eval.suites.memory.search": "faiss"},
         "eval suite 'memory': search must be 'exact' or 'ivf'; got 'faiss'"),
    case("memory_transformer_retrieval", {"eval.suites.local_only.search": "ivf"},
         "eval suite 'local_only': search='ivf' needs use_memory=True"),
    case("memory_transformer_retrieval", {"eval.suites.memory_64k_ivf.probes": 2000},
         "eval suite 'memory_64k_ivf': probes=2000 exceeds num_lists=1024"),
    case("memory_transformer_retrieval", {"eval.suites.memory_64k_ivf.list_size": 1},
         "eval suite 'memory_64k_ivf': probes x list_size must be at least model.top_k=8"),
    case("memory_transformer_retrieval", {"eval.suites.memory_16k_ivf.num_lists": 0},
         "eval suite 'memory_16k_ivf': num_lists must be an integer >= 1"),
]

PRODUCT_KEYS = [
    case("product_keys:smoke", {"model": "moe"}, "model must be one of"),
    case("product_keys:smoke", {"num_items": 0}, "num_items must be an integer >= 1"),
    case("product_keys:smoke", {"steps": 60.0}, "steps must be an integer >= 1"),
    case("product_keys:smoke", {"num_heads": True}, "num_heads must be an integer >= 1; got True"),
    case("product_keys:smoke", {"query_size": 15}, "query_size must be even"),
    case("product_keys:smoke", {"k": 17}, "k must be at most num_sub_keys=16"),
    case("product_keys:smoke", {"mesh_devices": 10**6}, "mesh_devices=1000000 but only"),
    case("product_keys:smoke", {"mesh_devices": -1}, "mesh_devices must be an integer >= 0"),
    case("product_keys:smoke", {"learning_rate": -3e-3},
         "learning_rate must be a finite number > 0"),
    case("product_keys:mlp", {"mlp_hidden": 0}, "mlp_hidden must be an integer >= 1; got 0"),
]

RAG = [
    case("rag_qa:smoke", {"facts.num_facts": 0}, "facts.num_facts must be an integer >= 1"),
    case("rag_qa:smoke", {"retrieval.k": True}, "retrieval.k must be an integer >= 1"),
    case("rag_qa:smoke", {"retrieval.k": 2001},
         "retrieval.k must be at most facts.num_facts=2000"),
    case("rag_qa:smoke", {"model.hops": 0}, "model.hops must be an integer >= 1"),
    case("rag_qa:smoke", {"train.batch_size": 0}, "train.batch_size must be an integer >= 1"),
    case("rag_qa:smoke", {"train.num_questions": 0},
         "train.num_questions must be an integer >= 1"),
    # A negative eval.num_questions used to loosen the sum check below.
    case("rag_qa:smoke", {"eval.num_questions": -500},
         "eval.num_questions must be an integer >= 1; got -500"),
    case("rag_qa:smoke", {"train.num_questions": 1_800},
         r"train.num_questions \+ eval.num_questions must be at most facts.num_facts=2000"),
    case("rag_qa:smoke", {"train.num_absent": -1}, "train.num_absent must be an integer >= 0"),
    case("rag_qa:smoke", {"train.learning_rate": -0.01},
         "train.learning_rate must be a finite number > 0"),
    case("rag_qa:smoke", {"closed_book_all_steps": -1},
         "closed_book_all_steps must be an integer >= 0"),
    case("rag_qa:smoke", {"train.drop_true": -0.1},
         "train.drop_true must be a finite number >= 0"),
    case("rag_qa:smoke", {"train.drop_true": 0.6, "train.drop_entity": 0.5},
         "train.drop_true and train.drop_entity must be >= 0 with a sum below 1"),
    case("rag_editing:smoke", {"editing.num_edits": 0},
         "editing.num_edits must be an integer >= 1"),
    case("rag_editing:smoke", {"editing.finetune_learning_rate": 0.0},
         "editing.finetune_learning_rate must be a finite number > 0"),
    case("rag_bounded:smoke", {"bounded.capacity": 0}, "bounded.capacity must be an integer >= 1"),
    case("rag_bounded:smoke", {"bounded.hot": -1}, "bounded.hot must be an integer >= 0"),
    case("rag_bounded:smoke", {"bounded.eval_every": 0},
         "bounded.eval_every must be an integer >= 1"),
    case("rag_bounded:smoke", {"bounded.policies": ("fifo", "random")},
         "bounded.policies must be fifo/lru/least_used; got 'random'"),
]

SHIPPED = [
    *(f"{name}{variant}" for name in ("ntm_copy", "ntm_repeat_copy", "ntm_associative_recall",
                                      "ntm_priority_sort", "dnc_copy", "dnc_repeat_copy",
                                      "lstm_copy")
      for variant in ("", ":smoke")),
    *(f"memn2n_babi{v}" for v in ("", ":table", ":joint", ":kv", ":smoke")),
    *(f"memory_transformer_retrieval{v}" for v in ("", ":small", ":smoke")),
    *(f"product_keys{v}" for v in ("", ":mlp", ":1m", ":smoke")),
    *(f"{name}{v}" for name in ("rag_qa", "rag_editing", "rag_bounded") for v in ("", ":smoke")),
]


@pytest.mark.parametrize("spec", SHIPPED)
def test_shipped_configs_validate(spec, tmp_path):
  _validate(_shipped(spec, tmp_path))


@pytest.mark.parametrize("field", ["steps_after_convergence", "lr_after_convergence",
                                   "cpu_devices", "scan_groups", "sort_by_length",
                                   "stop_at_bit_errors", "curriculum", "spike_guard"])
def test_an_absent_optional_algorithmic_field_takes_its_default(field, tmp_path):
  config = _shipped("ntm_copy:smoke", tmp_path)
  del config[field]
  _validate(config)


@pytest.mark.parametrize("spec, changes, match",
                         ALGORITHMIC + BABI + MEMORY_TRANSFORMER + PRODUCT_KEYS + RAG)
def test_a_bad_field_is_rejected(spec, changes, match, tmp_path):
  config = _shipped(spec, tmp_path)
  _validate(config)
  _override(config, changes)
  with pytest.raises(ValueError, match=match):
    _validate(config)


# ----------------------------------------------------------------------------- bAbI reader

STORY = "1 Mary moved to the hall.\n2 Where is Mary?\thall\t1\n"
TASK_1 = {"qa1_toy_train.txt": STORY, "qa1_toy_test.txt": STORY}


def _arrays(data_dir, sentence_size):
  examples = babi.parse(os.path.join(data_dir, "qa1_toy_train.txt"))
  return babi.encode(examples, babi.Vocabulary.from_examples(examples), 1, sentence_size)


@pytest.mark.parametrize("files, call, error, match", [
    pytest.param(TASK_1, lambda d: babi.parse(os.path.join(d, "qa1_toy_train.txt"),
                                              memory_size=0),
                 ValueError, "memory_size must be >= 1", id="parse-memory-size"),
    pytest.param({}, lambda d: babi.parse(os.path.join(d, "absent.txt")),
                 FileNotFoundError, "absent.txt", id="parse-missing-file"),
    pytest.param({"t.txt": "1 Mary moved.\n2 ?!\thall\t1\n"},
                 lambda d: babi.parse(os.path.join(d, "t.txt")),
                 babi.BabiFormatError, r"t\.txt:2: question has no words", id="parse-question"),
    pytest.param(TASK_1, lambda d: babi.find_task_files(d, "1"),
                 ValueError, r"task must be an integer in 1\.\.20; got '1'", id="find-str-task"),
    pytest.param({**TASK_1, "qa1_other_train.txt": STORY}, lambda d: babi.find_task_files(d, 1),
                 FileNotFoundError, r"2 files matching qa1_\*_train\.txt", id="find-two-files"),
    pytest.param({"qa1_toy_train.txt": STORY}, lambda d: babi.find_task_files(d, 1),
                 FileNotFoundError, r"no file matching qa1_\*_test\.txt", id="find-no-test"),
    pytest.param(TASK_1, lambda d: babi.find_task_files(d, True),
                 ValueError, r"task must be an integer in 1\.\.20; got True", id="find-bool-task"),
    pytest.param(TASK_1, lambda d: babi.load(d, True),
                 ValueError, r"task must be an integer in 1\.\.20; got True", id="load-bool-task"),
    pytest.param(TASK_1, lambda d: babi.load(d, [1.5]),
                 ValueError, r"task must be an integer in 1\.\.20; got 1\.5", id="load-float-task"),
    pytest.param(TASK_1, lambda d: babi.load(d, [1, 1]),
                 ValueError, r"tasks must not repeat a task; got \(1, 1\)", id="load-repeated"),
    pytest.param(TASK_1, lambda d: babi.load(d, 1, validation_fraction=0.9),
                 ValueError, r"no training questions left for tasks \(1,\) in .*: "
                 r"validation_fraction=0\.9 held out all 1 training questions for validation",
                 id="load-all-validation"),
    pytest.param(TASK_1, lambda d: babi.load(d, ()),
                 ValueError, "tasks must name at least one task", id="load-no-tasks"),
    pytest.param(TASK_1, lambda d: babi.load(d, 1, validation_fraction=1.0),
                 ValueError, r"validation_fraction must be in \[0, 1\)", id="load-fraction"),
    pytest.param({"qa1_toy_train.txt": "1 Mary moved.\n", "qa1_toy_test.txt": "1 John left.\n"},
                 lambda d: babi.load(d, 1),
                 ValueError, r"no questions found for tasks \(1,\)", id="load-no-questions"),
    pytest.param(TASK_1, lambda d: next(babi.batches(_arrays(d, 5), 0)),
                 ValueError, "batch_size must be >= 1", id="batches-size"),
    pytest.param({"qa1_toy_train.txt": "1 Mary moved.\n2 Where did Mary go then?\thall\t1\n"},
                 lambda d: _arrays(d, 3),
                 ValueError, "a question of 5 words exceeds sentence_size=3", id="encode-question"),
    pytest.param({}, lambda d: babi.sentence_table(),
                 ValueError, "needs at least one split", id="table-no-splits"),
    pytest.param(TASK_1, lambda d: babi.sentence_table(_arrays(d, 5), _arrays(d, 6)),
                 ValueError, "all splits must have sentence size 5; got 6", id="table-sizes"),
])
def test_babi_reader_errors(files, call, error, match, tmp_path):
  for name, text in files.items():
    (tmp_path / name).write_text(text)
  with pytest.raises(error, match=match):
    call(str(tmp_path))
