"""NTMCell: one step against a NumPy reference of the paper's equations, shapes, options."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memjax.nn import controllers
from memjax.nn import ntm
from memjax.nn import sequence
from memjax.training import algorithmic

IN, OUT, N, W, C = 5, 4, 7, 3, 6


def _cell(**kw):
  opts = dict(memory_size=N, word_size=W, controller_size=C, num_read_heads=2,
              num_write_heads=1, shift_range=1)
  opts.update(kw)
  return ntm.NTMCell(IN, OUT, rngs=nnx.Rngs(0), **opts)


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _softplus(x):
  return np.log1p(np.exp(x))


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _reference_step(cell, state, x):
  """One NTM step for one example, written from Graves et al. (2014), eqs. 2-9, in NumPy."""
  p = lambda v: np.asarray(v[...], np.float64)
  r, h, s = cell.num_read_heads, cell.num_write_heads, 2 * cell.shift_range + 1
  hc, cc = (np.asarray(v, np.float64) for v in state.controller)
  mem = np.asarray(state.memory, np.float64)
  prev = np.concatenate([state.read_weights, state.write_weights]).astype(np.float64)
  z = np.concatenate([x, np.asarray(state.read_vectors).reshape(-1), hc])
  z = z @ p(cell.controller.gates.kernel) + p(cell.controller.gates.bias)
  gi, gf, gg, go = np.split(z, 4)
  c = _sigmoid(gf + 1.0) * cc + _sigmoid(gi) * np.tanh(gg)
  hid = _sigmoid(go) * np.tanh(c)
  iface = np.clip(hid @ p(cell.interface.kernel) + p(cell.interface.bias), -20, 20)
  a = W + s + 3
  weights = []
  for head in range(r + h):
    v = iface[head * a:(head + 1) * a]
    key, beta = np.tanh(v[:W]), _softplus(v[W])
    gate, gamma = _sigmoid(v[W + 1]), 1 + _softplus(v[W + 2])
    shift_w = _softmax(v[W + 3:])
    eps = 1e-8
    sim = mem @ key / (np.sqrt((mem ** 2).sum(1) + eps) * np.sqrt((key ** 2).sum() + eps))
    wc = _softmax(beta * sim)                          # eq. 5
    wg = gate * wc + (1 - gate) * prev[head]           # eq. 7
    ws = np.zeros(N)                                   # eq. 8: circular convolution
    for i in range(N):
      for j in range(N):
        d = (i - j) % N
        d = d if d <= s // 2 else d - N
        if abs(d) <= s // 2:
          ws[i] += wg[j] * shift_w[d + s // 2]
    wp = (ws + eps) ** gamma                           # eq. 9
    weights.append(wp / wp.sum())
  weights = np.stack(weights)
  reads = weights[:r] @ mem                            # eq. 2
  ea = iface[(r + h) * a:].reshape(h, 2 * W)
  erase, add = _sigmoid(ea[:, :W]), np.tanh(ea[:, W:])
  new_mem = mem.copy()
  for k in range(h):                                   # eqs. 3-4
    new_mem = new_mem * (1 - np.outer(weights[r + k], erase[k]))
  for k in range(h):
    new_mem = new_mem + np.outer(weights[r + k], add[k])
  out = np.concatenate([hid, reads.reshape(-1)]) @ p(cell.output.kernel) + p(cell.output.bias)
  return np.clip(out, -20, 20), new_mem, weights, reads, hid, c


def _random_state(cell, rng, batch):
  state = cell.initialize_carry((batch, IN))
  n_heads = cell.num_read_heads + cell.num_write_heads
  w = rng.dirichlet(np.ones(N), size=(batch, n_heads)).astype(np.float32)
  return state._replace(
      controller=controllers.LSTMState(*(rng.normal(size=(batch, C)).astype(np.float32)
                                         for _ in range(2))),
      memory_t=np.swapaxes(rng.normal(size=(batch, N, W)).astype(np.float32), 1, 2),
      read_weights=w[:, :cell.num_read_heads], write_weights=w[:, cell.num_read_heads:],
      read_vectors=rng.normal(size=(batch, cell.num_read_heads, W)).astype(np.float32))


@pytest.mark.parametrize("heads", [(2, 1), (1, 2)])
def test_step_matches_numpy_reference(heads):
  cell = _cell(num_read_heads=heads[0], num_write_heads=heads[1])
  rng = np.random.default_rng(1)
  state = _random_state(cell, rng, 3)
  x = rng.normal(size=(3, IN)).astype(np.float32)
  new, y = jax.jit(lambda s, x: cell(s, x))(state, x)
  for b in range(3):
    one = jax.tree.map(lambda v, b=b: np.asarray(v[b]), state)
    out, mem, weights, reads, hid, c = _reference_step(cell, one, x[b])
    np.testing.assert_allclose(y[b], out, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(new.memory[b], mem, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(new.read_weights[b], weights[:heads[0]], atol=2e-5)
    np.testing.assert_allclose(new.write_weights[b], weights[heads[0]:], atol=2e-5)
    np.testing.assert_allclose(new.read_vectors[b], reads, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(new.controller.h[b], hid, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(new.controller.c[b], c, rtol=2e-4, atol=2e-5)


def test_initial_state_and_memory_inits():
  cell = _cell()
  state = cell.initialize_carry((4, IN))
  assert state.memory.shape == (4, N, W)
  np.testing.assert_allclose(state.memory, 1e-6)
  assert state.read_weights.shape == (4, 2, N) and state.write_weights.shape == (4, 1, N)
  np.testing.assert_allclose(state.read_weights.sum(-1), 1.0, rtol=1e-6)
  assert int(jnp.argmax(state.write_weights[0, 0])) == 0  # starts focused on slot 0
  learned = _cell(memory_init="learned")
  assert isinstance(learned.initial_memory, nnx.Param)
  np.testing.assert_allclose(learned.initialize_carry((2, IN)).memory[1],
                             learned.initial_memory[...])
  random = _cell(memory_init="random")
  with pytest.raises(ValueError, match="rngs"):
    random.initialize_carry((2, IN))
  m = random.initialize_carry((2, IN), nnx.Rngs(carry=3)).memory
  assert m.shape == (2, N, W) and float(jnp.abs(m[0] - m[1]).max()) > 0.1


def test_random_memory_from_one_key_per_sequence():
  # The trainer's form: raw uint32 key data [B, 2], one key per sequence.
  random = _cell(memory_init="random")
  data = np.array([[0, 1], [7, 9], [0, 1]], np.uint32)
  m = random.initialize_carry((3, IN), rngs=data).memory
  for b in range(3):
    key = jax.random.wrap_key_data(jnp.asarray(data[b]))
    want = 0.5 * jax.random.truncated_normal(key, -2.0, 2.0, (N, W))
    np.testing.assert_array_equal(m[b], want)
    # A sequence's memory does not depend on the batch it is in.
    np.testing.assert_array_equal(random.initialize_carry((1, IN), rngs=data[b:b + 1]).memory[0],
                                  want)
  assert float(jnp.abs(m).max()) <= 1.0 and float(jnp.abs(m[0] - m[1]).max()) > 0.1
  typed = jax.random.split(jax.random.key(0), 3)
  np.testing.assert_array_equal(random.initialize_carry((3, IN), rngs=typed).memory[1],
                                0.5 * jax.random.truncated_normal(typed[1], -2, 2, (N, W)))
  with pytest.raises(ValueError, match="batch shape"):
    random.initialize_carry((2, IN), rngs=data)


def test_feedforward_controller_and_unbatched_input():
  cell = _cell(controller="feedforward")
  state = cell.initialize_carry((IN,))
  assert state.controller == () and state.memory.shape == (N, W)
  new, y = jax.jit(lambda s, x: cell(s, x))(state, jnp.ones((IN,)))
  assert y.shape == (OUT,) and new.read_vectors.shape == (2, W)


def test_runs_under_nnx_rnn_and_scan_like_run_cell():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 6, IN)), jnp.float32)
  rnn = nnx.RNN(_cell(), rngs=False)

  @nnx.jit
  def all_ways(rnn, x):
    cell = rnn.cell

    @nnx.scan(in_axes=(nnx.Carry, 1), out_axes=(nnx.Carry, 1))
    def scan_fn(carry, xt):
      return cell(carry, xt)

    _, ys, _ = sequence.run_cell(cell, x)
    _, ys_remat, _ = sequence.run_cell(cell, x, remat=True, unroll=2)
    return ys, rnn(x), scan_fn(cell.initialize_carry((2, IN)), x)[1], ys_remat

  ys, *others = all_ways(rnn, x)
  for other in others:
    np.testing.assert_allclose(other, ys, rtol=1e-5, atol=1e-6)


def test_gradients_finite_and_remat_equal():
  cell = _cell()
  graphdef, params = nnx.split(cell)
  x = jnp.asarray(np.random.default_rng(3).integers(0, 2, size=(2, 5, IN)), jnp.float32)

  def loss(params, remat):
    _, ys, _ = sequence.run_cell(nnx.merge(graphdef, params), x, remat=remat)
    return jnp.sum(jnp.sin(ys))

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  g1 = grad(params, False)
  g2 = grad(params, True)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kw, match", [
    (dict(memory_size=0), "memory_size"),
    (dict(shift_range=4), "shift_range"),
    (dict(controller="gru"), "controller"),
    (dict(memory_init="zeros"), "memory_init"),
    (dict(num_read_heads=0), "num_read_heads"),
])
def test_bad_options(kw, match):
  with pytest.raises(ValueError, match=match):
    _cell(**kw)


def _memory_step_inputs(rng, b, n, w, r, h, s):
  k = r + h
  f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  # The memory is word-major, [B, W, N], as in `NTMState.memory_t`.
  return (f(b, w, n), jax.nn.softmax(3 * f(b, k, n)), jnp.tanh(f(b, k, w)),
          3 * jax.nn.softplus(f(b, k)), jax.nn.sigmoid(f(b, k)), jax.nn.softmax(f(b, k, s)),
          1 + jax.nn.softplus(f(b, k)), jax.nn.sigmoid(f(b, h, w)), jnp.tanh(f(b, h, w)))


@pytest.mark.parametrize("r, h, s", [(2, 1, 3), (1, 3, 5)])
def test_fused_memory_step_matches_pure_primitives_and_their_gradients(r, h, s):
  rng = np.random.default_rng(4)
  args = _memory_step_inputs(rng, 3, N, W, r, h, s)
  fused, fused_vjp = jax.vjp(lambda *a: ntm.memory_step(r, *a), *args)
  pure, pure_vjp = jax.vjp(lambda *a: ntm.reference_memory_step(r, *a), *args)
  for a, b in zip(fused, pure):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  cotangents = tuple(jnp.asarray(rng.normal(size=x.shape), jnp.float32) for x in pure)
  names = ("memory", "prev_w", "key", "strength", "gate", "shift_w", "gamma", "erase", "add")
  for name, a, b in zip(names, fused_vjp(cotangents), pure_vjp(cotangents)):
    scale = float(np.abs(b).max())
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(scale, 1e-3), err_msg=name)


@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
def test_hoisted_backward_equals_automatic_differentiation(controller):
  cell = _cell(controller=controller, memory_init="learned")
  graphdef, params = nnx.split(cell)
  x = jnp.asarray(np.random.default_rng(5).integers(0, 2, size=(2, 5, IN)), jnp.float32)

  def loss(params, hoist, fused):
    cell = nnx.merge(graphdef, params)
    cell.fused = fused
    carry, ys, _ = sequence.run_cell(cell, x, hoist=hoist)
    return jnp.sum(jnp.sin(ys)) + jnp.sum(carry.memory ** 2)

  grad = jax.jit(jax.value_and_grad(loss), static_argnums=(1, 2))
  v_ref, g_ref = grad(params, False, False)  # pure primitives, plain autodiff
  combos = ((True, True), (True, False), (False, True)) if controller == "lstm" else ((True, True),)
  for hoist, fused in combos:
    v, g = grad(params, hoist, fused)
    np.testing.assert_allclose(v, v_ref, rtol=1e-6)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g), jax.tree.leaves(g_ref)):
      assert np.all(np.isfinite(a))
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()) + 1e-7,
                                 err_msg=f"{path} hoist={hoist} fused={fused}")


def test_hoisted_run_with_fewer_steps_equals_full_run_on_those_steps():
  cell = _cell()
  graphdef, params = nnx.split(cell)
  x = jnp.asarray(np.random.default_rng(6).integers(0, 2, size=(2, 6, IN)), jnp.float32)
  scored = jnp.asarray([1, 1, 1, 1, 0, 0], jnp.float32)[None, :, None]  # the first 4 steps

  def loss(params, steps):
    _, ys, _ = sequence.run_cell(nnx.merge(graphdef, params), x, hoist=True, steps=steps)
    return jnp.sum(jnp.sin(ys) * scored), ys

  grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (v_full, ys_full), g_full = grad(params, 6)
  (v_four, ys_four), g_four = grad(params, 4)
  np.testing.assert_allclose(v_four, v_full, rtol=1e-6)
  np.testing.assert_allclose(ys_four[:, :4], ys_full[:, :4], rtol=1e-6, atol=1e-7)
  assert float(jnp.abs(ys_four[:, 4:]).max()) == 0.0
  for a, b in zip(jax.tree.leaves(g_four), jax.tree.leaves(g_full)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="steps"):
    sequence.run_cell(cell, x, steps=4)


@pytest.mark.parametrize("name", ["ntm_copy", "ntm_priority_sort", "ntm_associative_recall"])
def test_trainer_draws_batches_with_and_without_a_curriculum(name):
  config = importlib.import_module(f"experiments.configs.{name}").get_config("smoke")
  exp = algorithmic.build(config)  # builds; compiles nothing
  state = algorithmic._initial_state(exp)
  batch = exp.batches(0, 2, int(state["upcoming_level"])).data
  assert batch.inputs.shape[:3] == (2, config.batch_size, exp.time_steps)
  if name == "ntm_copy":
    short = exp.batches(0, 2, 2).data  # curriculum level 2: lengths 1-2 in the same shape
    assert short.inputs.shape == batch.inputs.shape
    assert int(short.mask.sum(axis=-1).max()) <= 2
