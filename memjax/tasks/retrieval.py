"""Long-range retrieval: key-value pairs early in a long sequence, filler, then queries.

A sequence shows P pairs `k v` (distinct key tokens, value tokens drawn
independently), then filler, then the same keys again; after each repeated
key the model must predict the value that followed it the first time. That
is an induction-style lookup: the answer lies `distance` tokens back, beyond
any local attention window once the distance is large, so only a model that
can reach back (an external memory) beats chance, 1 / num_values. Passkey
retrieval is the one-pair case.

Two generators, deterministic from a seed, pure NumPy:

* `training_batch`: short sequences with pairs and queries at random places,
  so the distances spread from a few tokens to the sequence length;
* `evaluation_batch`: pairs at the start, filler, then the keys again, so
  every query has exactly a given distance (several distances can share one
  sequence). The distances are chosen independently of the training length.

Token ids: filler `[0, F)`, keys `[F, F + num_keys)`, values
`[F + num_keys, F + num_keys + num_values)`; the three ranges never mix, so
filler never looks like a key.

Shape legend: B batch, L tokens per sequence, P pairs per sequence.

References:
  Mohtashami, Jaggi. Landmark Attention: Random-Access Infinite Context
    Length for Transformers. 2023 (passkey retrieval).
  Olsson et al. In-context Learning and Induction Heads. 2022.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from memjax import _checks


@dataclasses.dataclass(frozen=True)
class RetrievalVocab:
  """The token ranges of the task.

  Attributes:
    num_keys: distinct key tokens (at least the pairs per sequence).
    num_values: distinct value tokens; chance accuracy is 1 / num_values.
    num_filler: distinct filler tokens.
  """
  num_keys: int = 128
  num_values: int = 64
  num_filler: int = 32

  def __post_init__(self):
    for name in ("num_keys", "num_values", "num_filler"):
      v = getattr(self, name)
      _checks.integer(v, name)

  @property
  def size(self) -> int:
    """V, the vocabulary size."""
    return self.num_filler + self.num_keys + self.num_values

  @property
  def first_key(self) -> int:
    return self.num_filler

  @property
  def first_value(self) -> int:
    return self.num_filler + self.num_keys

  @property
  def chance(self) -> float:
    """Accuracy of guessing a value uniformly."""
    return 1.0 / self.num_values


class RetrievalBatch(NamedTuple):
  """A batch of retrieval sequences.

  Attributes:
    tokens: [B, L] int32 input tokens.
    targets: [B, L] int32 the next token (`tokens[:, t + 1]`; 0 at the end).
    mask: [B, L] bool, True at the query positions, whose target is the
      value of the pair with the same key: the positions that are scored.
    distances: [B, L] int32, at a query position the distance from the
      pair's value token to the query (query position - value position);
      -1 elsewhere.
  """
  tokens: np.ndarray
  targets: np.ndarray
  mask: np.ndarray
  distances: np.ndarray


def _rng(seed) -> np.random.Generator:
  if isinstance(seed, np.random.Generator):
    return seed
  return np.random.default_rng(seed)


def _finish(tokens: np.ndarray, mask: np.ndarray, distances: np.ndarray) -> RetrievalBatch:
  targets = np.zeros_like(tokens)
  targets[:, :-1] = tokens[:, 1:]
  return RetrievalBatch(tokens=tokens.astype(np.int32), targets=targets.astype(np.int32),
                        mask=mask, distances=distances.astype(np.int32))


def _pairs(rng: np.random.Generator, vocab: RetrievalVocab, num_pairs: int):
  keys = vocab.first_key + rng.choice(vocab.num_keys, size=num_pairs, replace=False)
  values = vocab.first_value + rng.integers(0, vocab.num_values, size=num_pairs)
  return keys, values


def _as_distances(distances) -> tuple[int, ...]:
  if isinstance(distances, (int, np.integer)):
    distances = (distances,)
  distances = tuple(distances)
  if not distances:
    raise ValueError("distances must name at least one distance; got none")
  for d in distances:
    _checks.integer(d, "each distance")
  return tuple(int(d) for d in distances)


def _layout(distances: tuple[int, ...], pairs_per_distance: int):
  """Pair and query positions (relative to the offset) of each group: [G, P] each.

  The group with the largest distance gets the first pairs, so that a short
  distance only needs room for its own group's pairs.
  """
  p = pairs_per_distance
  rank = np.argsort(np.argsort(-np.asarray(distances), kind="stable"))
  pair_pos = 2 * (rank[:, None] * p + np.arange(p)[None, :])
  query_pos = pair_pos + 1 + np.asarray(distances)[:, None]
  return pair_pos, query_pos


def evaluation_length(distances, pairs_per_distance: int, segment_length: int = 1) -> int:
  """L of an `evaluation_batch`: room for the largest offset, rounded up to S."""
  distances = _as_distances(distances)
  _, query_pos = _layout(distances, pairs_per_distance)
  needed = (segment_length - 1) + int(query_pos.max()) + 2
  return -(-needed // segment_length) * segment_length


def evaluation_batch(seed, batch: int, distances, pairs_per_distance: int, *,
                     vocab: RetrievalVocab = RetrievalVocab(),
                     segment_length: int = 1) -> RetrievalBatch:
  """Pairs first, filler, then the keys again: every query at exactly its distance.

  Several distances d_1 ... d_G share one sequence (one long pass measures
  them all): group g holds P pairs, and each of its keys is asked again d_g
  tokens after its pair's value. Layout, with o a random offset in
  [0, segment_length): `o` filler tokens, the G P pairs `k v` (group by
  group, largest distance first), filler, and for each group its P queries
  `k v` in pair order, the
  query key standing d_g tokens after the value; filler up to a multiple of
  `segment_length`. Keys are distinct within a sequence, so each key is
  asked once and only its pair can answer it.

  Args:
    seed: an int or a `np.random.Generator`.
    batch: B.
    distances: one distance or a sequence of them (query position - value
      position). Query blocks must not overlap the pairs or each other: a
      single distance needs d >= 2 P - 1; with several, the i-th smallest
      needs d >= 2 P i - 1 and consecutive ones must differ by 4 P or more
      (a ValueError says so).
    pairs_per_distance: P (1 with one distance is passkey retrieval); G P is
      at most `vocab.num_keys`.
    vocab: the token ranges.
    segment_length: L is rounded up to a multiple of this; offsets o are
      drawn in [0, segment_length) so pairs fall anywhere in a segment.

  Returns:
    A `RetrievalBatch` of length `evaluation_length(distances,
    pairs_per_distance, segment_length)`.
  """
  batch = _checks.integer(batch, "batch")
  pairs_per_distance = _checks.integer(pairs_per_distance, "pairs_per_distance")
  segment_length = _checks.integer(segment_length, "segment_length")
  distances = _as_distances(distances)
  total = len(distances) * pairs_per_distance
  if total > vocab.num_keys:
    raise ValueError(f"len(distances) * pairs_per_distance = {total} must be at most "
                     f"vocab.num_keys={vocab.num_keys}")
  pair_pos, query_pos = _layout(distances, pairs_per_distance)
  cells = np.concatenate([pair_pos.ravel(), query_pos.ravel()])
  occupied = np.concatenate([cells, cells + 1])
  if len(np.unique(occupied)) != len(occupied):
    raise ValueError(f"distances {distances} with pairs_per_distance={pairs_per_distance} "
                     f"put queries on top of pairs or of each other: the i-th smallest "
                     f"distance must be at least {2 * pairs_per_distance} * i - 1 and "
                     f"consecutive distances must differ by at least {4 * pairs_per_distance}")
  rng = _rng(seed)
  length = evaluation_length(distances, pairs_per_distance, segment_length)
  tokens = rng.integers(0, vocab.num_filler, size=(batch, length))
  mask = np.zeros((batch, length), bool)
  dist = np.full((batch, length), -1)
  offsets = rng.integers(0, segment_length, size=batch)
  group_distance = np.broadcast_to(np.asarray(distances)[:, None], query_pos.shape).ravel()
  for b in range(batch):
    keys, values = _pairs(rng, vocab, total)
    for pos in (pair_pos.ravel() + offsets[b], query_pos.ravel() + offsets[b]):
      tokens[b, pos] = keys
      tokens[b, pos + 1] = values
    mask[b, query_pos.ravel() + offsets[b]] = True
    dist[b, query_pos.ravel() + offsets[b]] = group_distance
  return _finish(tokens, mask, dist)


def passkey_batch(seed, batch: int, distance: int, *, vocab: RetrievalVocab = RetrievalVocab(),
                  segment_length: int = 1) -> RetrievalBatch:
  """Passkey retrieval: `evaluation_batch` with a single pair at one distance."""
  return evaluation_batch(seed, batch, distance, 1, vocab=vocab, segment_length=segment_length)


def training_batch(seed, batch: int, length: int, max_pairs: int, *, min_pairs: int = 1,
                   vocab: RetrievalVocab = RetrievalVocab()) -> RetrievalBatch:
  """Sequences of `length` tokens with pairs and queries at random places.

  Each sequence draws P uniformly in [min_pairs, max_pairs] and 2 P distinct
  two-token cells (cell c holds positions 2c, 2c + 1), groups them in random
  pairs of cells, and writes `k v` into both cells of a group: the earlier
  is the pair, the later the query. The distances therefore spread from 2 up
  to about `length`.

  Args:
    seed: an int or a `np.random.Generator`.
    batch: B.
    length: L (even), at least 4 * max_pairs.
    max_pairs: the most pairs per sequence, at most `vocab.num_keys`.
    min_pairs: the fewest pairs per sequence.
    vocab: the token ranges.

  Returns:
    A `RetrievalBatch` of shape [B, length].
  """
  batch = _checks.integer(batch, "batch")
  min_pairs = _checks.integer(min_pairs, "min_pairs")
  max_pairs = _checks.integer(max_pairs, "max_pairs", min_pairs)
  if max_pairs > vocab.num_keys:
    raise ValueError(f"max_pairs must be at most vocab.num_keys={vocab.num_keys}; "
                     f"got {max_pairs}")
  length = _checks.integer(length, "length", 4 * max_pairs)
  if length % 2:
    raise ValueError(f"length must be even (two-token cells); got {length}")
  rng = _rng(seed)
  tokens = rng.integers(0, vocab.num_filler, size=(batch, length))
  mask = np.zeros((batch, length), bool)
  distances = np.full((batch, length), -1)
  for b in range(batch):
    p = int(rng.integers(min_pairs, max_pairs + 1))
    keys, values = _pairs(rng, vocab, p)
    cells = rng.choice(length // 2, size=(p, 2), replace=False)
    pair_pos, query_pos = 2 * cells.min(axis=1), 2 * cells.max(axis=1)
    for pos in (pair_pos, query_pos):
      tokens[b, pos] = keys
      tokens[b, pos + 1] = values
    mask[b, query_pos] = True
    distances[b, query_pos] = query_pos - (pair_pos + 1)
  return _finish(tokens, mask, distances)
