r"""Forward time per token of MemoryAugmentedBlock with a full kNN memory, next to no memory.

  PYTHONPATH=. python benchmarks/memory_block.py                     # defaults below
  PYTHONPATH=. python benchmarks/memory_block.py --memory_size=16384 --sizes=64x2

For each block size (features x heads) it times, in one process and one
after the other, the same block (same weights, window W, segment S) run on a
segment of S tokens:

* `local`: without external memory (local attention over the window and the
  learned slots, the MLP);
* `memory`: with a full external memory of `memory_size` tokens per sequence
  and head: exact top-k retrieval (`memjax.store.attend`), the gate mix, and
  the FIFO write of the segment (`memjax.store.insert`);
* `lookup`: `memjax.store.lookup` alone on the same queries and memory, to
  show where the memory block's time goes.

It prints the time per token of each and the ratio memory / local. The
target of issue 5 is a ratio of at most 2 at 64k tokens of memory.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from memjax import store
from memjax.nn import transformer


def full_memory(block: transformer.MemoryAugmentedBlock, batch: int, memory_size: int,
                seed: int = 0) -> transformer.BlockState:
  """A state whose memory holds `memory_size` random normalised keys per sequence and head."""
  state = block.init_state(batch, memory_size)
  rng = np.random.default_rng(seed)
  shape = (batch, block.num_heads, memory_size, block.head_dim)
  keys = transformer.l2_normalize(jnp.asarray(rng.normal(size=shape), jnp.float32))
  values = jnp.asarray(rng.normal(size=shape), jnp.float32)
  memory = jax.jit(jax.vmap(jax.vmap(store.insert)))(state.memory, keys, values)
  return state.replace(memory=memory)


def seconds_per_call(fn, args, repeats: int) -> float:
  """Median wall time of `fn(*args)` over `repeats` calls, after one warm-up."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def bench(features: int, heads: int, *, batch: int, segment: int, window: int,
          memory_size: int, top_k: int, repeats: int) -> dict[str, float]:
  block = transformer.MemoryAugmentedBlock(
      features, heads, window=window, top_k=top_k, num_memory_slots=4, key_conv=2,
      rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(block)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(batch, segment, features)),
                  jnp.float32)
  mem_state = full_memory(block, batch, memory_size)
  local_state = mem_state.replace(memory=None)

  @jax.jit
  def local(params, x, state):
    return nnx.merge(graphdef, params)(x, state, use_memory=False)

  @jax.jit
  def with_memory(params, x, state):
    return nnx.merge(graphdef, params)(x, state)

  @jax.jit
  def lookup_only(memory, x):
    q = transformer.l2_normalize(
        x.reshape(batch, segment, heads, -1).transpose(0, 2, 1, 3))
    return jax.vmap(jax.vmap(lambda m, q: store.lookup(m, q, top_k).values))(memory, q)

  # The memory state is not donated, so every call reads the same full memory.
  tokens = batch * segment
  t_local = seconds_per_call(local, (params, x, local_state), repeats)
  t_memory = seconds_per_call(with_memory, (params, x, mem_state), repeats)
  t_lookup = seconds_per_call(lookup_only, (mem_state.memory, x), repeats)
  return {"local_us": 1e6 * t_local / tokens, "memory_us": 1e6 * t_memory / tokens,
          "lookup_us": 1e6 * t_lookup / tokens, "ratio": t_memory / t_local}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="64x4,256x4,1024x8",
                      help="comma-separated FEATURESxHEADS block sizes")
  parser.add_argument("--memory_size", type=int, default=65536)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--segment", type=int, default=256)
  parser.add_argument("--window", type=int, default=256)
  parser.add_argument("--top_k", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(f"JAX {jax.__version__} on {jax.default_backend()} ({jax.device_count()} device(s)); "
        f"batch {args.batch}, segment {args.segment}, window {args.window}, "
        f"memory {args.memory_size} tokens per sequence and head, top-{args.top_k}")
  print(f"{'D x H':>10} {'local us/tok':>13} {'memory us/tok':>14} {'lookup us/tok':>14} "
        f"{'ratio':>7}")
  for size in args.sizes.split(","):
    features, heads = (int(v) for v in size.split("x"))
    r = bench(features, heads, batch=args.batch, segment=args.segment, window=args.window,
              memory_size=args.memory_size, top_k=args.top_k, repeats=args.repeats)
    print(f"{size:>10} {r['local_us']:13.2f} {r['memory_us']:14.2f} {r['lookup_us']:14.2f} "
          f"{r['ratio']:6.1f}x", flush=True)


if __name__ == "__main__":
  main()
