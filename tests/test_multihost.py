"""memjax.sharded across two processes (jax.distributed, gloo collectives on CPU).

The test starts two copies of this file as workers on localhost, each with
two CPU devices, so one memory is split over 4 devices in 2 processes. Both
run the same inserts, uses, deletes and lookups; their results and the
gathered final memory must equal the unsharded store's, computed here in
the test process on one device.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np

_SLOTS, _KEY, _VALUE, _K = 4 * 32 * 2, 6, 3, 7


def _operations(rng):
  """The same op sequence for the workers and the reference: (name, args) pairs."""
  ops = []
  for step in range(4):
    batch = 150 if step < 2 else 40
    ops.append(("insert", rng.integers(-2, 3, (batch, _KEY)).astype(np.float32),
                rng.normal(size=(batch, _VALUE)).astype(np.float32), rng.random(batch) < 0.9))
    ops.append(("lookup", rng.normal(size=(5, _KEY)).astype(np.float32)))
    ops.append(("delete", rng.integers(0, 150 * (step + 1), 8)))
  return ops


def _run(ops, insert, lookup, mark_used, delete):
  results = []
  for op in ops:
    if op[0] == "insert":
      insert(*op[1:])
    elif op[0] == "lookup":
      result = lookup(op[1])
      results.append(result)
      mark_used(result.indices)
    else:
      delete(op[1])
  return results


def _worker(process_id: int, port: int, out: str) -> None:
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                             process_id=process_id, initialization_timeout=120)
  from jax.experimental import multihost_utils
  from jax.sharding import Mesh

  from memjax import sharded

  assert jax.device_count() == 4 and jax.local_device_count() == 2
  mesh = Mesh(np.array(jax.devices()), ("memory",))
  state = {"memory": sharded.init(_SLOTS, _KEY, _VALUE, mesh=mesh, policy="lru")}

  def insert(keys, values, mask):
    state["memory"] = sharded.insert(state["memory"], keys, values, mask=mask, mesh=mesh)

  def lookup(queries):
    return sharded.lookup(state["memory"], queries, _K, mesh=mesh)

  def mark_used(indices):
    state["memory"] = sharded.mark_used(state["memory"], indices, mesh=mesh)

  def delete(ids):
    state["memory"] = sharded.delete(state["memory"], ids, mesh=mesh)

  results = _run(_operations(np.random.default_rng(0)), insert, lookup, mark_used, delete)
  arrays = {}
  for i, result in enumerate(results):
    for name in result._fields:
      arrays[f"lookup{i}_{name}"] = np.asarray(getattr(result, name).addressable_data(0))
  memory = state["memory"]
  for name in ("keys", "values", "valid", "ids", "inserted_at", "last_used", "hits"):
    arrays[f"memory_{name}"] = np.asarray(
        multihost_utils.process_allgather(getattr(memory, name), tiled=True))
  np.savez(os.path.join(out, f"process{process_id}.npz"), **arrays)
  jax.distributed.shutdown()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_the_single_process_store(tmp_path):
  import jax

  from memjax import store

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
  env.pop("XLA_FLAGS", None)
  port = _free_port()
  workers = [subprocess.Popen([sys.executable, os.path.abspath(__file__), str(i), str(port),
                               str(tmp_path)], env=env, cwd=root, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = []
  for worker in workers:
    try:
      logs.append(worker.communicate(timeout=300)[0])
    except subprocess.TimeoutExpired:
      for w in workers:
        w.kill()
      raise
  assert all(w.returncode == 0 for w in workers), "\n\n".join(log[-3000:] for log in logs)

  state = {"memory": store.init(_SLOTS, _KEY, _VALUE, policy="lru")}
  insert_fn, lookup_fn = jax.jit(store.insert), jax.jit(store.lookup, static_argnums=2)
  mark_fn, delete_fn = jax.jit(store.mark_used), jax.jit(store.delete)

  def insert(keys, values, mask):
    state["memory"] = insert_fn(state["memory"], keys, values, mask=mask)

  def lookup(queries):
    return lookup_fn(state["memory"], queries, _K)

  def mark_used(indices):
    state["memory"] = mark_fn(state["memory"], indices)

  def delete(ids):
    state["memory"] = delete_fn(state["memory"], ids)

  want = _run(_operations(np.random.default_rng(0)), insert, lookup, mark_used, delete)
  for process in range(2):
    got = np.load(tmp_path / f"process{process}.npz")
    for i, result in enumerate(want):
      for name in result._fields:
        np.testing.assert_array_equal(got[f"lookup{i}_{name}"], np.asarray(getattr(result, name)),
                                      err_msg=f"process {process}, lookup {i}, {name}")
    for name in ("keys", "values", "valid", "ids", "inserted_at", "last_used", "hits"):
      np.testing.assert_array_equal(got[f"memory_{name}"],
                                    np.asarray(getattr(state["memory"], name)),
                                    err_msg=f"process {process}, memory.{name}")
  assert np.asarray(want[-1].found).all()


if __name__ == "__main__":
  _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
