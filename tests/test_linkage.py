"""memjax.linkage: DNC precedence, temporal link matrix, read modes."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads

from memjax import linkage
from tests import reference

N = 5


def test_writing_slots_in_order_links_them():
  # Write slot 0, then slot 2, then slot 1, each with full weight.
  link = jnp.zeros((3, 3))
  p = jnp.zeros(3)
  for slot in (0, 2, 1):
    w = jnp.zeros(3).at[slot].set(1.0)
    link = linkage.update_link(link, p, w)
    p = linkage.update_precedence(p, w)
  # L[i, j] = 1 where i was written right after j: 2 after 0, 1 after 2.
  expected = np.zeros((3, 3))
  expected[2, 0] = 1.0
  expected[1, 2] = 1.0
  np.testing.assert_allclose(link, expected, atol=1e-6)
  np.testing.assert_allclose(p, [0, 1, 0], atol=1e-6)
  forward, backward = linkage.directional_weights(link, jnp.array([1.0, 0.0, 0.0]))
  np.testing.assert_allclose(forward, [0, 0, 1], atol=1e-6)   # after slot 0 came slot 2
  np.testing.assert_allclose(backward, [0, 0, 0], atol=1e-6)  # nothing before slot 0


def test_precedence_by_hand():
  out = linkage.update_precedence(jnp.array([0.5, 0.5, 0.0]), jnp.array([0.0, 0.0, 0.5]))
  np.testing.assert_allclose(out, [0.25, 0.25, 0.5])


def test_read_weights_by_hand():
  b, c, f = jnp.eye(3)
  out = linkage.read_weights(jnp.array([0.2, 0.3, 0.5]), b, c, f)
  np.testing.assert_allclose(out, [0.2, 0.3, 0.5])


def test_against_reference():
  rng = np.random.default_rng(0)
  link = rng.uniform(size=(N, N)).astype(np.float32) / N
  np.fill_diagonal(link, 0)
  p = rng.dirichlet(np.ones(N)).astype(np.float32) * 0.8
  w = rng.dirichlet(np.ones(N)).astype(np.float32) * 0.7
  rw = rng.dirichlet(np.ones(N)).astype(np.float32)
  np.testing.assert_allclose(linkage.update_precedence(p, w), reference.update_precedence(p, w),
                             atol=1e-6)
  np.testing.assert_allclose(linkage.update_link(link, p, w), reference.update_link(link, p, w),
                             atol=1e-6)
  fwd, bwd = linkage.directional_weights(link, rw)
  ref_f, ref_b = reference.directional_weights(link, rw)
  np.testing.assert_allclose(fwd, ref_f, atol=1e-6)
  np.testing.assert_allclose(bwd, ref_b, atol=1e-6)
  heads = np.stack([rw, rw[::-1]])
  fwd2, bwd2 = linkage.directional_weights(link, heads)
  np.testing.assert_allclose(fwd2[1], reference.directional_weights(link, rw[::-1])[0], atol=1e-6)
  np.testing.assert_allclose(bwd2[0], ref_b, atol=1e-6)


def test_check_grads():
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    link = jnp.asarray(rng.uniform(size=(N, N)) / N)
    p = jnp.asarray(rng.dirichlet(np.ones(N)) * 0.8)
    w = jnp.asarray(rng.dirichlet(np.ones(N)) * 0.7)
    modes = jnp.asarray(rng.dirichlet(np.ones(3)))
    tol = dict(order=1, atol=1e-5, rtol=1e-5)
    check_grads(jax.jit(linkage.update_precedence), (p, w), **tol)
    check_grads(jax.jit(linkage.update_link), (link, p, w), **tol)
    check_grads(jax.jit(linkage.directional_weights), (link, w), **tol)
    check_grads(jax.jit(linkage.read_weights), (modes, p, w, w[::-1]), **tol)


_step = jax.jit(lambda link, p, w: (linkage.update_link(link, p, w),
                                    linkage.update_precedence(p, w)))


@given(hnp.arrays(np.float32, (6, N), elements=st.floats(0, 1, width=32)))
def test_link_invariants_over_a_sequence_of_writes(writes):
  link, p = jnp.zeros((N, N)), jnp.zeros(N)
  for w in writes:
    w = w / max(1.0, float(w.sum()))  # a write weighting sums to at most 1
    link, p = _step(link, p, w)
    lnk = np.asarray(link)
    assert np.all(np.diag(lnk) == 0)
    assert np.all(lnk >= -1e-6) and np.all(lnk <= 1 + 1e-6)
    assert np.all(lnk.sum(axis=0) <= 1 + 1e-5)
    assert np.all(lnk.sum(axis=1) <= 1 + 1e-5)
    assert np.all(np.asarray(p) >= -1e-6) and float(p.sum()) <= 1 + 1e-5
