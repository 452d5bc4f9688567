"""A key-value memory network reader over retrieved passages (Miller et al. 2016).

The reader answers a question from the K passages a `memjax.retrieval.
DocumentMemory` retrieved for it, each given as key tokens and value tokens.
With A a word embedding and Phi a bag of words:

  q_1 = A Phi(question)                                      (eq. 1)
  p_hi = softmax_i(s_h q_h . A Phi(key_i))                   key addressing, s_h learned
  o_h = sum_i p_hi A Phi(value_i)                            value reading
  q_{h+1} = R_h (q_h + o_h)                                  one hop, h = 1..H
  logits_y = q_{H+1} . B_y                                   over the vocabulary

The hops are `memjax.nn.memn2n.KeyValueReader` (the reader the bAbI
key-value network uses too), with random R_h and a learned inverse
temperature per hop, on a per-question memory of K + 1 slots: the retrieved
passages (masked where retrieval found nothing) and one learned null slot,
the slot to address when no passage states the fact (its value then leads
to the answer "unknown"). With every passage masked the reader is the same
model without retrieval: it answers from its weights alone.

Shape legend: B batch, K retrieved slots, Lq question tokens, Lk key tokens,
Lv value tokens, D embedding size, V vocabulary.

References:
  Miller, Fisch, Dodge, Karimi, Bordes, Weston. Key-Value Memory Networks
  for Directly Reading Documents. EMNLP 2016, section 3.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from memjax import _checks
from memjax.nn import memn2n


def bag_of_words(embed: nnx.Embed, tokens: jax.Array) -> jax.Array:
  """Sum of the embeddings of the non-padding (id != 0) tokens: [..., L] -> [..., D]."""
  mask = (tokens != 0)[..., None]
  return jnp.sum(jnp.where(mask, embed(tokens), 0), axis=-2)


class KVMemoryReader(nnx.Module):
  """Key-value memory network reader; see the module docstring.

  Args:
    vocab_size: V.
    dim: D.
    hops: H >= 1 addressing hops.
    rngs: `nnx.Rngs`.
    init_scale: standard deviation of the initial embeddings.
    tie_output: score answers with the input embedding A instead of a
      separate B. Then a value read from memory already points at its own
      word (random embeddings are nearly orthogonal), so copying an answer
      out of a passage needs no training per answer word.
  """

  def __init__(self, vocab_size: int, dim: int, *, hops: int = 2, rngs: nnx.Rngs,
               init_scale: float = 0.1, tie_output: bool = False):
    vocab_size = _checks.integer(vocab_size, "vocab_size")
    dim = _checks.integer(dim, "dim")
    hops = _checks.integer(hops, "hops")
    _checks.number(init_scale, "init_scale", 0)
    init = nnx.initializers.normal(init_scale)
    self.vocab_size = vocab_size
    self.dim = dim
    self.hops = hops
    self.embed = nnx.Embed(vocab_size, dim, embedding_init=init, rngs=rngs)
    self.tie_output = tie_output
    self.output = None if tie_output else nnx.Embed(vocab_size, dim, embedding_init=init,
                                                    rngs=rngs)
    self.null_key = nnx.Param(init(rngs.params(), (dim,)))
    self.null_value = nnx.Param(init(rngs.params(), (dim,)))
    self.reader = memn2n.KeyValueReader(dim, hops, hop_init="random", learn_temperature=True,
                                        rngs=rngs)

  def __call__(self, question: jax.Array, keys: jax.Array, values: jax.Array,
               mask: jax.Array) -> jax.Array:
    """Answer logits.

    Args:
      question: [B, Lq] int token ids (0 = padding).
      keys: [B, K, Lk] int key tokens of the retrieved passages.
      values: [B, K, Lv] int value tokens.
      mask: [B, K] bool, which slots hold a retrieved passage.

    Token ids outside [0, V) raise a ValueError when their values are known;
    under `jax.jit` they are not checked (an id >= V then embeds as NaN).

    Returns:
      [B, V] float32 logits over the vocabulary.
    """
    q, _ = self._read(question, keys, values, mask)
    answers = self.embed if self.tie_output else self.output
    return q @ answers.embedding[...].T

  def attention(self, question: jax.Array, keys: jax.Array, values: jax.Array,
                mask: jax.Array) -> jax.Array:
    """First-hop addressing weights [B, K + 1] (slot 0 is the null slot), for inspection."""
    return self._read(question, keys, values, mask)[1][:, 0]

  def _check(self, question, keys, values, mask) -> tuple[jax.Array, ...]:
    """The arguments of `__call__` as arrays, or a ValueError/TypeError naming the bad one."""
    tokens = []
    for name, x, rank, legend in (("question", question, 2, "[B, Lq]"),
                                  ("keys", keys, 3, "[B, K, Lk]"),
                                  ("values", values, 3, "[B, K, Lv]")):
      x = _checks.as_array(x, name)
      _checks.check_integer(x, name)
      _checks.check_rank(x, rank, name, legend)
      _checks.check_index_range(x, name, self.vocab_size, "vocab_size")
      tokens.append(x)
    question, keys, values = tokens
    mask = _checks.as_array(mask, "mask")
    _checks.check_rank(mask, 2, "mask", "[B, K]")
    batch, slots = keys.shape[:2]
    for name, x in (("values", values), ("mask", mask)):
      if x.shape[:2] != (batch, slots):
        raise ValueError(f"{name} must start with [B, K] = {(batch, slots)} like keys; "
                         f"got shape {tuple(x.shape)}")
    if question.shape[0] != batch:
      raise ValueError(f"question must have batch size {batch} like keys; got shape "
                       f"{tuple(question.shape)}")
    return question, keys, values, mask

  def _read(self, question, keys, values, mask) -> tuple[jax.Array, jax.Array]:
    """(final query [B, D], attention [B, H, K + 1]) of the hops over null slot + passages."""
    question, keys, values, mask = self._check(question, keys, values, mask)
    batch = keys.shape[0]
    q = bag_of_words(self.embed, question)                               # [B, D]
    key_vecs = bag_of_words(self.embed, keys)                           # [B, K, D]
    value_vecs = bag_of_words(self.embed, values)                       # [B, K, D]
    null_k = jnp.broadcast_to(self.null_key[...], (batch, 1, self.dim))
    null_v = jnp.broadcast_to(self.null_value[...], (batch, 1, self.dim))
    key_vecs = jnp.concatenate([null_k, key_vecs], axis=1)
    value_vecs = jnp.concatenate([null_v, value_vecs], axis=1)
    valid = jnp.concatenate([jnp.ones((batch, 1), bool), jnp.asarray(mask, bool)], axis=1)
    return self.reader(q, key_vecs, value_vecs, valid)
