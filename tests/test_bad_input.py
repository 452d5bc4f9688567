"""Bad input raises ValueError/TypeError naming the argument, the expected and the actual value."""

import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memjax import access
from memjax import addressing
from memjax import allocation
from memjax import conversation
from memjax import ivf
from memjax import linkage
from memjax import retrieval
from memjax import store
from memjax import xla
from memjax.nn import controllers
from memjax.nn import dnc
from memjax.nn import lstm
from memjax.nn import memn2n
from memjax.nn import ntm
from memjax.nn import product_keys
from memjax.nn import rag_reader
from memjax.nn import sam
from memjax.nn import sequence
from memjax.nn import transformer

M = jnp.ones((4, 3))
W4 = jnp.full((4,), 0.25)


def _kv():
  return store.insert(store.init(4, 3, 2), jnp.ones((2, 3)), jnp.ones((2, 2)))


CASES = [
    # (name, call, error type, words the message must contain)
    ("memory rank", lambda: addressing.cosine_similarity(jnp.ones((2, 4, 3)), jnp.ones(3)),
     ValueError, ["memory", "rank 2", "rank 3", "(2, 4, 3)"]),
    ("key width", lambda: addressing.content_weights(M, jnp.ones(5), 1.0),
     ValueError, ["key", "size 3", "(5,)"]),
    ("integer memory", lambda: addressing.cosine_similarity(jnp.ones((4, 3), jnp.int32),
                                                            jnp.ones(3)),
     TypeError, ["memory", "floating", "int32"]),
    ("strength not scalar", lambda: addressing.content_weights(M, jnp.ones(3), jnp.ones(2)),
     ValueError, ["strength", "scalar", "(2,)"]),
    ("even shift kernel", lambda: addressing.shift(W4, jnp.ones(4) / 4),
     ValueError, ["shift_w", "odd", "S=4"]),
    ("interpolate slot mismatch", lambda: addressing.interpolate(W4, jnp.ones(5) / 5, 0.5),
     ValueError, ["prev_w", "size 4", "(5,)"]),
    ("read weights slots", lambda: access.read(M, jnp.ones(3) / 3),
     ValueError, ["weights", "size 4", "(3,)"]),
    ("write erase width", lambda: access.write(M, W4, jnp.ones(2), jnp.ones(3)),
     ValueError, ["erase", "size 3", "(2,)"]),
    ("write heads mismatch", lambda: access.write(M, jnp.ones((2, 4)), jnp.ones((3, 3)),
                                                  jnp.ones((2, 3))),
     ValueError, ["erase", "size 2", "(3, 3)"]),
    ("usage read-head mismatch", lambda: allocation.update_usage(
        W4, W4, jnp.ones(2), jnp.ones((3, 4))),
     ValueError, ["read_weights", "size 2", "(3, 4)"]),
    ("allocation usage rank", lambda: allocation.allocation_weights(jnp.ones((2, 4))),
     ValueError, ["usage", "rank 1", "rank 2"]),
    ("link not square", lambda: linkage.update_link(jnp.ones((4, 3)), W4, W4),
     ValueError, ["link", "size 4", "(4, 3)"]),
    ("read modes size", lambda: linkage.read_weights(jnp.ones(2), W4, W4, W4),
     ValueError, ["modes", "size 3", "(2,)"]),
    ("store k > N", lambda: store.lookup(_kv(), jnp.ones((1, 3)), 5),
     ValueError, ["k", "N=4", "k=5"]),
    ("store k < 1", lambda: store.lookup(_kv(), jnp.ones((1, 3)), 0),
     ValueError, ["k", ">= 1", "0"]),
    ("store query width", lambda: store.lookup(_kv(), jnp.ones((1, 2)), 1),
     ValueError, ["queries", "size 3", "(1, 2)"]),
    ("store insert value width", lambda: store.insert(_kv(), jnp.ones((1, 3)), jnp.ones((1, 5))),
     ValueError, ["values", "size 2", "(1, 5)"]),
    ("store insert batch mismatch", lambda: store.insert(_kv(), jnp.ones((2, 3)),
                                                         jnp.ones((3, 2))),
     ValueError, ["values", "size 2", "(3, 2)"]),
    ("store float ids", lambda: store.delete(_kv(), jnp.ones(2)),
     TypeError, ["ids", "integer", "float32"]),
    ("store mask dtype", lambda: store.insert(_kv(), jnp.ones((2, 3)), jnp.ones((2, 2)),
                                              mask=jnp.ones(2)),
     TypeError, ["mask", "bool", "float32"]),
    ("store policy", lambda: store.init(4, 3, 2, policy="random"),
     ValueError, ["policy", "fifo", "'random'"]),
    ("store zero slots", lambda: store.init(0, 3, 2),
     ValueError, ["num_slots", ">= 1", "0"]),
    ("store metric", lambda: store.lookup(_kv(), jnp.ones((1, 3)), 1, metric="l2"),
     ValueError, ["metric", "cosine", "'l2'"]),
    ("store not a memory", lambda: store.lookup({"keys": M}, jnp.ones((1, 3)), 1),
     TypeError, ["memory", "KVMemory", "dict"]),
    ("store update nothing", lambda: store.update(_kv(), jnp.array([0])),
     ValueError, ["keys or values"]),
    ("not an array", lambda: access.read(M, "weights"),
     TypeError, ["weights"]),
]


def _cell(kind, **options):
  base = {"ntm": dict(memory_size=8, word_size=4, controller_size=5),
          "dnc": dict(memory_size=8, word_size=4, controller_size=5),
          "sam": dict(memory_size=8, word_size=4, controller_size=5, k=2),
          "lstm": dict(hidden_size=5)}[kind]
  make = {"ntm": ntm.NTMCell, "dnc": dnc.DNCCell, "sam": sam.SAMCell, "lstm": lstm.LSTMCell}[kind]
  args = {"in_features": 3, "out_features": 2, **base, **options}
  return make(args.pop("in_features"), args.pop("out_features"), **args, rngs=nnx.Rngs(0))


def _controller(kind, in_features=3, size=4, **options):
  make = {"lstm": controllers.LSTMController, "ff": controllers.FeedForwardController}[kind]
  return make(in_features, size, **options, rngs=nnx.Rngs(0))


def _lstm_step_with_too_few_states():
  cell = _cell("lstm", num_layers=2)
  carry = cell.initialize_carry((2, 3))
  return cell(carry[:1], jnp.ones((2, 3)))  # used to skip the second layer silently


def _random_memory_carry(rngs):
  return _cell("ntm", memory_init="random").initialize_carry((2, 3), rngs)


def _run_cell(inputs=None, **options):
  inputs = jnp.ones((2, 4, 3)) if inputs is None else inputs
  return sequence.run_cell(_cell("ntm"), inputs, **options)


def _memn2n_answer(slots=3, **options):
  model = memn2n.MemN2N(6, 4, hops=1, memory_size=3, rngs=nnx.Rngs(0))
  return model.answer(jnp.ones((2, slots, model.memory_tables, 4)), jnp.ones((2, 4)),
                      jnp.ones((2, slots), bool), **options)


def _encoder(**options):
  return memn2n.SentenceEncoder(6, 3, **{"memory_size": 2, **options}, rngs=nnx.Rngs(0))


def _pkm(**options):
  return product_keys.ProductKeyMemory(3, 4, num_sub_keys=4, query_size=4, num_heads=1, k=2,
                                       **options, rngs=nnx.Rngs(0))


def _reader(**options):
  return rag_reader.KVMemoryReader(10, 4, **options, rngs=nnx.Rngs(0))


_Q = jnp.ones((2, 3), jnp.int32)
_K = jnp.ones((2, 4, 5), jnp.int32)
_V = jnp.ones((2, 4, 2), jnp.int32)
_MASK = jnp.ones((2, 4), bool)


def _documents(**options):
  return retrieval.DocumentMemory(retrieval.HashedBagOfWords(16), 4, **options)


def _chat(**options):
  return conversation.ConversationMemory(**{"context_turns": 1, "k": 1, **options})


_POINTS = jnp.eye(4)


# Constructor sizes, rates and call arguments of the modules, retrieval, conversation
# and ivf, each found by a probe where it used to pass silently (a bool size, a zero
# clip, a NaN threshold, an out-of-vocabulary token embedded as NaN) or to fail deep
# inside jax/flax/NumPy (ZeroDivisionError, "Shapes must be 1D sequences", "range() arg
# 3 must not be zero", AttributeError).
ARGUMENT_CASES = [
    # (name, call, error type, message fragment matched literally)
    ("ntm in_features bool", lambda: _cell("ntm", in_features=True),
     ValueError, "in_features must be an integer >= 1; got True"),
    ("ntm out_features zero", lambda: _cell("ntm", out_features=0),
     ValueError, "out_features must be an integer >= 1; got 0"),
    ("dnc out_features float", lambda: _cell("dnc", out_features=2.5),
     ValueError, "out_features must be an integer >= 1; got 2.5"),
    ("dnc in_features negative", lambda: _cell("dnc", in_features=-1),
     ValueError, "in_features must be an integer >= 1; got -1"),
    ("lstm in_features negative", lambda: _cell("lstm", in_features=-1),
     ValueError, "in_features must be an integer >= 1; got -1"),
    ("lstm out_features zero", lambda: _cell("lstm", out_features=0),
     ValueError, "out_features must be an integer >= 1; got 0"),
    ("ntm clip zero", lambda: _cell("ntm", clip_value=0),
     ValueError, "clip_value must be a finite number > 0; got 0"),
    ("dnc clip negative", lambda: _cell("dnc", clip_value=-1.0),
     ValueError, "clip_value must be a finite number > 0; got -1.0"),
    ("sam clip bool", lambda: _cell("sam", clip_value=True),
     ValueError, "clip_value must be a finite number > 0; got True"),
    ("lstm clip nan", lambda: _cell("lstm", clip_value=float("nan")),
     ValueError, "clip_value must be a finite number > 0; got nan"),
    ("lstm controller size zero", lambda: _controller("lstm", size=0),
     ValueError, "size must be an integer >= 1; got 0"),
    ("feedforward controller in_features bool", lambda: _controller("ff", in_features=True),
     ValueError, "in_features must be an integer >= 1; got True"),
    ("lstm controller forget_bias", lambda: _controller("lstm", forget_bias="1"),
     ValueError, "forget_bias must be a finite number; got '1'"),
    ("lstm cell input width", lambda: _cell("lstm")(_cell("lstm").initialize_carry((2, 3)),
                                                    jnp.ones((2, 5))),
     ValueError, "inputs must have in_features=3 on the last axis; got shape (2, 5)"),
    ("lstm cell carry per layer", _lstm_step_with_too_few_states,
     ValueError, "carry must hold one LSTMState per layer (2, from initialize_carry); got 1 "
                 "states"),
    ("random memory rngs type", lambda: _random_memory_carry(5),
     TypeError, "rngs must be an nnx.Rngs, an nnx.RngStream or a PRNG key array; got int"),
    ("run_cell unroll zero", lambda: _run_cell(unroll=0),
     ValueError, "unroll must be an integer >= 1; got 0"),
    ("run_cell unroll float", lambda: _run_cell(unroll=2.5),
     ValueError, "unroll must be an integer >= 1; got 2.5"),
    ("run_cell steps past T", lambda: _run_cell(hoist=True, steps=9),
     ValueError, "steps must be an integer in [0, 4] (T, the time steps of inputs); got 9"),
    ("run_cell steps float array", lambda: _run_cell(hoist=True, steps=jnp.asarray(2.5)),
     TypeError, "steps must have an integer dtype; got float32"),
    ("run_cell inputs not an array", lambda: _run_cell(inputs="x"),
     TypeError, "inputs must be an array; got str"),
    ("sentence encoder init_std", lambda: _encoder(init_std=-1),
     ValueError, "init_std must be a finite number >= 0; got -1"),
    ("masked_softmax extra_zeros bool", lambda: memn2n.masked_softmax(
        jnp.ones(3), jnp.ones(3, bool), True),
     ValueError, "extra_zeros must be an integer >= 0; got True"),
    ("memn2n total_slots bool", lambda: _memn2n_answer(slots=1, total_slots=True),
     ValueError, "total_slots must be an integer in [1, memory_size=3] (the memory has 1 "
                 "slots); got True"),
    ("memn2n time shape", lambda: _memn2n_answer(time=jnp.arange(4)),
     ValueError, "time must have shape [B, M] = (2, 3) or [M]; got (4,)"),
    ("memn2n time dtype", lambda: _memn2n_answer(time=jnp.zeros((2, 3))),
     TypeError, "time must have an integer dtype; got float32"),
    ("random_time rate type", lambda: memn2n.random_time(None, 3, 5, "0.1"),
     ValueError, "rate must be in [0, 1); got '0.1'"),
    ("time_encoding slots negative", lambda: _encoder().time_encoding(None, -1),
     ValueError, "slots must be an integer >= 0; got -1"),
    ("time_encoding float times", lambda: _encoder().time_encoding(jnp.zeros(2)),
     TypeError, "time must have an integer dtype; got float32"),
    ("address linear type", lambda: memn2n.address(jnp.ones(3), jnp.ones((4, 3)),
                                                      jnp.ones(4, bool), "yes"),
     TypeError, "linear must be an array; got str"),
    ("address linear shape", lambda: memn2n.address(jnp.ones(3), jnp.ones((4, 3)),
                                                       jnp.ones(4, bool), jnp.ones(2, bool)),
     ValueError, "linear must be a scalar (shape ()); got shape (2,)"),
    ("pkm value_init_scale", lambda: _pkm(value_init_scale=-1.0),
     ValueError, "value_init_scale must be a finite number >= 0; got -1.0"),
    ("product_key_top_k scalar query", lambda: product_keys.product_key_top_k(
        jnp.ones(()), jnp.ones((2, 3, 2)), 1),
     ValueError, "query must have rank >= 1 [..., Dq]; got shape ()"),
    ("rag reader init_scale", lambda: _reader(init_scale=True),
     ValueError, "init_scale must be a finite number >= 0; got True"),
    ("rag reader float keys", lambda: _reader()(_Q, _K.astype(jnp.float32), _V, _MASK),
     TypeError, "keys must have an integer dtype; got float32"),
    ("rag reader token past vocabulary", lambda: _reader()(_Q * 11, _K, _V, _MASK),
     ValueError, "question must lie in [0, vocab_size=10); got values from 11 to 11"),
    ("rag reader negative value token", lambda: _reader()(_Q, _K, -_V, _MASK),
     ValueError, "values must lie in [0, vocab_size=10); got values from -1 to -1"),
    ("rag reader attention keys rank", lambda: _reader().attention(_Q, _K[0], _V, _MASK),
     ValueError, "keys must have rank 3 [B, K, Lk]; got rank 2 with shape (4, 5)"),
    ("features ngrams float", lambda: retrieval.features(["a", "b"], 2.5),
     ValueError, "ngrams must be an integer >= 1; got 2.5"),
    ("hashing seed negative", lambda: retrieval.HashedBagOfWords(16, seed=-1),
     ValueError, "seed must be an integer in [0, 18446744073709551615] (the key of a 64-bit "
                 "hash); got -1"),
    ("hashing seed bool", lambda: retrieval.HashedBagOfWords(16, seed=True),
     ValueError, "seed must be an integer in [0, 18446744073709551615] (the key of a 64-bit "
                 "hash); got True"),
    ("tfidf unseen_idf", lambda: retrieval.TfidfEncoder(16, unseen_idf="2"),
     ValueError, "unseen_idf must be a finite number >= 0; got '2'"),
    ("vocabulary length negative", lambda: retrieval.Vocabulary(["a"]).encode(["a"], -1),
     ValueError, "length must be an integer >= 0; got -1"),
    ("token payload key_len float", lambda: retrieval.TokenPayload(
        retrieval.Vocabulary(["a"]), 2.5, 2),
     ValueError, "key_len must be an integer >= 0; got 2.5"),
    ("token payload empty", lambda: retrieval.TokenPayload(retrieval.Vocabulary(["a"]), 0, 0),
     ValueError, "key_len + value_len must be >= 1 (the payload width); got 0 + 0"),
    ("document memory batch_size zero", lambda: _documents(batch_size=0),
     ValueError, "batch_size must be an integer >= 1; got 0"),
    ("document memory batch_size negative", lambda: _documents(batch_size=-1),
     ValueError, "batch_size must be an integer >= 1; got -1"),
    ("retrieve threshold nan", lambda: _documents().retrieve(["a"], 1, threshold=float("nan")),
     ValueError, "threshold must be a number (not NaN) or None; got nan"),
    ("concatenate max_tokens float", lambda: retrieval.concatenate("q", ["a b"],
                                                                      max_tokens=10.5),
     ValueError, "max_tokens must be an integer >= 1; got 10.5"),
    ("conversation threshold", lambda: _chat(threshold="0.1"),
     ValueError, "threshold must be a number (not NaN) or None; got '0.1'"),
    ("conversation k zero", lambda: _chat().relevant("lisbon", 0),
     ValueError, "k must be an integer >= 1; got 0"),
    ("conversation k negative", lambda: _chat().context("lisbon", -1),
     ValueError, "k must be an integer >= 1; got -1"),
    ("conversation message", lambda: _chat().relevant(1),
     TypeError, "message must be a str; got int"),
    ("conversation speaker", lambda: _chat().context("lisbon", speaker=None),
     TypeError, "speaker must be a str; got NoneType"),
    ("ivf search not an index", lambda: ivf.search(store.init(4, 3, 2), jnp.ones((1, 3)), 1),
     TypeError, "index must be a memjax.ivf.IVFMemory (from ivf.init); got KVMemory"),
    ("ivf insert not an index", lambda: ivf.insert({}, jnp.ones((1, 3)), jnp.ones((1, 2))),
     TypeError, "index must be a memjax.ivf.IVFMemory (from ivf.init); got dict"),
    ("kmeans iterations negative", lambda: ivf.kmeans(_POINTS, 2, iterations=-1),
     ValueError, "iterations must be an integer >= 0; got -1"),
    ("kmeans seed float", lambda: ivf.kmeans(_POINTS, 2, seed=2.5),
     ValueError, "seed must be an integer; got 2.5"),
]


@pytest.mark.parametrize("name, call, error, fragment", ARGUMENT_CASES,
                         ids=[c[0] for c in ARGUMENT_CASES])
def test_bad_argument(name, call, error, fragment):
  del name
  with pytest.raises(error, match=re.escape(fragment)):
    call()


def test_valid_arguments_pass_the_new_checks():
  """NumPy integers, None and the documented shapes still go through."""

  cell = _cell("ntm", in_features=np.int64(3), out_features=np.int32(2), clip_value=None)
  assert (cell.in_features, cell.out_features, cell.clip_value) == (3, 2, None)
  assert _cell("lstm", clip_value=np.float32(5.0)).clip_value == 5.0

  class Encoder:
    dim = np.int64(4)

    def __call__(self, texts):
      return np.ones((len(texts), 4), np.float32)

  assert retrieval.DocumentMemory(Encoder(), 4).memory.key_dim == 4
  assert retrieval.TokenPayload(retrieval.Vocabulary(["a"]), 0, 2).width == 2
  assert retrieval.Vocabulary(["a"]).encode(["a"], 0).shape == (1, 0)
  retrieval.check_threshold(-np.inf)  # keeps every result
  for time in (jnp.arange(3), jnp.zeros((2, 3), jnp.int32), jnp.zeros((1, 3), jnp.int32)):
    assert memn2n._time_indices(time, 2, 3).shape == (2, 3)


@pytest.mark.parametrize("name, call, error, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, call, error, words):
  del name
  with pytest.raises(error) as info:
    call()
  message = str(info.value)
  for word in words:
    assert word in message, f"{word!r} missing from: {message}"


def test_at_least_ten_cases():
  assert len(CASES) >= 10


def test_messages_are_one_line():
  for _, call, error, _ in CASES + ARGUMENT_CASES:
    with pytest.raises(error) as info:
      call()
    assert "\n" not in str(info.value)
    assert re.search(r"\w", str(info.value))


def test_numpy_inputs_are_accepted():
  # The checks convert array-likes instead of rejecting them.
  out = addressing.content_weights(np.ones((4, 3), np.float32), [1.0, 0.0, 0.0], 2.0)
  assert out.shape == (4,)


def test_unknown_xla_option_falls_back_to_none(monkeypatch):
  """An XLA option this jaxlib rejects is dropped (with a warning), not a failed compile."""
  import jax

  from memjax.training import algorithmic

  if jax.default_backend() != "cpu":
    pytest.skip("the options apply on the CPU only")
  assert algorithmic.compiler_options() == algorithmic.CPU_COMPILER_OPTIONS
  monkeypatch.setattr(algorithmic, "CPU_COMPILER_OPTIONS",
                      {"xla_cpu_experimental_ynn_fusion_type": "NO_SUCH_FUSION_TYPE"})
  assert algorithmic.compiler_options() is None


def test_modules_name_bad_inputs_tokens_and_states():
  for cell in (ntm.NTMCell(3, 2, memory_size=8, word_size=4, rngs=nnx.Rngs(0)),
               dnc.DNCCell(3, 2, memory_size=8, word_size=4, rngs=nnx.Rngs(0)),
               sam.SAMCell(3, 2, memory_size=8, word_size=4, rngs=nnx.Rngs(0))):
    carry = cell.initialize_carry((2, 3))
    with pytest.raises(ValueError, match=re.escape("in_features=3 on the last axis; got shape "
                                                   "(2, 5)")):
      cell(carry, jnp.ones((2, 5)))
    with pytest.raises(ValueError, match=re.escape("inputs have batch shape (4,)")):
      cell(carry, jnp.ones((4, 3)))
  model = transformer.MemoryTransformer(11, 8, 2, 2, window=4, segment_length=4, top_k=2,
                                        rngs=nnx.Rngs(0))
  state = model.init_state(1, 8)
  tokens = jnp.zeros((1, 4), jnp.int32)
  for bad, low, high in ((11, 0, 11), (-1, -1, 0)):
    with pytest.raises(ValueError, match=re.escape(f"[0, vocab_size=11); got values from {low} "
                                                   f"to {high}")):
      model(tokens.at[0, 0].set(bad), state)
  with pytest.raises(ValueError, match=re.escape("one BlockState per block (2, from init_state); "
                                                 "got 1 states")):
    model(tokens, state[:1])
  with pytest.raises(ValueError, match="got 1 states"):
    model.segment(tokens, state[:1])


def test_in_place_memory_option_is_dropped_off_the_cpu(monkeypatch):
  """On a GPU or TPU `cpu_options` gives None, so jit compiles with that backend's defaults."""
  import jax


  if jax.default_backend() == "cpu":
    assert xla.cpu_options(xla.IN_PLACE_MEMORY) == xla.IN_PLACE_MEMORY
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert xla.cpu_options(xla.IN_PLACE_MEMORY) is None
  step = jax.jit(lambda m: m + 1, donate_argnums=0,
                 compiler_options=xla.cpu_options(xla.IN_PLACE_MEMORY))
  assert float(step(jax.numpy.zeros(()))) == 1.0
