"""memjax.nn.sam: the sparse step against a dense NumPy reference of the paper's equations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

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
  return sam.SAMState(hidden=jnp.zeros(1), cell=jnp.zeros(1), memory=jnp.asarray(memory),
                      last_access=jnp.asarray(last), read_indices=jnp.asarray(prev_idx),
                      read_weights=jnp.asarray(prev_w), read_vectors=jnp.zeros((r, w)),
                      step=jnp.asarray(t, jnp.int32))


@pytest.mark.parametrize("n, w, r, k, seed", [(20, 5, 1, 4, 0), (64, 6, 3, 8, 1), (9, 3, 2, 9, 2)])
def test_step_against_dense_reference(n, w, r, k, seed):
  rng = np.random.default_rng(seed)
  state = _state(rng, n, w, r, k)
  key_read = rng.normal(size=(r, w)).astype(np.float32)
  strengths = rng.uniform(0.5, 5, r).astype(np.float32)
  add = rng.normal(size=w).astype(np.float32)
  alpha, gamma = np.float32(0.7), np.float32(0.4)
  new = jax.jit(sam.sam_step, static_argnums=6)(state, key_read, strengths, add, alpha, gamma, k)
  memory, last, indices, weights, reads = _reference_step(
      state.memory, state.last_access, state.read_indices, state.read_weights, key_read,
      strengths, add, alpha, gamma, k, int(state.step))
  np.testing.assert_allclose(new.memory, memory, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(new.read_indices, indices)
  np.testing.assert_allclose(new.read_weights, weights, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new.read_vectors, reads, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(new.last_access, last)
  assert int(new.step) == int(state.step) + 1


def test_least_recently_accessed_prefers_never_then_oldest_then_lowest():
  assert int(sam.least_recently_accessed(jnp.array([3, -1, 0, -1]))) == 1
  assert int(sam.least_recently_accessed(jnp.array([3, 2, 2, 5]))) == 1


def test_rows_after_write_equal_the_new_memory_and_share_its_gradient():
  rng = np.random.default_rng(3)
  n, w = 12, 4
  memory = jnp.asarray(rng.normal(size=(n, w)), jnp.float32)
  prev_idx = jnp.array([[1, 5, 5], [2, 3, 1]])  # repeats: the write adds twice to a slot
  prev_w = jnp.asarray(rng.dirichlet(np.ones(3), 2), jnp.float32)
  rows = jnp.array([[1, 7, 5], [0, 2, 3]])
  lra = jnp.asarray(7)

  def via_new_memory(add, alpha, gamma, memory):
    new, _, _ = sam.sparse_write(memory, lra, prev_idx, prev_w, add, alpha, gamma)
    return new[rows]

  def via_index_match(add, alpha, gamma, memory):
    _, written, weights = sam.sparse_write(memory, lra, prev_idx, prev_w, add, alpha, gamma)
    return sam.rows_after_write(memory, rows, lra, written, weights, add)

  args = (jnp.asarray(rng.normal(size=w), jnp.float32), jnp.float32(0.8), jnp.float32(0.3),
          memory)
  np.testing.assert_allclose(via_index_match(*args), via_new_memory(*args), rtol=1e-6)
  np.testing.assert_allclose(via_index_match(*args)[0, 1], np.asarray(args[0]) * 0.8 * 0.7,
                             rtol=1e-6)  # the LRA slot 7: erased, then alpha (1 - gamma) a
  probe = jnp.asarray(rng.normal(size=(2, 3, w)), jnp.float32)
  grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * probe), argnums=(0, 1, 2, 3))(*args)
           for f in (via_index_match, via_new_memory)]
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


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
