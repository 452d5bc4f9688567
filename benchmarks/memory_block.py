"""Forward time per token of MemoryAugmentedBlock with a full kNN memory, next to no memory.

  PYTHONPATH=. python benchmarks/memory_block.py                     # defaults below
  PYTHONPATH=. python benchmarks/memory_block.py --memory_size=16384 --sizes=64x2

For each block size (features x heads) it times, in one process and one
after the other, the same block (same weights, window W, segment S) run on a
segment of S tokens:

* `local`: without external memory (local attention over the window and the
  learned slots, the MLP);
* `exact`: with a full external memory of `memory_size` tokens per sequence
  and head: exact top-k retrieval (`memjax.store.attend`), the gate mix, and
  the FIFO write of the segment (`memjax.store.insert`);
* `ivf`: the same with the approximate memory (`memjax.ivf.IVFMemory`, the
  block's `init_state(..., centroids=...)`): C = memory_size / 64 cells from
  k-means on the stored keys, lists of `--list_size` entries, `--probes`
  lists searched per query;
* `lookup`: `memjax.store.lookup` alone on the same queries and memory, to
  show where the exact block's time goes;
* `copies`: the exact block compiled with XLA's default copy insertion, not
  with `memjax.xla.IN_PLACE_MEMORY` (as every other function here and the
  trainer are): XLA:CPU then copies the whole memory on every call.

`--methods` picks which of ivf, lookup, copies run (local and exact always
do).

The memory runs chain their state from call to call, as successive segments
of one sequence do (the memory stays full; its buffers are donated and
updated in place, as in the model's `lax.scan`). It prints the time per
token of each, the ratios exact / local and ivf / local, and the recall of
the ivf search: the fraction of the exact top-k (ids) that it returns, for
the block's queries against the full memory of random unit keys (random
keys are the hard case for a clustered index: no structure to exploit).
The target of issue 5 is a ratio of at most 2 at 64k tokens of memory.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from memjax import ivf
from memjax import store
from memjax import xla
from memjax.nn import transformer


def full_memory(block: transformer.MemoryAugmentedBlock, batch: int, memory_size: int,
                seed: int = 0) -> transformer.BlockState:
  """A state whose memory holds `memory_size` random normalised keys per sequence and head."""
  state = block.init_state(batch, memory_size)
  rng = np.random.default_rng(seed)
  shape = (batch, block.num_heads, memory_size, block.head_dim)
  # float32 straight from the generator: a wide block's memory is several GB.
  keys = transformer.l2_normalize(jnp.asarray(rng.standard_normal(shape, np.float32)))
  values = jnp.asarray(rng.standard_normal(shape, np.float32))
  insert = jax.jit(jax.vmap(jax.vmap(store.insert)), donate_argnums=0)
  memory = insert(state.memory, keys, values)
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


def seconds_per_chained_call(fn, params, x, state, repeats: int, return_state: bool = False):
  """Median wall time of `state = fn(params, x, state)[1]` over `repeats` chained calls.

  With `return_state`, returns (seconds, the last state) so that another
  function can go on from it (the state passed in is donated).
  """
  state = jax.block_until_ready(fn(params, x, state)[1])
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    state = jax.block_until_ready(fn(params, x, state)[1])
    times.append(time.perf_counter() - t0)
  seconds = float(np.median(times))
  return (seconds, state) if return_state else seconds


# What `--methods` can leave out (see the module docstring); `local` and `exact`
# (the goal's ratio) always run.
METHODS = ("ivf", "lookup", "copies")


def bench(features: int, heads: int, *, batch: int, segment: int, window: int,
          memory_size: int, top_k: int, repeats: int, list_size: int,
          probes: int, methods: frozenset[str] = frozenset(METHODS)) -> dict[str, float]:
  block = transformer.MemoryAugmentedBlock(
      features, heads, window=window, top_k=top_k, num_memory_slots=4, key_conv=2,
      rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(block)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(batch, segment, features)),
                  jnp.float32)
  mem_state = full_memory(block, batch, memory_size)
  local_state = mem_state.replace(memory=None)
  ivf_state = None
  if "ivf" in methods:
    # The index: k-means cells over (a sample of) each head's stored keys,
    # filled with the same items in the same order as the exact memory.
    num_lists = max(1, memory_size // 64)
    sample = mem_state.memory.keys[0, :, ::max(1, memory_size // (16 * num_lists))]
    centroids = jnp.stack([ivf.kmeans(k, num_lists, iterations=8, seed=h)
                           for h, k in enumerate(sample)])
    ivf_state = block.init_state(batch, memory_size, centroids=centroids,
                                 list_size=list_size, probes=probes)
    fill = jax.jit(jax.vmap(jax.vmap(ivf.insert)))
    step = 8192
    for start in range(0, memory_size, step):
      ivf_state = ivf_state.replace(index=fill(
          ivf_state.index, mem_state.memory.keys[:, :, start:start + step],
          mem_state.memory.values[:, :, start:start + step]))

  options = xla.cpu_options(xla.IN_PLACE_MEMORY)  # as the trainer compiles

  @functools.partial(jax.jit, compiler_options=options)
  def local(params, x, state):
    return nnx.merge(graphdef, params)(x, state, use_memory=False)

  def block_with_memory(params, x, state):
    return nnx.merge(graphdef, params)(x, state)

  with_memory = jax.jit(block_with_memory, donate_argnums=2, compiler_options=options)
  with_copies = jax.jit(block_with_memory, donate_argnums=2)  # XLA's default copy insertion

  def queries(x):
    return transformer.l2_normalize(x.reshape(batch, segment, heads, -1).transpose(0, 2, 1, 3))

  @jax.jit
  def lookup_only(memory, x):
    return jax.vmap(jax.vmap(lambda m, q: store.lookup(m, q, top_k).values))(memory, queries(x))

  @jax.jit
  def recall(memory, index, x):
    q = queries(x)
    exact = jax.vmap(jax.vmap(lambda m, q: store.lookup(m, q, top_k).ids))(memory, q)
    approx = ivf.search(index, q, top_k).ids
    hits = (exact[..., :, None] == approx[..., None, :]) & (exact[..., :, None] >= 0)
    return jnp.mean(jnp.sum(hits, axis=(-1, -2)) / top_k)

  tokens = batch * segment
  nan = float("nan")
  r = float(recall(mem_state.memory, ivf_state.index, x)) if "ivf" in methods else nan
  t_lookup = (seconds_per_call(lookup_only, (mem_state.memory, x), repeats)
              if "lookup" in methods else nan)
  t_local = seconds_per_call(local, (params, x, local_state), repeats)
  # The exact runs donate (and so consume) the memory, so they go last; the
  # copies' run hands its final memory on to the in-place one.
  t_ivf = (seconds_per_chained_call(with_memory, params, x, ivf_state, repeats)
           if "ivf" in methods else nan)
  if "copies" in methods:  # the memory survives: the copies' run returns it
    t_copies, mem_state = seconds_per_chained_call(with_copies, params, x, mem_state, repeats,
                                                   return_state=True)
  else:
    t_copies = nan
  t_memory = seconds_per_chained_call(with_memory, params, x, mem_state, repeats)
  return {"local_us": 1e6 * t_local / tokens, "memory_us": 1e6 * t_memory / tokens,
          "copies_us": 1e6 * t_copies / tokens,
          "ivf_us": 1e6 * t_ivf / tokens, "lookup_us": 1e6 * t_lookup / tokens,
          "ratio": t_memory / t_local, "ivf_ratio": t_ivf / t_local, "recall": r}


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
  parser.add_argument("--list_size", type=int, default=128,
                      help="entries per ivf list (the mean load is 64)")
  parser.add_argument("--probes", type=int, default=4, help="ivf lists searched per query")
  parser.add_argument("--methods", default=",".join(METHODS),
                      help="which of ivf,lookup,copies to time besides local and exact "
                           "('' for none; a wide block's k-means fit takes minutes)")
  args = parser.parse_args()
  methods = frozenset(m for m in args.methods.split(",") if m)
  if methods - set(METHODS):
    parser.error(f"--methods takes a subset of {','.join(METHODS)}; got {args.methods!r}")
  print(f"JAX {jax.__version__} on {jax.default_backend()} ({jax.device_count()} device(s)); "
        f"batch {args.batch}, segment {args.segment}, window {args.window}, "
        f"memory {args.memory_size} tokens per sequence and head, top-{args.top_k}; "
        f"ivf: {max(1, args.memory_size // 64)} lists of {args.list_size}, "
        f"{args.probes} probed")
  print(f"{'D x H':>10} {'local us/tok':>13} {'exact us/tok':>13} {'ratio':>7} "
        f"{'ivf us/tok':>11} {'ratio':>7} {'ivf recall':>10} {'lookup us/tok':>14} "
        f"{'copies us/tok':>14} {'copies/exact':>12}")
  for size in args.sizes.split(","):
    features, heads = (int(v) for v in size.split("x"))
    r = bench(features, heads, batch=args.batch, segment=args.segment, window=args.window,
              memory_size=args.memory_size, top_k=args.top_k, repeats=args.repeats,
              list_size=args.list_size, probes=args.probes, methods=methods)
    print(f"{size:>10} {r['local_us']:13.2f} {r['memory_us']:13.2f} {r['ratio']:6.1f}x "
          f"{r['ivf_us']:11.2f} {r['ivf_ratio']:6.1f}x {r['recall']:10.3f} "
          f"{r['lookup_us']:14.2f} {r['copies_us']:14.2f} "
          f"{r['copies_us'] / r['memory_us']:11.2f}x", flush=True)


if __name__ == "__main__":
  main()
