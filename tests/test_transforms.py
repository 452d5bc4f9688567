"""Every primitive under jit(vmap(...)) equals a Python loop, and runs inside lax.scan."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax import access
from memjax import addressing
from memjax import allocation
from memjax import linkage
from memjax import store

B, N, W, R = 3, 5, 4, 2


def _args(seed):
  rng = np.random.default_rng(seed)
  f = lambda *shape: jnp.asarray(rng.normal(size=(B, *shape)), jnp.float32)
  p = lambda *shape: jnp.asarray(rng.dirichlet(np.ones(shape[-1]), size=(B, *shape[:-1])),
                                 jnp.float32)
  u = lambda *shape: jnp.asarray(rng.uniform(size=(B, *shape)), jnp.float32)
  return {
      "cosine_similarity": (addressing.cosine_similarity, (f(N, W), f(W))),
      "content_weights": (addressing.content_weights, (f(N, W), f(W), u() * 5)),
      "interpolate": (addressing.interpolate, (p(N), p(N), u())),
      "shift": (addressing.shift, (p(N), p(3))),
      "sharpen": (addressing.sharpen, (p(N), 1 + u() * 3)),
      "ntm_weights": (addressing.ntm_weights,
                      (f(N, W), p(N), f(W), u() * 5, u(), p(3), 1 + u())),
      "read": (access.read, (f(N, W), p(R, N))),
      "write": (access.write, (f(N, W), p(N), u(W), f(W))),
      "update_usage": (allocation.update_usage, (u(N), p(N), u(R), p(R, N))),
      "allocation_weights": (allocation.allocation_weights, (u(N),)),
      "write_weights": (allocation.write_weights, (p(N), p(N), u(), u())),
      "update_precedence": (linkage.update_precedence, (p(N), p(N))),
      "update_link": (linkage.update_link, (u(N, N) / N, p(N), p(N))),
      "directional_weights": (linkage.directional_weights, (u(N, N) / N, p(R, N))),
      "read_weights": (linkage.read_weights, (p(3), p(N), p(N), p(N))),
  }


NAMES = list(_args(0))


@pytest.mark.parametrize("name", NAMES)
def test_jit_vmap_equals_loop(name):
  fn, args = _args(1)[name]
  batched = jax.jit(jax.vmap(fn))(*args)
  for i in range(B):
    single = fn(*(a[i] for a in args))
    jax.tree.map(lambda b, s, i=i: np.testing.assert_allclose(b[i], s, rtol=1e-5, atol=1e-6),
                 batched, single)


def test_ntm_and_dnc_steps_under_scan():
  rng = np.random.default_rng(2)
  keys = jnp.asarray(rng.normal(size=(6, W)), jnp.float32)

  def step(carry, key):
    memory, w, usage, link, p = carry
    w = addressing.ntm_weights(memory, w, key, 3.0, 0.9, jnp.array([0.0, 0.1, 0.9]), 2.0)
    memory = access.write(memory, w, jnp.full((W,), 0.5), key)
    usage = allocation.update_usage(usage, w, jnp.array([0.1]), w[None])
    ww = allocation.write_weights(w, allocation.allocation_weights(usage), 1.0, 0.5)
    link, p = linkage.update_link(link, p, ww), linkage.update_precedence(p, ww)
    return (memory, w, usage, link, p), access.read(memory, w)

  init = (jnp.full((N, W), 1e-6), jnp.eye(N)[0], jnp.zeros(N), jnp.zeros((N, N)), jnp.zeros(N))
  loss = lambda ks: jnp.sum(jax.lax.scan(step, init, ks)[1] ** 2)
  value, grad = jax.jit(jax.value_and_grad(loss))(keys)
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
  # The scan equals the same steps unrolled in Python.
  carry, reads = init, []
  for key in keys:
    carry, r = step(carry, key)
    reads.append(r)
  np.testing.assert_allclose(float(value), float(jnp.sum(jnp.stack(reads) ** 2)), rtol=1e-5)


def test_store_vmapped_over_memories():
  rng = np.random.default_rng(3)
  memories = jax.vmap(lambda _: store.init(4, 3, 1, policy="lru"))(jnp.arange(B))
  keys = jnp.asarray(rng.normal(size=(B, 6, 3)), jnp.float32)
  values = jnp.asarray(rng.normal(size=(B, 6, 1)), jnp.float32)
  queries = jnp.asarray(rng.normal(size=(B, 2, 3)), jnp.float32)

  def run(memory, k, v, q):
    memory = store.insert(memory, k[:3], v[:3])
    memory = store.mark_used(memory, store.lookup(memory, q, 2).indices)
    memory = store.insert(memory, k[3:], v[3:])
    return memory, store.lookup(memory, q, 2, chunk_size=3)

  batched = jax.jit(jax.vmap(run))(memories, keys, values, queries)
  run_one = jax.jit(run)
  for i in range(B):
    single = run_one(store.init(4, 3, 1, policy="lru"), keys[i], values[i], queries[i])
    jax.tree.map(lambda b, s, i=i: np.testing.assert_array_equal(b[i], s), batched, single)
