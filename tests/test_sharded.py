"""memjax.sharded on 8 host devices: every result identical to the unsharded store.

The suite runs with one CPU device, so this module re-runs itself in a
subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8 (the
`test_in_8_device_subprocess` case); there, the other cases run.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

_DEVICES = 8
_CHILD = "MEMJAX_SHARDED_CHILD"
needs_8 = pytest.mark.skipif(jax.device_count() < _DEVICES,
                             reason="runs in the 8-device subprocess")


@pytest.mark.skipif(os.environ.get(_CHILD) == "1", reason="already in the subprocess")
def test_in_8_device_subprocess():
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={_DEVICES}",
             JAX_PLATFORMS="cpu", **{_CHILD: "1"})
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                         os.path.abspath(__file__)], cwd=root, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
  summary = proc.stdout.strip().splitlines()[-1]
  assert " passed" in summary and "1 skipped" in summary, summary  # only this case skips


if jax.device_count() >= _DEVICES:
  import jax.numpy as jnp
  from flax import nnx
  from jax.sharding import Mesh
  from jax.sharding import PartitionSpec as P

  from memjax import sharded
  from memjax import store
  from memjax.nn import product_keys

  _MESH = Mesh(np.array(jax.devices()[:_DEVICES]), ("memory",))
  _insert = jax.jit(store.insert)
  _lookup = jax.jit(store.lookup, static_argnames=("k", "metric", "chunk_size"))
  _mark_used = jax.jit(store.mark_used)
  _update = jax.jit(store.update)
  _delete = jax.jit(store.delete)


def _assert_same(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@needs_8
@pytest.mark.parametrize("policy", ["fifo", "lru", "least_used"])
def test_random_operations_match_the_unsharded_store(policy):
  rng = np.random.default_rng(["fifo", "lru", "least_used"].index(policy))
  n, d, dv = _DEVICES * 32 * 2, 4, 2
  plain = store.init(n, d, dv, policy=policy)
  split = sharded.init(n, d, dv, mesh=_MESH, policy=policy)
  assert split.keys.sharding.spec == P("memory", None)
  for batch in (n + 7, 37, 90, 37):  # the first overfills; few shapes, few compiles
    keys = rng.integers(-2, 3, (batch, d)).astype(np.float32)  # ties everywhere
    values = rng.normal(size=(batch, dv)).astype(np.float32)
    mask = rng.random(batch) < 0.9
    plain = _insert(plain, keys, values, mask=mask)
    split = sharded.insert(split, keys, values, mask=mask, mesh=_MESH)
    queries = rng.integers(-2, 3, (5, d)).astype(np.float32)
    for metric in ("inner_product", "cosine"):
      want = _lookup(plain, queries, k=9, metric=metric)
      got = sharded.lookup(split, queries, 9, mesh=_MESH, metric=metric)
      _assert_same(want, got)
    plain = _mark_used(plain, want.indices)
    split = sharded.mark_used(split, got.indices, mesh=_MESH)
    gone = rng.integers(0, int(plain.next_id), 6)
    plain = _delete(plain, gone)
    split = sharded.delete(split, gone, mesh=_MESH)
    changed = rng.integers(0, int(plain.next_id), 4)
    new_values = rng.normal(size=(4, dv)).astype(np.float32)
    new_keys = rng.integers(-2, 3, (4, d)).astype(np.float32)
    plain = _update(plain, changed, keys=new_keys, values=new_values)
    split = sharded.update(split, changed, keys=new_keys, values=new_values, mesh=_MESH)
    _assert_same(plain, split)
    np.testing.assert_array_equal(sharded.slots_of(split, changed, mesh=_MESH),
                                  store.slots_of(plain, changed))
    assert int(sharded.size(split)) == int(store.size(plain))
    assert split.keys.sharding.spec == P("memory", None)


@needs_8
def test_lookup_on_a_larger_table_with_query_groups_and_bfloat16():
  rng = np.random.default_rng(7)
  n, d = _DEVICES * 32 * 40, 3  # d = 3: 16-query groups, so 40 queries take 3 passes
  for dtype, chunk in ((jnp.float32, None), (jnp.bfloat16, 96)):
    plain = store.init(n, d, 1, key_dtype=dtype)
    plain = _insert(plain, rng.normal(size=(n - 100, d)).astype(np.float32),
                    rng.normal(size=(n - 100, 1)).astype(np.float32))
    split = sharded.shard(plain, _MESH)
    queries = rng.normal(size=(40, d)).astype(np.float32)
    _assert_same(_lookup(plain, queries, k=20, chunk_size=chunk),
                 sharded.lookup(split, queries, 20, mesh=_MESH, chunk_size=chunk))


@needs_8
def test_lookup_moves_no_table_and_no_score_matrix_between_devices():
  n, d, q, k = _DEVICES * 32 * 64, 8, 16, 4
  split = sharded.init(n, d, 1, mesh=_MESH)
  hlo = jax.jit(lambda m, x: sharded.lookup(m, x, k, mesh=_MESH)).lower(
      split, jnp.ones((q, d))).compile().as_text()
  gathers = [line for line in hlo.splitlines() if "all-gather(" in line or "all-reduce(" in line]
  assert gathers
  for line in gathers:
    shape = line.split("=")[1].split("all-")[0]
    dims = [int(x) for x in shape[shape.index("[") + 1:shape.index("]")].split(",") if x]
    assert np.prod(dims) <= _DEVICES * q * 32 * k, line  # candidates only, never N or Q x N


@needs_8
def test_single_query_and_lookup_result_is_replicated():
  rng = np.random.default_rng(3)
  plain = _insert(store.init(256, 4, 2), rng.normal(size=(200, 4)).astype(np.float32),
                  rng.normal(size=(200, 2)).astype(np.float32))
  split = sharded.shard(plain, _MESH)
  query = rng.normal(size=(4,)).astype(np.float32)
  got = sharded.lookup(split, query, 5, mesh=_MESH)
  _assert_same(_lookup(plain, query, k=5), got)
  assert got.scores.sharding.is_fully_replicated


@needs_8
def test_empty_query_batch_and_an_overflowing_score_match_the_store():
  plain = store.init(_DEVICES * 32, 2, 1)
  keys = jnp.array([[3e38, 3e38], [1.0, 0.0], [0.0, 1.0]])  # row 0 . row 0 overflows to +inf
  plain = store.insert(plain, keys, jnp.array([[7.0], [8.0], [9.0]]))
  split = sharded.shard(plain, _MESH)
  _assert_same(sharded.lookup(split, jnp.zeros((0, 2)), 3, mesh=_MESH),
               store.lookup(plain, jnp.zeros((0, 2)), 3))
  got = sharded.lookup(split, jnp.array([[3e38, 3e38]]), 4, mesh=_MESH)
  _assert_same(got, store.lookup(plain, jnp.array([[3e38, 3e38]]), 4))
  assert got.found.tolist() == [[True, True, True, False]]
  assert got.scores[0, 0] == np.inf and got.ids[0, 0] == 0


@needs_8
def test_save_on_8_devices_restore_on_4(tmp_path):
  rng = np.random.default_rng(5)
  split = sharded.init(512, 4, 3, mesh=_MESH, policy="lru", value_dtype=jnp.int32)
  split = sharded.insert(split, rng.normal(size=(300, 4)).astype(np.float32),
                         rng.integers(0, 100, (300, 3)), mesh=_MESH)
  split = sharded.mark_used(split, jnp.array([3, 3, 200]), mesh=_MESH)
  sharded.save(tmp_path / "memory", split)
  mesh4 = Mesh(np.array(jax.devices()[:4]), ("memory",))
  restored = sharded.restore(tmp_path / "memory", mesh=mesh4)
  assert restored.policy == "lru" and restored.values.dtype == jnp.int32
  assert len(restored.keys.sharding.device_set) == 4
  _assert_same(split, restored)
  queries = rng.normal(size=(3, 4)).astype(np.float32)
  _assert_same(sharded.lookup(split, queries, 6, mesh=_MESH),
               sharded.lookup(restored, queries, 6, mesh=mesh4))
  # Work goes on after the restore exactly as before it.
  items = rng.normal(size=(40, 4)).astype(np.float32), rng.integers(0, 9, (40, 3))
  _assert_same(sharded.insert(split, *items, mesh=_MESH),
               sharded.insert(restored, *items, mesh=mesh4))


@needs_8
def test_bad_layouts():
  with pytest.raises(ValueError, match="multiple of 32 x the 8 shards"):
    sharded.init(100, 4, 1, mesh=_MESH)
  with pytest.raises(ValueError, match="axis must name a mesh axis"):
    sharded.init(256, 4, 1, mesh=_MESH, axis="model")
  with pytest.raises(TypeError, match=r"mesh must be a jax\.sharding\.Mesh"):
    sharded.init(256, 4, 1, mesh="memory")


@needs_8
def test_product_key_memory_sharded_matches_unsharded():
  kwargs = dict(num_sub_keys=16, query_size=8, num_heads=2, k=4)
  plain = product_keys.ProductKeyMemory(6, 5, rngs=nnx.Rngs(0), **kwargs)
  split = product_keys.ProductKeyMemory(6, 5, mesh=_MESH, rngs=nnx.Rngs(0), **kwargs)
  assert split.values[...].sharding.spec == P("memory", None)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(7, 6)), jnp.float32)

  @nnx.jit
  def output_and_grads(model, x):
    return model(x), nnx.grad(lambda model: jnp.sum(model(x) ** 2))(model)

  out_plain, g_plain = output_and_grads(plain, x)
  out_split, g_split = output_and_grads(split, x)
  np.testing.assert_allclose(out_plain, out_split, rtol=1e-5, atol=1e-6)
  g_plain, g_split = nnx.state(g_plain), nnx.state(g_split)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               g_plain, g_split)
  by_slot = jax.sharding.NamedSharding(_MESH, P("memory", None))
  assert g_split["values"][...].sharding.is_equivalent_to(by_slot, 2)  # the gradient stays split
