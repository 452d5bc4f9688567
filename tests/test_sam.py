"""memjax.nn.sam: the sparse step against a dense NumPy reference of the paper's equations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from memjax import access
from memjax import addressing
from memjax import store
from memjax.nn import _sam_kernels
from memjax.nn import sam


def _reference_step(memory, last_access, prev_idx, prev_w, key_read, strengths, add, alpha,
                    gamma, k, t, threshold=sam.ACCESS_THRESHOLD):
  """Dense float64 SAM step (Rae et al. 2016, section 3), with loops over slots and heads."""
  memory = np.array(memory, np.float64)
  n = len(memory)
  r = len(prev_idx)
  lra = min(range(n), key=lambda i: (last_access[i], i))
  write_w = np.zeros(n)
  for head in range(r):
    for slot, weight in zip(prev_idx[head], prev_w[head]):
      write_w[slot] += alpha * gamma * weight / r
  write_w[lra] += alpha * (1 - gamma)
  memory[lra] = 0.0
  memory += np.outer(write_w, add)
  indices, weights, reads = [], [], []
  for head in range(r):
    key = np.asarray(key_read[head], np.float64)
    sims = []
    for i in range(n):
      norm = np.linalg.norm(memory[i]) * np.linalg.norm(key)
      sims.append(memory[i] @ key / norm if norm > 0 else 0.0)
    best = sorted(range(n), key=lambda i, s=sims: (-s[i], i))[:k]
    logits = strengths[head] * np.array([sims[i] for i in best])
    w = np.exp(logits - logits.max())
    w /= w.sum()
    indices.append(best)
    weights.append(w)
    reads.append(sum(wi * memory[i] for wi, i in zip(w, best)))
  last = np.array(last_access).copy()
  for head in range(r):
    for slot, weight in zip(indices[head], weights[head]):
      if weight > threshold:
        last[slot] = t
  for slot in range(n):
    if write_w[slot] > threshold:
      last[slot] = t
  return memory, last, np.array(indices), np.array(weights), np.array(reads)


def _state(rng, n, w, r, k, t=3):
  memory = rng.normal(size=(n, w)).astype(np.float32)
  # No zero rows: rows that only receive the add vector would all be parallel,
  # a cosine tie that float rounding, not the algorithm, decides.
  last = rng.integers(-1, t, n).astype(np.int32)
  prev_idx = np.stack([rng.choice(n, k, replace=False) for _ in range(r)]).astype(np.int32)
  prev_w = rng.dirichlet(np.ones(k), r).astype(np.float32)
  return sam.make_state(memory, last, prev_idx, prev_w, np.zeros((r, w), np.float32), t,
                        np.zeros(1, np.float32), np.zeros(1, np.float32))


@pytest.mark.parametrize("n, w, r, k, seed", [(20, 5, 1, 4, 0), (64, 6, 3, 8, 1), (9, 3, 2, 9, 2),
                                                 (200, 4, 2, 5, 3)])
def test_step_against_dense_reference(n, w, r, k, seed):
  rng = np.random.default_rng(seed)
  state = _state(rng, n, w, r, k)
  key_read = rng.normal(size=(r, w)).astype(np.float32)
  strengths = rng.uniform(0.5, 5, r).astype(np.float32)
  add = rng.normal(size=w).astype(np.float32)
  alpha, gamma = np.float32(0.7), np.float32(0.4)
  new = jax.jit(sam.sam_step, static_argnums=6)(state, key_read, strengths, add, alpha, gamma, k)
  memory, last, indices, weights, reads = _reference_step(
      sam.memory_words(state.memory, n), state.last_access[:n], state.read_indices,
      state.read_weights, key_read, strengths, add, alpha, gamma, k, int(state.step))
  np.testing.assert_allclose(sam.memory_words(new.memory, n), memory, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(new.read_indices, indices)
  np.testing.assert_allclose(new.read_weights, weights, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new.read_vectors, reads, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(new.last_access[:n], last)
  assert (np.asarray(new.last_access[n:]) == sam.PAD_ACCESS).all()
  np.testing.assert_array_equal(new.access_min,
                                np.asarray(new.last_access).reshape(-1, sam.BLOCK).min(-1))
  words = np.asarray(sam.memory_words(new.memory, n), np.float64)
  np.testing.assert_allclose(np.asarray(new.inv_norms).reshape(-1)[:n],
                             1 / np.sqrt((words ** 2).sum(-1) + 1e-12), rtol=1e-5)
  assert int(new.step) == int(state.step) + 1


def _lra(last_access):
  last = np.asarray(last_access, np.int32)
  pad = -len(last) % sam.BLOCK
  last = np.pad(last, (0, pad), constant_values=sam.PAD_ACCESS)
  return int(sam.least_recently_accessed(jnp.asarray(last), jnp.asarray(
      last.reshape(-1, sam.BLOCK).min(-1))))


def test_least_recently_accessed_prefers_never_then_oldest_then_lowest():
  assert _lra([3, -1, 0, -1]) == 1
  assert _lra([3, 2, 2, 5]) == 1
  last = np.full(3 * sam.BLOCK + 5, 7)
  last[[sam.BLOCK + 9, 2 * sam.BLOCK + 1, 3 * sam.BLOCK + 4]] = 2
  assert _lra(last) == sam.BLOCK + 9  # the oldest in three blocks: the lowest slot
  last[3 * sam.BLOCK + 4] = 1
  assert _lra(last) == 3 * sam.BLOCK + 4  # in the last, partly padded block


def test_search_never_returns_padding_even_when_every_score_is_negative():
  rng = np.random.default_rng(4)
  n, w = sam.BLOCK + 3, 5  # the second block holds 3 slots and 61 padding slots
  key = rng.normal(size=w).astype(np.float32)
  words = -(0.5 + np.abs(rng.normal(size=(n, 1)))) * key + 0.05 * rng.normal(size=(n, w))
  state = sam.make_state(words.astype(np.float32), np.zeros(n, np.int32),
                         np.zeros((1, 4), np.int32), np.zeros((1, 4), np.float32),
                         np.zeros((1, w), np.float32), 0, np.zeros(1), np.zeros(1))
  found = _sam_kernels.search(state.memory, state.inv_norms, state.last_access,
                              jnp.asarray(key[None]), 4)
  cosine = words @ key / np.linalg.norm(words, axis=1) / np.linalg.norm(key)
  assert cosine.max() < 0
  np.testing.assert_array_equal(found[0], np.argsort(-cosine, kind="stable")[:4])


def _naive_access(memory, lra, written, weights, add, slots):
  """The write and the read's gather on a plain [N, W] memory, differentiated by JAX."""
  new = memory.at[lra].set(0).at[written].add(weights[:, None] * add[None, :])
  return new, new[slots]


@pytest.mark.parametrize("memory_grad", ["dense", "zero", "none"])
def test_sparse_access_gradients_equal_plain_autodiff(memory_grad):
  """Repeated written slots, reads of written and unwritten slots, the LRA slot read."""
  rng = np.random.default_rng(5)
  n, w = sam.BLOCK + 20, 3
  words = jnp.asarray(rng.normal(size=(n, w)), jnp.float32)
  state = sam.make_state(words, np.zeros(n, np.int32), np.zeros((1, 1), np.int32),
                         np.zeros((1, 1), np.float32), np.zeros((1, w), np.float32), 0,
                         np.zeros(1), np.zeros(1))
  lra = jnp.asarray(70)
  written = jnp.array([3, 70, 3, 66, 70], jnp.int32)  # 3 twice, the LRA slot twice
  weights = jnp.asarray(rng.uniform(0.1, 1, 5), jnp.float32)
  add = jnp.asarray(rng.normal(size=w), jnp.float32)
  keys = jnp.asarray(rng.normal(size=(2, w)), jnp.float32)
  _, _, slots, _ = _sam_kernels.sparse_access(state.memory, state.inv_norms, state.last_access,
                                              lra, written, weights, add, keys, 4)
  slots = jnp.asarray(slots)
  probe_rows = jnp.asarray(rng.normal(size=(2, 4, w)), jnp.float32)
  probe_memory = jnp.asarray(rng.normal(size=(n, w)), jnp.float32)
  if memory_grad == "zero":
    probe_memory = jnp.zeros_like(probe_memory)

  def loss_of(access):
    def loss(memory, weights, add):
      new, rows = access(memory, weights, add)
      value = jnp.sum(rows * probe_rows)
      if memory_grad == "dense":
        value = value + jnp.sum(new * probe_memory)
      return value
    return loss

  def sparse(memory, weights, add):
    blocked = _sam_kernels.to_blocks(memory)
    new, _, found, rows = _sam_kernels.sparse_access(
        blocked, state.inv_norms, state.last_access, lra, written, weights, add, keys, 4)
    del found  # the same slots as above: checked on the values below
    return sam.memory_words(new, n), rows

  def plain(memory, weights, add):
    return _naive_access(memory, lra, written, weights, add, slots)

  argnums = (1, 2) if memory_grad == "none" else (0, 1, 2)
  ours = jax.jit(jax.grad(loss_of(sparse), argnums))(words, weights, add)
  want = jax.jit(jax.grad(loss_of(plain), argnums))(words, weights, add)
  for a, b in zip(ours, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  blocked = _sam_kernels.to_blocks(words)
  new, _, found, rows = _sam_kernels.sparse_access(
      blocked, state.inv_norms, state.last_access, lra, written, weights, add, keys, 4)
  np.testing.assert_array_equal(found, slots)
  new = sam.memory_words(new, n)
  want_new, want_rows = plain(words, weights, add)
  np.testing.assert_allclose(new, want_new, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(rows, want_rows, rtol=1e-6, atol=1e-7)


def _old_step(memory, last_access, prev_idx, prev_w, key_read, strengths, add, alpha, gamma, k,
              t):
  """The step before the blocked kernels (flat memory, `store.top_k_slots`, plain autodiff)."""
  r = prev_idx.shape[0]
  lra = jnp.argmin(last_access).astype(jnp.int32)
  written = jnp.concatenate([prev_idx.reshape(-1), lra[None]])
  weights = alpha * jnp.concatenate([gamma * prev_w.reshape(-1) / r, (1 - gamma)[None]])
  memory = memory.at[lra].set(0).at[written].add(weights[:, None] * add[None, :])
  _, indices = store.top_k_slots(jax.lax.stop_gradient(memory), jnp.ones(memory.shape[0], bool),
                                 jax.lax.stop_gradient(key_read), k, metric="cosine")
  rows = memory[indices]
  content = jax.vmap(addressing.content_weights)(rows, key_read, strengths)
  reads = jax.vmap(access.read)(rows, content)
  n = memory.shape[0]
  touched = jnp.concatenate([
      jnp.where(jax.lax.stop_gradient(content) > sam.ACCESS_THRESHOLD, indices, n).reshape(-1),
      jnp.where(jax.lax.stop_gradient(weights) > sam.ACCESS_THRESHOLD, written, n)])
  last_access = last_access.at[touched].set(t, mode="drop")
  return memory, last_access, indices, content, reads


def test_sequence_and_its_gradient_equal_the_old_formulation():
  """Six steps through time: values and gradients (through the memory) of both versions."""
  rng = np.random.default_rng(6)
  n, w, r, k, steps = 150, 4, 2, 3, 6
  words = rng.normal(size=(n, w)).astype(np.float32)
  last = rng.integers(-1, 3, n).astype(np.int32)
  prev_idx = np.stack([rng.choice(n, k, replace=False) for _ in range(r)]).astype(np.int32)
  prev_w = rng.dirichlet(np.ones(k), r).astype(np.float32)
  inputs = (jnp.asarray(rng.normal(size=(steps, r, w)), jnp.float32),
            jnp.asarray(rng.uniform(1, 4, (steps, r)), jnp.float32),
            jnp.asarray(rng.normal(size=(steps, w)), jnp.float32),
            jnp.asarray(rng.uniform(0.3, 1, steps), jnp.float32),
            jnp.asarray(rng.uniform(0.2, 0.8, steps), jnp.float32))
  probe = jnp.asarray(rng.normal(size=(steps, r, w)), jnp.float32)

  @jax.jit
  def new_version(words, inputs):
    state = sam.make_state(words, last, prev_idx, prev_w, np.zeros((r, w), np.float32), 3,
                           np.zeros(1), np.zeros(1))

    def body(state, x):
      state = sam.sam_step(state, *x, k)
      return state, (state.read_vectors, state.read_indices)
    state, (reads, indices) = jax.lax.scan(body, state, inputs)
    return jnp.sum(reads * probe), (indices, sam.memory_words(state.memory, n))

  @jax.jit
  def old_version(words, inputs):
    def body(carry, x):
      memory, last_access, idx, weights, t = carry
      memory, last_access, idx, weights, reads = _old_step(memory, last_access, idx, weights,
                                                           *x, k, t)
      return (memory, last_access, idx, weights, t + 1), (reads, idx)
    carry = (words, jnp.asarray(last), jnp.asarray(prev_idx), jnp.asarray(prev_w), 3)
    carry, (reads, indices) = jax.lax.scan(body, carry, inputs)
    return jnp.sum(reads * probe), (indices, carry[0])

  (value, (indices, memory)), grads = jax.value_and_grad(new_version, (0, 1), has_aux=True)(
      jnp.asarray(words), inputs)
  (old_value, (old_indices, old_memory)), old_grads = jax.value_and_grad(
      old_version, (0, 1), has_aux=True)(jnp.asarray(words), inputs)
  np.testing.assert_array_equal(indices, old_indices)
  np.testing.assert_allclose(memory, old_memory, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(value, old_value, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(old_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert float(jnp.abs(grads[0]).sum()) > 0  # through time: M_0 reaches later reads


def test_backward_pass_costs_nothing_proportional_to_n():
  """Params-only fwd+bwd grows with N exactly as the forward does (write + lookup)."""

  def cost(n, grad):
    cell = sam.SAMCell(5, 3, memory_size=n, word_size=8, num_read_heads=2, k=4,
                       controller_size=16, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(cell)
    carry = cell.initialize_carry((1, 5))

    def loss(params, carry, x):
      _, y = nnx.merge(graphdef, params)(carry, x)
      return jnp.sum(y ** 2)

    fn = jax.jit(jax.grad(loss) if grad else loss)
    analysis = fn.lower(params, carry, jnp.ones((1, 5))).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return analysis["bytes accessed"]

  small, large = 4096, 16384
  forward_growth = cost(large, False) - cost(small, False)
  total_growth = cost(large, True) - cost(small, True)
  assert forward_growth > 0
  assert total_growth < 1.1 * forward_growth, (total_growth, forward_growth)


def test_donated_step_updates_the_memory_in_place():
  """value_and_grad of a step with the state donated: no temporary as large as the memory."""
  n = 16384
  cell = sam.SAMCell(5, 3, memory_size=n, word_size=8, num_read_heads=2, k=4,
                     controller_size=16, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(cell)
  carry = cell.initialize_carry((1, 5))

  def loss(params, carry, x):
    carry, y = nnx.merge(graphdef, params)(carry, x)
    return jnp.sum(y ** 2), carry

  step = jax.jit(jax.value_and_grad(loss, has_aux=True), donate_argnums=1)
  stats = step.lower(params, carry, jnp.ones((1, 5))).compile().memory_analysis()
  memory_bytes = carry.memory.size * 4
  assert stats.alias_size_in_bytes >= memory_bytes
  assert stats.temp_size_in_bytes < memory_bytes // 8, stats


def test_cell_runs_under_nnx_rnn_and_every_parameter_gets_a_gradient():
  cell = sam.SAMCell(4, 3, memory_size=32, word_size=6, num_read_heads=2, k=4,
                     controller_size=12, rngs=nnx.Rngs(1))
  rnn = nnx.RNN(cell)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 4)), jnp.float32)
  y = rnn(x)
  assert y.shape == (2, 7, 3) and bool(jnp.isfinite(y).all())

  def loss(rnn, x):
    return jnp.mean(rnn(x) ** 2)

  grads = nnx.state(nnx.grad(loss)(rnn, x), nnx.Param)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert float(jnp.abs(g).sum()) > 0, path


def test_overfits_a_recall_batch():
  """Store 4 random patterns, then recall them: the loss must fall well below its start."""
  rng = np.random.default_rng(0)
  patterns = rng.integers(0, 2, (8, 4, 6)).astype(np.float32)
  marker = np.zeros((8, 4, 1), np.float32)
  x = np.concatenate([np.concatenate([patterns, marker], -1),
                      np.concatenate([np.zeros_like(patterns), marker + 1], -1)], axis=1)
  target = np.concatenate([np.zeros_like(patterns), patterns], axis=1)
  cell = sam.SAMCell(7, 6, memory_size=16, word_size=8, num_read_heads=1, k=4,
                     controller_size=32, rngs=nnx.Rngs(0))
  model = nnx.RNN(cell)
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, target):
    def loss(model):
      logits = model(x)[:, 4:]
      return optax.sigmoid_binary_cross_entropy(logits, target[:, 4:]).mean()
    value, grads = nnx.value_and_grad(loss)(model)
    optimizer.update(model, grads)
    return value

  losses = [float(step(model, optimizer, x, target)) for _ in range(150)]
  assert losses[-1] < 0.5 * losses[0], losses[::15]
