"""A one-minute tour of memjax's pure layer: NTM addressing and a key-value store.

  python -m experiments.demo
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from memjax import access
from memjax import addressing
from memjax import store


def main() -> None:
  rng = np.random.default_rng(0)
  # NTM addressing: find a stored pattern by content, then step to the next slot.
  memory = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
  key = memory[3] + 0.05 * jnp.asarray(rng.normal(size=4), jnp.float32)
  uniform = jnp.full((8,), 1 / 8)
  step_forward = jnp.array([0.0, 0.0, 1.0])
  w = jax.jit(addressing.ntm_weights)(memory, uniform, key, 20.0, 1.0, step_forward, 5.0)
  print("NTM head: content match on slot 3, shifted by one ->",
        np.round(np.asarray(w), 3), "argmax", int(jnp.argmax(w)))
  print("read vector == memory[4]:", bool(jnp.allclose(access.read(memory, w), memory[4],
                                                          atol=1e-3)))

  # A key-value store of 1,000 slots, FIFO eviction, exact top-3 lookup.
  kv = store.init(1000, 16, 1, policy="fifo")
  keys = jnp.asarray(rng.normal(size=(1500, 16)), jnp.float32)
  values = jnp.arange(1500, dtype=jnp.float32)[:, None]
  insert = jax.jit(store.insert)
  for start in range(0, 1500, 500):
    kv = insert(kv, keys[start:start + 500], values[start:start + 500])
  print("items:", int(store.size(kv)), "(the first 500 of 1,500 were evicted, FIFO)")
  result = jax.jit(store.lookup, static_argnames="k")(kv, keys[np.array([10, 1200])], k=3)
  print("query for item 10 (evicted) found ids", np.asarray(result.ids[0]))
  print("query for item 1200 found ids", np.asarray(result.ids[1]), "best first")


if __name__ == "__main__":
  main()
