"""memjax.addressing against hand-worked numbers, a NumPy reference and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads

from memjax import addressing
from tests import reference

N, W, S = 6, 4, 3


def _distribution(rng, n):
  x = rng.uniform(0.05, 1.0, size=n)
  return x / x.sum()


class TestHandWorked:

  def test_cosine_similarity(self):
    memory = jnp.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [1.0, 1.0]])
    key = jnp.array([2.0, 0.0])
    np.testing.assert_allclose(addressing.cosine_similarity(memory, key),
                               [1.0, 0.0, -1.0, 1 / np.sqrt(2)], atol=1e-6)

  def test_content_weights(self):
    # similarities [1, 0, -1] with strength ln(2): weights ∝ [2, 1, 1/2].
    memory = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    w = addressing.content_weights(memory, jnp.array([1.0, 0.0]), np.log(2.0))
    np.testing.assert_allclose(w, np.array([2.0, 1.0, 0.5]) / 3.5, atol=1e-6)

  def test_interpolate(self):
    w = addressing.interpolate(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), 0.25)
    np.testing.assert_allclose(w, [0.25, 0.75])

  @pytest.mark.parametrize("kernel, expected", [
      ([0.0, 1.0, 0.0], [0.1, 0.2, 0.3, 0.4]),  # stay
      ([0.0, 0.0, 1.0], [0.4, 0.1, 0.2, 0.3]),  # one slot forward (wraps)
      ([1.0, 0.0, 0.0], [0.2, 0.3, 0.4, 0.1]),  # one slot back
      ([0.5, 0.0, 0.5], [0.3, 0.2, 0.3, 0.2]),  # half back, half forward
  ])
  def test_shift(self, kernel, expected):
    w = jnp.array([0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(addressing.shift(w, jnp.array(kernel)), expected, atol=1e-6)

  def test_shift_five_wide(self):
    # Index S//2 + 2 moves weight two slots forward.
    w = jnp.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    out = addressing.shift(w, jnp.array([0.0, 0.0, 0.0, 0.0, 1.0]))
    np.testing.assert_allclose(out, [0, 0, 1, 0, 0, 0], atol=1e-7)

  def test_sharpen(self):
    # [0.2, 0.8] squared: [0.04, 0.64] / 0.68.
    out = addressing.sharpen(jnp.array([0.2, 0.8]), 2.0)
    np.testing.assert_allclose(out, [0.04 / 0.68, 0.64 / 0.68], atol=1e-6)


class TestAgainstReference:

  @pytest.mark.parametrize("seed", range(3))
  def test_pipeline(self, seed):
    rng = np.random.default_rng(seed)
    memory = rng.normal(size=(N, W)).astype(np.float32)
    key = rng.normal(size=W).astype(np.float32)
    prev = _distribution(rng, N).astype(np.float32)
    shift_w = _distribution(rng, S).astype(np.float32)
    strength, gate, gamma = 3.0, 0.7, 2.5
    ref_c = reference.content_weights(memory, key, strength)
    np.testing.assert_allclose(addressing.cosine_similarity(memory, key),
                               reference.cosine_similarity(memory, key), atol=1e-5)
    np.testing.assert_allclose(addressing.content_weights(memory, key, strength), ref_c,
                               atol=1e-5)
    ref_g = reference.interpolate(ref_c, prev, gate)
    np.testing.assert_allclose(addressing.interpolate(ref_c.astype(np.float32), prev, gate),
                               ref_g, atol=1e-6)
    ref_s = reference.shift(ref_g, shift_w)
    np.testing.assert_allclose(addressing.shift(ref_g.astype(np.float32), shift_w), ref_s,
                               atol=1e-6)
    ref_w = reference.sharpen(ref_s, gamma)
    np.testing.assert_allclose(addressing.sharpen(ref_s.astype(np.float32), gamma), ref_w,
                               atol=1e-5)
    np.testing.assert_allclose(
        addressing.ntm_weights(memory, prev, key, strength, gate, shift_w, gamma), ref_w,
        atol=1e-5)


class TestGradients:

  def test_check_grads(self):
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
      memory = jnp.asarray(rng.normal(size=(N, W)))
      key = jnp.asarray(rng.normal(size=W))
      prev = jnp.asarray(_distribution(rng, N))
      shift_w = jnp.asarray(_distribution(rng, S))
      tol = dict(atol=1e-4, rtol=1e-4)
      check_grads(jax.jit(addressing.cosine_similarity), (memory, key), order=1, **tol)
      check_grads(jax.jit(addressing.content_weights), (memory, key, 2.0), order=1, **tol)
      check_grads(jax.jit(addressing.interpolate), (prev, prev[::-1], 0.3), order=1, **tol)
      check_grads(jax.jit(addressing.shift), (prev, shift_w), order=1, **tol)
      check_grads(jax.jit(addressing.sharpen), (prev, 3.0), order=1, **tol)
      check_grads(jax.jit(addressing.ntm_weights), (memory, prev, key, 2.0, 0.6, shift_w, 1.5),
                  order=1, **tol)


_probs = hnp.arrays(np.float32, (N,), elements=st.floats(0, 1, width=32))


class TestProperties:

  @given(hnp.arrays(np.float32, (N, W), elements=st.floats(-1e3, 1e3, width=32)),
         hnp.arrays(np.float32, (W,), elements=st.floats(-1e3, 1e3, width=32)),
         st.floats(0, 1e4))
  def test_content_weights_are_a_distribution(self, memory, key, strength):
    w = np.asarray(_content(memory, key, np.float32(strength)))
    assert np.all(w >= 0)
    assert abs(w.sum() - 1) < 1e-5

  @given(_probs, _probs, st.floats(0, 1), st.floats(1, 50), hnp.arrays(
      np.float32, (S,), elements=st.floats(0, 1, width=32)))
  def test_location_steps_keep_a_distribution(self, a, b, gate, gamma, kernel):
    a = a / a.sum() if a.sum() > 0 else np.full(N, 1 / N, np.float32)
    b = b / b.sum() if b.sum() > 0 else np.full(N, 1 / N, np.float32)
    kernel = kernel / kernel.sum() if kernel.sum() > 0 else np.array([0, 1, 0], np.float32)
    g = np.asarray(_interpolate(a, b, np.float32(gate)))
    s = np.asarray(_shift(g, kernel))
    w = np.asarray(_sharpen(s, np.float32(gamma)))
    for x in (g, s, w):
      assert np.all(x >= 0)
      assert abs(x.sum() - 1) < 1e-5


_content = jax.jit(addressing.content_weights)
_interpolate = jax.jit(addressing.interpolate)
_shift = jax.jit(addressing.shift)
_sharpen = jax.jit(addressing.sharpen)
