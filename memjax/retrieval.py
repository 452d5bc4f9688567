"""A document memory on `memjax.store`: chunk, encode, store, retrieve, assemble.

Texts are encoded into vectors by an encoder (hashed bag-of-words, TF-IDF,
or any callable) and kept in a `memjax.store.KVMemory` whose keys are the
vectors and whose values are a fixed-width payload per passage (by default
its id; `TokenPayload` stores the passage's token ids, split into a key part
and a value part for a key-value memory network reader). The passages'
texts stay on the host, next to the store, keyed by item id.

`DocumentMemory` is the host-side object that ties them together. Its
`add`, `update`, `delete` and `retrieve` call the store's pure functions
(jit-compiled once per shape, donating the old tables so an edit rewrites a
few rows in place instead of copying the memory), so inserting, changing
or forgetting a passage takes milliseconds whatever the memory's size.

Retrieved passages meet the input in one of two ways:

* `concatenate`: a prompt for a generator, the passages (best first) before
  the question, cut to a token budget;
* `DocumentMemory.reader_memory`: `[Q, K, L]` token arrays plus a mask, the
  memory slots of a key-value memory network reader.

Shape legend: N slots, D encoding size, B texts in a batch, Q queries,
K results per query, L tokens, P payload width.

References:
  Salton, Buckley. Term-weighting approaches in automatic text retrieval.
  Information Processing & Management 24(5), 1988 (TF-IDF).
  Weinberger, Dasgupta, Langford, Smola, Attenberg. Feature hashing for
  large scale multitask learning. ICML 2009 (signed feature hashing).
  Miller, Fisch, Dodge, Karimi, Bordes, Weston. Key-Value Memory Networks
  for Directly Reading Documents. EMNLP 2016 (key hashing, then a reader
  over the retrieved key-value slots).
  Lewis et al. Retrieval-Augmented Generation for Knowledge-Intensive NLP
  Tasks. NeurIPS 2020 (retrieved passages concatenated with the input).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from typing import NamedTuple
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from memjax import _checks
from memjax import store

_WORD = re.compile(r"[a-z0-9]+")

PAD = "<pad>"
UNK = "<unk>"

ENGLISH_STOPWORDS = frozenset("""
a about above after again all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had
has have having he her here hers herself him himself his how i if in into is it its itself
just me more most my myself no nor not now of off on once only or other our ours ourselves
out over own same she should so some such than that the their theirs them themselves then
there these they this those through to too under until up very was we were what when where
which while who whom why will with would you your yours yourself yourselves s t ll re ve d m
""".split())
"""Common English words, for `HashedBagOfWords(stopwords=...)` when no idf is fitted."""


# ----------------------------------------------------------------------------- text


def tokenize(text: str) -> list[str]:
  """Lower-cased alphanumeric words: "Where's Rex?" -> [where, s, rex]."""
  if not isinstance(text, str):
    raise TypeError(f"text must be a str; got {type(text).__name__}")
  return _WORD.findall(text.lower())


def chunk_text(text: str, max_tokens: int, overlap: int = 0) -> list[str]:
  """Splits a text into passages of at most `max_tokens` words.

  Consecutive passages share `overlap` words, so a fact cut by a boundary is
  whole in one of them. Words are re-joined with single spaces (chunking
  works on `tokenize` words).

  Args:
    text: the text.
    max_tokens: words per passage, >= 1.
    overlap: words shared by consecutive passages, 0 <= overlap < max_tokens.

  Returns:
    The passages in order; [] for a text without words.
  """
  if not isinstance(text, str):
    raise TypeError(f"text must be a str; got {type(text).__name__}")
  max_tokens = _checks.integer(max_tokens, "max_tokens")
  overlap = _checks.integer(overlap, "overlap", 0, max_tokens - 1, "below max_tokens")
  words = tokenize(text)
  if not words:
    return []
  step = max_tokens - overlap
  out = []
  for start in range(0, len(words), step):
    out.append(" ".join(words[start:start + max_tokens]))
    if start + max_tokens >= len(words):
      break
  return out


def chunk_documents(documents: Iterable[str], max_tokens: int,
                    overlap: int = 0) -> tuple[list[str], list[int]]:
  """Chunks several documents.

  Returns:
    (passages, source): the passages of all documents in order, and for each
    the index of the document it came from.
  """
  passages: list[str] = []
  source: list[int] = []
  for i, doc in enumerate(_check_texts(documents, "documents")):
    parts = chunk_text(doc, max_tokens, overlap)
    passages.extend(parts)
    source.extend([i] * len(parts))
  return passages, source


# ----------------------------------------------------------------------------- encoders


class Encoder(Protocol):
  """Anything that maps a batch of texts to vectors: `encoder(texts) -> [B, dim]`."""

  dim: int

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    ...


def _stable_hash(feature: str, seed: int) -> int:
  # Python's hash() is salted per process; blake2b is stable everywhere.
  digest = hashlib.blake2b(feature.encode(), digest_size=8,
                           key=seed.to_bytes(8, "little")).digest()
  return int.from_bytes(digest, "little")


def features(tokens: Sequence[str], ngrams: int = 1) -> list[str]:
  """The features of a token list: its words and, for ngrams >= 2, its word n-grams."""
  ngrams = _checks.integer(ngrams, "ngrams")
  out = list(tokens)
  for n in range(2, ngrams + 1):
    out.extend("_".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
  return out


class HashedBagOfWords:
  """Signed feature hashing of words (and word n-grams) into `dim` buckets.

  A text's vector holds, in bucket j, the signed count
  sum_{f: h(f) mod dim = j} s(f) tf(f) over its features f, with s(f) = +-1
  from another bit of the hash (so collisions cancel in expectation); then it
  is L2-normalised (so inner products are cosine similarities).

  Args:
    dim: D, number of buckets.
    ngrams: include word n-grams up to this length.
    signed: use the sign bit (True) or plain counts.
    sublinear_tf: use 1 + log(tf) for the count of a repeated feature.
    normalize: L2-normalise each vector.
    seed: hash seed.
    stopwords: words dropped before features are formed (e.g.
      `ENGLISH_STOPWORDS`; useful without idf weighting).
  """

  def __init__(self, dim: int = 1024, *, ngrams: int = 1, signed: bool = True,
               sublinear_tf: bool = False, normalize: bool = True, seed: int = 0,
               stopwords: Iterable[str] = ()):
    dim = _checks.integer(dim, "dim")
    ngrams = _checks.integer(ngrams, "ngrams")
    seed = _checks.integer(seed, "seed", 0, 2**64 - 1, "the key of a 64-bit hash")
    self.dim = dim
    self.ngrams = ngrams
    self.signed = signed
    self.sublinear_tf = sublinear_tf
    self.normalize = normalize
    self.seed = seed
    self.stopwords = frozenset(stopwords)
    self._cache: dict[str, tuple[int, float]] = {}

  def features(self, text: str) -> list[str]:
    """The features of a text (words minus stopwords, then n-grams)."""
    tokens = [t for t in tokenize(text) if t not in self.stopwords]
    return features(tokens, self.ngrams)

  def bucket(self, feature: str) -> tuple[int, float]:
    """(bucket index, sign) of one feature."""
    hit = self._cache.get(feature)
    if hit is None:
      h = _stable_hash(feature, self.seed)
      sign = -1.0 if (self.signed and h >> 63) else 1.0
      hit = (h % self.dim, sign)
      self._cache[feature] = hit
    return hit

  def sparse(self, text: str) -> dict[int, float]:
    """The unnormalised vector of one text as {bucket: value}."""
    counts: dict[str, int] = {}
    for f in self.features(text):
      counts[f] = counts.get(f, 0) + 1
    out: dict[int, float] = {}
    for f, c in counts.items():
      w = self.feature_weight(f)
      if w is None:
        continue
      b, s = self.bucket(f)
      tf = 1.0 + math.log(c) if self.sublinear_tf else float(c)
      out[b] = out.get(b, 0.0) + s * tf * w
    return out

  def feature_weight(self, feature: str) -> float | None:
    """Weight of a feature (1 here; idf in `TfidfEncoder`); None drops it."""
    del feature
    return 1.0

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """Encodes texts: [B, D] float32."""
    texts = _check_texts(texts)
    rows, cols, vals = [], [], []
    for i, t in enumerate(texts):
      for b, v in self.sparse(t).items():
        rows.append(i)
        cols.append(b)
        vals.append(v)
    out = np.zeros((len(texts), self.dim), np.float32)
    np.add.at(out, (np.asarray(rows, np.int64), np.asarray(cols, np.int64)),
              np.asarray(vals, np.float32))
    if self.normalize:
      out /= np.sqrt(np.sum(out * out, axis=1, keepdims=True) + 1e-12)
    return out


class TfidfEncoder(HashedBagOfWords):
  """TF-IDF of words (and word n-grams), hashed into `dim` buckets.

  A feature f of a text weighs tf(f) idf(f), with tf the (by default
  sublinear, 1 + ln count) term frequency and the smooth inverse document
  frequency idf(f) = ln((1 + n) / (1 + df(f))) + 1 of Salton & Buckley as
  scikit-learn writes it: n texts fitted, df(f) of them contain f. The
  weighted feature is added, with its hash sign, to bucket h(f) mod dim, and
  the vector is L2-normalised.

  Document frequencies are counted per feature, not per bucket, and a feature
  never seen by `fit` (a question word such as "where", which no passage
  holds) is dropped (or weighed `unseen_idf`): otherwise it would take the
  largest idf and, through a hash collision, lend it to an unrelated passage.
  `observe` adds the new features of passages stored later (a
  `DocumentMemory` does this itself); refit and re-add the passages when the
  corpus drifts far.

  Args: as `HashedBagOfWords`, plus
    unseen_idf: idf of features `fit` never saw; None drops them.
  """

  def __init__(self, dim: int = 1024, *, ngrams: int = 1, signed: bool = True,
               sublinear_tf: bool = True, normalize: bool = True, seed: int = 0,
               stopwords: Iterable[str] = (), unseen_idf: float | None = None):
    super().__init__(dim, ngrams=ngrams, signed=signed, sublinear_tf=sublinear_tf,
                     normalize=normalize, seed=seed, stopwords=stopwords)
    if unseen_idf is not None:
      _checks.number(unseen_idf, "unseen_idf", 0)
    self.unseen_idf = unseen_idf
    self.idf: dict[str, float] | None = None
    self.num_fitted = 0

  def fit(self, texts: Iterable[str]) -> TfidfEncoder:
    """Counts document frequencies over `texts` and sets `idf`; returns self."""
    df: dict[str, int] = {}
    n = 0
    for t in texts:
      for f in set(self.features(t)):
        df[f] = df.get(f, 0) + 1
      n += 1
    if n == 0:
      raise ValueError("fit needs at least one text; got none")
    self.num_fitted = n
    self.idf = {f: math.log((1.0 + n) / (1.0 + d)) + 1.0 for f, d in df.items()}
    return self

  def observe(self, texts: Iterable[str]) -> int:
    """Adds the features of `texts` that `fit` never saw, at the idf of df = 1.

    Features already known keep their idf, so the vectors of texts encoded
    before stay exactly valid; only texts holding a new feature change. A
    `DocumentMemory` calls this for every passage it stores, so that a new
    name in an inserted passage (and in the questions about it) counts.

    Returns:
      The number of features added.
    """
    if self.idf is None:
      raise ValueError("TfidfEncoder must be fitted first: call encoder.fit(texts)")
    rare = math.log((1.0 + self.num_fitted) / 2.0) + 1.0
    added = 0
    for t in texts:
      for f in self.features(t):
        if f not in self.idf:
          self.idf[f] = rare
          added += 1
    return added

  def feature_weight(self, feature: str) -> float | None:
    if self.idf is None:
      raise ValueError("TfidfEncoder must be fitted first: call encoder.fit(texts)")
    return self.idf.get(feature, self.unseen_idf)


class FunctionEncoder:
  """Wraps a callable `fn(texts) -> [B, dim]` (e.g. a Flax encoder) as an `Encoder`.

  Args:
    fn: maps a list of B texts to a [B, dim] floating array.
    dim: the output size.
  """

  def __init__(self, fn: Callable[[Sequence[str]], jax.typing.ArrayLike], dim: int):
    if not callable(fn):
      raise TypeError(f"fn must be callable; got {type(fn).__name__}")
    dim = _checks.integer(dim, "dim")
    self.fn = fn
    self.dim = dim

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    texts = _check_texts(texts)
    out = np.asarray(self.fn(texts))
    if out.shape != (len(texts), self.dim):
      raise ValueError(f"the encoder function must return shape ({len(texts)}, {self.dim}) "
                       f"[B, dim]; got {out.shape}")
    if not np.issubdtype(out.dtype, np.floating):
      raise TypeError(f"the encoder function must return a floating array; got {out.dtype}")
    return out.astype(np.float32)


def _check_texts(texts, name: str = "texts") -> list[str]:
  if isinstance(texts, str):
    raise TypeError(f"{name} must be a sequence of str, not one str (wrap it in a list)")
  texts = list(texts)
  for t in texts:
    if not isinstance(t, str):
      raise TypeError(f"{name} must all be str; got {type(t).__name__}")
  return texts


def check_threshold(threshold) -> None:
  """Raises a ValueError unless `threshold` is None or a real number other than NaN."""
  real = (isinstance(threshold, (int, float, np.integer, np.floating))
          and not isinstance(threshold, (bool, np.bool_)))
  if threshold is not None and (not real or np.isnan(threshold)):
    raise ValueError(f"threshold must be a number (not NaN) or None; got {threshold!r}")


def _check_ids(ids) -> np.ndarray:
  """[B] int64 from a sequence or array of integers (an empty one is fine)."""
  ids = np.asarray(ids).reshape(-1)
  if ids.size and not np.issubdtype(ids.dtype, np.integer):
    raise TypeError(f"ids must be integers; got dtype {ids.dtype}")
  return ids.astype(np.int64)


# ----------------------------------------------------------------------------- payloads


class Vocabulary:
  """Word <-> id, with 0 = `PAD` and 1 = `UNK`.

  Args:
    words: the words (duplicates and the two reserved words are skipped).
  """

  def __init__(self, words: Iterable[str]):
    self.words = [PAD, UNK]
    self.index = {PAD: 0, UNK: 1}
    for w in words:
      if w not in self.index:
        self.index[w] = len(self.words)
        self.words.append(w)

  def __len__(self) -> int:
    return len(self.words)

  def ids(self, tokens: Sequence[str]) -> list[int]:
    return [self.index.get(t, 1) for t in tokens]

  def encode(self, texts: Sequence[str], length: int) -> np.ndarray:
    """Token ids of each text, cut or padded to `length`: [B, length] int32."""
    texts = _check_texts(texts)
    length = _checks.integer(length, "length", 0)
    out = np.zeros((len(texts), length), np.int32)
    for i, t in enumerate(texts):
      ids = self.ids(tokenize(t))[:length]
      out[i, :len(ids)] = ids
    return out

  def decode(self, ids: Iterable[int]) -> str:
    return " ".join(self.words[i] for i in ids if i != 0)


class TokenPayload:
  """Stores each passage as token ids split into a key part and a value part.

  The layout of a key-value memory network slot (Miller et al. 2016): `split`
  maps a passage to (key words, value words); the default keeps the whole
  passage on both sides ("sentence level"). `split_on_words(value_words)` puts
  the words of a given set (e.g. the answer words) in the value and the rest
  in the key ("window level" around the candidate answer).

  Args:
    vocab: the vocabulary.
    key_len: Lk, key tokens kept.
    value_len: Lv, value tokens kept.
    split: passage -> (key tokens, value tokens).
  """

  def __init__(self, vocab: Vocabulary, key_len: int, value_len: int,
               split: Callable[[list[str]], tuple[list[str], list[str]]] | None = None):
    key_len = _checks.integer(key_len, "key_len", 0)
    value_len = _checks.integer(value_len, "value_len", 0)
    if key_len + value_len == 0:
      raise ValueError("key_len + value_len must be >= 1 (the payload width); got 0 + 0")
    self.vocab = vocab
    self.key_len = key_len
    self.value_len = value_len
    self.split = split or (lambda tokens: (tokens, tokens))
    self.width = key_len + value_len

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """[B, Lk + Lv] int32: key ids then value ids, zero-padded."""
    texts = _check_texts(texts)
    out = np.zeros((len(texts), self.width), np.int32)
    for i, t in enumerate(texts):
      key, value = self.split(tokenize(t))
      k = self.vocab.ids(key)[:self.key_len]
      v = self.vocab.ids(value)[:self.value_len]
      out[i, :len(k)] = k
      out[i, self.key_len:self.key_len + len(v)] = v
    return out

  def key_value(self, payload: jax.typing.ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Splits [..., Lk + Lv] payloads into ([..., Lk] keys, [..., Lv] values)."""
    payload = jnp.asarray(payload)
    return payload[..., :self.key_len], payload[..., self.key_len:]


def split_on_words(value_words: Iterable[str]):
  """A `TokenPayload.split`: words in `value_words` form the value, the rest the key."""
  value_set = frozenset(value_words)

  def split(tokens: list[str]) -> tuple[list[str], list[str]]:
    return ([t for t in tokens if t not in value_set], [t for t in tokens if t in value_set])
  return split


# ----------------------------------------------------------------------------- memory


class Retrieved(NamedTuple):
  """Passages found for Q queries, K per query, best first.

  Attributes:
    ids: [Q, K] int32 item ids, -1 where nothing was found.
    scores: [Q, K] float32 similarity (-inf where not found).
    found: [Q, K] bool (False past the valid items or under the threshold).
    payload: [Q, K, P] the stored payloads (zeros where not found).
    indices: [Q, K] int32 slot indices (-1 where not found).
    texts: Q lists of the found passages' texts, best first.
  """
  ids: np.ndarray
  scores: np.ndarray
  found: np.ndarray
  payload: np.ndarray
  indices: np.ndarray
  texts: list[list[str]]


def _bucket(n: int, cap: int) -> int:
  """The padded batch size for n <= cap rows: 8, 128 or cap, the first that holds n.

  Few sizes means few compilations (each costs a second or so); the price is
  some padding.
  """
  for size in (8, 128):
    if n <= size < cap:
      return size
  return max(cap, 8)


# The store's functions, compiled once per shape. The edits donate the old
# memory: XLA then updates its tables in place.
_insert = jax.jit(store.insert, donate_argnums=0)
_update = jax.jit(store.update, donate_argnums=0)
_delete = jax.jit(store.delete, donate_argnums=0)
_mark_used = jax.jit(store.mark_used, donate_argnums=0)
_lookup = jax.jit(store.lookup, static_argnames=("k", "metric", "chunk_size"))
_eviction_order = jax.jit(store.eviction_order, static_argnums=1)


class DocumentMemory:
  """Passages in a `memjax.store.KVMemory`, retrievable by a text query.

  Args:
    encoder: maps texts to [B, D] vectors (`HashedBagOfWords`, a fitted
      `TfidfEncoder`, a `FunctionEncoder`, ...).
    num_slots: N, the capacity. Once full, `add` evicts per `policy`.
    policy: the store's eviction policy: "fifo", "lru" or "least_used".
    payload: optional `texts -> [B, P]` array stored as each item's value
      (e.g. a `TokenPayload`); by default the item id is stored (P = 1).
    payload_width: P, needed when `payload` is a plain callable without a
      `width` attribute.
    payload_dtype: dtype of the stored payload.
    metric: "inner_product" or "cosine" (the encoders here already
      normalise, so both agree for them).
    key_dtype: dtype of the stored vectors.
    batch_size: texts encoded and inserted (or queries scored) per call.
    observe: before storing passages, show them to the encoder's `observe`
      method if it has one (a `TfidfEncoder` then learns their new words).
  """

  def __init__(self, encoder: Encoder, num_slots: int, *, policy: str = "fifo",
               payload: Callable[[Sequence[str]], np.ndarray] | None = None,
               payload_width: int | None = None, payload_dtype=np.int32,
               metric: str = "inner_product", key_dtype=jnp.float32, batch_size: int = 1024,
               observe: bool = True):
    if not callable(encoder) or not _checks.is_integer(getattr(encoder, "dim", None)):
      raise TypeError("encoder must be callable with an integer `dim` attribute; got "
                      f"{type(encoder).__name__}")
    if metric not in store.METRICS:
      raise ValueError(f"metric must be one of {store.METRICS}; got {metric!r}")
    if payload is None:
      width = 1
    else:
      width = payload_width if payload_width is not None else getattr(payload, "width", None)
      width = _checks.integer(width, "payload_width",
                              what="needed when the payload has no integer `width`")
    batch_size = _checks.integer(batch_size, "batch_size")
    self.encoder = encoder
    self._observe = getattr(encoder, "observe", None) if observe else None
    self.payload = payload
    self.metric = metric
    self.batch_size = batch_size
    memory = store.init(num_slots, encoder.dim, width, policy=policy,
                        key_dtype=key_dtype, value_dtype=payload_dtype)
    # Edits donate the memory's buffers; `init` shares one buffer between
    # tables, so give each table its own.
    self.memory = jax.tree.map(lambda x: jnp.array(x, copy=True), memory)
    self._texts: dict[int, str] = {}
    self._next_id = 0

  # -- bookkeeping

  @property
  def num_slots(self) -> int:
    return self.memory.num_slots

  def __len__(self) -> int:
    return len(self._texts)

  def __contains__(self, item_id: int) -> bool:
    return int(item_id) in self._texts

  def text(self, item_id: int) -> str:
    """The passage stored under `item_id` (KeyError if absent)."""
    return self._texts[int(item_id)]

  def ids(self) -> np.ndarray:
    """Ids of the stored passages, sorted."""
    return np.asarray(sorted(self._texts), np.int64)

  def _payload(self, texts: list[str], ids: np.ndarray) -> np.ndarray:
    if self.payload is None:
      return ids[:, None].astype(self.memory.values.dtype)
    out = np.asarray(self.payload(texts))
    want = (len(texts), self.memory.value_dim)
    if out.shape != want:
      raise ValueError(f"payload must return shape {want} [B, P]; got {out.shape}")
    return out

  # -- edits

  def add(self, texts: Sequence[str], ids: Sequence[int] | np.ndarray | None = None
          ) -> np.ndarray:
    """Stores passages; evicts per the policy once the memory is full.

    Args:
      texts: B passages.
      ids: optional B distinct ids >= 0 not already stored; by default the
        next free numbers.

    Returns:
      [B] int64 the ids given to the passages (those of a batch larger than
      the memory that did not fit are evicted at once, as in `store.insert`).
    """
    texts = _check_texts(texts)
    if ids is None:
      ids = np.arange(self._next_id, self._next_id + len(texts), dtype=np.int64)
    else:
      ids = _check_ids(ids)
      if ids.shape[0] != len(texts):
        raise ValueError(f"ids must have one entry per text ({len(texts)}); got {ids.shape[0]}")
      if len(set(ids.tolist())) != len(ids) or (ids < 0).any():
        raise ValueError("ids must be distinct and >= 0")
      present = [i for i in ids.tolist() if i in self._texts]
      if present:
        raise ValueError(f"ids already stored (use update): {present[:5]}")
    if len(texts) == 0:
      return ids
    if ids.max() >= 2**31 - 1:
      raise ValueError(f"ids must fit in int32; got {int(ids.max())}")
    for start in range(0, len(texts), self.batch_size):
      self._add_batch(texts[start:start + self.batch_size], ids[start:start + self.batch_size])
    self._next_id = max(self._next_id, int(ids.max()) + 1)
    return ids

  def _add_batch(self, texts: list[str], ids: np.ndarray) -> None:
    n, b = self.num_slots, len(texts)
    if self._observe is not None:
      self._observe(texts)
    keys = self.encoder(texts)
    values = self._payload(texts, ids)
    size = _bucket(b, self.batch_size) if b > 1 else 1
    mask = np.zeros(size, bool)
    mask[:b] = True
    pad = size - b
    keys = np.pad(keys, ((0, pad), (0, 0)))
    values = np.pad(values, ((0, pad), (0, 0)))
    pids = np.pad(ids.astype(np.int32), (0, pad))
    if len(self._texts) + b > n:
      # Which stored ids the insert overwrites: the first slots of the eviction order.
      count = min(b, n)
      order = np.asarray(_eviction_order(self.memory, count))
      old_ids = np.asarray(self.memory.ids)[order]
      old_valid = np.asarray(self.memory.valid)[order]
      for i in old_ids[old_valid].tolist():
        self._texts.pop(int(i), None)
    self.memory = _insert(self.memory, keys, values, ids=pids, mask=mask)
    kept = range(max(b - n, 0), b)
    for i in kept:
      self._texts[int(ids[i])] = texts[i]

  def update(self, ids: Sequence[int] | np.ndarray, texts: Sequence[str]) -> None:
    """Replaces stored passages (their vectors, payloads and texts) by id.

    Raises:
      KeyError: if an id is not stored.
    """
    texts = _check_texts(texts)
    ids = _check_ids(ids)
    if ids.shape[0] != len(texts):
      raise ValueError(f"ids must have one entry per text ({len(texts)}); got {ids.shape[0]}")
    missing = [i for i in ids.tolist() if i not in self._texts]
    if missing:
      raise KeyError(f"ids not in memory: {missing[:5]}")
    if not texts:
      return
    if self._observe is not None:
      self._observe(texts)
    keys = self.encoder(texts)
    values = self._payload(texts, ids)
    self.memory = _update(self.memory, ids.astype(np.int32), keys=keys, values=values)
    for i, t in zip(ids.tolist(), texts):
      self._texts[i] = t

  def delete(self, ids: Sequence[int] | np.ndarray) -> None:
    """Forgets passages by id; ids not stored are ignored."""
    ids = _check_ids(ids)
    if ids.size == 0:
      return
    self.memory = _delete(self.memory, ids.astype(np.int32))
    for i in ids.tolist():
      self._texts.pop(i, None)

  # -- retrieval

  def retrieve(self, queries: Sequence[str], k: int = 5, *, threshold: float | None = None,
               record_use: bool = False, with_texts: bool = True) -> Retrieved:
    """The k best passages per query, optionally only those scoring >= threshold.

    Args:
      queries: Q query texts.
      k: results per query (with `threshold`, the most that are returned).
      threshold: keep only results with score >= threshold.
      record_use: record the returned slots as used (`store.mark_used`), which
        the "lru" and "least_used" policies evict last.
      with_texts: also return the texts (skip for speed when only payloads
        are needed).

    Returns:
      A `Retrieved` with K = min(k, N) results per query.
    """
    queries = _check_texts(queries)
    k = min(_checks.integer(k, "k"), self.num_slots)
    check_threshold(threshold)
    q = len(queries)
    out_ids = np.full((q, k), -1, np.int32)
    out_scores = np.full((q, k), -np.inf, np.float32)
    out_idx = np.full((q, k), -1, np.int32)
    out_payload = np.zeros((q, k, self.memory.value_dim), self.memory.values.dtype)
    for start in range(0, q, self.batch_size):
      part = queries[start:start + self.batch_size]
      vec = self.encoder(part)
      size = _bucket(len(part), self.batch_size)
      vec = np.pad(vec, ((0, size - len(part)), (0, 0)))
      res = _lookup(self.memory, vec, k=k, metric=self.metric)
      sl = slice(start, start + len(part))
      out_ids[sl] = np.asarray(res.ids)[:len(part)]
      out_scores[sl] = np.asarray(res.scores)[:len(part)]
      out_idx[sl] = np.asarray(res.indices)[:len(part)]
      out_payload[sl] = np.asarray(res.values)[:len(part)]
    found = out_ids >= 0
    if threshold is not None:
      found &= out_scores >= threshold
    out_ids = np.where(found, out_ids, -1)
    out_idx = np.where(found, out_idx, -1)
    out_scores = np.where(found, out_scores, -np.inf).astype(np.float32)
    out_payload = np.where(found[..., None], out_payload, 0)
    if record_use:
      self.memory = _mark_used(self.memory, out_idx)
    texts = []
    if with_texts:
      texts = [[self._texts[int(i)] for i in row if i >= 0] for row in out_ids]
    return Retrieved(ids=out_ids, scores=out_scores, found=found, payload=out_payload,
                     indices=out_idx, texts=texts)

  def reader_memory(self, retrieved: Retrieved) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Retrieved passages as the memory of a key-value memory network reader.

    Needs a `TokenPayload`.

    Returns:
      (keys [Q, K, Lk] int32, values [Q, K, Lv] int32, mask [Q, K] bool).
    """
    if not isinstance(self.payload, TokenPayload):
      raise TypeError("reader_memory needs a DocumentMemory built with a TokenPayload; got "
                      f"{type(self.payload).__name__}")
    lk = self.payload.key_len
    return (retrieved.payload[..., :lk], retrieved.payload[..., lk:], retrieved.found)


def concatenate(question: str, passages: Sequence[str], *, max_tokens: int | None = None,
                template: str = "context: {context} question: {question}",
                separator: str = " | ") -> str:
  """The input of a generator: retrieved passages, then the question.

  Passages come best first; when `max_tokens` is set, the lowest-ranked ones
  are dropped (and the last kept one cut) so that the whole prompt has at
  most `max_tokens` words (the question is never cut).

  Args:
    question: the question.
    passages: retrieved passages, best first.
    max_tokens: word budget of the result (counted with `tokenize`).
    template: with `{context}` and `{question}`.
    separator: between passages.

  Returns:
    The prompt.
  """
  kept = list(passages)
  if max_tokens is not None:
    max_tokens = _checks.integer(max_tokens, "max_tokens")
    fixed = len(tokenize(template.format(context="", question=question)))
    budget = max_tokens - fixed
    if budget < 0:
      raise ValueError(f"max_tokens={max_tokens} leaves no room for the template and "
                       f"question ({fixed} words)")
    kept = []
    for p in passages:
      words = tokenize(p)
      if len(words) <= budget:
        kept.append(p)
        budget -= len(words)
      else:
        if budget > 0:
          kept.append(" ".join(words[:budget]))
        break
  return template.format(context=separator.join(kept), question=question)
