"""Bad input raises ValueError/TypeError naming the argument, the expected and the actual value."""

import re

import jax.numpy as jnp
import numpy as np
import pytest

from memjax import access
from memjax import addressing
from memjax import allocation
from memjax import linkage
from memjax import store

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
  for _, call, error, _ in CASES:
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
  from flax import nnx

  from memjax.nn import DNCCell
  from memjax.nn import MemoryTransformer
  from memjax.nn import NTMCell
  from memjax.nn import SAMCell
  for cell in (NTMCell(3, 2, memory_size=8, word_size=4, rngs=nnx.Rngs(0)),
               DNCCell(3, 2, memory_size=8, word_size=4, rngs=nnx.Rngs(0)),
               SAMCell(3, 2, memory_size=8, word_size=4, rngs=nnx.Rngs(0))):
    carry = cell.initialize_carry((2, 3))
    with pytest.raises(ValueError, match=re.escape("in_features=3 on the last axis; got shape "
                                                   "(2, 5)")):
      cell(carry, jnp.ones((2, 5)))
    with pytest.raises(ValueError, match=re.escape("inputs have batch shape (4,)")):
      cell(carry, jnp.ones((4, 3)))
  model = MemoryTransformer(11, 8, 2, 2, window=4, segment_length=4, top_k=2, rngs=nnx.Rngs(0))
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

  from memjax import xla

  if jax.default_backend() == "cpu":
    assert xla.cpu_options(xla.IN_PLACE_MEMORY) == xla.IN_PLACE_MEMORY
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert xla.cpu_options(xla.IN_PLACE_MEMORY) is None
  step = jax.jit(lambda m: m + 1, donate_argnums=0,
                 compiler_options=xla.cpu_options(xla.IN_PLACE_MEMORY))
  assert float(step(jax.numpy.zeros(()))) == 1.0
