"""A memory-augmented transformer: kNN attention over an external memory, learned slots.

`MemoryAugmentedBlock` is a pre-norm transformer block whose attention has two
parts (Memorizing Transformers, Wu et al. 2022):

* local attention: causal sliding-window attention over the last W tokens
  (the current segment and, through a cache of the previous segment's keys and
  values, the tokens just before it), with a learned relative position bias,
  plus M learned key/value slots that every query can attend to (persistent
  memory, Sukhbaatar et al. 2019);
* memory attention: each query attends over the top-k (key, value) pairs
  retrieved, exactly by default, from an external memory of past keys and
  values, one `memjax.store.KVMemory` per sequence and per head. The memory
  holds the same keys and values the local attention uses, written FIFO after
  each segment with a stop-gradient; it is not position-encoded, so a token
  far in the past is found by content alone.

Keys and queries are L2-normalised and scaled by a learned per-head scale; a
learned per-head gate mixes the two parts, `g * memory + (1 - g) * local`
(Wu et al. 2022, eq. 2). A query whose memory is empty (at the start of a
document) uses the local part alone, so an empty memory changes nothing.

`MemoryTransformer` is a small decoder-only language model built from these
blocks. It processes a long sequence segment by segment with `jax.lax.scan`,
carrying each block's cache and memory, and resets them at document
boundaries. Everything is batch-parallel: put the batch on a mesh axis with
`shard_batch` and `jax.jit` partitions the work.

A block step reads the memory and then writes it: on the CPU, jit it with
`compiler_options=memjax.xla.cpu_options(memjax.xla.IN_PLACE_MEMORY)` and
the state donated, or XLA copies the whole memory on every call (see
`memjax.store`; `memjax.training.memory_transformer` does this).

Shape legend: B batch, T segments, S tokens per segment, L = T * S tokens,
D features, H heads, E head size, W local window, M learned slots, N memory
slots per head, K top-k, V vocabulary.

References:
  Wu, Rabe, Hutchins, Szegedy. Memorizing Transformers. ICLR 2022.
    https://arxiv.org/abs/2203.08913
  Sukhbaatar, Grave, Lample, Jegou, Joulin. Augmenting Self-attention with
    Persistent Memory. 2019. https://arxiv.org/abs/1907.01470
  Henry, Dachapally, Pawar, Chen. Query-Key Normalization for Transformers.
    Findings of EMNLP 2020.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax import struct
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from memjax import _checks
from memjax import ivf
from memjax import store

_EPSILON = 1e-6


@struct.dataclass
class BlockState:
  """What a block carries from one segment to the next.

  Attributes:
    keys: [B, H, W, E] normalised keys of the last W tokens (the local cache).
    values: [B, H, W, E] their values.
    valid: [B, W] bool, whether a cache entry holds a token of this document.
    key_context: [B, C - 1, D] the raw key projections of the last C - 1
      tokens, which the causal key convolution of width C reads.
    memory: a `KVMemory` whose arrays have leading axes [B, H] (keys [B, H, N,
      E]), or None for a block without external memory.
    index: optional approximate memory, an `ivf.IVFMemory` with leading axes
      [B, H]. When present the memory attention searches it instead of
      `memory` (which, when also present, is still written, e.g. to compare
      the approximate search with the exact one).
  """
  keys: jax.Array
  values: jax.Array
  valid: jax.Array
  key_context: jax.Array
  memory: store.KVMemory | None = None
  index: ivf.IVFMemory | None = None


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """x / ||x|| along `axis`, with an epsilon so zero vectors stay finite."""
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=axis, keepdims=True) + _EPSILON)


def relative_distances(segment_length: int, window: int) -> np.ndarray:
  """Distance from each query to each key of [cache; segment]: [S, W + S] int.

  Query i of the segment sits at absolute position W + i of the concatenated
  key axis, so its distance to key j is W + i - j; keys with distance in
  [0, W) are inside its causal window.
  """
  i = np.arange(segment_length)[:, None]
  j = np.arange(window + segment_length)[None, :]
  return window + i - j


def empty_memory(batch: int, num_heads: int, memory_size: int, head_dim: int,
                 policy: str = "fifo") -> store.KVMemory:
  """A `KVMemory` with leading axes [B, H]: one empty memory per sequence and head."""
  one = store.init(memory_size, head_dim, head_dim, policy=policy)
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (batch, num_heads, *x.shape)), one)


def empty_index(batch: int, centroids: jax.typing.ArrayLike, memory_size: int,
                list_size: int, probes: int) -> ivf.IVFMemory:
  """An `ivf.IVFMemory` with leading axes [B, H], empty, over per-head `centroids` [H, C, E].

  Approximate counterpart of `empty_memory`: a FIFO window of `memory_size`
  items per sequence and head, C lists of `list_size` entries, `probes` lists
  searched per query.
  """
  centroids = jnp.asarray(centroids, jnp.float32)
  if centroids.ndim != 3:
    raise ValueError(f"centroids must have shape [H, C, E]; got {tuple(centroids.shape)}")
  per_head = jax.vmap(lambda c: ivf.init(c, list_size, c.shape[-1], memory_size,
                                         probes=probes))(centroids)
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (batch, *x.shape)), per_head)


def _per_sequence(fn):
  """vmaps `fn(memory, *arrays)` over the leading [B, H] axes of all arguments."""
  return jax.vmap(jax.vmap(fn))


def _select(reset: jax.Array, fresh, old):
  """Per sequence b: `fresh` where reset[b], else `old` (pytrees with leading B axis)."""
  def pick(f, o):
    r = reset.reshape(reset.shape + (1,) * (o.ndim - 1))
    return jnp.where(r, f, o)
  return jax.tree.map(pick, fresh, old)


class MemoryAugmentedBlock(nnx.Module):
  """Pre-norm transformer block with local attention, learned slots and kNN memory.

  Args:
    features: D, the model width.
    num_heads: H; D must be divisible by H (head size E = D // H).
    window: W, how many tokens (itself included) each query sees locally.
    use_memory: whether the block has an external memory (and its gate).
    top_k: K, items retrieved per query and head from the external memory.
    num_memory_slots: M learned key/value slots per head (0 for none).
    key_conv: C, width of a causal depthwise convolution over the key
      projections (Primer's multi-dconv-head attention, So et al. 2021);
      C = 1 is a plain key projection. With C >= 2 a key can describe the
      tokens before it, which makes induction-style lookups learnable by one
      attention layer.
    key_conv_init: initial weight of every tap of the key convolution (1.0:
      each key starts as the sum of its C tokens' projections; the identity,
      1 on the current token and 0 elsewhere, learns such lookups slowly).
    mlp_features: hidden width of the MLP (default 4 D).
    qk_scale_init: initial value of the learned scale of the normalised
      query-key dot products (default sqrt(E)).
    gate_init: initial gate logit (0 gives g = 0.5).
    rngs: NNX random streams for initialisation.
  """

  def __init__(self, features: int, num_heads: int, *, window: int, use_memory: bool = True,
               top_k: int = 32, num_memory_slots: int = 0, key_conv: int = 1,
               key_conv_init: float = 1.0, mlp_features: int | None = None,
               qk_scale_init: float | None = None, gate_init: float = 0.0, rngs: nnx.Rngs):
    features = _checks.integer(features, "features")
    num_heads = _checks.integer(num_heads, "num_heads")
    window = _checks.integer(window, "window")
    top_k = _checks.integer(top_k, "top_k")
    key_conv = _checks.integer(key_conv, "key_conv")
    if features % num_heads:
      raise ValueError(f"features must be divisible by num_heads; got features={features}, "
                       f"num_heads={num_heads}")
    num_memory_slots = _checks.integer(num_memory_slots, "num_memory_slots", 0)
    self.features = features
    self.num_heads = num_heads
    self.head_dim = features // num_heads
    self.window = window
    self.use_memory = use_memory
    self.top_k = top_k
    self.num_memory_slots = num_memory_slots
    self.key_conv = key_conv
    mlp_features = (4 * features if mlp_features is None
                    else _checks.integer(mlp_features, "mlp_features", what="or None"))
    h, e = num_heads, self.head_dim
    if qk_scale_init is None:
      qk_scale_init = math.sqrt(e)
    self.attention_norm = nnx.LayerNorm(features, rngs=rngs)
    self.query = nnx.Linear(features, features, use_bias=False, rngs=rngs)
    self.key = nnx.Linear(features, features, use_bias=False, rngs=rngs)
    self.value = nnx.Linear(features, features, use_bias=False, rngs=rngs)
    self.output = nnx.Linear(features, features, use_bias=False, rngs=rngs)
    if key_conv > 1:
      self.key_conv_weights = nnx.Param(
          jnp.full((key_conv, features), key_conv_init, jnp.float32))
    self.log_scale = nnx.Param(jnp.full((h,), math.log(qk_scale_init), jnp.float32))
    self.position_bias = nnx.Param(jnp.zeros((h, window), jnp.float32))
    if num_memory_slots:
      init = nnx.initializers.normal(1.0)
      self.slot_keys = nnx.Param(init(rngs.params(), (h, num_memory_slots, e)))
      self.slot_values = nnx.Param(init(rngs.params(), (h, num_memory_slots, e)))
    if use_memory:
      self.gate = nnx.Param(jnp.full((h,), gate_init, jnp.float32))
    self.mlp_norm = nnx.LayerNorm(features, rngs=rngs)
    self.mlp_in = nnx.Linear(features, mlp_features, rngs=rngs)
    self.mlp_out = nnx.Linear(mlp_features, features, rngs=rngs)

  def init_state(self, batch: int, memory_size: int | None = None, *,
                 centroids: jax.typing.ArrayLike | None = None, list_size: int | None = None,
                 probes: int = 1, exact_too: bool = False) -> BlockState:
    """An empty cache, and an empty memory of `memory_size` slots per sequence and head.

    Args:
      batch: B.
      memory_size: N; None gives a state without memory, which only runs
        with `use_memory=False` (ignored by a block without memory).
      centroids: optional [H, C, E] per-head cell centroids (`ivf.kmeans` of
        sample keys): the memory is then an approximate `ivf.IVFMemory`
        (FIFO window of N items, C lists of `list_size` entries, `probes`
        lists searched per query) instead of the exact store.
      list_size: L, entries per list (default 4 N / C).
      probes: P, lists searched per query.
      exact_too: with `centroids`, also keep the exact memory (written, not
        read), to compare what the two searches find.

    Returns:
      The `BlockState` of the start of a document.
    """
    h, w, e = self.num_heads, self.window, self.head_dim
    memory = index = None
    if self.use_memory and memory_size is not None:
      if memory_size < self.top_k:
        raise ValueError(f"memory_size must be at least top_k={self.top_k}; got {memory_size}")
      if centroids is None or exact_too:
        memory = empty_memory(batch, h, memory_size, e)
      if centroids is not None:
        centroids = jnp.asarray(centroids)
        if centroids.shape[0] != h or centroids.shape[-1] != e:
          raise ValueError(f"centroids must have shape [H={h}, C, E={e}]; got "
                           f"{tuple(centroids.shape)}")
        list_size = (max(1, 4 * memory_size // centroids.shape[1]) if list_size is None
                     else _checks.integer(list_size, "list_size", what="or None"))
        if probes * list_size < self.top_k:
          raise ValueError(f"probes x list_size must be at least top_k={self.top_k}; got "
                           f"{probes} x {list_size}")
        index = empty_index(batch, centroids, memory_size, list_size, probes)
    return BlockState(
        keys=jnp.zeros((batch, h, w, e), jnp.float32),
        values=jnp.zeros((batch, h, w, e), jnp.float32),
        valid=jnp.zeros((batch, w), bool),
        key_context=jnp.zeros((batch, self.key_conv - 1, self.features), jnp.float32),
        memory=memory, index=index)

  def _heads(self, x: jax.Array) -> jax.Array:
    b, s, _ = x.shape
    return x.reshape(b, s, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

  def scale(self) -> jax.Array:
    """The learned per-head scale of normalised query-key products: [H]."""
    return jnp.exp(self.log_scale[...])

  def gate_value(self) -> jax.Array:
    """The per-head memory gate g in (0, 1): [H]."""
    return jax.nn.sigmoid(self.gate[...])

  def local_attention(self, q: jax.Array, k: jax.Array, v: jax.Array,
                      state: BlockState) -> jax.Array:
    """Sliding-window attention over [cache; segment] and the learned slots.

    Args:
      q: [B, H, S, E] normalised queries.
      k: [B, H, S, E] normalised keys.
      v: [B, H, S, E] values.
      state: the cache of the previous W tokens.

    Returns:
      [B, H, S, E].
    """
    s, w = q.shape[2], self.window
    scale = self.scale()[None, :, None, None]
    keys = jnp.concatenate([state.keys, k], axis=2)  # [B, H, W + S, E]
    values = jnp.concatenate([state.values, v], axis=2)
    valid = jnp.concatenate([state.valid, jnp.ones((k.shape[0], s), bool)], axis=1)
    dist = relative_distances(s, w)
    inside = jnp.asarray((dist >= 0) & (dist < w))
    allowed = inside[None, None] & valid[:, None, None, :]
    bias = self.position_bias[...][:, np.clip(dist, 0, w - 1)]  # [H, S, W + S]
    logits = scale * jnp.einsum("bhse,bhte->bhst", q, keys) + bias[None]
    logits = jnp.where(allowed, logits, -jnp.inf)
    if self.num_memory_slots:
      slot_keys = l2_normalize(self.slot_keys[...])
      slot_logits = scale * jnp.einsum("bhse,hme->bhsm", q, slot_keys)
      logits = jnp.concatenate([logits, slot_logits], axis=-1)
      values = jnp.concatenate(
          [values, jnp.broadcast_to(self.slot_values[...][None],
                                    (values.shape[0], *self.slot_values.shape))], axis=2)
    weights = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bhst,bhte->bhse", weights, values)

  def memory_attention(self, q: jax.Array, memory: store.KVMemory) -> jax.Array:
    """Softmax attention over the top-k items of each sequence's and head's memory.

    The memory is read as a constant: no gradient reaches what is stored.

    Args:
      q: [B, H, S, E] normalised queries.
      memory: `KVMemory` with leading axes [B, H].

    Returns:
      [B, H, S, E]; zeros for a query whose memory is empty.
    """
    memory = jax.lax.stop_gradient(memory)
    top_k = self.top_k

    def read(mem, queries, scale):
      return store.attend(mem, queries, top_k, scale=scale)

    scale = jnp.broadcast_to(self.scale(), q.shape[:2])
    return _per_sequence(read)(memory, q, scale)

  def index_attention(self, q: jax.Array, index: ivf.IVFMemory) -> jax.Array:
    """`memory_attention` over an approximate `ivf.IVFMemory` (leading axes [B, H]).

    Args:
      q: [B, H, S, E] normalised queries.
      index: the approximate memory.

    Returns:
      [B, H, S, E]; zeros for a query whose memory is empty.
    """
    scale = self.scale()[None, :, None, None]
    return ivf.attend(jax.lax.stop_gradient(index), q, self.top_k, scale=scale)

  def queries_and_keys(self, x: jax.Array,
                       state: BlockState) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Normalised queries and keys, values and raw key projections of a segment.

    Args:
      x: [B, S, D].
      state: the block's state (for the key convolution's context).

    Returns:
      (q [B, H, S, E], k [B, H, S, E], v [B, H, S, E], raw keys [B, S, D]).
    """
    h = self.attention_norm(x)
    q = l2_normalize(self._heads(self.query(h)))
    k_raw = self.key(h)
    k = l2_normalize(self._heads(self.convolve_keys(k_raw, state.key_context)))
    return q, k, self._heads(self.value(h)), k_raw

  def retrieve(self, x: jax.Array, state: BlockState, k: int | None = None) -> store.LookupResult:
    """What each query of a segment finds in memory (for inspection; no gradient).

    Memory items are numbered in the order they were written, so with one
    document per sequence an item's id is its token position.

    Args:
      x: [B, S, D] the block's input for the segment.
      state: the block's state before the segment (with a memory).
      k: results per query (default: the block's top_k).

    Returns:
      A `store.LookupResult` with leading axes [B, H, S]: scores, indices, ids,
      values and found, each [B, H, S, k(, E)].
    """
    if state.memory is None:
      raise ValueError("retrieve needs a state with a memory")
    q, _, _, _ = self.queries_and_keys(x, state)
    k = self.top_k if k is None else k
    return _per_sequence(lambda m, qq: store.lookup(m, qq, k))(
        jax.lax.stop_gradient(state.memory), jax.lax.stop_gradient(q))

  def __call__(self, x: jax.Array, state: BlockState, *, reset: jax.Array | None = None,
               use_memory: bool = True) -> tuple[jax.Array, BlockState]:
    """Processes one segment.

    Args:
      x: [B, S, D] the segment's activations.
      state: the block's state after the previous segment.
      reset: optional [B] bool; True where a new document starts with this
        segment (its cache and memory are emptied first).
      use_memory: False runs the local part only (and leaves memory as is),
        for comparing the same weights with and without external memory.

    Returns:
      (y [B, S, D], the state after this segment).
    """
    if x.ndim != 3 or x.shape[-1] != self.features:
      raise ValueError(f"x must have shape [B, S, D={self.features}]; got {tuple(x.shape)}")
    if state.keys.shape[0] != x.shape[0]:
      raise ValueError(f"state has batch {state.keys.shape[0]} but x has batch {x.shape[0]}")
    if reset is not None:
      fresh = self.init_state(x.shape[0], state.memory.num_slots if state.memory else None)
      if state.index is not None:
        fresh = fresh.replace(index=ivf.clear(state.index))
      state = _select(jnp.asarray(reset, bool), fresh, state)
    q, k, v, k_raw = self.queries_and_keys(x, state)
    out = self.local_attention(q, k, v, state)
    memory, index = state.memory, state.index
    if self.use_memory and use_memory:
      if memory is None and index is None:
        raise ValueError("use_memory=True needs a state with a memory (init_state(batch, N))")
      if index is not None:
        remote = self.index_attention(q, index)
        nonempty = index.clock > 0  # [B, H]
      else:
        remote = self.memory_attention(q, memory)
        nonempty = jnp.any(memory.valid, axis=-1)  # [B, H]
      g = self.gate_value()[None, :] * nonempty
      g = g[..., None, None]
      out = g * remote + (1.0 - g) * out
      keys_in, values_in = jax.lax.stop_gradient(k), jax.lax.stop_gradient(v)
      if memory is not None:
        memory = _per_sequence(store.insert)(memory, keys_in, values_in)
      if index is not None:
        index = _per_sequence(ivf.insert)(index, keys_in, values_in)
    b, _, s, _ = out.shape
    y = x + self.output(out.transpose(0, 2, 1, 3).reshape(b, s, self.features))
    y = y + self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(y))))
    w = self.window
    cache_valid = jnp.concatenate([state.valid, jnp.ones((b, s), bool)], axis=1)[:, -w:]
    cache_keys = jnp.concatenate([state.keys, k], axis=2)[:, :, -w:]
    cache_values = jnp.concatenate([state.values, v], axis=2)[:, :, -w:]
    history = jnp.concatenate([state.key_context, k_raw], axis=1)
    key_context = jax.lax.stop_gradient(history[:, history.shape[1] - (self.key_conv - 1):])
    new_state = BlockState(keys=jax.lax.stop_gradient(cache_keys),
                           values=jax.lax.stop_gradient(cache_values),
                           valid=cache_valid, key_context=key_context, memory=memory,
                           index=index)
    return y, new_state

  def convolve_keys(self, keys: jax.Array, context: jax.Array) -> jax.Array:
    """Causal depthwise convolution: out[t] = sum_j w[j] * keys[t - j].

    Args:
      keys: [B, S, D] raw key projections of the segment.
      context: [B, C - 1, D] those of the C - 1 tokens before it (zeros at
        the start of a document).

    Returns:
      [B, S, D].
    """
    if self.key_conv == 1:
      return keys
    s = keys.shape[1]
    padded = jnp.concatenate([context, keys], axis=1)  # [B, C - 1 + S, D]
    weights = self.key_conv_weights[...]
    c = self.key_conv
    return sum(weights[j] * padded[:, c - 1 - j:c - 1 - j + s] for j in range(c))


class MemoryTransformer(nnx.Module):
  """A decoder-only language model of `MemoryAugmentedBlock`s, run segment by segment.

  Args:
    vocab_size: V.
    features: D.
    num_layers: number of blocks.
    num_heads: H.
    window: W, the local window; also the default segment length.
    memory_layers: indices of the blocks with an external memory (Wu et al.
      use one, late in the stack).
    segment_length: S, tokens processed per step of the scan (default W).
    top_k: K for the memory blocks.
    num_memory_slots: M learned slots in every block.
    key_conv: C, width of the causal key convolution in every block.
    mlp_features: MLP hidden width (default 4 D).
    qk_scale_init: initial query-key scale (default sqrt(E)).
    rngs: NNX random streams.
  """

  def __init__(self, vocab_size: int, features: int, num_layers: int, num_heads: int, *,
               window: int, memory_layers: Sequence[int] = (-1,),
               segment_length: int | None = None, top_k: int = 32, num_memory_slots: int = 0,
               key_conv: int = 1, mlp_features: int | None = None,
               qk_scale_init: float | None = None, rngs: nnx.Rngs):
    num_layers = _checks.integer(num_layers, "num_layers")
    layers = set()
    for i in memory_layers:
      if not -num_layers <= i < num_layers:
        raise ValueError(f"memory_layers must index the {num_layers} layers; got {i}")
      layers.add(i % num_layers)
    self.memory_layers = tuple(sorted(layers))
    self.segment_length = (window if segment_length is None
                           else _checks.integer(segment_length, "segment_length", what="or None"))
    self.vocab_size = vocab_size
    self.embed = nnx.Embed(vocab_size, features, rngs=rngs)
    self.blocks = nnx.List([
        MemoryAugmentedBlock(features, num_heads, window=window, use_memory=i in layers,
                             top_k=top_k, num_memory_slots=num_memory_slots,
                             key_conv=key_conv, mlp_features=mlp_features,
                             qk_scale_init=qk_scale_init,
                             rngs=rngs)
        for i in range(num_layers)])
    self.final_norm = nnx.LayerNorm(features, rngs=rngs)
    self.unembed = nnx.Linear(features, vocab_size, rngs=rngs)

  def init_state(self, batch: int, memory_size: int | None, *,
                 centroids: dict[int, jax.typing.ArrayLike] | None = None,
                 list_size: int | None = None, probes: int = 1,
                 exact_too: bool = False) -> tuple[BlockState, ...]:
    """Every block's state at the start of a document; N = `memory_size` slots per head.

    `memory_size=None` gives states without memory, for `use_memory=False`.
    `centroids` ({layer: [H, C, E]}, e.g. from `fit_index_centroids`) makes
    those layers' memories approximate (`MemoryAugmentedBlock.init_state`).
    """
    centroids = centroids or {}
    return tuple(
        block.init_state(batch, memory_size, centroids=centroids.get(i), list_size=list_size,
                         probes=probes, exact_too=exact_too)
        for i, block in enumerate(self.blocks))

  def _check_state(self, state) -> None:
    if not isinstance(state, (tuple, list)) or len(state) != len(self.blocks):
      got = f"{len(state)} states" if isinstance(state, (tuple, list)) else type(state).__name__
      raise ValueError(f"state must hold one BlockState per block ({len(self.blocks)}, from "
                       f"init_state); got {got}")

  def segment(self, tokens: jax.Array, state: tuple[BlockState, ...], *,
              reset: jax.Array | None = None,
              use_memory: bool = True) -> tuple[jax.Array, tuple[BlockState, ...]]:
    """One segment: tokens [B, S] -> (logits [B, S, V], new state)."""
    self._check_state(state)
    x = self.embed(tokens)
    new_state = []
    for block, block_state in zip(self.blocks, state):
      x, block_state = block(x, block_state, reset=reset, use_memory=use_memory)
      new_state.append(block_state)
    return self.unembed(self.final_norm(x)), tuple(new_state)

  def __call__(self, tokens: jax.Array, state: tuple[BlockState, ...], *,
               resets: jax.Array | None = None,
               use_memory: bool = True) -> tuple[jax.Array, tuple[BlockState, ...]]:
    """Runs a long sequence segment by segment with `jax.lax.scan`.

    Args:
      tokens: [B, L] int tokens, L a multiple of the segment length S.
      state: from `init_state` (or a previous call: the sequence continues).
      resets: optional [B, T] bool, True where a new document starts at
        segment t of sequence b (its caches and memories are emptied first).
      use_memory: False runs every block locally only (same weights).

    Returns:
      (logits [B, L, V], the state after the last segment).
    """
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"tokens must be an integer array [B, L]; got {tokens.dtype} "
                       f"{tuple(tokens.shape)}")
    _checks.check_index_range(tokens, "tokens", self.vocab_size, "vocab_size")
    self._check_state(state)
    b, length = tokens.shape
    s = self.segment_length
    if length % s:
      raise ValueError(f"tokens length L must be a multiple of segment_length={s}; got {length}")
    t = length // s
    if resets is None:
      resets = jnp.zeros((b, t), bool)
    resets = jnp.asarray(resets, bool)
    if resets.shape != (b, t):
      raise ValueError(f"resets must have shape [B, T]={(b, t)}; got {tuple(resets.shape)}")
    graphdef, params = nnx.split(self)

    def step(carry, inputs):
      model = nnx.merge(graphdef, params)
      seg_tokens, seg_reset = inputs
      logits, carry = model.segment(seg_tokens, carry, reset=seg_reset, use_memory=use_memory)
      return carry, logits

    xs = (tokens.reshape(b, t, s).swapaxes(0, 1), resets.swapaxes(0, 1))
    state, logits = jax.lax.scan(step, state, xs)
    return logits.swapaxes(0, 1).reshape(b, length, self.vocab_size), state


def fit_index_centroids(model: MemoryTransformer, tokens: jax.typing.ArrayLike,
                        num_lists: int, *, iterations: int = 10,
                        seed: int = 0) -> dict[int, jax.Array]:
  """Per-head IVF centroids for every memory layer, fitted on a sample of its keys.

  Runs `model` over `tokens` with an exact memory long enough to hold every
  token, then clusters each head's stored keys (`ivf.kmeans`), as faiss
  trains an IVF index on a sample of the data. Use tokens that are not the
  evaluation's (another seed of the same task).

  Args:
    model: the model.
    tokens: [B, L] calibration tokens, L a multiple of the segment length.
    num_lists: C, cells per head (at most B x L).
    iterations: k-means iterations.
    seed: k-means initial draw.

  Returns:
    {layer: [H, C, E] float32 unit centroids}.
  """
  tokens = jnp.asarray(tokens)
  b, length = tokens.shape
  _, state = jax.jit(lambda m, t: m(t, m.init_state(b, length)))(model, tokens)
  out = {}
  for layer in model.memory_layers:
    keys = state[layer].memory.keys  # [B, H, N, E]
    heads = jnp.swapaxes(keys, 0, 1).reshape(keys.shape[1], -1, keys.shape[-1])
    out[layer] = jnp.stack([ivf.kmeans(k, num_lists, iterations=iterations, seed=seed + h)
                            for h, k in enumerate(heads)])
  return out


def data_parallel_mesh(devices: Sequence[jax.Device] | None = None,
                       axis_name: str = "data") -> Mesh:
  """A one-axis mesh over `devices` (default: all) for data parallelism."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (axis_name,))


def shard_batch(tree, mesh: Mesh, axis_name: str = "data"):
  """Places every array of `tree` with its leading (batch) axis split over `axis_name`.

  Works for token batches and for model states alike (every state array leads
  with B). B must be divisible by the mesh axis size.
  """
  size = mesh.shape[axis_name]

  def place(x):
    if x.shape[0] % size:
      raise ValueError(f"batch size {x.shape[0]} must be divisible by the '{axis_name}' "
                       f"mesh axis size {size}")
    spec = PartitionSpec(axis_name, *([None] * (x.ndim - 1)))
    return jax.device_put(x, NamedSharding(mesh, spec))

  return jax.tree.map(place, tree)


def replicate(tree, mesh: Mesh):
  """Places every array of `tree` whole on every device of `mesh` (parameters)."""
  return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, PartitionSpec())), tree)
