r"""Sparse (SAM) vs dense NTM: one step, forward + backward, batch 1.

Both cells have the same LSTM controller (100 units), word size W = 32 and
R = 2 read heads:

* sparse: `memjax.nn.sam.SAMCell` with K = 4 slots per read head: one exact
  top-K lookup (one fused pass over the blocked memory,
  `memjax.nn._sam_kernels.search`), then O(R K W); its memory starts full
  (random words, every slot accessed once), the steady state;
* dense:  the NTM step of Graves et al. (2014) built from `memjax.addressing`
  (content, interpolation, shift, sharpening over all N slots) and
  `memjax.access` (read, erase/add write), R read heads + 1 write head.

Two modes, each cell timed side by side in one run:

* one step: `jax.value_and_grad` of a loss on the step's output with respect
  to the cell's parameters, returning the new recurrent state, jitted, with
  the state donated (so the memory is updated in place), parameters passed as
  a flat list of arrays and inputs made before the clock starts;
* `--bptt=T`: the same for a T-step sequence in one `lax.scan`, the loss
  summed over the steps and differentiated through time (the dense NTM
  keeps every step's memory for its backward pass; SAM keeps the touched
  rows only and one in-place [N, W] memory cotangent); times are per step
  (sequence time / T).

The two cells are compiled and warmed up, then timed in `--rounds`
alternating rounds (`--steps` sparse calls, then `--dense-steps` dense ones;
`--bptt-repeats` sequences each in the BPTT mode), each call feeding its
state to the next. The ratio printed is the median of the rounds' ratios,
so a drift of the machine's speed during the run moves both sides alike;
the times are the medians over all rounds.

Run:

  python -m benchmarks.sparse_ntm
  python -m benchmarks.sparse_ntm --sizes=1K,16K,64K,1M --steps=20 --bptt=16 --bptt-repeats=2
"""

from __future__ import annotations

import argparse
import json
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from memjax import access
from memjax import addressing
from memjax.nn import sam

IN, OUT, CONTROLLER, WORD, READS, K = 8, 8, 100, 32, 2, 4


class DenseState(NamedTuple):
  hidden: jax.Array
  cell: jax.Array
  memory: jax.Array
  weights: jax.Array        # [B, R + 1, N] read heads, then the write head
  read_vectors: jax.Array   # [B, R, W]


class DenseNTMCell(nnx.Module):
  """An NTM step from the pure layer: R read heads + 1 write head, shifts -1..1."""

  def __init__(self, memory_size: int, *, rngs: nnx.Rngs):
    self.n = memory_size
    r, w, c = READS, WORD, CONTROLLER
    self.gates = nnx.Linear(IN + r * w + c, 4 * c, rngs=rngs)
    self.address_size = w + 3 + 3  # key, strength, gate, gamma, 3 shifts
    self.interface = nnx.Linear(c, (r + 1) * self.address_size + 2 * w, rngs=rngs)
    self.output = nnx.Linear(c + r * w, OUT, rngs=rngs)

  def initialize_carry(self, batch: int) -> DenseState:
    n, r, w, c = self.n, READS, WORD, CONTROLLER
    weights = jnp.zeros((batch, r + 1, n)).at[:, :, 0].set(1.0)
    return DenseState(jnp.zeros((batch, c)), jnp.zeros((batch, c)),
                      jnp.full((batch, n, w), 1e-6), weights, jnp.zeros((batch, r, w)))

  def __call__(self, state: DenseState, x: jax.Array):
    b = x.shape[0]
    r, w, a = READS, WORD, self.address_size
    z = self.gates(jnp.concatenate([x, state.read_vectors.reshape(b, -1), state.hidden], -1))
    i, f, g, o = jnp.split(z, 4, axis=-1)
    cell = jax.nn.sigmoid(f + 1.0) * state.cell + jax.nn.sigmoid(i) * jnp.tanh(g)
    hidden = jax.nn.sigmoid(o) * jnp.tanh(cell)
    iface = self.interface(hidden)
    heads = iface[:, :(r + 1) * a].reshape(b, r + 1, a)
    key = jnp.tanh(heads[..., :w])
    strength = jax.nn.softplus(heads[..., w])
    gate = jax.nn.sigmoid(heads[..., w + 1])
    gamma = 1 + jax.nn.softplus(heads[..., w + 2])
    shift_w = jax.nn.softmax(heads[..., w + 3:], axis=-1)
    erase = jax.nn.sigmoid(iface[:, (r + 1) * a:(r + 1) * a + w])
    add = jnp.tanh(iface[:, (r + 1) * a + w:])
    per_head = jax.vmap(addressing.ntm_weights, in_axes=(None, 0, 0, 0, 0, 0, 0))
    weights = jax.vmap(per_head)(state.memory, state.weights, key, strength, gate, shift_w,
                                 gamma)
    reads = jax.vmap(access.read)(state.memory, weights[:, :r])
    memory = jax.vmap(access.write)(state.memory, weights[:, r], erase, add)
    y = self.output(jnp.concatenate([hidden, reads.reshape(b, -1)], -1))
    return DenseState(hidden, cell, memory, weights, reads), y


def _split(cell):
  """(graphdef, parameter tree, its flat leaves): the jitted steps take the leaves.

  A flat list of arrays is the cheapest argument to dispatch; an `nnx.State`
  is re-flattened through its variable objects on every call.
  """
  graphdef, params = nnx.split(cell)
  leaves, treedef = jax.tree.flatten(params)
  return graphdef, treedef, leaves


def _step_fn(cell, state_of):
  graphdef, treedef, params = _split(cell)

  def loss(params, state, x):
    model = nnx.merge(graphdef, jax.tree.unflatten(treedef, params))
    new_state, y = model(state, x)
    return jnp.sum(y ** 2), new_state

  grad = jax.value_and_grad(loss, has_aux=True)
  step = jax.jit(lambda params, state, x: grad(params, state, x), donate_argnums=1)
  return step, params, state_of(cell)


def _sequence_fn(cell, state_of):
  """value_and_grad of a T-step sequence loss: one lax.scan, backpropagation through time."""
  graphdef, treedef, params = _split(cell)

  def loss(params, state, xs):
    model = nnx.merge(graphdef, jax.tree.unflatten(treedef, params))

    def body(state, x):
      state, y = model(state, x)
      return state, jnp.sum(y ** 2)

    state, losses = jax.lax.scan(body, state, xs)
    return jnp.sum(losses), state

  grad = jax.value_and_grad(loss, has_aux=True)
  step = jax.jit(lambda params, state, xs: grad(params, state, xs), donate_argnums=1)
  return step, params, state_of(cell)


def _sparse_state(cell: sam.SAMCell, n: int) -> sam.SAMState:
  """A full memory (random words, every slot accessed once) for batch 1."""
  rng = np.random.default_rng(1)
  words = rng.normal(size=(n, WORD)).astype(np.float32)
  state = sam.make_state(words, rng.permutation(n).astype(np.int32) - n,
                         np.zeros((READS, K), np.int32), np.zeros((READS, K), np.float32),
                         np.zeros((READS, WORD), np.float32), 0, np.zeros(CONTROLLER),
                         np.zeros(CONTROLLER))
  return jax.tree.map(lambda x: x[None], state)


class _Timer:
  """One cell's jitted step and its state, timed a few calls at a time (the state chains)."""

  def __init__(self, kind: str, n: int, seq: int = 0):
    rngs = nnx.Rngs(0)
    make = _sequence_fn if seq else _step_fn
    if kind == "sparse":
      cell = sam.SAMCell(IN, OUT, memory_size=n, word_size=WORD, num_read_heads=READS, k=K,
                         controller_size=CONTROLLER, rngs=rngs)
      self.step, self.params, self.state = make(cell, lambda c: _sparse_state(c, n))
    else:
      self.step, self.params, self.state = make(DenseNTMCell(n, rngs=rngs),
                                                lambda c: c.initialize_carry(1))
    self.kind, self.n, self.seq = kind, n, seq
    shape = (8, seq, 1, IN) if seq else (8, 1, IN)
    # Device arrays made before the clock starts (indexing a device array is
    # itself a dispatched operation, about 0.5 ms here).
    self.xs = [jnp.asarray(x) for x in
               np.random.default_rng(0).normal(size=shape).astype(np.float32)]
    jax.block_until_ready(self.xs)
    self.calls = 0
    self.times = []
    self.run(2)  # compile and warm up; not kept
    self.times = []

  def run(self, count: int) -> float:
    """Times `count` calls; returns their median per step (ms), keeping every time."""
    times = []
    for _ in range(count):
      x = self.xs[self.calls % len(self.xs)]
      self.calls += 1
      start = time.perf_counter()
      (value, self.state), grads = self.step(self.params, self.state, x)
      jax.block_until_ready((value, self.state, grads))
      times.append(1e3 * (time.perf_counter() - start) / max(self.seq, 1))
    assert bool(jnp.isfinite(value))
    self.times.extend(times)
    return float(np.median(times))

  def row(self) -> dict:
    times = np.asarray(self.times)
    return {"kind": self.kind, "n": self.n, "mode": f"bptt{self.seq}" if self.seq else "step",
            "median_ms": float(np.median(times)), "min_ms": float(times.min()),
            "calls": len(times)}


def _compare(n: int, seq: int, calls: tuple[int, int], rounds: int) -> tuple[dict, dict, float]:
  """Sparse and dense timed in alternating rounds; (rows, median of the per-round ratios)."""
  sparse, dense = _Timer("sparse", n, seq), _Timer("dense", n, seq)
  ratios = [dense.run(calls[1]) / sparse.run(calls[0]) for _ in range(rounds)]
  return sparse.row(), dense.row(), float(np.median(ratios))


def _parse_size(text: str) -> int:
  text = text.strip().upper()
  scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
  return int(text[:-1] if text[-1] in "KM" else text) * scale


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="1K,16K,64K,1M")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--dense-steps", type=int, default=5,
                      help="steps for the dense NTM (slow at large N)")
  parser.add_argument("--bptt", type=int, default=0,
                      help="also time T-step sequences (backpropagation through time), per step")
  parser.add_argument("--bptt-repeats", type=int, default=3,
                      help="timed sequences per cell and round in the --bptt mode")
  parser.add_argument("--rounds", type=int, default=3,
                      help="alternating rounds of sparse and dense timing; the ratio printed "
                           "is the median of the rounds' ratios (this VM drifts by 20 %% "
                           "within minutes)")
  args = parser.parse_args()
  rows = []
  for n in map(_parse_size, args.sizes.split(",")):
    modes = [(0, (args.steps, args.dense_steps))]
    if args.bptt:
      modes.append((args.bptt, (args.bptt_repeats, args.bptt_repeats)))
    for seq, calls in modes:
      sparse, dense, ratio = _compare(n, seq, calls, args.rounds)
      for row in (sparse, dense):
        print(json.dumps(row), flush=True)
      rows.append((n, sparse, dense, ratio))
  print()
  print(f"{jax.devices()[0].device_kind}, {jax.device_count()} device(s); "
        f"W={WORD}, R={READS}, K={K}, controller {CONTROLLER}, batch 1, fwd+bwd; "
        f"{args.rounds} alternating rounds")
  print("| N | mode | sparse (SAM) ms | dense (NTM) ms | dense / sparse (median of rounds) |")
  print("| --- | --- | ---: | ---: | ---: |")
  for n, sparse, dense, ratio in rows:
    label = f"{n >> 20}M" if n >= 1 << 20 else f"{n >> 10}K"
    mode = ("one step" if sparse["mode"] == "step"
            else f"per step of a {args.bptt}-step sequence (BPTT)")
    print(f"| {label} | {mode} | {sparse['median_ms']:.2f} | {dense['median_ms']:.2f} | "
          f"{ratio:.{1 if ratio < 10 else 0}f}x |")


if __name__ == "__main__":
  main()
