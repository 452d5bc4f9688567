"""memjax.access: read and erase/add write."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from memjax import access
from tests import reference


def test_read_by_hand():
  memory = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
  np.testing.assert_allclose(access.read(memory, jnp.array([0.5, 0.5, 0.0])), [2.0, 3.0])
  heads = jnp.array([[0.0, 0.0, 1.0], [0.25, 0.75, 0.0]])
  np.testing.assert_allclose(access.read(memory, heads), [[5.0, 6.0], [2.5, 3.5]])


def test_write_by_hand():
  # Slot 0 fully weighted: erase its first column, then add [1, 1].
  memory = jnp.array([[2.0, 3.0], [4.0, 5.0]])
  out = access.write(memory, jnp.array([1.0, 0.0]), jnp.array([1.0, 0.0]), jnp.array([1.0, 1.0]))
  np.testing.assert_allclose(out, [[1.0, 4.0], [4.0, 5.0]])
  # Half weight on slot 1, erase all by half, add [2, 0] by half.
  out = access.write(memory, jnp.array([0.0, 0.5]), jnp.array([1.0, 1.0]), jnp.array([2.0, 0.0]))
  np.testing.assert_allclose(out, [[2.0, 3.0], [3.0, 2.5]])


def test_against_reference():
  rng = np.random.default_rng(1)
  memory = rng.normal(size=(5, 3)).astype(np.float32)
  w = rng.dirichlet(np.ones(5), size=2).astype(np.float32)
  e = rng.uniform(size=(2, 3)).astype(np.float32)
  a = rng.normal(size=(2, 3)).astype(np.float32)
  np.testing.assert_allclose(access.read(memory, w[0]), reference.read(memory, w[0]), atol=1e-6)
  np.testing.assert_allclose(access.write(memory, w[0], e[0], a[0]),
                             reference.write(memory, w[:1], e[:1], a[:1]), atol=1e-6)
  np.testing.assert_allclose(access.write(memory, w, e, a), reference.write(memory, w, e, a),
                             atol=1e-6)


def test_multi_head_erase_is_order_free():
  rng = np.random.default_rng(2)
  memory = rng.normal(size=(4, 3)).astype(np.float32)
  w = rng.dirichlet(np.ones(4), size=2).astype(np.float32)
  e = rng.uniform(size=(2, 3)).astype(np.float32)
  a = rng.normal(size=(2, 3)).astype(np.float32)
  np.testing.assert_allclose(access.write(memory, w, e, a),
                             access.write(memory, w[::-1], e[::-1], a[::-1]), atol=1e-6)


def test_check_grads():
  rng = np.random.default_rng(3)
  with jax.enable_x64(True):
    memory = jnp.asarray(rng.normal(size=(5, 3)))
    w = jnp.asarray(rng.dirichlet(np.ones(5), size=2))
    e = jnp.asarray(rng.uniform(size=(2, 3)))
    a = jnp.asarray(rng.normal(size=(2, 3)))
    check_grads(jax.jit(access.read), (memory, w), order=1, atol=1e-5, rtol=1e-5)
    check_grads(jax.jit(access.write), (memory, w[0], e[0], a[0]), order=1, atol=1e-5,
                rtol=1e-5)
    check_grads(jax.jit(access.write), (memory, w, e, a), order=1, atol=1e-5, rtol=1e-5)
