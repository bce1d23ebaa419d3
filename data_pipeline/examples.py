"""BERT's two pretraining objectives as data: next-sentence pairs and masking.

The rules of google-research/bert `create_pretraining_data.py`, done in bulk:
NSP pairs `[CLS] A [SEP] B [SEP]` as token ranges of tokenized documents
(`create_document_pairs`), and masked-LM masking of batches of token ids as
pure TensorFlow ops (`mask_batch`). Offline creation (`records`) and the
`tf.data` pipeline (`pipeline`) share `mask_batch`, so a record masked
offline is masked as the pipeline would mask it with the same seed.

Deliberate differences from the original:

- Random next segments come from another document of the same unit (a
  window of documents, `records`), not from the whole corpus.
- A chunk of one segment takes a neighbouring sentence along rather than
  forcing a random B (which made over half of the original's examples random).
- Truncation cuts as many tokens from the front as one binomial draw gives.
- Without NSP, whole sentences are packed RoBERTa-style (FULL-SENTENCES).
- A random replacement is never a special id; a whole word never spans [SEP].

Every example has its own stateless seed, so its mask depends on its seed
and tokens only, never on its batch or on the process that computed it.
TF's stateless ops take one seed per call, so the random bits are a
counter-based hash of (seed, stream, counter) with `lowbias32` (Wellons,
"Prospecting for hash functions"), vectorised over the batch; integer ops
only, so the same on every platform.
"""

import bisect
import dataclasses
import functools
import random
from collections.abc import Sequence

import numpy as np
import tensorflow as tf


def compute_truncation(len_a, len_b, max_num_tokens: int):
  """`(cut_a, cut_b)`: the tokens `truncate_seq_pair` removes from A and B.

  The original removes one token at a time from the longer segment (B on a
  tie) until the pair fits; this is the same count in closed form, for ints
  or int arrays of one shape.
  """
  len_a, len_b = np.asarray(len_a), np.asarray(len_b)
  excess = np.maximum(len_a + len_b - max_num_tokens, 0)
  cut_a = np.where(len_a > len_b, np.minimum(excess, len_a - len_b), 0)
  cut_b = np.where(len_a > len_b, 0, np.minimum(excess, len_b - len_a))
  excess -= cut_a + cut_b
  # Equal lengths now: B, then A, then B... lose a token each.
  return cut_a + excess // 2, cut_b + (excess + 1) // 2


class PairBuilder:
  """Accumulates examples as token ranges of a unit's token array.

  Segment A, segment B and everything truncation leaves of them are
  contiguous runs of a document's tokens, so an example is two ranges; the
  ids, `[CLS]`/`[SEP]` and padding are assembled for all examples at once by
  `arrays`, which keeps the per-example Python work to choosing ranges.
  """

  def __init__(self):
    self._parts: list[np.ndarray] = []  # [6, n] int64 arrays, in order
    self._rows: list[tuple[int, ...]] = []  # from `add`, not yet in _parts

  def _flush_rows(self) -> None:
    if self._rows:
      self._parts.append(np.array(self._rows, np.int64).reshape(-1, 6).T)
      self._rows = []

  def _columns(self) -> np.ndarray:
    """All examples as `[6, n]` int64, a row per field (see below)."""
    self._flush_rows()
    if len(self._parts) != 1:
      self._parts = [
        np.concatenate(self._parts or [np.zeros((6, 0), np.int64)], 1)
      ]
    return self._parts[0]

  def __len__(self) -> int:
    return sum(p.shape[1] for p in self._parts) + len(self._rows)

  # `[n]` int64 arrays of all examples added so far, rows of `_columns`.
  a_start, a_len, b_start, b_len, labels, possible = (
    property(lambda self, i=i: self._columns()[i]) for i in range(6)
  )

  def add(
    self,
    a_start: int,
    a_len: int,
    b_start: int,
    b_len: int,
    label: int,
    possible: bool,
  ) -> None:
    """Adds `[CLS] A [SEP] B [SEP]`, or `[CLS] A [SEP]` if `b_len` is 0.

    A is `a_len >= 1` of the unit's tokens from `a_start`, B `b_len` from
    `b_start`; `label` is 0 (IsNext) or 1 (random next); `possible` says
    whether B could have been the true continuation.
    """
    self._rows.append((a_start, a_len, b_start, b_len, label, possible))

  def extend(self, a_start, a_len, b_start, b_len, labels, possible) -> None:
    """Adds many examples: `[n]` arrays of the arguments of `add`."""
    self._flush_rows()  # keeps the order of earlier `add`s
    columns = np.stack([a_start, a_len, b_start, b_len, labels, possible])
    self._parts.append(columns.astype(np.int64))

  def arrays(
    self,
    tokens: np.ndarray,
    max_seq_length: int,
    cls_id: int,
    sep_id: int,
    order: Sequence[int] | None = None,
  ) -> dict[str, np.ndarray]:
    """The examples in `order` (default: all), as padded arrays.

    `tokens` is the unit's `[num_tokens]` int32 tokens the ranges point
    into. Returns `input_ids` `[n, max_seq_length]` int32; `input_mask` and
    `segment_ids` `[n, max_seq_length]` uint8 (0/1: a quarter of the memory
    passes of int32); `next_sentence_labels` `[n, 1]` int32.
    """
    order = slice(None) if order is None else np.asarray(order, np.int64)
    # int32 throughout: these are the largest arrays of a unit.
    columns = self._columns()[:, order].astype(np.int32)[:, :, None]
    a_start, a_len, b_start, b_len, labels, _ = columns
    total = a_len + b_len + 2 + (b_len > 0)
    if total.size and total.max() > max_seq_length:
      raise ValueError(f'an example has {total.max()} > {max_seq_length}')
    n = total.shape[0]
    rows = np.arange(n)
    column = np.arange(max_seq_length, dtype=np.int32)[None, :]
    # One gather over all positions, then [CLS], [SEP] and padding written
    # over it; the padded token array keeps every index in range (-1 wraps
    # to a padding 0).
    padded = np.concatenate([tokens, np.zeros(max_seq_length + 1, np.int32)])
    b_first = a_len + 2
    in_b = column >= b_first
    input_ids = padded[column + np.where(in_b, b_start - b_first, a_start - 1)]
    input_mask = column < total
    input_ids *= input_mask
    input_ids[:, 0] = cls_id
    input_ids[rows, a_len[:, 0] + 1] = sep_id
    # Without B, total - 1 is A's [SEP] already.
    input_ids[rows, total[:, 0] - 1] = sep_id
    return {
      'input_ids': input_ids.astype(np.int32, copy=False),
      'input_mask': input_mask.view(np.uint8),
      # Without B, b_first == total: no position is in B.
      'segment_ids': (in_b & input_mask).view(np.uint8),
      'next_sentence_labels': labels,
    }


def _below(rng: random.Random, n: int) -> int:
  """A uniform int in [0, n): `randrange`'s law (up to 2**-53), cheaper."""
  return int(rng.random() * n)


def _target_length(max_num_tokens: int, short_seq_prob: float, rng) -> int:
  if rng.random() < short_seq_prob:
    return 2 + _below(rng, max_num_tokens - 1)
  return max_num_tokens


def create_document_pairs(
  bounds: Sequence[Sequence[int]],
  max_seq_length: int,
  short_seq_prob: float,
  rng: np.random.Generator,
  copies: int,
  out: PairBuilder,
) -> int:
  """NSP pairs from every document of a unit, `copies` (`dupe_factor`) times
  over, as the original `create_instances_from_document`.

  `bounds` holds per document its sentence boundaries as offsets into the
  unit's tokens: sentence k is `[bounds[d][k], bounds[d][k+1])`, none empty,
  offsets increasing across documents. Every (copy, document) pair is a
  lane, and all lanes take their next chunk together, one numpy step per
  chunk: a Python loop over chunks cost more than the rest of pair creation.

  Returns the number of chunks dropped because the unit has no other
  document to draw a random next segment from.
  """
  num_docs = len(bounds)
  if not num_docs or copies < 1:
    return 0
  # Edge k of document d is edges[firsts[d] + k]. All edges increase, so
  # numpy's searchsorted over them is `bisect` within any one document.
  edges = np.concatenate([np.asarray(b, np.int64) for b in bounds])
  sizes = np.array([len(b) - 1 for b in bounds], np.int64)  # sentences
  firsts = np.concatenate([[0], np.cumsum(sizes + 1)[:-1]])
  max_num_tokens = max_seq_length - 3

  def below(n):  # uniform ints in [0, n), one per lane
    return (rng.random(len(n)) * n).astype(np.int64)

  doc = np.tile(np.arange(num_docs), copies)
  # The target length, drawn once per document (and copy), as the original.
  short = rng.random(len(doc)) < short_seq_prob
  target = np.where(
    short, 2 + below(np.full(len(doc), max_num_tokens - 1)), max_num_tokens
  )
  i = np.zeros(len(doc), np.int64)  # each lane's next sentence
  dropped = 0
  while len(doc):
    n, base = sizes[doc], firsts[doc]
    # The chunk is sentences [first, end): the original adds sentences
    # until they hold `target` tokens or the document ends.
    first = i
    end = np.minimum(np.searchsorted(edges, edges[base + i] + target) - base, n)
    # A lone sentence cannot be followed by its true continuation: take the
    # next one along, or at the end of the document the one before (which so
    # appears in two examples), so that the label stays a fair coin.
    lone = end - first == 1
    borrowed = lone & (end == n) & (first > 0)
    end = end + (lone & (end < n))
    first = first - borrowed
    possible = end - first >= 2
    a_end = first + 1 + below(end - first - 1)  # + 0 where not possible
    is_random = ~possible | (rng.random(len(doc)) < 0.5)
    if num_docs < 2:
      # A split of one document: no random next segment exists.
      dropped += int(np.count_nonzero(~possible))
      is_random[:] = False
    # The borrowed sentence was used already: A is the lone last one.
    restore = is_random & borrowed
    first = np.where(restore, i, first)
    a_end = np.where(restore, i + 1, a_end)
    a_start = edges[base + first]
    a_len = edges[base + a_end] - a_start
    # B: the true continuation, or for random lanes sentences of another
    # document from a random one on, until they hold target - len(A) tokens
    # (at least one); a random lane's unused sentences go back.
    b_start = edges[base + a_end]
    b_len = edges[base + end] - b_start
    i = end.copy()
    lanes = np.flatnonzero(is_random)
    if len(lanes):
      other = below(np.full(len(lanes), num_docs - 1))
      other += other >= doc[lanes]
      start = below(sizes[other])
      other_base = firsts[other]
      starts = edges[other_base + start]
      stop = np.searchsorted(edges, starts + target[lanes] - a_len[lanes])
      stop = np.clip(stop - other_base, start + 1, sizes[other])
      b_start[lanes] = starts
      b_len[lanes] = edges[other_base + stop] - starts
      i[lanes] = a_end[lanes]
    made = b_len > 0
    cut_a, cut_b = compute_truncation(a_len[made], b_len[made], max_num_tokens)
    # The original drops each token from the front or the back with p=0.5:
    # the number from the front is binomial.
    out.extend(
      a_start[made] + rng.binomial(cut_a, 0.5),
      a_len[made] - cut_a,
      b_start[made] + rng.binomial(cut_b, 0.5),
      b_len[made] - cut_b,
      is_random[made],
      possible[made],
    )
    going = i < n
    doc, i, target = doc[going], i[going], target[going]
  return dropped


def create_packed_sequences(
  bounds: Sequence[Sequence[int]],
  max_seq_length: int,
  short_seq_prob: float,
  rng: random.Random,
  out: PairBuilder,
) -> None:
  """Packs whole sentences into `[CLS] tokens [SEP]` sequences (no NSP).

  RoBERTa's FULL-SENTENCES: contiguous sentences up to the target length
  (drawn per sequence), crossing documents with the `[SEP]` the unit's
  tokens hold between them (`bounds` as for `create_document_pairs`); a
  sentence longer than a sequence is cut. Added to `out` with B empty,
  label 0, segment ids 0.
  """
  max_num_tokens = max_seq_length - 2
  # Where a sequence may end: every sentence end. A document's first
  # sentence starts at its [SEP], so that the separator travels with it.
  ends = [e for edges in bounds for e in edges[1:]]
  doc_starts = {edges[0] for edges in bounds}
  position = bounds[0][0] if bounds else 0
  k = 0  # ends[k] is the first end after `position`
  while k < len(ends):
    if position + 1 in doc_starts and position not in doc_starts:
      position += 1  # A sequence does not start with the separator.
    target = _target_length(max_num_tokens, short_seq_prob, rng)
    last = bisect.bisect_right(ends, position + target, k) - 1
    if last >= k:
      stop = ends[last]
      k = last + 1
    else:
      # The next sentence alone is longer than the target: cut it.
      stop = position + target
    out.add(position, stop - position, 0, 0, 0, False)
    position = stop


# Counter offsets that separate the random streams of one example: the
# choice of tokens uses counters [0, max_predictions), word priorities
# [0, seq_len], the replacement decision and the random token of
# prediction slot j use _DECISION_STREAM + j and _TOKEN_STREAM + j.
_DECISION_STREAM = 1 << 24
_TOKEN_STREAM = 1 << 25


class MaskingError(ValueError):
  """Masking settings that cannot work."""


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
  """Options of MLM masking, with the defaults of the original BERT.

  `max_predictions_per_seq` is also the width of the `masked_lm_*` outputs;
  a chosen token becomes `[MASK]`, a random ordinary token or stays, with
  probabilities `mask_token_prob`, `random_token_prob`, `keep_token_prob`.
  """

  masked_lm_prob: float = 0.15
  max_predictions_per_seq: int = 20
  mask_token_prob: float = 0.8
  random_token_prob: float = 0.1
  keep_token_prob: float = 0.1
  whole_word_mask: bool = False

  def __post_init__(self):
    if not 0.0 <= self.masked_lm_prob <= 1.0:
      raise MaskingError(f'masked_lm_prob={self.masked_lm_prob} not in [0, 1]')
    if self.max_predictions_per_seq < 1:
      raise MaskingError(
        f'max_predictions_per_seq={self.max_predictions_per_seq} < 1'
      )
    probs = (self.mask_token_prob, self.random_token_prob, self.keep_token_prob)
    if min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
      raise MaskingError(
        f'mask/random/keep probabilities {probs} must sum to 1'
      )


def _lowbias32(x: tf.Tensor) -> tf.Tensor:
  """A bijective 32-bit integer mix with low bias; `x` is uint32."""
  shift = lambda v, n: tf.bitwise.right_shift(v, tf.constant(n, tf.uint32))
  xor = tf.bitwise.bitwise_xor
  x = xor(x, shift(x, 16))
  x = x * tf.constant(0x7FEB352D, tf.uint32)
  x = xor(x, shift(x, 15))
  x = x * tf.constant(0x846CA68B, tf.uint32)
  return xor(x, shift(x, 16))


def _example_keys(seeds: tf.Tensor) -> tf.Tensor:
  """`[batch]` uint32 keys mixing all bits of `seeds` (`[batch, 2]` int)."""
  seeds = tf.cast(seeds, tf.int64)
  words = []
  for i in range(2):
    words.append(tf.cast(seeds[:, i], tf.uint32))  # low 32 bits
    words.append(tf.cast(tf.bitwise.right_shift(seeds[:, i], 32), tf.uint32))
  key = tf.constant(0x9E3779B9, tf.uint32) + tf.zeros_like(words[0])
  for word in words:
    key = _lowbias32(tf.bitwise.bitwise_xor(key, word))
  return key


def _random_bits(keys: tf.Tensor, counters: tf.Tensor) -> tf.Tensor:
  """32 random bits per (example, counter), `[batch, n]` int64 in [0, 2**32).

  `keys` are `[batch]` uint32 (`_example_keys`), `counters` non-negative
  int32 `[n]` or `[batch, n]`. Distinct counters give distinct values for one
  key (the mix is a bijection), so priorities never tie.
  """
  mixed = _lowbias32(tf.cast(counters, tf.uint32))
  if mixed.shape.rank == 1:
    mixed = mixed[tf.newaxis, :]
  bits = _lowbias32(tf.bitwise.bitwise_xor(keys[:, tf.newaxis], mixed))
  return tf.cast(bits, tf.int64)


def _id_runs(members: Sequence[int]) -> list[tuple[int, int]]:
  """`members` as runs of consecutive ids, `(low, high)` inclusive."""
  runs = []
  for member in sorted(set(int(m) for m in members)):
    if runs and member == runs[-1][1] + 1:
      runs[-1][1] = member
    else:
      runs.append([member, member])
  return [(low, high) for low, high in runs]


def _is_any_of(ids: tf.Tensor, members: Sequence[int]) -> tf.Tensor:
  """Whether each of `ids` is in `members` (a few ids, e.g. the specials).

  A compare per run of consecutive members: much cheaper than a `gather`
  from a table, which TF's CPU kernel does one element at a time.
  """
  runs = _id_runs(members)
  if len(runs) > 8:
    table = np.zeros(runs[-1][1] + 1, dtype=bool)
    table[np.asarray(members, np.int64)] = True
    return _lookup(tf.constant(table), ids)
  found = tf.zeros_like(ids, dtype=tf.bool)
  for low, high in runs:
    if low == high:
      found |= tf.equal(ids, low)
    else:
      found |= (ids >= low) & (ids <= high)
  return found


def _decision_thresholds(config: MaskingConfig) -> tuple[int, int]:
  """32 random bits below the first: `[MASK]`; below the second: random."""
  mask_or_random = config.mask_token_prob + config.random_token_prob
  return round(config.mask_token_prob * 2**32), round(mask_or_random * 2**32)


@functools.lru_cache(maxsize=8)
def _replacement_ids(
  special_ids: tuple[int, ...], replacement_range: tuple[int, int]
) -> np.ndarray:
  """The ids a random replacement is drawn from: `[n]` int32."""
  allowed = np.setdiff1d(
    np.arange(*replacement_range, dtype=np.int32),
    np.asarray(special_ids, dtype=np.int32),
  )
  if allowed.size == 0:
    raise ValueError(f'no ordinary id in replacement_range={replacement_range}')
  return allowed


def _lookup(table: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
  """`table[ids]`, false for ids beyond the table."""
  size = tf.shape(table)[0]
  inside = ids < size
  return inside & tf.gather(table, tf.minimum(ids, size - 1))


def _prefix_count(candidates: tf.Tensor) -> tf.Tensor:
  """`cumsum` of `[batch, seq_len]` bools along the sequence, as int32: with
  a static `seq_len`, log-step whole-tensor adds (TF's CPU `cumsum` walks
  one row at a time)."""
  counts = tf.cast(candidates, tf.int32)
  seq_len = candidates.shape[1]
  if seq_len is None:
    return tf.cumsum(counts, axis=1)
  shift = 1
  while shift < seq_len:
    counts += tf.pad(counts[:, :-shift], [[0, 0], [shift, 0]])
    shift *= 2
  return counts


def _choose_tokens(candidates, keys, num_to_predict, max_predictions):
  """Chooses `min(num_to_predict, #candidates)` candidates uniformly.

  Robert Floyd's algorithm (Bentley & Floyd, "A sample of brilliance",
  CACM 1987): step j draws `t` uniform in `[0, n - k + j]` and takes `t`,
  or `n - k + j` when `t` is taken already; vectorised over the batch, the
  ranks mapped to positions by the running candidate count. The law is
  that of the original's shuffle-and-take-first-k; a `top_k` over random
  priorities has it too but is much slower on CPU.

  `candidates` `[batch, seq_len]` bool, `keys` `[batch]` uint32,
  `num_to_predict` `[batch]` int32 >= 1, `max_predictions` a static int >=
  `max(num_to_predict)`. Returns `[batch, max_predictions]` int32 positions,
  ascending, `seq_len` in unused slots (last).
  """
  seq_len = tf.shape(candidates)[1]
  counts = _prefix_count(candidates)
  total = counts[:, -1]
  k = tf.minimum(num_to_predict, total)
  # Slot-major [max_predictions, batch]: each step reads a contiguous row,
  # and the taken-already test reduces over the outer axis, which TF's CPU
  # kernels vectorise.
  bits = tf.transpose(_random_bits(keys, tf.range(max_predictions)))
  ranks = []
  for j in range(max_predictions):
    top = tf.maximum(total - k + j, 0)
    # Multiply-shift: 32 uniform bits onto [0, top] (bias < seq_len / 2**32).
    draw = tf.bitwise.right_shift(bits[j] * tf.cast(top + 1, tf.int64), 32)
    draw = tf.cast(draw, tf.int32)
    if ranks:
      taken = tf.reduce_any(tf.equal(tf.stack(ranks), draw[tf.newaxis, :]), 0)
      draw = tf.where(taken, top, draw)
    ranks.append(draw)
  ranks = tf.transpose(tf.stack(ranks))
  # Unused slots get rank seq_len, which sorts last and finds no position.
  ranks = tf.where(tf.range(max_predictions) < k[:, tf.newaxis], ranks, seq_len)
  # Rank r is at the first position whose running count reaches r + 1.
  return tf.searchsorted(counts, tf.sort(ranks, axis=1) + 1, side='left')


def _choose_whole_words(
  candidates, word_starts, keys, num_to_predict, max_predictions
):
  """Greedy whole-word choice, the loop of the original BERT, vectorised.

  A word skipped once never fits later (the budget only shrinks), so taking
  the highest-priority word that fits, step by step, gives the original's
  set in at most `max_predictions` steps. Arguments and result as
  `_choose_tokens`, plus `word_starts` `[batch, seq_len]` bool.
  """
  batch = tf.shape(candidates)[0]
  seq_len = tf.shape(candidates)[1]
  previous = tf.pad(candidates[:, :-1], [[0, 0], [1, 0]])
  starts = candidates & (word_starts | ~previous)
  # Word ids count from 1 within each example; non-candidates are masked out
  # below wherever the id of the word before them would leak in.
  word_ids = tf.cumsum(tf.cast(starts, tf.int32), axis=1)
  segments = word_ids + (seq_len + 1) * tf.range(batch)[:, tf.newaxis]
  lengths = tf.math.unsorted_segment_sum(
    tf.cast(candidates, tf.int32), segments, batch * (seq_len + 1)
  )
  word_lengths = tf.gather(lengths, segments)
  # One priority per word: all of its pieces hash the word id.
  never = tf.constant(-1, tf.int64)
  priorities = tf.where(candidates, _random_bits(keys, word_ids), never)

  def body(step, chosen, remaining, _):
    fits = candidates & ~chosen & (word_lengths <= remaining[:, tf.newaxis])
    scores = tf.where(fits, priorities, never)
    best = tf.argmax(scores, axis=1, output_type=tf.int32)
    found = tf.reduce_max(scores, axis=1) >= 0
    best_word = tf.gather(word_ids, best, batch_dims=1)
    new = (
      candidates
      & tf.equal(word_ids, best_word[:, tf.newaxis])
      & found[:, tf.newaxis]
    )
    remaining -= tf.reduce_sum(tf.cast(new, tf.int32), axis=1)
    return step + 1, chosen | new, remaining, tf.reduce_any(found)

  _, chosen, _, _ = tf.while_loop(
    lambda step, chosen, remaining, progress: progress,
    body,
    (tf.constant(0), tf.zeros_like(candidates), num_to_predict, True),
    maximum_iterations=max_predictions,
  )
  # The top-k of (seq_len - position) over chosen positions, 0 elsewhere.
  keyed = tf.where(chosen, seq_len - tf.range(seq_len), 0)
  keyed = tf.pad(keyed, [[0, 0], [0, max_predictions]])
  return seq_len - tf.math.top_k(keyed, k=max_predictions).values


def vocab_kwargs(tokenizer, whole_word_mask: bool) -> dict:
  """`mask_batch`'s vocab keyword arguments, from a `tokenizers.Tokenizer`."""
  return dict(
    special_ids=tokenizer.special_ids.tolist(),
    mask_id=tokenizer.mask_id,
    replacement_range=tokenizer.replacement_range,
    word_start_table=tokenizer.word_start_table() if whole_word_mask else None,
  )


def mask_batch(
  input_ids: tf.Tensor,
  input_mask: tf.Tensor,
  seeds: tf.Tensor,
  *,
  config: MaskingConfig,
  special_ids: Sequence[int],
  mask_id: int,
  replacement_range: tuple[int, int],
  word_start_table: np.ndarray | None = None,
  word_starts: tf.Tensor | None = None,
) -> dict[str, tf.Tensor]:
  """Applies BERT MLM masking to a batch, one stateless seed per example.

  As the original `create_masked_lm_predictions`: an example predicts
  `min(max_predictions_per_seq, max(1, round(num_tokens * masked_lm_prob)))`
  tokens (`num_tokens`: non-padding, `[CLS]`/`[SEP]` included; Python's
  half-to-even `round`), a uniform subset of its non-padding tokens not in
  `special_ids`. Whole-word masking visits words in random order and takes
  each that fits the remaining budget, all pieces or none; a word starts at
  a word-start id, where `word_starts` says, or after a non-candidate token.

  Pure: an example's output depends only on its rows of `input_ids`,
  `input_mask` and `seeds` (e.g. `(random_seed, example_ordinal)`) and on
  the static arguments. Call it inside `tf.data` `map` or a `tf.function`.

  Args:
    input_ids: `[batch, seq_len]` int32 (int64 is cast).
    input_mask: `[batch, seq_len]` int, 1 for real tokens, 0 for padding.
    seeds: `[batch, 2]` int32 or int64.
    replacement_range: random replacements are drawn uniformly from the ids
      in `[low, high)` that are not in `special_ids`.
    word_start_table: `[vocab_size]` bool; required for whole-word masking.
    word_starts: `[batch, seq_len]` word starts found in the text
      (`segmentation`), which replace the table's where given.

  Returns:
    `input_ids` `[batch, seq_len]` int32, masked; and, 0-padded to
    `P = config.max_predictions_per_seq`: `masked_lm_positions` `[batch, P]`
    int32, ascending; `masked_lm_ids` `[batch, P]` int32, the original ids;
    `masked_lm_weights` `[batch, P]` float32, 1.0 at real predictions.
  """
  max_predictions = config.max_predictions_per_seq
  if config.whole_word_mask and word_start_table is None:
    raise ValueError('whole_word_mask needs a word_start_table')
  allowed = _replacement_ids(
    tuple(int(i) for i in special_ids), tuple(replacement_range)
  )

  input_ids = tf.cast(input_ids, tf.int32)
  batch = tf.shape(input_ids)[0]
  seq_len = tf.shape(input_ids)[1]
  real = tf.cast(input_mask, tf.bool)
  candidates = real & ~_is_any_of(input_ids, special_ids)
  keys = _example_keys(seeds)

  # float64 so that round() sees exactly the float product Python sees;
  # counted in int32, far cheaper than casting every position to float64.
  num_tokens = tf.cast(
    tf.reduce_sum(tf.cast(real, tf.int32), axis=1), tf.float64
  )
  num_to_predict = tf.cast(
    tf.round(num_tokens * config.masked_lm_prob), tf.int32
  )
  num_to_predict = tf.clip_by_value(num_to_predict, 1, max_predictions)

  if config.whole_word_mask:
    if word_starts is None:
      word_starts = _lookup(
        tf.constant(np.asarray(word_start_table, dtype=bool)), input_ids
      )
    else:
      word_starts = tf.cast(word_starts, tf.bool)
    positions = _choose_whole_words(
      candidates, word_starts, keys, num_to_predict, max_predictions
    )
  else:
    positions = _choose_tokens(
      candidates, keys, num_to_predict, max_predictions
    )
  # Ascending, the unused slots (seq_len) last; 0-padded from here on.
  valid = positions < seq_len
  positions = tf.where(valid, positions, 0)
  original = tf.gather(input_ids, positions, batch_dims=1)

  slots = tf.range(max_predictions)
  decision = _random_bits(keys, _DECISION_STREAM + slots)
  token_bits = _random_bits(keys, _TOKEN_STREAM + slots)
  mask_below, random_below = _decision_thresholds(config)
  # Multiply-shift: no modulo bias, and the product stays below 2**63.
  random_ids = tf.gather(
    tf.constant(allowed), tf.bitwise.right_shift(token_bits * allowed.size, 32)
  )
  replaced = tf.where(
    decision < mask_below,
    mask_id,
    tf.where(decision < random_below, random_ids, original),
  )
  # A sum of deltas (0 in padded slots, which all point at position 0) over
  # flat positions: cheaper than TF's CPU `tensor_scatter_nd_add`.
  delta = tf.where(valid, replaced - original, 0)
  flat = positions + seq_len * tf.range(batch)[:, tf.newaxis]
  deltas = tf.math.unsorted_segment_sum(delta, flat, batch * seq_len)
  masked_ids = input_ids + tf.reshape(deltas, [batch, seq_len])
  return {
    'input_ids': masked_ids,
    'masked_lm_positions': positions,
    'masked_lm_ids': tf.where(valid, original, 0),
    'masked_lm_weights': tf.cast(valid, tf.float32),
  }
