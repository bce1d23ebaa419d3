"""BERT masked-LM masking as pure, batched TensorFlow ops.

This module owns masking for the whole project: dynamic masking in the
`tf.data` pipeline (`pipeline`) calls `mask_batch`, offline example creation
(`create_pretraining_data`) calls `mask_batch_numpy`, the same function in
numpy for token-level masking, twice as fast on a CPU core and tested to give
the same bits (whole-word masking offline uses `mask_batch`). So a record
masked offline is masked as the pipeline would mask it with the same seed.

Semantics follow google-research/bert `create_masked_lm_predictions`:

* The number of predictions per example is
  `min(max_predictions_per_seq, max(1, round(num_tokens * masked_lm_prob)))`
  where `num_tokens` is the non-padding length (`[CLS]`/`[SEP]` included) and
  `round` is Python's (half to even).
* Candidates are the non-padding, non-special tokens; special tokens are never
  chosen. Without whole words, the chosen tokens are a uniform random subset
  of the candidates, as the original's shuffle-and-take-the-first gives.
  Whole words are visited in a random order and taken greedily: a word that
  does not fit in the remaining budget is skipped and smaller later words may
  still fill it, exactly like the original loop.
* A chosen token becomes `[MASK]` with probability 0.8, a random token with
  probability 0.1 and stays unchanged with probability 0.1. Unlike the
  original, the random token is drawn from a range of ordinary ids with the
  special ids removed, so `[PAD]`, `[CLS]`, `[SEP]` and `[MASK]` are never
  drawn.
* Whole-word masking takes all pieces of a word or none, and counts every
  piece against the budget. A word starts at a token whose id is a word start
  (no `##` prefix for WordPiece, a `▁` prefix for SentencePiece) or after a
  non-candidate token, so a word never spans `[SEP]` (the original attached a
  `##` piece after `[SEP]` to the word before it).

Randomness. Every example has its own stateless seed (`[batch, 2]`), so the
mask of an example depends on its seed and tokens only, never on the batch it
is in or on the worker that computed it. `tf.random.stateless_*` ops take one
seed per call and `vectorized_map` turns them into a sequential loop over the
batch; `tf.random.experimental.index_shuffle` rejects batched seeds in TF 2.21
and its raw op maps consecutive indices to nearly consecutive values. So the
random bits are a counter-based hash instead: 32 bits for (seed, stream,
counter) from `lowbias32`, a bijective integer mix (Wellons, "Prospecting for
hash functions"), vectorised over the batch. It is deterministic across
platforms and TF versions, as it uses only integer adds, xors, shifts and
multiplies.
"""

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

# Counter offsets that separate the random streams of one example: the
# choice of tokens uses counters [0, max_predictions), word priorities
# [0, seq_len], the replacement decision and the random token of
# prediction slot j use _DECISION_STREAM + j and _TOKEN_STREAM + j.
_DECISION_STREAM = 1 << 24
_TOKEN_STREAM = 1 << 25


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
  """Options of MLM masking, with the defaults of the original BERT.

  Attributes:
    masked_lm_prob: fraction of the non-padding length to predict.
    max_predictions_per_seq: cap on predictions per example; also the width
      of the `masked_lm_*` outputs.
    mask_token_prob: probability that a chosen token becomes `[MASK]`.
    random_token_prob: probability that it becomes a random ordinary token.
    keep_token_prob: probability that it stays unchanged.
    whole_word_mask: choose whole words (all their pieces) instead of pieces.
  """

  masked_lm_prob: float = 0.15
  max_predictions_per_seq: int = 20
  mask_token_prob: float = 0.8
  random_token_prob: float = 0.1
  keep_token_prob: float = 0.1
  whole_word_mask: bool = False

  def __post_init__(self):
    if not 0.0 <= self.masked_lm_prob <= 1.0:
      raise ValueError(f'masked_lm_prob={self.masked_lm_prob} not in [0, 1]')
    if self.max_predictions_per_seq < 1:
      raise ValueError(
        f'max_predictions_per_seq={self.max_predictions_per_seq} < 1'
      )
    probs = (self.mask_token_prob, self.random_token_prob, self.keep_token_prob)
    if min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
      raise ValueError(f'mask/random/keep probabilities {probs} must sum to 1')


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
  """Mixes all 64 bits of both seed words into one key per example.

  Args:
    seeds: `[batch, 2]` int32 or int64.

  Returns:
    `[batch]` uint32 keys.
  """
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
  """Returns 32 random bits per (example, counter) as int64 in [0, 2**32).

  Args:
    keys: `[batch]` uint32 keys from `_example_keys`.
    counters: `[n]` or `[batch, n]` non-negative int32 counters.

  Returns:
    `[batch, n]` int64. Distinct counters give distinct values for one key
    (the mix is a bijection), so priorities never tie.
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

  Compares against each run of consecutive members: a handful of whole-tensor
  compares cost a fifth of a `gather` from a membership table, which TF's CPU
  kernel does one element at a time.
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
  """32 random bits below the first become `[MASK]`, below the second a
  random token, the rest stay unchanged."""
  mask_below = round(config.mask_token_prob * 2**32)
  random_below = round(
    (config.mask_token_prob + config.random_token_prob) * 2**32
  )
  return mask_below, random_below


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
  """`cumsum` of `[batch, seq_len]` bools along the sequence, as int32.

  With a static `seq_len`, a log-step scan of whole-tensor adds: TF's CPU
  `cumsum` walks one row at a time, 2.5x slower here.
  """
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
  CACM 1987) draws a uniform subset of k ranks out of n in k steps without
  sorting: step j draws `t` uniform in `[0, n - k + j]` and takes `t`, or
  `n - k + j` when `t` is taken already. Each step is vectorised over the
  batch, and the ranks map to positions through the running candidate
  count. The subset has the law of the original's shuffle-and-take-first-k;
  a `top_k` over per-position random priorities (the same law) cost 5x
  this on CPU.

  Args:
    candidates: `[batch, seq_len]` bool.
    keys: `[batch]` uint32 example keys.
    num_to_predict: `[batch]` int32, at least 1.
    max_predictions: static int, at least `max(num_to_predict)`.

  Returns:
    `[batch, max_predictions]` int32 chosen positions, ascending, `seq_len`
    in unused slots (last).
  """
  seq_len = tf.shape(candidates)[1]
  counts = _prefix_count(candidates)
  total = counts[:, -1]
  k = tf.minimum(num_to_predict, total)
  # Slot-major [max_predictions, batch]: each step reads one contiguous row,
  # and the taken-already test reduces over the outer axis, which TF's CPU
  # kernels vectorise (rows of a few ints along the inner axis they do not).
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

  The original visits the words in a random order and takes a word when it
  fits in the remaining budget. A word skipped once never fits later (the
  budget only shrinks), so the same set results from repeatedly taking the
  highest-priority word that fits; each step takes at least one token, hence
  at most `max_predictions` steps, each vectorised over the batch.

  Args:
    candidates: `[batch, seq_len]` bool.
    word_starts: `[batch, seq_len]` bool, true where a token begins a word.
    keys: `[batch]` uint32 example keys.
    num_to_predict: `[batch]` int32.
    max_predictions: static int.

  Returns:
    `[batch, max_predictions]` int32 chosen positions, ascending, `seq_len`
    in unused slots (last).
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
  priorities = tf.where(
    candidates,
    _random_bits(keys, word_ids),
    tf.constant(-1, tf.int64),
  )

  def body(step, chosen, remaining, _):
    fits = candidates & ~chosen & (word_lengths <= remaining[:, tf.newaxis])
    scores = tf.where(fits, priorities, tf.constant(-1, tf.int64))
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
) -> dict[str, tf.Tensor]:
  """Applies BERT MLM masking to a batch, one stateless seed per example.

  Pure and deterministic: the output for an example depends only on its row
  of `input_ids`, `input_mask` and `seeds` and on the static arguments. Call
  it inside `tf.data` `map` or a `tf.function` (eager works, but slower).

  Args:
    input_ids: `[batch, seq_len]` int32 (int64 is cast) token ids.
    input_mask: `[batch, seq_len]` int, 1 for real tokens, 0 for padding.
    seeds: `[batch, 2]` int32 or int64, one stateless seed per example, e.g.
      `(random_seed, example_ordinal)`.
    config: the masking options.
    special_ids: ids that are never chosen and never drawn as replacements
      (`[PAD]`, `[UNK]` if wanted, `[CLS]`, `[SEP]`, `[MASK]`, ...).
    mask_id: the id of `[MASK]`.
    replacement_range: `(low, high)`: random replacements are drawn uniformly
      from the ids in `[low, high)` that are not in `special_ids`.
    word_start_table: `[vocab_size]` bool, true for ids that begin a word;
      required when `config.whole_word_mask`.

  Returns:
    A dict with
      `input_ids`: `[batch, seq_len]` int32, the masked ids.
      `masked_lm_positions`: `[batch, max_predictions_per_seq]` int32,
        ascending, 0-padded.
      `masked_lm_ids`: `[batch, max_predictions_per_seq]` int32, the original
        ids at those positions, 0-padded.
      `masked_lm_weights`: `[batch, max_predictions_per_seq]` float32, 1.0 for
        real predictions and 0.0 for padding.
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
  # counted in int32 (a cast of every position to float64 costs 10x).
  num_tokens = tf.cast(
    tf.reduce_sum(tf.cast(real, tf.int32), axis=1), tf.float64
  )
  num_to_predict = tf.cast(
    tf.round(num_tokens * config.masked_lm_prob), tf.int32
  )
  num_to_predict = tf.clip_by_value(num_to_predict, 1, max_predictions)

  if config.whole_word_mask:
    word_starts = _lookup(
      tf.constant(np.asarray(word_start_table, dtype=bool)), input_ids
    )
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
  # Multiply-shift maps 32 uniform bits onto [0, allowed.size) without the
  # bias of a modulo (the product stays below 2**63).
  random_ids = tf.gather(
    tf.constant(allowed), tf.bitwise.right_shift(token_bits * allowed.size, 32)
  )
  replaced = tf.where(
    decision < mask_below,
    mask_id,
    tf.where(decision < random_below, random_ids, original),
  )
  # A sum of deltas (0 in padded slots, which all point at position 0) over
  # flat positions: TF's CPU `tensor_scatter_nd_add` costs 3x this.
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


# ---------------------------------------------------------------------------
# The same masking in numpy, for offline example creation.


def _lowbias32_numpy(x: np.ndarray) -> np.ndarray:
  """`_lowbias32` on uint32 numpy arrays (wrapping like TF's uint32)."""
  x = x ^ (x >> np.uint32(16))
  x = x * np.uint32(0x7FEB352D)
  x = x ^ (x >> np.uint32(15))
  x = x * np.uint32(0x846CA68B)
  return x ^ (x >> np.uint32(16))


def _random_bits_numpy(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
  """`_random_bits`: `[batch]` uint32 keys, `[n]` counters -> `[batch, n]`
  int64."""
  mixed = _lowbias32_numpy(np.asarray(counters).astype(np.uint32))
  return _lowbias32_numpy(keys[:, None] ^ mixed[None, :]).astype(np.int64)


def mask_batch_numpy(
  input_ids: np.ndarray,
  input_mask: np.ndarray,
  seeds: np.ndarray,
  *,
  config: MaskingConfig,
  special_ids: Sequence[int],
  mask_id: int,
  replacement_range: tuple[int, int],
) -> dict[str, np.ndarray]:
  """`mask_batch` in numpy, for token-level masking.

  The very outputs of `mask_batch`, bit for bit (tested), at about twice its
  speed on a CPU core: numpy's whole-array ops, cumsum and small sorts are
  several times faster than TF's single-threaded CPU kernels, which matters
  offline (`create_pretraining_data` masks every example `dupe_factor`
  times). The tf.data pipeline uses `mask_batch`. Whole-word masking is
  `mask_batch` only.

  Args:
    input_ids: `[batch, seq_len]` int token ids.
    input_mask: `[batch, seq_len]` int, 1 for real tokens, 0 for padding.
    seeds: `[batch, 2]` int, one stateless seed per example.
    config: the masking options; `whole_word_mask` must be off.
    special_ids: as for `mask_batch`.
    mask_id: as for `mask_batch`.
    replacement_range: as for `mask_batch`.

  Returns:
    The dict of `mask_batch`, as numpy arrays of the same dtypes.
  """
  if config.whole_word_mask:
    raise ValueError('mask_batch_numpy masks tokens; use mask_batch for words')
  allowed = _replacement_ids(
    tuple(int(i) for i in special_ids), tuple(replacement_range)
  )
  input_ids = np.asarray(input_ids).astype(np.int32, copy=False)  # read only
  batch, seq_len = input_ids.shape
  max_predictions = config.max_predictions_per_seq
  real = np.asarray(input_mask).astype(bool)
  candidates = real.copy()
  for low, high in _id_runs(special_ids):
    # low <= id <= high as one unsigned compare (ids below low wrap high).
    offset = (input_ids - low if low else input_ids).view(np.uint32)
    candidates &= offset > np.uint32(high - low)

  seeds = np.asarray(seeds).astype(np.int64)
  keys = np.full(batch, 0x9E3779B9, np.uint32)
  for i in range(2):
    for word in (seeds[:, i], seeds[:, i] >> 32):
      keys = _lowbias32_numpy(keys ^ word.astype(np.uint32))
  num_tokens = np.count_nonzero(real, axis=1).astype(np.float64)
  num_to_predict = np.round(num_tokens * config.masked_lm_prob).astype(np.int32)
  num_to_predict = np.clip(num_to_predict, 1, max_predictions)

  # _choose_tokens: Floyd's algorithm over the candidates' ranks.
  total = np.count_nonzero(candidates, axis=1).astype(np.int32)
  k = np.minimum(num_to_predict, total)
  bits = np.ascontiguousarray(
    _random_bits_numpy(keys, np.arange(max_predictions)).T
  )
  ranks = np.empty((max_predictions, batch), np.int32)
  for j in range(max_predictions):
    top = np.maximum(total - k + j, 0)
    draw = ((bits[j] * (top + 1).astype(np.int64)) >> 32).astype(np.int32)
    if j:
      draw = np.where((ranks[:j] == draw).any(axis=0), top, draw)
    ranks[j] = draw
  valid = np.arange(max_predictions) < k[:, None]
  ranks = np.sort(np.where(valid, ranks.T, seq_len), axis=1)
  # Rank r of row b is the (start of row b's candidates + r)-th candidate
  # in row-major order; the valid slots sort first.
  # (A spare 0 at the end keeps the index valid when no row has any.)
  where = np.append(np.flatnonzero(candidates), 0)
  row_start = np.cumsum(total) - total
  index = np.where(valid, row_start[:, None] + ranks, 0)
  rows = np.arange(batch)[:, None]
  positions = np.where(valid, where[index] - rows * seq_len, 0)
  positions = positions.astype(np.int32)
  original = np.take_along_axis(input_ids, positions, axis=1)

  slots = np.arange(max_predictions)
  decision = _random_bits_numpy(keys, _DECISION_STREAM + slots)
  token_bits = _random_bits_numpy(keys, _TOKEN_STREAM + slots)
  mask_below, random_below = _decision_thresholds(config)
  random_ids = allowed[(token_bits * allowed.size) >> 32]
  replaced = np.where(
    decision < mask_below,
    mask_id,
    np.where(decision < random_below, random_ids, original),
  )
  # Padded slots write into one spare element past the end.
  flat = np.empty(batch * seq_len + 1, np.int32)
  flat[:-1] = input_ids.reshape(-1)
  flat[np.where(valid, rows * seq_len + positions, batch * seq_len)] = replaced
  return {
    'input_ids': flat[:-1].reshape(batch, seq_len),
    'masked_lm_positions': positions,
    'masked_lm_ids': np.where(valid, original, 0).astype(np.int32),
    'masked_lm_weights': valid.astype(np.float32),
  }
