r"""Exact top-k maximum inner product search: memjax against faiss and a plain top_k.

d = 128 float32 keys, 256 queries, k = 32, over N = 1M, 4M and 16M slots:

* memjax:          `memjax.store.lookup` on one CPU device (the block-maxima
                   kernel `store.top_k_slots`);
* memjax-sharded:  `memjax.sharded.lookup` with the table split over 8 host
                   devices (XLA_FLAGS=--xla_force_host_platform_device_count=8);
* faiss:           faiss-cpu `IndexFlatIP.search` (exact, BLAS + heaps);
* jit-top_k:       `jax.jit(lambda q, m: jax.lax.top_k(q @ m.T, k))`, which
                   builds the whole Q x N score matrix (skipped when that
                   matrix would not fit in memory);
* matmul:          this machine's float32 matmul speed, measured in the same
                   run: XLA and NumPy (OpenBLAS) on 4096 x 4096 matrices and
                   XLA on the search's own shape (256 x 128 @ 128 x 65536). The
                   best figure is "peak" in the ratios below.

Every method runs in its own subprocess (so its peak memory is its own; the
peak is read from /proc/self/status VmHWM after resetting it with
/proc/self/clear_refs once the table is resident), with the same number of
threads: XLA's CPU pool and faiss's OpenMP both use all cores (2 here).
Times are the best of `--repeats` runs after one warm-up (compilation).

Install the baseline into the benchmark's environment first (faiss is not a
memjax dependency):

  pip install faiss-cpu

Run (one size per command keeps each under ~10 minutes on 2 cores):

  flock -x /work/cpu.lock python -m benchmarks.topk --sizes=1M
  flock -x /work/cpu.lock python -m benchmarks.topk --sizes=4M
  flock -x /work/cpu.lock python -m benchmarks.topk --sizes=16M --repeats=2

It prints one JSON line per measurement and a Markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

import numpy as np

QUERIES, DIM, K = 256, 128, 32
_MATMUL = 4096
_SEED = 0


def _parse_size(text: str) -> int:
  text = text.strip().upper()
  scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
  return int(text[:-1] if text[-1] in "KM" else text) * scale


def _table(n: int) -> np.ndarray:
  """The key table, generated block by block into one array (no second copy)."""
  out = np.empty((n, DIM), np.float32)
  block = 1 << 18
  for start in range(0, n, block):
    rng = np.random.default_rng((_SEED, start))
    out[start:start + block] = rng.standard_normal((min(block, n - start), DIM), np.float32)
  return out


def _queries() -> np.ndarray:
  return np.random.default_rng((_SEED, 1 << 40)).standard_normal((QUERIES, DIM), np.float32)


def _status(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise KeyError(field)


def _reset_peak() -> int:
  """Resets VmHWM to the current RSS; returns that RSS in bytes."""
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
  return _status("VmRSS")


def _time(fn, repeats: int) -> tuple[float, list[float]]:
  fn()  # warm-up: compilation, first touch
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times), times


def _memory(table: np.ndarray, sharding_of):
  """A full KVMemory holding `table`, each field placed by `sharding_of(PartitionSpec)`."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import PartitionSpec as P

  from memjax import sharded
  from memjax import store

  n = table.shape[0]
  # The callback's shards may be views of `table` (zero copy on the CPU), so
  # nothing is donated: `fill` writes the keys into buffers XLA owns (k * 1
  # is a copy once simplified), and the caller can then free `table`. The
  # result is waited for here: otherwise the copy would still be pending when
  # the benchmark resets the peak-memory mark and would be counted as the
  # search's memory (the 1.6x once reported for 4M unsharded).
  keys = jax.make_array_from_callback(table.shape, sharding_of(P("memory", None)),
                                      lambda index: table[index])
  fill = jax.jit(lambda k: store.init(n, DIM, 1).replace(
      keys=k * jnp.ones((), k.dtype), valid=jnp.ones((n,), bool),
      ids=jnp.arange(n, dtype=jnp.int32)),
      out_shardings=jax.tree.map(sharding_of, sharded.specs()))
  memory = jax.block_until_ready(fill(keys))
  keys.delete()
  return memory


def _child(method: str, n: int, repeats: int) -> dict:
  """One measurement, in this (fresh) process."""
  queries = _queries()
  row = {"method": method, "n": n, "threads": os.cpu_count()}
  if method == "matmul":
    import jax
    import jax.numpy as jnp
    a = np.random.default_rng(1).standard_normal((_MATMUL, _MATMUL), np.float32)
    flops = 2 * _MATMUL ** 3
    aj = jnp.asarray(a)
    square = jax.jit(lambda x: x @ x)
    best, _ = _time(lambda: square(aj).block_until_ready(), repeats)
    row["xla_square_gflops"] = flops / best / 1e9
    best, _ = _time(lambda: a @ a, repeats)
    row["numpy_square_gflops"] = flops / best / 1e9
    keys = jnp.asarray(np.random.default_rng(2).standard_normal((1 << 16, DIM), np.float32))
    qj = jnp.asarray(queries)
    scores = jax.jit(lambda q, m: q @ m.T)
    best, _ = _time(lambda: scores(qj, keys).block_until_ready(), repeats)
    row["xla_search_shape_gflops"] = 2 * QUERIES * DIM * (1 << 16) / best / 1e9
    row["peak_gflops"] = max(row["xla_square_gflops"], row["numpy_square_gflops"],
                             row["xla_search_shape_gflops"])
    return row

  table = _table(n)
  row["table_bytes"] = table.nbytes
  if method == "faiss":
    import faiss
    faiss.omp_set_num_threads(os.cpu_count())
    index = faiss.IndexFlatIP(DIM)
    index.add(table)
    del table
    base = _reset_peak()
    search = lambda: index.search(queries, K)
    best, times = _time(search, repeats)
    _, indices = search()
  else:
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh
    from jax.sharding import NamedSharding
    from jax.sharding import SingleDeviceSharding

    from memjax import sharded
    from memjax import store

    row["devices"] = jax.device_count()
    qj = jnp.asarray(queries)
    if method == "jit-top_k":
      keys = jnp.asarray(table)
      del table
      args = (qj, keys)
      fn = jax.jit(lambda q, m: jax.lax.top_k(q @ m.T, K))
    elif method == "memjax-sharded":
      mesh = Mesh(np.array(jax.devices()), ("memory",))
      memory = _memory(table, lambda spec: NamedSharding(mesh, spec))
      del table
      args = (memory, qj)
      fn = jax.jit(lambda m, q: sharded.lookup(m, q, K, mesh=mesh))
    else:
      device = SingleDeviceSharding(jax.devices()[0])
      memory = _memory(table, lambda spec: device)
      del table
      args = (memory, qj)
      fn = jax.jit(lambda m, q: store.lookup(m, q, K))
    # Compiled before the peak is reset: compilation memory is not the search's,
    # and nothing of the search has been allocated yet.
    compiled = fn.lower(*args).compile()
    jax.block_until_ready(args)
    gc.collect()
    base = _reset_peak()
    search = lambda: jax.block_until_ready(compiled(*args))
    best, times = _time(search, repeats)
    out = compiled(*args)
    indices = np.asarray(out[1] if method == "jit-top_k" else out.indices)
  row["seconds"] = best
  row["times"] = times
  row["gflops"] = 2 * QUERIES * n * DIM / best / 1e9
  row["resident_bytes_before"] = base
  row["extra_bytes"] = _status("VmHWM") - base
  row["peak_over_table"] = (row["table_bytes"] + row["extra_bytes"]) / row["table_bytes"]
  row["indices_checksum"] = int(np.asarray(indices, np.int64).sum())
  np.save(os.environ["BENCH_INDICES"], np.asarray(indices, np.int64))
  return row


def _spawn(method: str, n: int, repeats: int, scratch: str) -> dict:
  env = dict(os.environ)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
  env["JAX_PLATFORMS"] = "cpu"
  env["BENCH_INDICES"] = os.path.join(scratch, f"{method}-{n}.npy")
  if method == "memjax-sharded":
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  else:
    env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-m", "benchmarks.topk", "--child", method,
                         "--sizes", str(n), "--repeats", str(repeats)], env=env, cwd=root,
                        capture_output=True, text=True)
  if proc.returncode:
    return {"method": method, "n": n, "error": proc.stderr.strip().splitlines()[-1:]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _fits(n: int) -> bool:
  """Whether jit-top_k's Q x N score matrix (plus the table) fits in half the free memory."""
  with open("/proc/meminfo") as f:
    free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
  return (QUERIES * n * 4 + n * DIM * 4) * 2 < free


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="1M,4M,16M")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--methods", default="matmul,memjax,memjax-sharded,faiss,jit-top_k")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--out", default=None, help="also write the rows as JSON lines here")
  args = parser.parse_args()
  if args.child:
    print(json.dumps(_child(args.child, _parse_size(args.sizes), args.repeats)))
    return
  import tempfile

  methods = args.methods.split(",")
  rows = []
  peak = None
  with tempfile.TemporaryDirectory() as scratch:
    if "matmul" in methods:
      row = _spawn("matmul", 0, args.repeats, scratch)
      print(json.dumps(row), flush=True)
      rows.append(row)
      peak = row.get("peak_gflops")
    for n in map(_parse_size, args.sizes.split(",")):
      found = {}
      for method in methods:
        if method == "matmul":
          continue
        if method == "jit-top_k" and not _fits(n):
          row = {"method": method, "n": n, "skipped": "the Q x N score matrix does not fit"}
        else:
          row = _spawn(method, n, args.repeats, scratch)
          path = os.path.join(scratch, f"{method}-{n}.npy")
          if os.path.exists(path):
            found[method] = np.load(path)
        rows.append(row)
        print(json.dumps(row), flush=True)
      if "memjax" in found:
        for method, indices in found.items():
          same = np.mean(np.sort(indices, axis=1) == np.sort(found["memjax"], axis=1))
          rows.append({"method": method, "n": n, "same_results_as_memjax": float(same),
                       "identical_order": bool((indices == found["memjax"]).all())})
          print(json.dumps(rows[-1]), flush=True)
  if args.out:
    with open(args.out, "a") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
  _print_table(rows, peak)


def _print_table(rows, peak) -> None:
  timed = [r for r in rows if "seconds" in r]
  print()
  if peak:
    print(f"measured float32 matmul peak: {peak:.1f} GFLOP/s")
  print("| N | method | seconds | GFLOP/s | % of matmul peak | x faiss | x jit-top_k | "
        "peak memory / table |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- |")
  for r in timed:
    same_n = {x["method"]: x for x in timed if x["n"] == r["n"]}
    ratio = lambda name, r=r, same_n=same_n: (
        f"{same_n[name]['seconds'] / r['seconds']:.2f}" if name in same_n else "-")
    share = f"{100 * r['gflops'] / peak:.0f} %" if peak else "-"
    print(f"| {r['n'] >> 20}M | {r['method']} | {r['seconds']:.3f} | {r['gflops']:.1f} | "
          f"{share} | {ratio('faiss')} | {ratio('jit-top_k')} | {r['peak_over_table']:.3f} |")


if __name__ == "__main__":
  main()
