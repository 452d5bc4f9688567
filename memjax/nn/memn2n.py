"""End-To-End Memory Networks and Key-Value Memory Networks.

Two question-answering readers over a memory of sentences:

* `MemN2N` (Sukhbaatar et al. 2015): K hops of soft attention over the memory,
  adjacent or layer-wise weight tying, bag-of-words or position encoding (PE),
  temporal encoding, linear start (LS) and random noise (RN) in time.
* `KeyValueMemoryNetwork` (Miller et al. 2016): keys and values encoded
  separately, H hops with a learned query update q <- R_j (q + o), and a
  `KeyValueReader` that takes keys and values already embedded, so any
  retrieval system can feed it.

The memory arithmetic is pure and lives in this module's functions:
`sentence_weights` and `encode_sentences` (eq. 1 and Sec. 4.1 of Sukhbaatar et
al.), `masked_softmax`, `address` (eq. 1) and `read_memory` (eq. 2, the
weighted sum through `memjax.access.read`), and `random_time` (RN). They are
written for one example; the modules batch them with `jax.vmap`.

Shape legend: B batch, M memory slots, L words per sentence, V vocabulary,
d embedding size, K hops, T embedding tables of a memory.

References:
  Sukhbaatar, Szlam, Weston, Fergus. End-To-End Memory Networks. NeurIPS 2015,
  arXiv:1503.08895.
  Miller, Fisch, Dodge, Karimi, Bordes, Weston. Key-Value Memory Networks for
  Directly Reading Documents. EMNLP 2016, arXiv:1606.03126.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from memjax import _checks
from memjax import access

ENCODINGS = ("position", "bow")
TYINGS = ("adjacent", "layerwise")


def _check_choice(value: str, name: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}; got {value!r}")


def _word_ids(ids: jax.typing.ArrayLike, name: str) -> jax.Array:
  ids = _checks.as_array(ids, name)
  _checks.check_integer(ids, name)
  if ids.ndim < 1:
    raise ValueError(f"{name} must have rank >= 1 [..., L]; got shape {tuple(ids.shape)}")
  return ids


# ----------------------------------------------------------------------------- pure functions


# The position encoding is the paper's formula times 2: its weights then
# average about 1, as bag-of-words weights do and as in the authors' code,
# whose 1 + 4 (k - (d+1)/2) (j - (J+1)/2) / (d J) is about twice the formula.
# At the paper's scale, SGD at the paper's learning rate does not learn
# bAbI task 16 (52 % test error against 1-2 % at this scale).
POSITION_SCALE = 2.0


def _word_factors(ids: jax.Array, encoding: str) -> tuple[jax.Array, jax.Array]:
  """(a, b) [..., L] with l_kj = a_j + (k/d) b_j; zero on padding."""
  present = (ids != 0).astype(jnp.float32)
  if encoding == "bow":
    return present, jnp.zeros_like(present)
  length = jnp.maximum(jnp.sum(present, axis=-1, keepdims=True), 1.0)  # J
  j = jnp.arange(1, ids.shape[-1] + 1, dtype=jnp.float32)
  a = POSITION_SCALE * (1 - j / length)
  b = -POSITION_SCALE * (1 - 2 * j / length)
  return a * present, b * present


def sentence_weights(ids: jax.typing.ArrayLike, embed_dim: int,
                     encoding: str = "position") -> jax.Array:
  """Per-word weights l_j of a sentence encoding m = sum_j l_j * A x_j.

  Position encoding (Sukhbaatar et al. 2015, Sec. 4.1):
  l_kj = s [(1 - j/J) - (k/d)(1 - 2j/J)], with words j = 1..J and embedding
  components k = 1..d, where J is the number of words in the sentence (not the
  padded length) and s = `POSITION_SCALE` = 2 (see there). Bag of words:
  l_kj = 1. Padding (word id 0) gets weight 0, so the nil word never
  contributes.

  Args:
    ids: [..., L] integer word ids, 0 for padding (padding at the end).
    embed_dim: d.
    encoding: "position" or "bow".

  Returns:
    [..., L, d] float32 weights.
  """
  ids = _word_ids(ids, "ids")
  embed_dim = _checks.integer(embed_dim, "embed_dim")
  _check_choice(encoding, "encoding", ENCODINGS)
  a, b = _word_factors(ids, encoding)
  k = jnp.arange(1, embed_dim + 1, dtype=jnp.float32) / embed_dim
  return a[..., None] + k * b[..., None]


# Up to this vocabulary size sentences are embedded as (weighted word counts)
# @ table: dense matrix products forwards and backwards. Larger vocabularies
# gather rows instead (a scatter-add backwards). Both give the same numbers.
DENSE_VOCABULARY = 4096


def encode_sentences(table: jax.typing.ArrayLike, ids: jax.typing.ArrayLike,
                     encoding: str = "position", dense: bool | None = None) -> jax.Array:
  """Sentence vectors sum_j l_j * table[x_j] (eq. 1's m_i without time).

  With l_kj = a_j + (k/d) b_j (`sentence_weights`) this is
  (sum_j a_j e_{x_j}) @ table + (k/d) * ((sum_j b_j e_{x_j}) @ table), which
  is how it is computed for vocabularies up to `DENSE_VOCABULARY` words
  (`dense` None) or when `dense` is true. Otherwise the rows of the words are
  gathered and summed with their weights, which is cheaper when there are
  many sentences of few words each (a whole batch of stories at once).

  Args:
    table: [V, d] embedding matrix (A, B or C in the paper).
    ids: [..., L] word ids in [0, V), 0 for padding. Ids outside raise a
      ValueError when their values are known; under `jax.jit` they are not
      checked (the dense path counts them as no word, the gather path clamps).
    encoding: "position" or "bow" (see `sentence_weights`).
    dense: count words with one-hot matrix products (True) or gather
      embedding rows (False); None picks by vocabulary size. The numbers are
      the same.

  Returns:
    [..., d] sentence vectors, in the dtype of `table`.
  """
  table = _checks.floating(table, "table", 2, "[V, d]")
  ids = _word_ids(ids, "ids")
  _check_choice(encoding, "encoding", ENCODINGS)
  vocab, dim = table.shape
  _checks.check_index_range(ids, "ids", vocab, "the vocabulary size V of table")
  dtype = _checks.compute_dtype(table.dtype)
  a, b = _word_factors(ids, encoding)
  k = jnp.arange(1, dim + 1, dtype=dtype) / dim
  t = table.astype(dtype)
  if dense is None:
    dense = vocab <= DENSE_VOCABULARY
  if dense:
    words = jax.nn.one_hot(ids, vocab, dtype=dtype)  # [..., L, V]
    bag_a = jnp.einsum("...l,...lv->...v", a.astype(dtype), words)
    out = bag_a @ t
    if encoding == "position":
      bag_b = jnp.einsum("...l,...lv->...v", b.astype(dtype), words)
      out = out + k * (bag_b @ t)
  else:
    words = jnp.take(t, ids, axis=0)  # [..., L, d]
    weights = a[..., None].astype(dtype) + k * b[..., None].astype(dtype)
    out = jnp.sum(words * weights, axis=-2)
  return out.astype(table.dtype)


def masked_softmax(scores: jax.typing.ArrayLike, mask: jax.typing.ArrayLike,
                   extra_zeros: int = 0) -> jax.Array:
  """Softmax over the last axis restricted to `mask`; masked entries get 0.

  A row whose mask is all false gives all zeros (an empty memory is read as
  the zero vector). Computed in float32 for half-precision input.

  `extra_zeros` = E counts entries that are not in `scores` but take part in
  the softmax with score 0 (empty memory slots left out of a shorter array,
  see `MemN2N.answer`'s `total_slots`): the returned weights are those of the
  first N entries of a softmax over N + E, so they sum to less than 1.

  Args:
    scores: [..., N] match scores.
    mask: [..., N] bool, true where a slot holds an item.
    extra_zeros: E >= 0, a Python int.

  Returns:
    [..., N] weights that sum to 1 over the masked-in entries (with E > 0:
    to 1 minus the E extra entries' share).
  """
  scores = _checks.floating(scores, "scores", range(1, 8), "[..., N]")
  mask = _checks.as_array(mask, "mask")
  if mask.shape != scores.shape:
    raise ValueError(f"mask must have the shape of scores {tuple(scores.shape)}; got "
                     f"{tuple(mask.shape)}")
  extra_zeros = _checks.integer(extra_zeros, "extra_zeros", 0)
  mask = mask.astype(bool)
  dtype = _checks.compute_dtype(scores.dtype)
  s = jnp.where(mask, scores.astype(dtype), -jnp.inf)
  top = jnp.max(s, axis=-1, keepdims=True)
  if extra_zeros:
    top = jnp.maximum(top, 0.0)
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  top = jax.lax.stop_gradient(top)
  e = jnp.where(mask, jnp.exp(s - top), 0.0)
  total = jnp.sum(e, axis=-1, keepdims=True)
  if extra_zeros:
    total = total + extra_zeros * jnp.exp(-top)
  return (e / jnp.where(total > 0, total, 1.0)).astype(scores.dtype)


def address(query: jax.typing.ArrayLike, keys: jax.typing.ArrayLike, mask: jax.typing.ArrayLike,
            linear: jax.typing.ArrayLike = False, extra_zeros: int = 0) -> jax.Array:
  """Attention over memory slots: p = softmax(keys @ query) (eq. 1).

  With `linear` true the softmax is left out (p = keys @ query on the valid
  slots), as in the linear-start phase of training (Sec. 4.2).

  Args:
    query: [d] the controller state u.
    keys: [N, d] memory vectors m_i.
    mask: [N] bool, valid slots.
    linear: bool (Python or traced scalar): skip the softmax.
    extra_zeros: empty slots beyond the N given, in the softmax with score 0
      (see `masked_softmax`); they add nothing without the softmax.

  Returns:
    [N] weights p, 0 on invalid slots.
  """
  query = _checks.floating(query, "query", 1, "[d]")
  keys = _checks.floating(keys, "keys", 2, "[N, d]")
  _checks.check_dim(keys, 1, query.shape[0], "keys", "the size d of query")
  mask = _checks.as_array(mask, "mask")
  if mask.shape != keys.shape[:1]:
    raise ValueError(f"mask must have shape [N] = {keys.shape[:1]}; got {tuple(mask.shape)}")
  if not isinstance(linear, bool):
    linear = _checks.as_array(linear, "linear")
    _checks.check_scalar(linear, "linear")
  scores = keys @ query
  if isinstance(linear, bool) and linear:
    return scores * mask
  soft = masked_softmax(scores, mask, extra_zeros)
  return soft if isinstance(linear, bool) else jnp.where(linear, scores * mask, soft)


def read_memory(query: jax.typing.ArrayLike, keys: jax.typing.ArrayLike,
                values: jax.typing.ArrayLike, mask: jax.typing.ArrayLike,
                linear: jax.typing.ArrayLike = False,
                extra_zeros: int = 0) -> tuple[jax.Array, jax.Array]:
  """One memory hop: address by `keys`, read the weighted sum of `values` (eqs. 1-2).

  o = sum_i p_i c_i with p = softmax(u . m_i); the sum is `memjax.access.read`.

  Args:
    query: [d] the controller state u.
    keys: [N, d] input memory m_i (or keys of a key-value memory).
    values: [N, dv] output memory c_i (or values).
    mask: [N] bool, valid slots.
    linear: skip the softmax (linear start).
    extra_zeros: zero slots beyond the N given, in the softmax (`address`).

  Returns:
    (o [dv], p [N]).
  """
  values = _checks.floating(values, "values", 2, "[N, dv]")
  weights = address(query, keys, mask, linear, extra_zeros)
  _checks.check_dim(values, 0, weights.shape[0], "values", "the slot count N of keys")
  return access.read(values, weights), weights


def random_time(key: jax.Array, size: jax.typing.ArrayLike, memory_size: int,
                rate: float) -> jax.Array:
  """Temporal indices with empty memories inserted at random (random noise, Sec. 4.2).

  Slot i (0 = the most recent sentence) normally has time index i. Random
  noise "adds empty memories" to the story in time: with n = `size`
  sentences, a number of blanks b is drawn uniformly from
  {0, ..., ceil(rate * n) - 1}, and the n sentences take a random ordered
  subset of the n + b time indices (as the authors' reference code does), so
  the order of the sentences is kept and the gaps between them vary. Indices
  are capped at `memory_size - 1`; slots >= n get their plain index i.

  Args:
    key: a PRNG key.
    size: [] int, the number of sentences n in memory.
    memory_size: M.
    rate: the fraction of blanks (0.1 in the paper).

  Returns:
    [M] int32 non-decreasing over the first n slots; arange(M) when rate = 0.
  """
  memory_size = _checks.integer(memory_size, "memory_size")
  try:
    ok = bool(0.0 <= rate < 1.0)
  except TypeError:  # not a number: "0.1", None, ...
    ok = False
  if not ok:
    raise ValueError(f"rate must be in [0, 1); got {rate!r}")
  plain = jnp.arange(memory_size, dtype=jnp.int32)
  if rate == 0.0:
    return plain
  n = jnp.clip(jnp.asarray(size, jnp.int32), 0, memory_size)
  most = int(np.ceil(rate * memory_size)) + 1  # the most blanks any story gets
  count_key, place_key = jax.random.split(key)
  limit = jnp.ceil(rate * n.astype(jnp.float32)).astype(jnp.int32)
  blanks = jnp.floor(jax.random.uniform(count_key) * limit).astype(jnp.int32)
  positions = jnp.arange(memory_size + most, dtype=jnp.int32)
  # Rank the n + b positions in random order; the first b of them are blank.
  keys = jnp.where(positions < n + blanks, jax.random.uniform(place_key, positions.shape), 2.0)
  rank = jnp.argsort(jnp.argsort(keys))
  sentence = (positions < n + blanks) & (rank >= blanks)
  # Slot i takes the position of the (i+1)-th sentence position.
  time = jnp.searchsorted(jnp.cumsum(sentence), plain + 1).astype(jnp.int32)
  return jnp.where(plain < n, jnp.minimum(time, memory_size - 1), plain)


# ----------------------------------------------------------------------------- modules


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], std: float) -> jax.Array:
  return std * jax.random.normal(rngs.params(), shape, jnp.float32)


class MemoryNetworkOutput(NamedTuple):
  """What a memory network returns.

  Attributes:
    logits: [B, V] answer scores over the vocabulary.
    attention: [B, K, M] attention weights of each hop over the memory slots.
  """
  logits: jax.Array
  attention: jax.Array


class SentenceEncoder(nnx.Module):
  """Embeds sentences of word ids: m = sum_j l_j * E x_j (+ T_E(t) for memory slot time t).

  Args:
    vocab_size: V (id 0 is padding and is never embedded).
    embed_dim: d.
    encoding: "position" (PE) or "bow".
    memory_size: rows of the temporal encoding T_E (0: no temporal encoding).
    init_std: standard deviation of the normal initialisation (0.1 in the paper).
    rngs: `nnx.Rngs` with a `params` stream.
  """

  def __init__(self, vocab_size: int, embed_dim: int, *, encoding: str = "position",
               memory_size: int = 0, init_std: float = 0.1, rngs: nnx.Rngs):
    vocab_size = _checks.integer(vocab_size, "vocab_size")
    embed_dim = _checks.integer(embed_dim, "embed_dim")
    _check_choice(encoding, "encoding", ENCODINGS)
    memory_size = _checks.integer(memory_size, "memory_size", 0)
    _checks.number(init_std, "init_std", 0)
    self.encoding = encoding
    self.embedding = nnx.Param(_normal(rngs, (vocab_size, embed_dim), init_std))
    self.temporal = (nnx.Param(_normal(rngs, (memory_size, embed_dim), init_std))
                     if memory_size else None)

  def time_encoding(self, time: jax.typing.ArrayLike | None, slots: int | None = None
                    ) -> jax.Array:
    """T_E(t): [...] int time indices -> [..., d].

    With `time` None, the encodings of slots 0..slots-1 in order ([slots, d]).
    Zeros without a temporal encoding. Time indices outside [0, memory_size)
    raise a ValueError when their values are known; under `jax.jit` they are
    clamped.
    """
    if time is None:
      if slots is None:
        raise ValueError("time_encoding needs time indices or a slot count")
      slots = _checks.integer(slots, "slots", 0)
      shape = (slots,)
    else:
      time = _checks.as_array(time, "time")
      _checks.check_integer(time, "time")
      shape = time.shape
    if self.temporal is None:
      return jnp.zeros((*shape, self.embedding.shape[1]), self.embedding.dtype)
    table = self.temporal[...]
    if time is None:
      if slots > table.shape[0]:
        raise ValueError(f"{slots} memory slots but a temporal encoding of "
                         f"{table.shape[0]} rows")
      return table[:slots]
    _checks.check_index_range(time, "time", table.shape[0], "memory_size")
    return jnp.take(table, time, axis=0, mode="clip")

  def __call__(self, ids: jax.typing.ArrayLike, time: jax.typing.ArrayLike | None = None, *,
               dense: bool | None = None) -> jax.Array:
    """[..., L] word ids (and optional [...] time indices) -> [..., d].

    `dense` chooses how words are counted (see `encode_sentences`).
    """
    out = encode_sentences(self.embedding[...], ids, self.encoding, dense)
    return out if time is None else out + self.time_encoding(time)


def _check_memory_inputs(memory: jax.Array, question: jax.Array, mask: jax.Array,
                         tables: int, embed_dim: int) -> None:
  if memory.ndim != 4 or memory.shape[2:] != (tables, embed_dim):
    raise ValueError(f"memory must have shape [B, M, {tables}, {embed_dim}] (from "
                     f"embed_memory); got {tuple(memory.shape)}")
  if question.shape != (memory.shape[0], embed_dim):
    raise ValueError(f"question must have shape [B, d] = {(memory.shape[0], embed_dim)} (from "
                     f"embed_question); got {tuple(question.shape)}")
  if mask.shape != memory.shape[:2]:
    raise ValueError(f"mask must have shape [B, M] = {memory.shape[:2]}; got "
                     f"{tuple(mask.shape)}")


def _empty_slots_as_zeros(memory: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Empty slots hold the zero vector (score 0) and stay in the softmax."""
  memory = jnp.where(mask.reshape(mask.shape + (1,) * (memory.ndim - 2)), memory, 0.0)
  return memory, jnp.ones_like(mask, dtype=bool)


def _time_indices(time, batch: int, memory_size: int) -> jax.Array | None:
  """None (slot i has time i) or [B, M] time indices."""
  if time is None:
    return None
  time = _checks.as_array(time, "time")
  _checks.check_integer(time, "time")
  try:
    ok = time.ndim <= 2 and (np.broadcast_shapes(time.shape, (batch, memory_size))
                             == (batch, memory_size))
  except ValueError:
    ok = False
  if not ok:
    raise ValueError(f"time must have shape [B, M] = {(batch, memory_size)} or [M]; got "
                     f"{tuple(time.shape)}")
  return jnp.broadcast_to(time, (batch, memory_size))


def _extra_slots(slots: int, total_slots: int | None, memory_size: int,
                 attend_empty: bool) -> int:
  """Empty slots left out of a memory of `slots` that stay in the softmax."""
  if total_slots is None:
    return 0
  if not _checks.is_integer(total_slots) or not slots <= total_slots <= memory_size:
    raise ValueError(f"total_slots must be an integer in [{slots}, memory_size={memory_size}] "
                     f"(the memory has {slots} slots); got {total_slots!r}")
  return int(total_slots - slots) if attend_empty else 0


class MemN2N(nnx.Module):
  """End-To-End Memory Network (Sukhbaatar et al. 2015) for question answering.

  u^1 = B q; for k = 1..K: p = softmax(u^k . m^k_i), o^k = sum_i p_i c^k_i,
  u^{k+1} = u^k + o^k (adjacent) or H u^k + o^k (layer-wise);
  answer = softmax(W u^{K+1}). Memory vectors are m^k_i = A^k x_i + T_A^k(i)
  and c^k_i = C^k x_i + T_C^k(i), sentences encoded by `encode_sentences`.

  Weight tying (Sec. 2.2): "adjacent" stores K+1 encoders E_0..E_K with
  A^k = E_{k-1}, C^k = E_k, B = A^1 = E_0 and W^T = C^K = E_K (the temporal
  tables tie the same way); "layerwise" stores A, C, B, W and H, with the same
  A and C in every hop.

  Args:
    vocab_size: V.
    embed_dim: d (20 per task, 50 jointly in the paper).
    hops: K.
    memory_size: M, rows of the temporal encoding (the most memory slots).
    tying: "adjacent" or "layerwise".
    encoding: "position" or "bow".
    temporal: add the temporal encoding T(i).
    attend_empty: empty memory slots (mask false) hold the zero vector and
      take part in every softmax with score 0, as in the authors' code, where
      the memory is a fixed array of M slots padded with the nil word; this
      lets a hop put weight on "nothing". False leaves them out of the softmax.
    init_std: normal initialisation scale (0.1).
    rngs: `nnx.Rngs` with a `params` stream.
  """

  def __init__(self, vocab_size: int, embed_dim: int = 20, *, hops: int = 3,
               memory_size: int = 50, tying: str = "adjacent", encoding: str = "position",
               temporal: bool = True, attend_empty: bool = True, init_std: float = 0.1,
               rngs: nnx.Rngs):
    hops = _checks.integer(hops, "hops")
    memory_size = _checks.integer(memory_size, "memory_size")
    _check_choice(tying, "tying", TYINGS)
    self.hops = hops
    self.tying = tying
    self.attend_empty = attend_empty
    self.embed_dim = embed_dim
    self.memory_size = memory_size
    time_rows = memory_size if temporal else 0
    encoder = lambda rows: SentenceEncoder(vocab_size, embed_dim, encoding=encoding,
                                           memory_size=rows, init_std=init_std, rngs=rngs)
    if tying == "adjacent":
      self.encoders = nnx.List([encoder(time_rows) for _ in range(hops + 1)])
    else:
      self.question_encoder = encoder(0)
      self.encoders = nnx.List([encoder(time_rows), encoder(time_rows)])  # A, C
      self.output = nnx.Param(_normal(rngs, (vocab_size, embed_dim), init_std))  # W^T
      self.hop_map = nnx.Param(_normal(rngs, (embed_dim, embed_dim), init_std))  # H

  @property
  def memory_tables(self) -> int:
    """T, the number of memory embeddings (K+1 adjacent, 2 layer-wise)."""
    return len(self.encoders)

  def embed_memory(self, story: jax.typing.ArrayLike, *, dense: bool | None = None
                   ) -> jax.Array:
    """[..., L] sentences -> [..., T, d]: every memory embedding, without time.

    `dense` chooses how words are counted (see `encode_sentences`).
    """
    return jnp.stack([enc(story, dense=dense) for enc in self.encoders], axis=-2)

  def embed_question(self, question: jax.typing.ArrayLike) -> jax.Array:
    """[..., L] questions -> [..., d]: u^1 = B q."""
    enc = self.encoders[0] if self.tying == "adjacent" else self.question_encoder
    return enc(question)

  def _tables(self, hop: int) -> tuple[int, int]:
    """The memory tables used as (A^k, C^k) in hop `hop` (0-based)."""
    return (hop, hop + 1) if self.tying == "adjacent" else (0, 1)

  def answer(self, memory: jax.Array, question: jax.Array, mask: jax.typing.ArrayLike, *,
             time: jax.typing.ArrayLike | None = None,
             linear: jax.typing.ArrayLike = False,
             total_slots: int | None = None) -> MemoryNetworkOutput:
    """Hops over an embedded memory and scores the answers.

    Args:
      memory: [B, M, T, d] from `embed_memory`.
      question: [B, d] from `embed_question`.
      mask: [B, M] bool, valid slots.
      time: [B, M] or [M] time index of each slot (default arange(M): slot i
        is i sentences before the question); see `random_time`.
      linear: leave out the softmax of every hop (linear start).
      total_slots: the size of the memory that `memory` is the first M slots
      of, the slots after them empty (default M). With `attend_empty` those
      total_slots - M empty slots stay in every softmax, so a batch of short
      stories can be cut to its longest story and give the numbers of the
      whole memory (the trainer's memory buckets).

    Returns:
      `MemoryNetworkOutput` with logits [B, V] and attention [B, K, M].
    """
    mask = jnp.asarray(mask)
    _check_memory_inputs(memory, question, mask, self.memory_tables, self.embed_dim)
    batch, slots = mask.shape
    if slots > self.memory_size:
      raise ValueError(f"memory has {slots} slots; the model was built for memory_size="
                       f"{self.memory_size}")
    extra = _extra_slots(slots, total_slots, self.memory_size, self.attend_empty)
    time = _time_indices(time, batch, slots)
    memory = memory + jnp.stack([enc.time_encoding(time, slots) for enc in self.encoders],
                                axis=-2)
    if self.attend_empty:
      memory, mask = _empty_slots_as_zeros(memory, mask)
    hop_map = self.hop_map[...] if self.tying == "layerwise" else None

    def one(mem, u, valid):
      weights = []
      for hop in range(self.hops):
        a, c = self._tables(hop)
        o, p = read_memory(u, mem[:, a], mem[:, c], valid, linear, extra)
        u = (u if hop_map is None else hop_map @ u) + o
        weights.append(p)
      return u, jnp.stack(weights)

    state, attention = jax.vmap(one)(memory, question, mask)
    out = (self.encoders[-1].embedding[...] if self.tying == "adjacent" else self.output[...])
    return MemoryNetworkOutput(state @ out.T, attention)

  def __call__(self, story: jax.typing.ArrayLike, question: jax.typing.ArrayLike,
               mask: jax.typing.ArrayLike, *, time: jax.typing.ArrayLike | None = None,
               linear: jax.typing.ArrayLike = False) -> MemoryNetworkOutput:
    """Answers questions about stories.

    Args:
      story: [B, M, L] word ids; slot 0 the most recent sentence.
      question: [B, L] word ids.
      mask: [B, M] bool, which slots hold a sentence.
      time: optional [B, M] or [M] time indices (see `answer`).
      linear: linear start (no softmax in the hops).

    Returns:
      `MemoryNetworkOutput`.
    """
    return self.answer(self.embed_memory(story), self.embed_question(question), mask,
                       time=time, linear=linear)


HOP_INITS = ("identity", "random")


class KeyValueReader(nnx.Module):
  """The hops of a Key-Value Memory Network over embedded keys and values.

  For j = 1..H: p = softmax(s_j q . k_h) over valid slots, o = sum_h p_h v_h,
  q <- R_j (q + o) (Miller et al. 2016, Sec. 3.1, key addressing, value
  reading and query update). The one reader of memjax's key-value networks:
  `KeyValueMemoryNetwork` (bAbI) and `memjax.nn.rag_reader.KVMemoryReader`
  (retrieved passages) both feed it.

  Args:
    embed_dim: d (keys, values and query share it).
    hops: H.
    hop_init: 'identity' (default: R_j = I, so an untrained reader adds the
      read to the query as MemN2N does) or 'random' (LeCun normal, as an
      `nnx.Linear(d, d)` draws its kernel K, with R_j = K^T; needs `rngs`).
    learn_temperature: learn an inverse temperature s_j = exp(log_scale_j)
      per hop, starting at 1 (default: s_j = 1, no parameter). A sharp
      choice among slots that differ in one word needs large scores early
      in training.
    rngs: the random draws of hop_init='random'; unused otherwise.
  """

  def __init__(self, embed_dim: int, hops: int = 2, *, hop_init: str = "identity",
               learn_temperature: bool = False, rngs: nnx.Rngs | None = None):
    embed_dim = _checks.integer(embed_dim, "embed_dim")
    hops = _checks.integer(hops, "hops")
    _check_choice(hop_init, "hop_init", HOP_INITS)
    self.hops = hops
    self.embed_dim = embed_dim
    if hop_init == "identity":
      maps = jnp.tile(jnp.eye(embed_dim, dtype=jnp.float32), (hops, 1, 1))
    else:
      if rngs is None:
        raise ValueError("hop_init='random' needs `rngs`")
      init = nnx.initializers.lecun_normal()
      maps = jnp.stack([init(rngs.params(), (embed_dim, embed_dim), jnp.float32).T
                        for _ in range(hops)])
    self.hop_maps = nnx.Param(maps)
    self.log_scale = nnx.Param(jnp.zeros((hops,))) if learn_temperature else None

  def __call__(self, query: jax.typing.ArrayLike, keys: jax.typing.ArrayLike,
               values: jax.typing.ArrayLike, mask: jax.typing.ArrayLike, *,
               linear: jax.typing.ArrayLike = False,
               extra_zeros: int = 0) -> tuple[jax.Array, jax.Array]:
    """Reads the memory H times.

    Args:
      query: [B, d] embedded questions.
      keys: [B, N, d] embedded keys.
      values: [B, N, d] embedded values.
      mask: [B, N] bool, valid slots.
      linear: leave out the softmax (linear start).
      extra_zeros: zero keys and values beyond the N given, in every softmax
        (see `masked_softmax`).

    Returns:
      (q [B, d] the final query, attention [B, H, N]).
    """
    query = _checks.floating(query, "query", 2, "[B, d]")
    keys = _checks.floating(keys, "keys", 3, "[B, N, d]")
    values = _checks.floating(values, "values", 3, "[B, N, d]")
    mask = jnp.asarray(mask)
    if query.shape[1] != self.embed_dim:
      raise ValueError(f"query must have shape [B, {self.embed_dim}]; got {tuple(query.shape)}")
    if keys.shape[0] != query.shape[0] or keys.shape[2] != self.embed_dim:
      raise ValueError(f"keys must have shape [B, N, d] = [{query.shape[0]}, N, "
                       f"{self.embed_dim}]; got {tuple(keys.shape)}")
    if values.shape != keys.shape:
      raise ValueError(f"values must have the shape of keys {tuple(keys.shape)}; got "
                       f"{tuple(values.shape)}")
    if mask.shape != keys.shape[:2]:
      raise ValueError(f"mask must have shape [B, N] = {keys.shape[:2]}; got "
                       f"{tuple(mask.shape)}")
    maps = self.hop_maps[...]
    scales = None if self.log_scale is None else jnp.exp(self.log_scale[...])

    def one(q, k, v, valid):
      weights = []
      for hop in range(self.hops):
        # s (q . k) = (s q) . k: the temperature scales the addressing query only.
        q_address = q if scales is None else scales[hop] * q
        o, p = read_memory(q_address, k, v, valid, linear, extra_zeros)
        q = maps[hop] @ (q + o)
        weights.append(p)
      return q, jnp.stack(weights)

    return jax.vmap(one)(query, keys, values, mask)


class KeyValueMemoryNetwork(nnx.Module):
  """Key-Value Memory Network (Miller et al. 2016) answering over a sentence memory.

  Keys and values have separate encoders: the question and the keys share
  the key encoder A Phi_X / A Phi_K (so they meet in one space), the values
  have their own (A Phi_V); answers are scored against an output embedding,
  softmax(q_{H+1} . B y) over the vocabulary. On bAbI a key and its value are
  the same sentence, read through the two encodings.

  Args:
    vocab_size: V.
    embed_dim: d.
    hops: H.
    memory_size: M, rows of the temporal encodings.
    encoding: "position" or "bow".
    temporal: add temporal encodings to keys and values.
    attend_empty: as in `MemN2N`: empty slots are zero keys and values that
      stay in the softmax.
    init_std: normal initialisation scale.
    rngs: `nnx.Rngs` with a `params` stream.
  """

  def __init__(self, vocab_size: int, embed_dim: int = 20, *, hops: int = 3,
               memory_size: int = 50, encoding: str = "position", temporal: bool = True,
               attend_empty: bool = True, init_std: float = 0.1, rngs: nnx.Rngs):
    memory_size = _checks.integer(memory_size, "memory_size")
    self.attend_empty = attend_empty
    self.embed_dim = embed_dim
    self.memory_size = memory_size
    rows = memory_size if temporal else 0
    self.key_encoder = SentenceEncoder(vocab_size, embed_dim, encoding=encoding,
                                       memory_size=rows, init_std=init_std, rngs=rngs)
    self.value_encoder = SentenceEncoder(vocab_size, embed_dim, encoding=encoding,
                                         memory_size=rows, init_std=init_std, rngs=rngs)
    self.reader = KeyValueReader(embed_dim, hops, rngs=rngs)
    self.output = nnx.Param(_normal(rngs, (vocab_size, embed_dim), init_std))

  memory_tables = 2

  @property
  def hops(self) -> int:
    return self.reader.hops

  def embed_memory(self, story: jax.typing.ArrayLike, *, dense: bool | None = None
                   ) -> jax.Array:
    """[..., L] sentences -> [..., 2, d]: (key, value) embeddings, without time."""
    return jnp.stack([self.key_encoder(story, dense=dense),
                      self.value_encoder(story, dense=dense)], axis=-2)

  def embed_question(self, question: jax.typing.ArrayLike) -> jax.Array:
    """[..., L] questions -> [..., d] through the key encoder."""
    return self.key_encoder(question)

  def answer(self, memory: jax.Array, question: jax.Array, mask: jax.typing.ArrayLike, *,
             time: jax.typing.ArrayLike | None = None,
             linear: jax.typing.ArrayLike = False,
             total_slots: int | None = None) -> MemoryNetworkOutput:
    """Like `MemN2N.answer`: memory [B, M, 2, d] (keys, values), question [B, d]."""
    mask = jnp.asarray(mask)
    _check_memory_inputs(memory, question, mask, 2, self.embed_dim)
    batch, slots = mask.shape
    extra = _extra_slots(slots, total_slots, self.memory_size, self.attend_empty)
    time = _time_indices(time, batch, slots)
    keys = memory[:, :, 0] + self.key_encoder.time_encoding(time, slots)
    values = memory[:, :, 1] + self.value_encoder.time_encoding(time, slots)
    if self.attend_empty:
      memory, mask = _empty_slots_as_zeros(jnp.stack([keys, values], axis=2), mask)
      keys, values = memory[:, :, 0], memory[:, :, 1]
    state, attention = self.reader(question, keys, values, mask, linear=linear,
                                   extra_zeros=extra)
    return MemoryNetworkOutput(state @ self.output[...].T, attention)

  def __call__(self, story: jax.typing.ArrayLike, question: jax.typing.ArrayLike,
               mask: jax.typing.ArrayLike, *, time: jax.typing.ArrayLike | None = None,
               linear: jax.typing.ArrayLike = False) -> MemoryNetworkOutput:
    """Answers questions; keys and values are both the story's sentences."""
    return self.answer(self.embed_memory(story), self.embed_question(question), mask,
                       time=time, linear=linear)
