r"""Would a low-precision pass 1 speed up the exact top-k kernel on this machine?

`memjax.store.top_k_slots` spends most of its time in pass 1: a float32
matmul per chunk of keys, reduced at once to block maxima. A bfloat16 (or
int8) pass could bound each block's maximum from above and leave the exact
answer to the float32 rescoring, at the price of a few more rescored blocks
and a fallback when the bound is too loose. That only pays if the
low-precision matmul is much faster than the float32 one *in the kernel's
shape*. This script measures both, side by side in one process:

* `square`: one N x N x N matmul (N = --square), float32, bfloat16 inputs
  with float32 accumulation, int8 inputs with int32 accumulation;
* `pass1`: the kernel's pass-1 loop over --slots keys of --dim (2 streams of
  --chunk slots per step, --queries queries, block maximum of 32 slots fused
  into the loop), with float32 keys, and with the same keys rounded to
  bfloat16 chunk by chunk inside the loop (the table stays float32, so its
  memory does not grow).

Each line is the best of --repeats timed runs; the rounds alternate between
the variants so that drift on a shared machine hits them alike.

  python -m benchmarks.matmul_precision
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

_BLOCK = 32
_STREAMS = 2


def _square(n: int, dtype, accumulate):
  dot = lambda a, b: jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())),
                                         preferred_element_type=accumulate)
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
  if dtype == jnp.int8:
    a, b = (np.clip(np.round(x * 32), -127, 127) for x in (a, b))
  return jax.jit(dot), (jnp.asarray(a, dtype), jnp.asarray(b, dtype)), 2 * n ** 3


def _pass1(slots: int, dim: int, queries: int, chunk: int, low: bool):
  """The kernel's pass 1 (block maxima, no mask), keys rounded per chunk if `low`."""
  dtype = jnp.bfloat16 if low else jnp.float32
  per_stream = slots // _STREAMS

  def run(keys, q):
    q = q.astype(dtype)

    def body(i, table):
      for stream in range(_STREAMS):
        start = stream * per_stream + i * chunk
        kc = jax.lax.dynamic_slice_in_dim(keys, start, chunk, axis=0).astype(dtype)
        s = jnp.einsum("qd,cd->qc", q, kc, precision=jax.lax.Precision.HIGHEST,
                       preferred_element_type=jnp.float32)
        top = s.reshape(queries, -1, _BLOCK).max(axis=-1)
        table = jax.lax.dynamic_update_slice_in_dim(table, top, start // _BLOCK, axis=1)
      return table

    table = jnp.full((queries, slots // _BLOCK), -jnp.inf, jnp.float32)
    return jax.lax.fori_loop(0, per_stream // chunk, body, table)

  rng = np.random.default_rng(1)
  keys = jnp.asarray(rng.standard_normal((slots, dim)), jnp.float32)
  q = jnp.asarray(rng.standard_normal((queries, dim)), jnp.float32)
  return jax.jit(run), (keys, q), 2 * queries * slots * dim


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--square", type=int, default=2048)
  parser.add_argument("--slots", type=int, default=1 << 20)
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--queries", type=int, default=256)
  parser.add_argument("--chunk", type=int, default=2048)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  if args.slots % (_STREAMS * args.chunk) or args.chunk % _BLOCK:
    parser.error(f"--slots must be a multiple of {_STREAMS} x --chunk, and --chunk of {_BLOCK}")
  print(f"JAX {jax.__version__} on {jax.default_backend()}, {jax.device_count()} device(s)")
  cases = {
      "square float32": _square(args.square, jnp.float32, jnp.float32),
      "square bfloat16 -> float32": _square(args.square, jnp.bfloat16, jnp.float32),
      "square int8 -> int32": _square(args.square, jnp.int8, jnp.int32),
      "pass1 float32": _pass1(args.slots, args.dim, args.queries, args.chunk, False),
      "pass1 bfloat16 -> float32": _pass1(args.slots, args.dim, args.queries, args.chunk, True),
  }
  for fn, operands, _ in cases.values():
    jax.block_until_ready(fn(*operands))  # compile and warm up
  times = {name: [] for name in cases}
  for _ in range(args.repeats):
    for name, (fn, operands, _) in cases.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*operands))
      times[name].append(time.perf_counter() - start)
  best = {name: min(t) for name, t in times.items()}
  print(f"square: {args.square}^3; pass1: {args.queries} queries x {args.slots} slots x "
        f"{args.dim}, chunks of {args.chunk} x {_STREAMS} streams; best of {args.repeats}")
  print("| case | ms | G(FL)OP/s | vs float32 |")
  print("| --- | ---: | ---: | ---: |")
  for name, (_, _, flops) in cases.items():
    base = best["square float32" if name.startswith("square") else "pass1 float32"]
    print(f"| {name} | {best[name] * 1e3:.1f} | {flops / best[name] / 1e9:.1f} | "
          f"{base / best[name]:.2f}x |")


if __name__ == "__main__":
  main()
