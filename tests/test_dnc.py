"""DNCCell: one step against a NumPy reference of the DNC paper's Methods, and options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memjax.nn import controllers
from memjax.nn import dnc
from memjax.nn import sequence

IN, OUT, N, W, C, R = 5, 4, 6, 3, 7, 2


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _oneplus(x):
  return 1 + np.log1p(np.exp(x))


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _content(mem, key, beta):
  eps = 1e-8
  sim = mem @ key / (np.sqrt((mem ** 2).sum(1) + eps) * np.sqrt((key ** 2).sum() + eps))
  return _softmax(beta * sim)


def _reference_step(cell, s, x):
  """One DNC step for one example, from Graves et al. (2016), Methods, in NumPy (float64)."""
  p = lambda v: np.asarray(v[...], np.float64)
  s = {k: (np.asarray(v, np.float64) if not isinstance(v, tuple) else v) for k, v in
       s._asdict().items()}
  hc, cc = (np.asarray(v, np.float64) for v in s["controller"])
  z = np.concatenate([x, s["read_vectors"].reshape(-1), hc])
  z = z @ p(cell.controller.gates.kernel) + p(cell.controller.gates.bias)
  gi, gf, gg, go = np.split(z, 4)
  c = _sigmoid(gf + 1.0) * cc + _sigmoid(gi) * np.tanh(gg)
  h = _sigmoid(go) * np.tanh(c)
  v = np.clip(h @ p(cell.interface.kernel) + p(cell.interface.bias), -20, 20)
  take = lambda n: (v[:n], v[n:])
  read_keys, v = take(R * W)
  read_strengths, v = take(R)
  write_key, v = take(W)
  write_strength, v = take(1)
  erase, v = take(W)
  write_vec, v = take(W)
  free, v = take(R)
  alloc_gate, v = take(1)
  write_gate, v = take(1)
  modes = _softmax(v.reshape(R, 3))
  read_keys, read_strengths = read_keys.reshape(R, W), _oneplus(read_strengths)
  write_strength, erase, free = _oneplus(write_strength[0]), _sigmoid(erase), _sigmoid(free)
  alloc_gate, write_gate = _sigmoid(alloc_gate[0]), _sigmoid(write_gate[0])
  prev_rw, prev_ww = s["read_weights"], s["write_weights"]
  psi = np.prod(1 - free[:, None] * prev_rw, axis=0)                     # retention
  u = (s["usage"] + prev_ww - s["usage"] * prev_ww) * psi                 # usage
  ue = 1e-6 + (1 - 1e-6) * u
  alloc = np.zeros(N)
  running = 1.0
  for j in np.argsort(ue, kind="stable"):                                  # allocation
    alloc[j] = (1 - ue[j]) * running
    running *= ue[j]
  ww = write_gate * (alloc_gate * alloc + (1 - alloc_gate) * _content(s["memory"], write_key,
                                                                     write_strength))
  mem = s["memory"] * (1 - np.outer(ww, erase)) + np.outer(ww, write_vec)
  link = (1 - ww[:, None] - ww[None, :]) * s["link"] + np.outer(ww, s["precedence"])
  np.fill_diagonal(link, 0)
  prec = (1 - ww.sum()) * s["precedence"] + ww
  rw = np.stack([modes[i, 0] * (link.T @ prev_rw[i]) + modes[i, 1] *
                 _content(mem, read_keys[i], read_strengths[i]) + modes[i, 2] *
                 (link @ prev_rw[i]) for i in range(R)])
  reads = rw @ mem
  y = np.concatenate([h, reads.reshape(-1)]) @ p(cell.output.kernel) + p(cell.output.bias)
  return dict(y=np.clip(y, -20, 20), memory=mem, usage=u, link=link, precedence=prec,
              read_weights=rw, write_weights=ww, read_vectors=reads)


def _random_state(cell, rng, batch):
  d = lambda *shape: rng.dirichlet(np.ones(N), size=shape).astype(np.float32) * 0.9
  link = rng.uniform(0, 0.2, size=(batch, N, N)).astype(np.float32)
  link[:, np.arange(N), np.arange(N)] = 0
  return dnc.DNCState(
      controller=controllers.LSTMState(*(rng.normal(size=(batch, C)).astype(np.float32)
                                         for _ in range(2))),
      memory=rng.normal(size=(batch, N, W)).astype(np.float32),
      usage=rng.uniform(0, 1, size=(batch, N)).astype(np.float32),
      link=link, precedence=d(batch), read_weights=d(batch, R), write_weights=d(batch),
      read_vectors=rng.normal(size=(batch, R, W)).astype(np.float32))


def test_step_matches_numpy_reference():
  cell = dnc.DNCCell(IN, OUT, memory_size=N, word_size=W, num_read_heads=R, controller_size=C,
                     rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  state = _random_state(cell, rng, 3)
  x = rng.normal(size=(3, IN)).astype(np.float32)
  new, y = jax.jit(lambda s, x: cell(s, x))(state, x)
  for b in range(3):
    ref = _reference_step(cell, jax.tree.map(lambda v, b=b: np.asarray(v[b]), state), x[b])
    np.testing.assert_allclose(y[b], ref["y"], rtol=2e-4, atol=2e-5)
    for name in ("memory", "usage", "link", "precedence", "read_weights", "write_weights",
                 "read_vectors"):
      np.testing.assert_allclose(getattr(new, name)[b], ref[name], rtol=2e-4, atol=2e-5,
                                 err_msg=name)


def test_initial_state_runs_and_grads_are_finite():
  cell = dnc.DNCCell(IN, OUT, memory_size=N, word_size=W, num_read_heads=R, controller_size=C,
                     rngs=nnx.Rngs(1))
  s = cell.initialize_carry((2, IN))
  assert s.link.shape == (2, N, N) and s.usage.shape == (2, N)
  np.testing.assert_allclose(s.memory, 1e-6)
  graphdef, params = nnx.split(cell)
  x = jnp.asarray(np.random.default_rng(2).integers(0, 2, size=(2, 6, IN)), jnp.float32)

  def loss(params):
    _, ys, _ = sequence.run_cell(nnx.merge(graphdef, params), x, remat=True)
    return jnp.sum(jnp.sin(ys))

  grads = jax.jit(jax.grad(loss))(params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  rnn = nnx.RNN(cell, rngs=False)
  ys, ys_rnn = nnx.jit(lambda rnn, x: (sequence.run_cell(rnn.cell, x)[1], rnn(x)))(rnn, x)
  np.testing.assert_allclose(ys_rnn, ys, rtol=1e-5, atol=1e-6)


def test_feedforward_and_bad_options():
  cell = dnc.DNCCell(IN, OUT, memory_size=N, word_size=W, controller="feedforward",
                     controller_size=C, rngs=nnx.Rngs(0))
  _, y = jax.jit(lambda s, x: cell(s, x))(cell.initialize_carry((IN,)), jnp.ones((IN,)))
  assert y.shape == (OUT,)
  with pytest.raises(ValueError, match="memory_size"):
    dnc.DNCCell(IN, OUT, memory_size=0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="controller"):
    dnc.DNCCell(IN, OUT, controller="transformer", rngs=nnx.Rngs(0))
