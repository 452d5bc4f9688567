"""No NaN or Inf from finite adversarial input, values and gradients, each case by name."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax import access
from memjax import addressing
from memjax import allocation
from memjax import linkage
from memjax import store


def _ntm_step(memory, prev_w, key, strength, gamma):
  shift_w = jnp.array([0.1, 0.8, 0.1], memory.dtype)
  w = addressing.ntm_weights(memory, prev_w, key, strength, 0.5, shift_w, gamma)
  read = access.read(memory, w)
  new_memory = access.write(memory, w, jnp.full(memory.shape[1], 0.5, memory.dtype), key)
  return w, read, new_memory


def _dnc_step(usage, write_w, read_w, link, precedence):
  free = jnp.full((read_w.shape[0],), 0.5, usage.dtype)
  usage = allocation.update_usage(usage, write_w, free, read_w)
  alloc = allocation.allocation_weights(usage)
  ww = allocation.write_weights(write_w, alloc, 0.9, 0.5)
  link = linkage.update_link(link, precedence, ww)
  precedence = linkage.update_precedence(precedence, ww)
  fwd, bwd = linkage.directional_weights(link, read_w)
  rw = jax.vmap(linkage.read_weights, in_axes=(None, 0, 0, 0))(
      jnp.array([0.3, 0.4, 0.3], usage.dtype), bwd, read_w, fwd)
  return usage, alloc, ww, link, precedence, rw


def _loss_ntm(memory, prev_w, key, strength, gamma):
  w, read, new_memory = _ntm_step(memory, prev_w, key, strength, gamma)
  return (jnp.sum(w.astype(jnp.float32) ** 2) + jnp.sum(read.astype(jnp.float32))
          + jnp.sum(new_memory.astype(jnp.float32)))


def _loss_dnc(*args):
  return sum(jnp.sum(x.astype(jnp.float32)) for x in _dnc_step(*args))


_ntm_value_and_grad = jax.jit(jax.value_and_grad(_loss_ntm, argnums=(0, 1, 2, 3, 4)))
_dnc_value_and_grad = jax.jit(jax.value_and_grad(_loss_dnc, argnums=(0, 1, 2, 3, 4)))


def _assert_finite(tree):
  for leaf in jax.tree.leaves(tree):
    assert np.all(np.isfinite(np.asarray(leaf, np.float32))), leaf


def _ntm_inputs(n=4, w=3, dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  memory = jnp.asarray(rng.normal(size=(n, w)), dtype)
  prev = jnp.full((n,), 1.0 / n, dtype)
  key = jnp.asarray(rng.normal(size=w), dtype)
  return memory, prev, key


def _dnc_inputs(n=4, r=2, dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  usage = jnp.asarray(rng.uniform(size=n), dtype)
  write_w = jnp.asarray(rng.dirichlet(np.ones(n)) * 0.9, dtype)
  read_w = jnp.asarray(rng.dirichlet(np.ones(n), size=r), dtype)
  link = jnp.zeros((n, n), dtype)
  precedence = jnp.zeros((n,), dtype)
  return usage, write_w, read_w, link, precedence


def _check_ntm(memory, prev, key, strength=5.0, gamma=2.0):
  strength = jnp.asarray(strength, memory.dtype)
  gamma = jnp.asarray(gamma, memory.dtype)
  _assert_finite(_ntm_step(memory, prev, key, strength, gamma))
  _assert_finite(_ntm_value_and_grad(memory, prev, key, strength, gamma))
  w = _ntm_step(memory, prev, key, strength, gamma)[0]
  assert abs(float(jnp.sum(w.astype(jnp.float32))) - 1) < (2e-2 if memory.dtype ==
                                                           jnp.bfloat16 else 1e-5)


def test_zero_key():
  memory, prev, key = _ntm_inputs()
  _check_ntm(memory, prev, jnp.zeros_like(key))


def test_all_zero_memory():
  memory, prev, key = _ntm_inputs()
  _check_ntm(jnp.zeros_like(memory), prev, key)
  _check_ntm(jnp.zeros_like(memory), prev, jnp.zeros_like(key))


def test_memory_rows_of_zero_norm():
  memory, prev, key = _ntm_inputs()
  _check_ntm(memory.at[np.array([0, 2])].set(0.0), prev, key)


@pytest.mark.parametrize("strength", [1e2, 1e3, 1e4])
def test_large_strength(strength):
  memory, prev, key = _ntm_inputs()
  _check_ntm(memory, prev, key, strength=strength)
  _check_ntm(memory, prev, memory[1], strength=strength)  # an exact match


@pytest.mark.parametrize("gamma", [1.0, 20.0, 50.0])
def test_large_gamma(gamma):
  memory, _, key = _ntm_inputs()
  peaked = jnp.array([1e-30, 1.0 - 2e-30, 1e-30, 0.0])
  _check_ntm(memory, peaked, key, strength=50.0, gamma=gamma)


def test_every_slot_fully_used():
  usage, write_w, read_w, link, precedence = _dnc_inputs()
  usage = jnp.ones_like(usage)
  _assert_finite(_dnc_step(usage, write_w, jnp.zeros_like(read_w), link, precedence))
  _assert_finite(_dnc_value_and_grad(usage, write_w, jnp.zeros_like(read_w), link, precedence))
  alloc = allocation.allocation_weights(usage)
  assert float(alloc.sum()) < 1e-4  # nothing left to allocate


def test_single_slot():
  memory, prev, key = _ntm_inputs(n=1)
  _check_ntm(memory, prev, key)
  _assert_finite(_dnc_value_and_grad(*_dnc_inputs(n=1)))
  kv = store.insert(store.init(1, 3, 2), jnp.ones((2, 3)), jnp.ones((2, 2)))
  result = store.lookup(kv, jnp.ones((1, 3)), 1)
  assert int(result.ids[0, 0]) == 1  # the second item evicted the first
  _assert_finite(jax.grad(lambda q: store.attend(kv, q, 1).sum())(jnp.ones((1, 3))))


def test_bfloat16():
  memory, prev, key = _ntm_inputs(dtype=jnp.bfloat16)
  _check_ntm(memory, prev, key)
  _check_ntm(memory, prev, key, strength=1e4, gamma=50.0)
  w, read, new_memory = _ntm_step(memory, prev, key, jnp.bfloat16(5), jnp.bfloat16(2))
  assert w.dtype == read.dtype == new_memory.dtype == jnp.bfloat16
  outs = _dnc_step(*_dnc_inputs(dtype=jnp.bfloat16))
  assert all(x.dtype == jnp.bfloat16 for x in outs)
  _assert_finite(outs)
  _assert_finite(_dnc_value_and_grad(*_dnc_inputs(dtype=jnp.bfloat16)))
  # bfloat16 agrees with float32 to bfloat16 precision.
  w32 = _ntm_step(*_ntm_inputs(), jnp.float32(5), jnp.float32(2))[0]
  np.testing.assert_allclose(np.asarray(w, np.float32), w32, atol=2e-2)
