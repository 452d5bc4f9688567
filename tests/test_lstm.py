"""LSTM baseline cell: a step against the LSTM equations in NumPy, and stacking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memjax.nn import controllers
from memjax.nn import lstm


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def test_two_layer_step_matches_numpy():
  cell = lstm.LSTMCell(3, 2, hidden_size=4, num_layers=2, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  carry = tuple(controllers.LSTMState(*(rng.normal(size=(1, 4)).astype(np.float32)
                                        for _ in range(2))) for _ in range(2))
  x = rng.normal(size=(1, 3)).astype(np.float32)
  new, y = jax.jit(lambda c, x: cell(c, x))(carry, x)
  h = x[0].astype(np.float64)
  for layer, (hp, cp) in zip(cell.layers, carry):
    z = np.concatenate([h, hp[0]]) @ np.asarray(layer.gates.kernel[...]) + np.asarray(
        layer.gates.bias[...])
    i, f, g, o = np.split(z, 4)
    c = _sigmoid(f + 1) * cp[0] + _sigmoid(i) * np.tanh(g)
    h = _sigmoid(o) * np.tanh(c)
  out = h @ np.asarray(cell.output.kernel[...]) + np.asarray(cell.output.bias[...])
  np.testing.assert_allclose(y[0], out, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new[1].h[0], h, rtol=1e-5, atol=1e-6)


def test_runs_under_nnx_rnn_and_rejects_bad_sizes():
  cell = lstm.LSTMCell(3, 2, hidden_size=4, rngs=nnx.Rngs(0))
  assert nnx.RNN(cell, rngs=False)(jnp.ones((2, 5, 3))).shape == (2, 5, 2)
  with pytest.raises(ValueError, match="hidden_size"):
    lstm.LSTMCell(3, 2, hidden_size=0, rngs=nnx.Rngs(0))
