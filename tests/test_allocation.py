"""memjax.allocation: DNC usage, allocation and write weights."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads

from memjax import allocation
from tests import reference

N, R = 5, 2
_unit = st.floats(0, 1, width=32)


def test_update_usage_by_hand():
  # u = (u + w - u w) psi; psi = (1 - f0 r0) (1 - f1 r1).
  usage = jnp.array([0.5, 0.0, 1.0])
  write_w = jnp.array([0.5, 1.0, 0.0])
  free = jnp.array([1.0, 0.5])
  read_w = jnp.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
  out = allocation.update_usage(usage, write_w, free, read_w)
  np.testing.assert_allclose(out, [0.75, 0.5, 0.0], atol=1e-6)


def test_allocation_by_hand():
  # Ascending usage 0.1 (slot 2), 0.2 (slot 0), 0.5 (slot 1), 0.9 (slot 3):
  # a = [0.8 * 0.1, 0.5 * 0.1 * 0.2, 0.9, 0.1 * 0.1 * 0.2 * 0.5].
  out = allocation.allocation_weights(jnp.array([0.2, 0.5, 0.1, 0.9]))
  np.testing.assert_allclose(out, [0.08, 0.01, 0.9, 0.001], atol=1e-5)


def test_write_weights_by_hand():
  out = allocation.write_weights(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), 0.5, 0.25)
  np.testing.assert_allclose(out, [0.375, 0.125])


def test_against_reference():
  rng = np.random.default_rng(0)
  usage = rng.uniform(size=N).astype(np.float32)
  write_w = rng.dirichlet(np.ones(N)).astype(np.float32) * 0.9
  free = rng.uniform(size=R).astype(np.float32)
  read_w = rng.dirichlet(np.ones(N), size=R).astype(np.float32)
  np.testing.assert_allclose(allocation.update_usage(usage, write_w, free, read_w),
                             reference.update_usage(usage, write_w, free, read_w), atol=1e-6)
  np.testing.assert_allclose(allocation.allocation_weights(usage),
                             reference.allocation_weights(usage), atol=1e-6)
  c = rng.dirichlet(np.ones(N)).astype(np.float32)
  np.testing.assert_allclose(allocation.write_weights(c, write_w, 0.8, 0.3),
                             reference.write_weights(c, write_w, 0.8, 0.3), atol=1e-6)


def test_allocation_gradient_flows_through_usage_not_order():
  # d a[phi_j] / d u[phi_i] for i < j is (1 - u_j) prod_{l<j, l != i} u_l; the
  # sort order itself contributes nothing.
  usage = jnp.array([0.3, 0.1, 0.6])
  jac = jax.jit(jax.jacobian(allocation.allocation_weights))(usage)
  eps = allocation.USAGE_EPSILON
  u = eps + (1 - eps) * np.array([0.3, 0.1, 0.6])
  scale = 1 - eps
  # order: slot 1 (0.1), slot 0 (0.3), slot 2 (0.6).
  expected = np.zeros((3, 3))
  expected[1, 1] = -scale
  expected[0, 0] = -u[1] * scale
  expected[0, 1] = (1 - u[0]) * scale
  expected[2, 2] = -u[1] * u[0] * scale
  expected[2, 1] = (1 - u[2]) * u[0] * scale
  expected[2, 0] = (1 - u[2]) * u[1] * scale
  np.testing.assert_allclose(jac, expected, atol=1e-6)


def test_check_grads():
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    usage = jnp.asarray(rng.uniform(0.1, 0.9, size=N))
    write_w = jnp.asarray(rng.dirichlet(np.ones(N)) * 0.9)
    free = jnp.asarray(rng.uniform(size=R))
    read_w = jnp.asarray(rng.dirichlet(np.ones(N), size=R))
    tol = dict(order=1, atol=1e-5, rtol=1e-5)
    check_grads(jax.jit(allocation.update_usage), (usage, write_w, free, read_w), **tol)
    check_grads(jax.jit(allocation.allocation_weights), (usage,), eps=1e-6, **tol)
    check_grads(jax.jit(allocation.write_weights), (write_w, usage / usage.sum(), 0.7, 0.4),
                **tol)
    check_grads(jax.jit(allocation.retention), (free, read_w), **tol)


_update_usage = jax.jit(allocation.update_usage)
_allocation = jax.jit(allocation.allocation_weights)


def _normalise(x):
  """Scales a non-negative vector to sum to at most 1."""
  return x / max(1.0, float(x.sum()))


@given(hnp.arrays(np.float32, (N,), elements=_unit), hnp.arrays(np.float32, (N,), elements=_unit),
       hnp.arrays(np.float32, (R,), elements=_unit), hnp.arrays(np.float32, (R, N), elements=_unit))
def test_usage_stays_in_unit_interval_and_allocation_sums_to_at_most_one(
    usage, write_w, free, read_w):
  write_w = _normalise(write_w)
  read_w = np.stack([_normalise(r) for r in read_w])
  u = np.asarray(_update_usage(usage, write_w, free, read_w))
  assert np.all(u >= 0) and np.all(u <= 1)
  a = np.asarray(_allocation(u))
  assert np.all(a >= 0)
  assert a.sum() <= 1 + 1e-5
