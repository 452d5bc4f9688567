"""Tests for memjax.nn.transformer: the memory-augmented block and the segment-scanned model.

The block is checked against a NumPy reference written from the equations
(pre-norm sliding-window attention with relative position bias and learned
slots, top-k memory attention, gate mix, MLP); gradients by what must and
must not receive them, and by finite differences; the 8-device sharded run
in a subprocess.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from memjax import store
from memjax import xla
from memjax.nn import transformer
from tests import hlo

B, S, D, H, W, M, N, K, C = 2, 4, 8, 2, 6, 2, 8, 3, 2
E = D // H


def make_block(use_memory=True, seed=0, **kw):
  kw = {"window": W, "top_k": K, "num_memory_slots": M, "key_conv": C, "mlp_features": 12,
        "gate_init": 0.3, **kw}
  block = transformer.MemoryAugmentedBlock(D, H, use_memory=use_memory, rngs=nnx.Rngs(seed),
                                           **kw)
  # Non-trivial values for parameters that start at zero or one.
  rng = np.random.default_rng(seed + 1)
  block.position_bias[...] = jnp.asarray(rng.normal(size=(H, W)), jnp.float32)
  if C > 1:
    block.key_conv_weights[...] = jnp.asarray(rng.normal(size=(C, D)), jnp.float32)
  block.log_scale[...] = jnp.asarray(np.log([3.0, 5.0]), jnp.float32)
  return block


def random_state(block, seed=0, items=5):
  """A state with a half-valid cache, key context and `items` memory entries per head."""
  rng = np.random.default_rng(seed)
  state = block.init_state(B, N)
  keys = transformer.l2_normalize(jnp.asarray(rng.normal(size=(B, H, W, E)), jnp.float32))
  values = jnp.asarray(rng.normal(size=(B, H, W, E)), jnp.float32)
  valid = jnp.asarray(np.arange(W)[None, :] >= np.array([[3], [1]]))
  context = jnp.asarray(rng.normal(size=(B, C - 1, D)), jnp.float32)
  mem_keys = transformer.l2_normalize(
      jnp.asarray(rng.normal(size=(B, H, items, E)), jnp.float32))
  mem_values = jnp.asarray(rng.normal(size=(B, H, items, E)), jnp.float32)
  memory = jax.vmap(jax.vmap(store.insert))(state.memory, mem_keys, mem_values)
  return transformer.BlockState(keys=keys, values=values, valid=valid, key_context=context,
                                memory=memory)


@nnx.jit(static_argnames="use_memory")
def apply(block, x, state, use_memory=True, reset=None):
  """The block, compiled (eager op-by-op dispatch is slow on a loaded CPU)."""
  return block(x, state, use_memory=use_memory, reset=reset)


# ---------------------------------------------------------------- NumPy reference


def _np(x):
  return np.asarray(x, np.float64)


def _layer_norm(x, scale, bias, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * scale + bias


def _normalize(x):
  return x / np.sqrt((x * x).sum(-1, keepdims=True) + 1e-6)


def _softmax(z):
  z = z - z.max()
  e = np.exp(z)
  return e / e.sum()


def _gelu(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def reference_block(block, x, state, use_memory=True):
  """Wu et al. 2022's block, written loop by loop from the equations."""
  p = lambda v: _np(v[...])
  x = _np(x)
  h = _layer_norm(x, p(block.attention_norm.scale), p(block.attention_norm.bias))
  q = h @ p(block.query.kernel)
  k_raw = h @ p(block.key.kernel)
  v = h @ p(block.value.kernel)
  ctx = np.concatenate([_np(state.key_context), k_raw], axis=1)
  wconv = p(block.key_conv_weights)
  k = np.stack([sum(wconv[j] * ctx[:, C - 1 + t - j] for j in range(C)) for t in range(S)], 1)
  split = lambda a: a.reshape(B, S, H, E)
  q, k, v = _normalize(split(q)), _normalize(split(k)), split(v)
  scale = np.exp(p(block.log_scale))
  bias = p(block.position_bias)
  slot_k, slot_v = _normalize(p(block.slot_keys)), p(block.slot_values)
  gate = 1 / (1 + np.exp(-p(block.gate))) if block.use_memory else None
  out = np.zeros((B, S, H, E))
  for b in range(B):
    for hh in range(H):
      for i in range(S):
        logits, vals = [], []
        for j in range(W):  # cache entry j is W - j + i tokens back
          dist = W - j + i
          if state.valid[b, j] and dist < W:
            logits.append(scale[hh] * q[b, i, hh] @ _np(state.keys[b, hh, j]) + bias[hh, dist])
            vals.append(_np(state.values[b, hh, j]))
        for j in range(i + 1):
          logits.append(scale[hh] * q[b, i, hh] @ k[b, j, hh] + bias[hh, i - j])
          vals.append(v[b, j, hh])
        for m in range(M):
          logits.append(scale[hh] * q[b, i, hh] @ slot_k[hh, m])
          vals.append(slot_v[hh, m])
        local = _softmax(np.array(logits)) @ np.array(vals)
        mem = state.memory
        valid = np.asarray(mem.valid[b, hh]) if mem is not None else np.zeros(0, bool)
        if use_memory and block.use_memory and valid.any():
          mk, mv = _np(mem.keys[b, hh]), _np(mem.values[b, hh])
          scores = np.where(valid, mk @ q[b, i, hh], -np.inf)
          top = np.argsort(-scores, kind="stable")[:K]
          top = top[np.isfinite(scores[top])]
          remote = _softmax(scale[hh] * scores[top]) @ mv[top]
          out[b, i, hh] = gate[hh] * remote + (1 - gate[hh]) * local
        else:
          out[b, i, hh] = local
  y = x + out.reshape(B, S, D) @ p(block.output.kernel)
  hm = _layer_norm(y, p(block.mlp_norm.scale), p(block.mlp_norm.bias))
  hidden = _gelu(hm @ p(block.mlp_in.kernel) + p(block.mlp_in.bias))
  return y + hidden @ p(block.mlp_out.kernel) + p(block.mlp_out.bias)


@pytest.fixture(scope="module")
def block():
  return make_block()


@pytest.fixture(scope="module")
def x():
  return jnp.asarray(np.random.default_rng(7).normal(size=(B, S, D)), jnp.float32)


def test_relative_distances_by_hand():
  got = transformer.relative_distances(2, 3)
  np.testing.assert_array_equal(got, [[3, 2, 1, 0, -1], [4, 3, 2, 1, 0]])


@pytest.mark.parametrize("use_memory", [True, False])
def test_block_matches_numpy_reference(block, x, use_memory):
  state = random_state(block)
  y, _ = apply(block, x, state, use_memory=use_memory)
  np.testing.assert_allclose(y, reference_block(block, x, state, use_memory), atol=2e-5)


def test_block_without_memory_matches_reference_too():
  local_block = make_block(use_memory=False)
  state = random_state(make_block())
  state = state.replace(memory=None)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(B, S, D)), jnp.float32)
  y, new_state = apply(local_block, x, state)
  np.testing.assert_allclose(y, reference_block(local_block, x, state), atol=2e-5)
  assert new_state.memory is None


def test_empty_memory_equals_local_only_block(x):
  """A memory block with an empty memory computes exactly the local-only block."""
  memory_block = make_block(use_memory=True, seed=4)
  local_block = make_block(use_memory=False, seed=4)
  # Same weights: the local block has every parameter but the gate.
  nnx.update(local_block, nnx.state(memory_block, nnx.Param).filter(
      lambda path, _: "gate" not in path))
  state = memory_block.init_state(B, N)
  y_mem, s_mem = apply(memory_block, x, state)
  y_loc, s_loc = apply(local_block, x, state.replace(memory=None))
  np.testing.assert_array_equal(y_mem, y_loc)
  np.testing.assert_array_equal(s_mem.keys, s_loc.keys)
  # ... while a non-empty memory changes the output.
  y_full, _ = apply(memory_block, x, random_state(memory_block))
  y_full_local, _ = apply(memory_block, x, random_state(memory_block), use_memory=False)
  assert not np.allclose(y_full, y_full_local, atol=1e-3)


def _memory_copies(compile_options):
  """Copies of a memory-shaped array in the compiled block step (state donated)."""
  block = make_block(seed=6)
  graphdef, params = nnx.split(block)
  n = 1024  # large enough that the shape [B, H, n, E] is unambiguous
  state = block.init_state(B, n)

  def run(params, x, state):
    return nnx.merge(graphdef, params)(x, state)

  compiled = jax.jit(run, donate_argnums=2, compiler_options=compile_options).lower(
      params, jnp.zeros((B, S, D), jnp.float32), state).compile()
  return hlo.copies_of(compiled, (B, H, n, E))


def test_in_place_memory_option_writes_the_memory_without_copying_it():
  """With `xla.IN_PLACE_MEMORY` XLA:CPU reads and then writes the memory in place."""
  if jax.default_backend() != "cpu":
    pytest.skip("the option is XLA:CPU's")
  options = xla.cpu_options(xla.IN_PLACE_MEMORY)
  assert options == xla.IN_PLACE_MEMORY  # accepted by this XLA
  assert _memory_copies(None), "XLA's default now avoids the copies: the option may go"
  assert not _memory_copies(options)


def test_memory_is_written_fifo_with_the_segment_keys_and_values(block, x):
  state = block.init_state(B, N)
  _, s1 = apply(block, x, state)
  _, s2 = apply(block, x[:, ::-1], s1)
  _, s3 = apply(block, x * 2.0, s2)  # 12 items into 8 slots: the first 4 are evicted
  # Expected keys and values from the NumPy reference's projections.
  p = lambda v: _np(v[...])
  def projections(xx, ctx):
    h = _layer_norm(_np(xx), p(block.attention_norm.scale), p(block.attention_norm.bias))
    k_raw = h @ p(block.key.kernel)
    full = np.concatenate([_np(ctx), k_raw], 1)
    wconv = p(block.key_conv_weights)
    k = np.stack([sum(wconv[j] * full[:, C - 1 + t - j] for j in range(C)) for t in range(S)], 1)
    return _normalize(k.reshape(B, S, H, E)), (h @ p(block.value.kernel)).reshape(B, S, H, E)
  k1, v1 = projections(x, np.zeros((B, C - 1, D)))
  np.testing.assert_allclose(s1.memory.keys[:, :, :S], k1.transpose(0, 2, 1, 3), atol=1e-5)
  np.testing.assert_allclose(s1.memory.values[:, :, :S], v1.transpose(0, 2, 1, 3), atol=1e-5)
  assert int(s1.memory.valid.sum()) == B * H * S
  k3, v3 = projections(x * 2.0, s2.key_context)
  # Segment 3 overwrote slots 0..3 (the oldest, segment 1's items).
  np.testing.assert_allclose(s3.memory.keys[:, :, :S], k3.transpose(0, 2, 1, 3), atol=1e-5)
  np.testing.assert_allclose(s3.memory.values[:, :, :S], v3.transpose(0, 2, 1, 3), atol=1e-5)
  np.testing.assert_array_equal(s3.memory.keys[:, :, S:], s2.memory.keys[:, :, S:])
  # The cache holds the last W = 6 tokens' keys.
  k2, _ = projections(x[:, ::-1], s1.key_context)
  expected = np.concatenate([k2, k3], 1)[:, -W:].transpose(0, 2, 1, 3)
  np.testing.assert_allclose(s3.keys, expected, atol=1e-5)


_STORED = ("keys", "values", "key_context")


@jax.jit
def _grads(graphdef, params, rest, x, state, stored, memory_keys, memory_values):
  def loss(params, x, stored, memory_keys, memory_values):
    model = nnx.merge(graphdef, params, rest)
    memory = state.memory.replace(keys=memory_keys, values=memory_values)
    y, _ = model(x, state.replace(memory=memory, **stored))
    return jnp.sum(jnp.sin(y))
  return jax.grad(loss, argnums=(0, 1, 2, 3, 4))(params, x, stored, memory_keys, memory_values)


def _param_grads(block, x, state):
  """Gradients of a loss w.r.t. the parameters, the input and the stored arrays."""
  graphdef, params, rest = nnx.split(block, nnx.Param, ...)
  stored = {name: getattr(state, name) for name in _STORED}
  return _grads(graphdef, params, rest, x, state, stored, state.memory.keys,
                state.memory.values)


def test_gradients_reach_gate_and_projections_not_stored_memory(block, x):
  state = random_state(block)
  g_params, _, g_stored, g_mem_keys, g_mem_values = _param_grads(block, x, state)
  for name in ("gate", "log_scale", "position_bias", "slot_keys", "slot_values",
               "key_conv_weights"):
    assert float(jnp.abs(g_params[name][...]).max()) > 1e-6, name
  for name in ("query", "key", "value", "output"):
    assert float(jnp.abs(g_params[name]["kernel"][...]).max()) > 1e-6, name
  # The external memory is read as a constant: nothing flows into what it stores.
  np.testing.assert_array_equal(g_mem_keys, 0.0)
  np.testing.assert_array_equal(g_mem_values, 0.0)
  # The local cache is read like Transformer-XL's, with gradient (it stops at
  # the write instead: see test_gradient_does_not_cross_segments).
  assert float(jnp.abs(g_stored["keys"]).max()) > 0


def test_gradient_does_not_cross_segments(block, x):
  """Loss on segment 2 has no gradient w.r.t. segment 1's input (stop-gradient writes)."""
  state = block.init_state(B, N)
  graphdef, params = nnx.split(block)

  @jax.jit
  def grads(x1, x2):
    def loss(x1, x2):
      model = nnx.merge(graphdef, params)
      _, s1 = model(x1, state)
      y2, _ = model(x2, s1)
      return jnp.sum(y2 ** 2)
    return jax.grad(loss, argnums=(0, 1))(x1, x2)

  g1, g2 = grads(x, x[:, ::-1] + 0.5)
  np.testing.assert_array_equal(g1, 0.0)
  assert float(jnp.abs(g2).max()) > 0


def test_gate_gets_no_gradient_from_an_empty_memory(block, x):
  g_params = _param_grads(block, x, block.init_state(B, N))[0]
  np.testing.assert_array_equal(g_params["gate"][...], 0.0)


def test_gate_and_scale_gradients_match_finite_differences(block, x):
  # K items per memory: the top-k choice cannot change under the perturbation.
  state = random_state(block, items=K)
  graphdef, params, rest = nnx.split(block, nnx.Param, ...)

  @jax.jit
  def f(gate, log_scale, query_kernel):
    new = {"['gate'].value": gate, "['log_scale'].value": log_scale,
           "['query']['kernel'].value": query_kernel}
    swapped = jax.tree_util.tree_map_with_path(
        lambda path, leaf: new.get(jax.tree_util.keystr(path), leaf), params)
    y, _ = nnx.merge(graphdef, swapped, rest)(x, state)
    return jnp.sum(jnp.tanh(y))

  args = (block.gate[...], block.log_scale[...], block.query.kernel[...])
  check_grads(f, args, order=1, modes=("rev",), atol=2e-2, rtol=2e-2, eps=1e-2)


def test_reset_empties_cache_and_memory(block, x):
  state = random_state(block)
  reset = jnp.array([True, False])
  y, _ = apply(block, x, state, reset=reset)
  y_fresh, _ = apply(block, x, block.init_state(B, N), reset=jnp.zeros(B, bool))
  y_keep, _ = apply(block, x, state, reset=jnp.zeros(B, bool))
  np.testing.assert_array_equal(y[0], y_fresh[0])
  np.testing.assert_array_equal(y[1], y_keep[1])


# ---------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def model():
  return transformer.MemoryTransformer(
      20, D, 2, H, window=W, memory_layers=(1,), segment_length=S, top_k=K,
      num_memory_slots=M, key_conv=C, mlp_features=12, rngs=nnx.Rngs(0))


@nnx.jit(static_argnames="use_memory")
def run_model(model, tokens, state, resets=None, use_memory=True):
  return model(tokens, state, resets=resets, use_memory=use_memory)


@nnx.jit
def run_segment(model, tokens, state):
  return model.segment(tokens, state)


@pytest.fixture(scope="module")
def tokens():
  return jnp.asarray(np.random.default_rng(1).integers(0, 20, size=(B, 5 * S)), jnp.int32)


def test_model_scan_equals_segment_loop(model, tokens):
  logits, final = run_model(model, tokens, model.init_state(B, N))
  state = model.init_state(B, N)
  pieces = []
  for t in range(5):
    out, state = run_segment(model, tokens[:, t * S:(t + 1) * S], state)
    pieces.append(out)
  np.testing.assert_allclose(logits, jnp.concatenate(pieces, 1), atol=1e-5)
  np.testing.assert_allclose(final[1].memory.keys, state[1].memory.keys, atol=1e-6)
  assert final[0].memory is None  # only layer 1 has a memory


def test_model_resets_at_document_boundaries(model, tokens):
  resets = jnp.array([[False, False, True, False, False]] * B)
  logits, _ = run_model(model, tokens, model.init_state(B, N), resets)
  # The same tokens from segment 2 on, as a document of its own (segments 0
  # and 1 replaced by different tokens, then a reset).
  other = tokens.at[:, :2 * S].set((tokens[:, :2 * S] + 7) % 20)
  fresh, _ = run_model(model, other, model.init_state(B, N), resets)
  np.testing.assert_allclose(logits[:, 2 * S:], fresh[:, 2 * S:], atol=1e-5)
  no_reset, _ = run_model(model, other, model.init_state(B, N), jnp.zeros_like(resets))
  assert not np.allclose(logits[:, 2 * S:], no_reset[:, 2 * S:], atol=1e-4)


def test_without_memory_the_model_cannot_see_beyond_its_window(model, tokens):
  """Changing a token more than W + S tokens back changes nothing without memory."""
  changed = tokens.at[:, 0].set((tokens[:, 0] + 1) % 20)
  last = slice(4 * S, 5 * S)  # 16+ tokens after position 0: beyond W = 6 (+ key conv)
  big = 5 * S  # a memory that keeps every token
  for use_memory, same in ((False, True), (True, False)):
    a, _ = run_model(model, tokens, model.init_state(B, big), use_memory=use_memory)
    b, _ = run_model(model, changed, model.init_state(B, big), use_memory=use_memory)
    assert np.allclose(a[:, last], b[:, last], atol=1e-6) == same, use_memory


def test_bad_inputs_raise_clear_errors(model, tokens):
  with pytest.raises(ValueError, match="divisible by num_heads"):
    transformer.MemoryAugmentedBlock(10, 3, window=4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="window must be an integer >= 1"):
    transformer.MemoryAugmentedBlock(8, 2, window=0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="multiple of segment_length"):
    run_model(model, tokens[:, :S + 1], model.init_state(B, N))
  with pytest.raises(ValueError, match="resets must have shape"):
    run_model(model, tokens, model.init_state(B, N), jnp.zeros((B, 2), bool))
  with pytest.raises(ValueError, match="needs a state with a memory"):
    run_model(model, tokens, model.init_state(B, None))
  with pytest.raises(ValueError, match="tokens must be an integer array"):
    run_model(model, tokens.astype(jnp.float32), model.init_state(B, N))
  with pytest.raises(ValueError, match="at least top_k"):
    model.init_state(B, K - 1)
  with pytest.raises(ValueError, match="memory_layers"):
    transformer.MemoryTransformer(20, D, 2, H, window=W, memory_layers=(2,), rngs=nnx.Rngs(0))


_SHARDED_CHECK = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    from flax import nnx
    from memjax.nn import transformer
    assert jax.device_count() == 8, jax.device_count()
    model = transformer.MemoryTransformer(20, 8, 1, 2, window=6, memory_layers=(0,),
        segment_length=4, top_k=3, num_memory_slots=2, key_conv=2, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 20, (8, 16)), jnp.int32)
    targets = jnp.roll(tokens, -1, axis=1)

    @jax.jit
    def loss_and_grads(params, tokens, targets):
      def loss_fn(p):
        m = nnx.merge(graphdef, p)
        logits, state = m(tokens, m.init_state(tokens.shape[0], 8))
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
        return ce, (logits, state[0].memory.keys)
      return jax.value_and_grad(loss_fn, has_aux=True)(params)

    one = jax.devices()[0]
    (loss1, (logits1, mem1)), grads1 = loss_and_grads(
        jax.device_put(params, one), jax.device_put(tokens, one), jax.device_put(targets, one))
    mesh = transformer.data_parallel_mesh()
    t8, y8 = transformer.shard_batch((tokens, targets), mesh)
    (loss8, (logits8, mem8)), grads8 = loss_and_grads(transformer.replicate(params, mesh), t8, y8)
    assert len(logits8.sharding.device_set) == 8, logits8.sharding
    assert logits8.sharding.shard_shape(logits8.shape)[0] == 1  # one sequence per device
    np.testing.assert_allclose(logits8, logits1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mem8, mem1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(loss8, loss1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads8), jax.tree.leaves(grads1)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    print("SHARDED_OK")
""")


@pytest.mark.slow
def test_results_identical_with_batch_sharded_over_8_devices():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=root)
  result = subprocess.run([sys.executable, "-c", _SHARDED_CHECK], env=env, cwd=root,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "SHARDED_OK" in result.stdout
