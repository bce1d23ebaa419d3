r"""Offline pretraining examples: documents -> NSP pairs -> masked TFRecords.

The library and CLI of google-research/bert `create_pretraining_data.py`,
with its semantics and without its limits (one process, the whole corpus in
memory, a crash on bad bytes):

  python -m data_pipeline.create_pretraining_data \
    --input_files='corpus/*.txt' --output_dir=/tmp/bert_data \
    --tokenizer=vocab.txt --max_seq_length=128 --max_predictions_per_seq=20 \
    --masked_lm_prob=0.15 --short_seq_prob=0.1 --dupe_factor=10 \
    --random_seed=12345 --num_shards=16 --num_workers=4

How it runs. The main process reads documents (`data_pipeline.documents`) in
input order, sends each to the train or the eval split by a hash of its text,
and groups a split's consecutive documents into *units* of about
`unit_chars` characters. Worker processes (or this process, with one
worker) turn each unit into records: tokenize in-graph (the tokenizer's
`create_tf_tokenize_fn`, about 10x the Python tokenizer's throughput here),
build pairs `dupe_factor` times as token ranges, shuffle within the unit,
mask (`data_pipeline.masking.mask_batch_numpy`, bit for bit the masking of
the tf.data pipeline) and serialize straight into TFRecord file bytes
(`data_pipeline.example_bytes`, `data_pipeline.tfrecord`). The main process
writes each unit's records, in unit order, spread evenly over the split's
shards (a contiguous run of the unit per shard), then `stats.json`. At most
`2 * num_workers` units are in flight, so memory does not grow with the
corpus (measured: the same peak for 12.5 MB and 50 MB of text).

Determinism. Units depend on the input and `unit_chars` only, and every
random choice is drawn from (random_seed, split, unit) (NSP pairs of all
dupe copies at once), (random_seed, split, unit, dupe) (`--no_nsp`
sequences) or, for masks, (random_seed, split, unit, example), never from a
worker; records are serialized deterministically (protobuf map order
otherwise varies between runs). So a seed gives the same bytes whatever
`num_workers` is (another `unit_chars` gives other, equally valid,
examples).

Differences from the original, all deliberate:

- Random next sentences come from another document of the same unit (a
  window of about `unit_chars` of text around the document), not from the
  whole corpus, which the original had to hold in memory.
- NSP balance. The original forces a random B whenever the chunk holds a
  single segment (a long sentence, or a document's lone last sentence),
  which made 53.5-56% of real examples random. Here a one-segment chunk
  takes the document's next sentence along, or at the document's end the
  sentence before it (which so appears in two examples), so a true
  continuation is possible for every chunk but those of single-sentence
  documents. The stats report the random fraction overall and among the
  examples where a continuation was possible.
- `truncate_seq_pair` removes the same number of tokens from each side as
  the original, and as many from the front as fair coin flips per removed
  token give (one binomial draw).
- The random replacement token never is `[PAD]`, `[CLS]`, `[SEP]`, ... (see
  `data_pipeline.masking`).
- `--no_nsp` packs whole sentences RoBERTa-style (FULL-SENTENCES: sequences
  may cross documents, an extra `[SEP]` between documents), `[CLS] tokens
  [SEP]`, all segment ids 0 and `next_sentence_labels` 0; the trainer must
  switch NSP off, the label carries no information.
- `--no_mask` writes unmasked pair records, once (no `dupe_factor` copies),
  for the dynamic-masking pipeline (`data_pipeline.pipeline`).
- The eval split (`--eval_fraction`) takes whole documents, chosen by a
  hash of their text, so the same document lands in the same split in every
  run; eval records are created once (no dupe copies).
"""

import bisect
import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import random
import time
from collections.abc import Iterable, Iterator, Sequence

if __name__ == '__main__':
  # The command restarts itself with malloc on huge pages (1.05-1.09x at
  # dupe_factor=10; see bertjax.cli), before numpy and TensorFlow load. Its
  # workers inherit it.
  # Imported here: the library never imports bertjax, only its CLI does.
  from bertjax import cli

  cli.restart_with_malloc_huge_pages()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from data_pipeline import (  # noqa: E402
  documents,
  example_bytes,
  masking,
  tokenizers,
)

SPLITS = ('train', 'eval')
# Masking seeds pack (split, unit, example) into one int64: the unit index
# and the example index within a unit get these many bits.
_UNIT_BITS = 28
_EXAMPLE_BITS = 24
# Masking runs on batches of this many examples, tokenization on batches of
# this many sentences.
_MASK_BATCH = 4096
_TOKENIZE_BATCH = 4096


@dataclasses.dataclass(frozen=True)
class CreationConfig:
  """What examples to create; the defaults are the original BERT's.

  Attributes:
    max_seq_length: tokens per example, `[CLS]` and `[SEP]`s included.
    max_predictions_per_seq: masked positions per example, at most.
    masked_lm_prob: fraction of an example's tokens to mask.
    short_seq_prob: probability of a shorter target length (per document, as
      in the original), so the model also sees short inputs.
    dupe_factor: how many times each document is turned into examples, each
      time with other pair cuts and masks.
    random_seed: the seed every random choice derives from.
    do_whole_word_mask: mask all pieces of a word or none.
    nsp: build NSP sentence pairs; False packs sentences RoBERTa-style.
    mask: write masked examples; False writes unmasked pairs, once.
    eval_fraction: fraction of documents held out as the eval split.
    unit_chars: characters of text per unit of work; also the window random
      next sentences are drawn from.
  """

  max_seq_length: int = 128
  max_predictions_per_seq: int = 20
  masked_lm_prob: float = 0.15
  short_seq_prob: float = 0.1
  dupe_factor: int = 10
  random_seed: int = 12345
  do_whole_word_mask: bool = False
  nsp: bool = True
  mask: bool = True
  eval_fraction: float = 0.0
  unit_chars: int = 1 << 20

  def __post_init__(self):
    if self.max_seq_length < 5:
      raise ValueError(f'max_seq_length={self.max_seq_length} < 5')
    if self.max_predictions_per_seq < 1:
      raise ValueError(
        f'max_predictions_per_seq={self.max_predictions_per_seq} < 1'
      )
    for name in ('masked_lm_prob', 'short_seq_prob'):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f'{name}={getattr(self, name)} not in [0, 1]')
    if not 0.0 <= self.eval_fraction < 1.0:
      raise ValueError(f'eval_fraction={self.eval_fraction} not in [0, 1)')
    if self.dupe_factor < 1:
      raise ValueError(f'dupe_factor={self.dupe_factor} < 1')
    if not 0 <= self.random_seed < 2**63:
      raise ValueError(f'random_seed={self.random_seed} not in [0, 2**63)')

  def dupes(self, split: str) -> int:
    """Copies made of each document of `split`."""
    return self.dupe_factor if self.mask and split == 'train' else 1


# ---------------------------------------------------------------------------
# Pairs.


def derive_seed(*parts: object) -> int:
  """A 64-bit seed from any printable parts, stable across runs/platforms."""
  text = '/'.join(str(p) for p in parts).encode()
  return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), 'big')


def compute_truncation(len_a, len_b, max_num_tokens: int):
  """How many tokens the original `truncate_seq_pair` removes from A and B.

  The original removes one token at a time from the longer segment (B on a
  tie) until the pair fits; this is the same count in closed form.

  Args:
    len_a: lengths of segment A, an int or an int array.
    len_b: lengths of segment B, the same shape.
    max_num_tokens: the room for both.

  Returns:
    `(cut_a, cut_b)`, of the shape of the lengths.
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

  _FIELDS = ('a_start', 'a_len', 'b_start', 'b_len', 'labels', 'possible')

  def __init__(self):
    self._parts: list[np.ndarray] = []  # [6, n] int64 arrays, in order
    self._rows: list[tuple[int, ...]] = []  # from `add`, not yet in _parts

  def _flush_rows(self) -> None:
    if self._rows:
      self._parts.append(np.array(self._rows, np.int64).reshape(-1, 6).T)
      self._rows = []

  def _columns(self) -> np.ndarray:
    """All examples as `[6, n]` int64, fields in `_FIELDS` order."""
    self._flush_rows()
    if len(self._parts) != 1:
      self._parts = [
        np.concatenate(self._parts or [np.zeros((6, 0), np.int64)], 1)
      ]
    return self._parts[0]

  def __len__(self) -> int:
    return sum(p.shape[1] for p in self._parts) + len(self._rows)

  def _column(self, name: str) -> np.ndarray:
    return self._columns()[PairBuilder._FIELDS.index(name)]

  # `[n]` int64 arrays of all examples added so far.
  a_start = property(lambda self: self._column('a_start'))
  a_len = property(lambda self: self._column('a_len'))
  b_start = property(lambda self: self._column('b_start'))
  b_len = property(lambda self: self._column('b_len'))
  labels = property(lambda self: self._column('labels'))
  possible = property(lambda self: self._column('possible'))

  def add(
    self,
    a_start: int,
    a_len: int,
    b_start: int,
    b_len: int,
    label: int,
    possible: bool,
  ) -> None:
    """Adds `[CLS] A [SEP] B [SEP]`, or `[CLS] A [SEP]` if B is empty.

    Args:
      a_start: where segment A starts in the unit's tokens.
      a_len: its length, >= 1.
      b_start: where segment B starts.
      b_len: its length; 0 for none.
      label: 0 = IsNext, 1 = random next.
      possible: whether B could have been the true continuation.
    """
    self._rows.append((a_start, a_len, b_start, b_len, label, possible))

  def extend(self, a_start, a_len, b_start, b_len, labels, possible) -> None:
    """Adds many examples: `[n]` arrays of the arguments of `add`."""
    self._flush_rows()  # keeps the order of earlier `add`s
    self._parts.append(
      np.stack([a_start, a_len, b_start, b_len, labels, possible]).astype(
        np.int64
      )
    )

  def arrays(
    self,
    tokens: np.ndarray,
    max_seq_length: int,
    cls_id: int,
    sep_id: int,
    order: Sequence[int] | None = None,
  ) -> dict[str, np.ndarray]:
    """The examples as padded arrays.

    Args:
      tokens: `[num_tokens]` int32, the unit's tokens the ranges point into.
      max_seq_length: the padded length.
      cls_id: id of `[CLS]`.
      sep_id: id of `[SEP]`.
      order: the examples to take, in this order (default: all, as added).

    Returns:
      `input_ids`: `[n, max_seq_length]` int32; `input_mask`, `segment_ids`:
      `[n, max_seq_length]` uint8 (0/1: a quarter of the memory passes of
      int32); `next_sentence_labels`: `[n, 1]` int32.
    """
    order = slice(None) if order is None else np.asarray(order, np.int64)
    # int32 throughout: these are the largest arrays of a unit.
    a_start, a_len, b_start, b_len, labels, _ = self._columns()[
      :, order
    ].astype(np.int32)[:, :, None]
    total = a_len + b_len + 2 + (b_len > 0)
    if total.size and total.max() > max_seq_length:
      raise ValueError(f'an example has {total.max()} > {max_seq_length}')
    n = total.shape[0]
    rows = np.arange(n)
    column = np.arange(max_seq_length, dtype=np.int32)[None, :]
    # Position q holds tokens[a_start + q - 1] in A and tokens[b_start + q -
    # b_first] in B: one gather over all positions, then [CLS], [SEP] and
    # padding written over it. The padded token array keeps every index of
    # the other positions in range (-1 wraps to a padding 0).
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
  """A uniform int in [0, n): `randrange`'s distribution (up to 2**-53) at a
  fifth of its cost, which adds up over millions of draws."""
  return int(rng.random() * n)


def _target_length(max_num_tokens: int, short_seq_prob: float, rng) -> int:
  if rng.random() < short_seq_prob:
    return 2 + _below(rng, max_num_tokens - 1)
  return max_num_tokens


def create_document_pairs(
  bounds: Sequence[Sequence[int]],
  config: CreationConfig,
  rng: np.random.Generator,
  copies: int,
  out: PairBuilder,
) -> int:
  """NSP pairs from every document of a unit, `copies` times over, as in the
  original `create_instances_from_document` (see the module docstring for
  the differences).

  The original walks a document chunk by chunk. Here every (copy, document)
  pair is a lane, and all lanes take their next chunk together, one numpy
  step per chunk: a Python loop over chunks cost more than all the rest of
  pair creation.

  Args:
    bounds: per document of the unit, its sentence boundaries as offsets
      into the unit's tokens: sentence k is `[bounds[d][k], bounds[d][k+1])`,
      none empty, and offsets increase from one document to the next. The
      random next segments come from the other documents.
    config: lengths and probabilities.
    rng: the unit's random generator.
    copies: how many times each document is turned into pairs (the
      `dupe_factor`), each time with its own target length and choices.
    out: where the pairs go.

  Returns:
    How many chunks were dropped because the unit has no other document to
    draw a random next segment from.
  """
  num_docs = len(bounds)
  if not num_docs or copies < 1:
    return 0
  # Edge k of document d is edges[firsts[d] + k]. All edges increase, so
  # numpy's searchsorted over them is `bisect` within any one document.
  edges = np.concatenate([np.asarray(b, np.int64) for b in bounds])
  sizes = np.array([len(b) - 1 for b in bounds], np.int64)  # sentences
  firsts = np.concatenate([[0], np.cumsum(sizes + 1)[:-1]])
  max_num_tokens = config.max_seq_length - 3

  def below(n):  # uniform ints in [0, n), one per lane
    return (rng.random(len(n)) * n).astype(np.int64)

  doc = np.tile(np.arange(num_docs), copies)
  # The target length, drawn once per document (and copy), as the original.
  short = rng.random(len(doc)) < config.short_seq_prob
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
    # next one along, or at the end of the document the one before, so that
    # the label stays a fair coin (see the NSP note in the module docstring).
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
  config: CreationConfig,
  rng: random.Random,
  out: PairBuilder,
) -> None:
  """Packs whole sentences into `[CLS] tokens [SEP]` sequences (no NSP).

  RoBERTa's FULL-SENTENCES: contiguous sentences up to the target length,
  crossing document boundaries with the `[SEP]` that the unit's tokens hold
  between documents; a sentence longer than a sequence is cut into several.

  Args:
    bounds: per document, sentence boundaries as offsets into the unit's
      tokens (see `create_document_pairs`); consecutive documents are
      separated by one `[SEP]` token.
    config: lengths and probabilities.
    rng: the unit's random generator.
    out: where the sequences go (B empty, label 0).
  """
  max_num_tokens = config.max_seq_length - 2
  # Where a sequence may end: every sentence end. A document's first
  # sentence starts at its [SEP], so that the separator travels with it.
  ends = [e for edges in bounds for e in edges[1:]]
  doc_starts = {edges[0] for edges in bounds}
  position = bounds[0][0] if bounds else 0
  k = 0  # ends[k] is the first end after `position`
  while k < len(ends):
    if position + 1 in doc_starts and position not in doc_starts:
      position += 1  # A sequence does not start with the separator.
    target = _target_length(max_num_tokens, config.short_seq_prob, rng)
    last = bisect.bisect_right(ends, position + target, k) - 1
    if last >= k:
      stop = ends[last]
      k = last + 1
    else:
      # The next sentence alone is longer than the target: cut it.
      stop = position + target
    out.add(position, stop - position, 0, 0, 0, False)
    position = stop


# ---------------------------------------------------------------------------
# Units of work.


@dataclasses.dataclass
class Unit:
  """Consecutive documents of one split, processed together.

  Attributes:
    split: `train` or `eval`.
    index: the unit's ordinal within its split.
    docs: documents, each a list of sentences.
  """

  split: str
  index: int
  docs: list[list[str]]


def is_eval_document(sentences: Sequence[str], eval_fraction: float) -> bool:
  """Whether a document is held out, by a hash of its text (stable)."""
  if eval_fraction <= 0:
    return False
  digest = hashlib.blake2b('\n'.join(sentences).encode(), digest_size=8)
  return int.from_bytes(digest.digest(), 'big') < eval_fraction * 2.0**64


def group_units(
  docs: Iterable[list[str]], unit_chars: int, eval_fraction: float
) -> Iterator[Unit]:
  """Groups consecutive documents of each split into units.

  A unit closes once it holds `unit_chars` characters and two documents; a
  split's last few documents join the unit before them when they are fewer
  than two, so that every unit can draw random next sentences.

  Args:
    docs: documents in input order.
    unit_chars: characters of text per unit.
    eval_fraction: fraction of documents that go to the eval split.

  Yields:
    Units, in an order that depends on the input only.
  """
  filling = {split: ([], 0) for split in SPLITS}
  closed: dict[str, list[list[str]] | None] = dict.fromkeys(SPLITS)
  count = dict.fromkeys(SPLITS, 0)

  def emit(split, unit_docs):
    count[split] += 1
    return Unit(split, count[split] - 1, unit_docs)

  for doc in docs:
    split = 'eval' if is_eval_document(doc, eval_fraction) else 'train'
    unit_docs, chars = filling[split]
    unit_docs.append(doc)
    chars += sum(len(s) for s in doc)
    if chars >= unit_chars and len(unit_docs) >= 2:
      if closed[split] is not None:
        yield emit(split, closed[split])
      closed[split] = unit_docs
      unit_docs, chars = [], 0
    filling[split] = (unit_docs, chars)
  for split in SPLITS:
    rest, _ = filling[split]
    if closed[split] is not None and len(rest) < 2:
      closed[split] += rest
      rest = []
    if closed[split] is not None:
      yield emit(split, closed[split])
    if rest:
      yield emit(split, rest)


@dataclasses.dataclass
class UnitStats:
  """What one unit (or, merged, a whole run) produced."""

  # First: the field `documents` below shadows the module in the class body.
  skipped: documents.Stats = dataclasses.field(default_factory=documents.Stats)
  documents: int = 0
  sentences: int = 0
  tokens: int = 0
  examples: dict[str, int] = dataclasses.field(
    default_factory=lambda: dict.fromkeys(SPLITS, 0)
  )
  random_next: int = 0
  continuation_possible: int = 0
  random_next_where_possible: int = 0
  masked_positions: int = 0
  example_tokens: int = 0
  # CPU seconds the worker spent on units (all its threads).
  cpu_seconds: float = 0.0
  # UTF-8 bytes of the unit's text.
  text_bytes: int = 0

  def merge(self, other: 'UnitStats') -> None:
    for field in dataclasses.fields(self):
      mine, theirs = getattr(self, field.name), getattr(other, field.name)
      if isinstance(mine, documents.Stats):
        mine.merge(theirs)
      elif isinstance(mine, dict):
        for key, value in theirs.items():
          mine[key] = mine.get(key, 0) + value
      else:
        setattr(self, field.name, mine + theirs)


@dataclasses.dataclass
class UnitResult:
  """A unit's serialized examples, in their final (shuffled) order, as
  TFRecord file contents.

  Attributes:
    unit_split: 'train' or 'eval'.
    unit_index: the unit's number within its split.
    records: the framed records one after another (`tfrecord`).
    ends: `[num_records]` int64, where each record's frame ends in
      `records`.
    stats: what the unit held and cost.
  """

  unit_split: str
  unit_index: int
  records: bytes
  ends: np.ndarray
  stats: UnitStats


class Worker:
  """Turns units into serialized records; one per process.

  Holds what is costly to build once per process: the tokenizer and the
  traced masking function.
  """

  def __init__(
    self,
    tokenizer_path: str,
    do_lower_case: bool | None,
    config: CreationConfig,
  ):
    self.config = config
    self.tokenizer = tokenizers.create_tokenizer(
      tokenizer_path, do_lower_case=do_lower_case
    )
    tok = self.tokenizer
    # In-graph tokenization: about 10x the throughput of the tokenizer's
    # Python encode_batch here (Hugging Face `tokenizers`, ~1.6 MB/s per
    # core), with the same ids on the registry corpora (tokenizers module).
    # autograph=False here and for whole words below: plain graph code, and
    # converting it (tf_text's included) cost seconds of CPU per worker.
    tokenize = tok.create_tf_tokenize_fn()

    def tokenize_and_count(texts):
      # The UTF-8 bytes of the text too (for the stats): here they cost
      # nothing, where encoding every sentence again in Python cost ~2%.
      return tokenize(texts), tf.reduce_sum(tf.strings.length(texts))

    self._tokenize = tf.function(
      tokenize_and_count,
      input_signature=[tf.TensorSpec([None], tf.string)],
      autograph=False,
    )
    # masking.mask_batch_numpy (2x the speed of the TF graph on a core)
    # where it applies; mask_batch in a tf.function for whole words.
    self._mask = None
    if config.mask:
      masking_config = masking.MaskingConfig(
        masked_lm_prob=config.masked_lm_prob,
        max_predictions_per_seq=config.max_predictions_per_seq,
        whole_word_mask=config.do_whole_word_mask,
      )
      vocab = dict(
        special_ids=tok.special_ids.tolist(),
        mask_id=tok.mask_id,
        replacement_range=tok.replacement_range,
      )
      if not config.do_whole_word_mask:
        self._mask = functools.partial(
          masking.mask_batch_numpy, config=masking_config, **vocab
        )
      else:
        word_starts = tok.word_start_table()
        length = config.max_seq_length

        # A closure, not functools.partial: tf.function would turn the numpy
        # word-start table into a traced argument.
        @tf.function(
          input_signature=[
            tf.TensorSpec([None, length], tf.int32),
            tf.TensorSpec([None, length], tf.uint8),  # as `arrays` gives
            tf.TensorSpec([None, 2], tf.int64),
          ],
          autograph=False,
        )
        def mask_words(input_ids, input_mask, seeds):
          return masking.mask_batch(
            input_ids,
            input_mask,
            seeds,
            config=masking_config,
            word_start_table=word_starts,
            **vocab,
          )

        def mask(input_ids, input_mask, seeds):
          masked = mask_words(input_ids, input_mask, seeds)
          return {key: value.numpy() for key, value in masked.items()}

        self._mask = mask

  def tokenize(
    self, unit: Unit, stats: UnitStats
  ) -> tuple[np.ndarray, list[list[int]]]:
    """Tokenizes a unit's documents; empty sentences are dropped (counted).

    Also counts the text's UTF-8 bytes into `stats.text_bytes`.

    Returns:
      `tokens`, `[num_tokens]` int32: the documents' tokens in order, one
      `[SEP]` between consecutive documents; and per document with tokens,
      its sentence boundaries as offsets into `tokens` (sentences + 1).
    """
    sentences = [s for doc in unit.docs for s in doc]
    values, lengths = [], []
    for start in range(0, len(sentences), _TOKENIZE_BATCH):
      ragged, text_bytes = self._tokenize(
        tf.constant(sentences[start : start + _TOKENIZE_BATCH])
      )
      values.append(ragged.flat_values.numpy())
      lengths.append(np.diff(ragged.row_splits.numpy()))
      stats.text_bytes += int(text_bytes)
    values = np.concatenate(values) if values else np.zeros(0, np.int32)
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    separator = np.array([self.tokenizer.sep_id], np.int32)
    pieces, bounds = [], []
    offset = source = first_sentence = 0
    for number, doc in enumerate(unit.docs):
      doc_lengths = lengths[first_sentence : first_sentence + len(doc)]
      first_sentence += len(doc)
      kept = doc_lengths[doc_lengths > 0]
      where = f'{unit.split} unit {unit.index} document {number}'
      if len(kept) < len(doc):
        stats.skipped.skip(
          'sentence_without_tokens', where, len(doc) - len(kept)
        )
      if not len(kept):
        stats.skipped.skip('document_without_tokens', where)
        continue
      if bounds:
        pieces.append(separator)
        offset += 1
      count = int(kept.sum())
      pieces.append(values[source : source + count])
      source += count
      bounds.append([offset] + (offset + np.cumsum(kept)).tolist())
      offset += count
      stats.documents += 1
      stats.sentences += len(kept)
      stats.tokens += count
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    return tokens, bounds

  def process(self, unit: Unit) -> UnitResult:
    """Creates, shuffles, masks and serializes the examples of a unit."""
    cpu_started = time.process_time()
    config = self.config
    stats = UnitStats()
    tokens, bounds = self.tokenize(unit, stats)
    pairs = PairBuilder()
    dupes = config.dupes(unit.split)
    if config.nsp:
      rng = np.random.default_rng(
        derive_seed(config.random_seed, unit.split, unit.index, 'pairs')
      )
      dropped = create_document_pairs(bounds, config, rng, dupes, pairs)
      if dropped:
        stats.skipped.skip(
          'chunk_without_other_document',
          f'{unit.split} unit {unit.index}',
          dropped,
        )
    else:
      for dupe in range(dupes):
        rng = random.Random(
          derive_seed(config.random_seed, unit.split, unit.index, dupe)
        )
        create_packed_sequences(bounds, config, rng, pairs)
    n = len(pairs)
    # The original shuffles all examples; here those of a unit, so that the
    # dupe copies of a document are spread out.
    # numpy's permutation: random.shuffle costs ~1 us per example.
    order = np.random.default_rng(
      derive_seed(config.random_seed, unit.split, unit.index, 'shuffle')
    ).permutation(n)
    features = pairs.arrays(
      tokens,
      config.max_seq_length,
      self.tokenizer.cls_id,
      self.tokenizer.sep_id,
      order,
    )
    labels = pairs.labels.astype(bool)
    possible = pairs.possible.astype(bool)
    stats.examples[unit.split] = n
    stats.random_next = int(labels.sum())
    stats.continuation_possible = int(possible.sum())
    stats.random_next_where_possible = int((labels & possible).sum())
    stats.example_tokens = int(features['input_mask'].sum())
    seeds = self._mask_seeds(unit, n) if self._mask is not None else None
    streams, ends, offset = [], [np.zeros(0, np.int64)], 0
    # Batch by batch, masked and serialized while the batch is in cache.
    for start in range(0, n, _MASK_BATCH):
      batch = {k: v[start : start + _MASK_BATCH] for k, v in features.items()}
      if seeds is not None:
        batch.update(
          self._mask(
            batch['input_ids'],
            batch['input_mask'],
            seeds[start : start + _MASK_BATCH],
          )
        )
        stats.masked_positions += int(batch['masked_lm_weights'].sum())
      stream, stream_ends = example_bytes.tfrecord_stream(batch)
      streams.append(stream)
      ends.append(stream_ends + offset)
      offset += len(stream)
    stats.cpu_seconds = time.process_time() - cpu_started
    return UnitResult(
      unit.split, unit.index, b''.join(streams), np.concatenate(ends), stats
    )

  def _mask_seeds(self, unit: Unit, n: int) -> np.ndarray:
    """One stateless seed per example: (random_seed, split|unit|ordinal),
    `[n, 2]` int64."""
    if n >= 1 << _EXAMPLE_BITS or unit.index >= 1 << _UNIT_BITS:
      raise ValueError(f'unit {unit.index} with {n} examples is too large')
    ordinal = (
      (SPLITS.index(unit.split) << (_UNIT_BITS + _EXAMPLE_BITS))
      | (unit.index << _EXAMPLE_BITS)
      | np.arange(n, dtype=np.int64)
    )
    return np.stack([np.full(n, self.config.random_seed), ordinal], axis=1)


# Each worker process builds its `Worker` once, in the pool initializer; a
# process-wide variable is how multiprocessing hands it to tasks.
_WORKER: Worker | None = None


def _init_worker(tokenizer_path, do_lower_case, config) -> None:
  global _WORKER
  # One thread per process: the parallelism is across processes.
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  _WORKER = Worker(tokenizer_path, do_lower_case, config)


def _process_in_worker(unit: Unit) -> UnitResult:
  return _WORKER.process(unit)


def _process_units(
  units: Iterable[Unit],
  num_workers: int,
  worker_args: tuple,
) -> Iterator[UnitResult]:
  """Processes units in order, in this process or a pool of processes."""
  if num_workers <= 1:
    worker = Worker(*worker_args)
    for unit in units:
      yield worker.process(unit)
    return
  # spawn, not fork: TensorFlow's threads do not survive a fork. An
  # executor, not multiprocessing.Pool: a worker that dies (say killed for
  # memory) raises BrokenProcessPool here instead of hanging the run.
  with concurrent.futures.ProcessPoolExecutor(
    num_workers,
    mp_context=multiprocessing.get_context('spawn'),
    initializer=_init_worker,
    initargs=worker_args,
  ) as pool:
    pending = collections.deque()
    try:
      for unit in units:
        pending.append(pool.submit(_process_in_worker, unit))
        # Bounded: submitting all units would read the whole corpus ahead.
        if len(pending) >= 2 * num_workers:
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()
    finally:
      for future in pending:
        future.cancel()


# ---------------------------------------------------------------------------
# Output.


def shard_name(split: str, index: int, count: int) -> str:
  """`<split>-XXXXX-of-YYYYY.tfrecord`."""
  return f'{split}-{index:05d}-of-{count:05d}.tfrecord'


class _ShardWriters:
  """Writes records over a split's shards, renamed into place only when
  complete, so a failed run leaves no shard that looks whole.

  Each unit's records are cut into one contiguous run per shard, so each
  shard gets one write per unit. The runs have the sizes a record-by-record
  round robin would give (continuing from the previous unit), so shards stay
  within one record of each other; records are shuffled within a unit, so
  a run is as random a sample of the unit as a round robin's.
  """

  def __init__(self, output_dir: str, split: str, count: int):
    self.names = [shard_name(split, i, count) for i in range(count)]
    self.paths = [os.path.join(output_dir, name) for name in self.names]
    # Local files through Python's io, which writes slices of a unit's
    # records without copying them (GFile takes bytes only); gs:// and other
    # filesystems through GFile.
    self._local = '://' not in output_dir
    opener = open if self._local else tf.io.gfile.GFile
    self._files = [opener(p + '.incomplete', 'wb') for p in self.paths]
    self._next = 0

  def write(self, records: bytes, ends: np.ndarray) -> None:
    """Writes framed records; `ends` as in `UnitResult`."""
    count, n = len(self._files), len(ends)
    bounds = np.concatenate([[0], ends]).tolist()
    if self._local:
      records = memoryview(records)
    first = 0
    for offset in range(min(count, n)):
      size = n // count + (offset < n % count)
      piece = records[bounds[first] : bounds[first + size]]
      self._files[(self._next + offset) % count].write(piece)
      first += size
    self._next = (self._next + n) % count

  def close(self, complete: bool) -> None:
    for file, path in zip(self._files, self.paths):
      file.close()
      if complete:
        tf.io.gfile.rename(path + '.incomplete', path, overwrite=True)
      else:
        tf.io.gfile.remove(path + '.incomplete')


@dataclasses.dataclass(frozen=True)
class OutputOptions:
  """Where and how records are written.

  Attributes:
    output_dir: directory for the shards and `stats.json`.
    num_shards: train shards.
    num_eval_shards: eval shards (only with `eval_fraction > 0`).
    num_workers: worker processes; 1 works in this process.
  """

  output_dir: str
  num_shards: int = 1
  num_eval_shards: int = 1
  num_workers: int = 1


def create_pretraining_data(
  docs: Iterable[list[str]],
  input_stats: documents.Stats,
  tokenizer_path: str,
  config: CreationConfig,
  output: OutputOptions,
  do_lower_case: bool | None = None,
) -> dict:
  """Creates pretraining records from documents; writes shards and stats.

  Args:
    docs: documents (lists of sentences) in input order, e.g. from
      `documents.read_documents`; consumed once, as a stream.
    input_stats: the stats the reader of `docs` fills in.
    tokenizer_path: a WordPiece `vocab.txt` or a SentencePiece `.model`.
    config: what examples to create.
    output: where and how to write them.
    do_lower_case: passed to `tokenizers.create_tokenizer`.

  Returns:
    The stats also written to `<output_dir>/stats.json`.
  """
  started = time.perf_counter()
  cpu_started = time.process_time()
  splits = ['train'] + (['eval'] if config.eval_fraction > 0 else [])
  counts = {'train': output.num_shards, 'eval': output.num_eval_shards}
  if min(counts[s] for s in splits) < 1:
    raise ValueError(f'shard counts must be >= 1, got {counts}')
  tf.io.gfile.makedirs(output.output_dir)
  _check_no_foreign_shards(output.output_dir, splits, counts)
  # stats.json, written last, marks complete output: a rerun that fails must
  # not leave the one of an earlier run beside its own partial state.
  stats_path = os.path.join(output.output_dir, 'stats.json')
  if tf.io.gfile.exists(stats_path):
    tf.io.gfile.remove(stats_path)
  writers = {s: _ShardWriters(output.output_dir, s, counts[s]) for s in splits}
  total = UnitStats()
  complete = False
  first_unit_done, first_unit_bytes = started, 0
  try:
    units = group_units(docs, config.unit_chars, config.eval_fraction)
    worker_args = (tokenizer_path, do_lower_case, config)
    for n, result in enumerate(
      _process_units(units, output.num_workers, worker_args)
    ):
      writers[result.unit_split].write(result.records, result.ends)
      total.merge(result.stats)
      if n == 0:
        # Start-up (spawning workers, tokenizer, tracing) and the first unit
        # end here; what follows is the steady throughput.
        first_unit_done = time.perf_counter()
        first_unit_bytes = total.text_bytes
      if n % 10 == 0:
        logging.info(
          'unit %d: %d documents, %s examples, %.1f MB read in %.0f s',
          n,
          total.documents,
          total.examples,
          input_stats.bytes / 1e6,
          time.perf_counter() - started,
        )
    complete = True
  finally:
    for writer in writers.values():
      writer.close(complete)
  ended = time.perf_counter()
  seconds = ended - started
  steady = None  # Undefined with a single unit.
  if total.text_bytes > first_unit_bytes and ended > first_unit_done:
    steady = (total.text_bytes - first_unit_bytes) / 1e6
    steady /= ended - first_unit_done
  # This process's CPU (reading, writing; the units too with one worker)
  # plus, with a pool, the workers'.
  cpu_seconds = time.process_time() - cpu_started
  if output.num_workers > 1:
    cpu_seconds += total.cpu_seconds
  stats = _stats_dict(
    total,
    input_stats,
    config,
    output,
    writers,
    (seconds, cpu_seconds, steady),
    tokenizer_path,
  )
  with tf.io.gfile.GFile(stats_path + '.incomplete', 'w') as f:
    f.write(json.dumps(stats, indent=2, ensure_ascii=False) + '\n')
  tf.io.gfile.rename(stats_path + '.incomplete', stats_path, overwrite=True)
  return stats


def _check_no_foreign_shards(output_dir, splits, counts) -> None:
  """Refuses an output dir holding shards another run wrote (say with
  another shard count): a pipeline globbing it would read both."""
  ours = {shard_name(s, i, counts[s]) for s in splits for i in range(counts[s])}
  for split in SPLITS:
    for path in tf.io.gfile.glob(
      os.path.join(output_dir, f'{split}-*.tfrecord')
    ):
      if os.path.basename(path) not in ours:
        raise FileExistsError(
          f'{output_dir} holds {os.path.basename(path)} from another run; '
          'remove it or pick another --output_dir'
        )


def _fraction(numerator: int, denominator: int) -> float | None:
  return numerator / denominator if denominator else None


def _stats_dict(
  total, input_stats, config, output, writers, times, tokenizer_path
) -> dict:
  seconds, cpu_seconds, steady_mb_per_s = times
  skipped = documents.Stats()
  skipped.merge(input_stats)
  skipped.merge(total.skipped)
  examples = sum(total.examples.values())
  megabytes = input_stats.bytes / 1e6
  nsp = None
  if config.nsp:
    nsp = {
      'random_next_fraction': _fraction(total.random_next, examples),
      'random_next_fraction_where_continuation_possible': _fraction(
        total.random_next_where_possible, total.continuation_possible
      ),
      'continuation_possible_fraction': _fraction(
        total.continuation_possible, examples
      ),
    }
  return {
    'config': dataclasses.asdict(config),
    'tokenizer': tokenizer_path,
    'num_workers': output.num_workers,
    'input_files': input_stats.files,
    'input_bytes': input_stats.bytes,
    'documents': total.documents,
    'sentences': total.sentences,
    'tokens': total.tokens,
    'examples': examples,
    'examples_per_split': {s: total.examples[s] for s in writers},
    'shards': {s: w.names for s, w in writers.items()},
    'example_tokens': total.example_tokens,
    'masked_positions': total.masked_positions,
    'masked_positions_per_example': _fraction(total.masked_positions, examples),
    'nsp': nsp,
    'skipped': dict(sorted(skipped.skipped.items())),
    'flagged': dict(sorted(skipped.flagged.items())),
    'locations': dict(sorted(skipped.locations.items())),
    'seconds': round(seconds, 3),
    'mb_per_s': round(megabytes / seconds, 3) if seconds else None,
    'mb_per_s_per_worker': (
      round(megabytes / seconds / output.num_workers, 3) if seconds else None
    ),
    # Robust to other load on the machine, unlike the wall-clock figures.
    'cpu_seconds': round(cpu_seconds, 3),
    'mb_per_cpu_s': round(megabytes / cpu_seconds, 3) if cpu_seconds else None,
    # MB/s of text after the first unit, start-up excluded (a fixed cost of
    # seconds: imports and tracing in each worker).
    'steady_mb_per_s': steady_mb_per_s and round(steady_mb_per_s, 3),
  }


# ---------------------------------------------------------------------------
# Command line.


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this CLI's flags.

  Not at import time: other modules import this library, and their programs
  define flags of the same names (--input_files).

  Args:
    flag_values: where to define them.
  """
  fv = {'flag_values': flag_values}
  flags.DEFINE_list(
    'input_files',
    None,
    'Comma-separated globs of input text (local or gs://).',
    **fv,
  )
  flags.DEFINE_enum(
    'input_format',
    'auto',
    documents.FORMATS,
    'bert: a sentence per line, blank line between documents; lines: a '
    'document per line; file: a document per file; jsonl/csv: the document '
    'in --text_field; auto: by extension (.jsonl, .csv, else bert).',
    **fv,
  )
  flags.DEFINE_string(
    'text_field', 'text', 'JSONL key, CSV column or TFDS feature.', **fv
  )
  flags.DEFINE_enum(
    'invalid_utf8',
    'replace',
    ['replace', 'skip'],
    'Lines with invalid UTF-8: decode with U+FFFD, or skip (both counted).',
    **fv,
  )
  flags.DEFINE_string(
    'tfds_name', None, 'Read a prepared TFDS dataset instead of files.', **fv
  )
  flags.DEFINE_string('tfds_split', 'train', 'TFDS split.', **fv)
  flags.DEFINE_string('tfds_data_dir', None, 'TFDS data_dir.', **fv)
  flags.DEFINE_string('output_dir', None, 'Output directory.', **fv)
  flags.DEFINE_string(
    'tokenizer', None, 'WordPiece vocab.txt or SentencePiece .model.', **fv
  )
  flags.DEFINE_bool(
    'do_lower_case',
    None,
    'Lower-case the input; default: as the vocab says.',
    **fv,
  )
  defaults = CreationConfig()
  flags.DEFINE_integer(
    'max_seq_length', defaults.max_seq_length, 'Tokens per example.', **fv
  )
  flags.DEFINE_integer(
    'max_predictions_per_seq',
    defaults.max_predictions_per_seq,
    'Masked positions per example, at most.',
    **fv,
  )
  flags.DEFINE_float(
    'masked_lm_prob', defaults.masked_lm_prob, 'Fraction masked.', **fv
  )
  flags.DEFINE_float(
    'short_seq_prob',
    defaults.short_seq_prob,
    'Probability of a shorter target length, per document.',
    **fv,
  )
  flags.DEFINE_integer(
    'dupe_factor',
    defaults.dupe_factor,
    'Copies of each document, with other pairs and masks.',
    **fv,
  )
  flags.DEFINE_integer(
    'random_seed', defaults.random_seed, 'Seed of every random choice.', **fv
  )
  flags.DEFINE_bool('do_whole_word_mask', False, 'Mask whole words.', **fv)
  flags.DEFINE_bool(
    'no_nsp',
    False,
    'Pack sentences RoBERTa-style, no NSP pairs (next_sentence_labels 0).',
    **fv,
  )
  flags.DEFINE_bool(
    'no_mask',
    False,
    'Write unmasked pairs once (no dupe copies), for dynamic masking.',
    **fv,
  )
  flags.DEFINE_float(
    'eval_fraction', 0.0, 'Fraction of documents held out as eval.', **fv
  )
  flags.DEFINE_integer('num_shards', 1, 'Train shards.', **fv)
  flags.DEFINE_integer('num_eval_shards', 1, 'Eval shards.', **fv)
  flags.DEFINE_integer(
    'num_workers', 1, 'Worker processes; 1 works in this process.', **fv
  )
  flags.DEFINE_integer(
    'unit_chars',
    defaults.unit_chars,
    'Characters of text per unit of work, also the window random next '
    'sentences are drawn from. The output depends on it.',
    **fv,
  )


class UsageError(ValueError):
  """A bad flag, tokenizer or dataset name: the CLI prints it in one line."""


def main(
  argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS
) -> None:
  """Creates the records the flags describe.

  Args:
    argv: leftover command-line arguments; must be just the program name.
    flag_values: parsed flags, as `define_flags` defines them.

  Raises:
    UsageError: a bad flag, tokenizer or TFDS dataset.
    OSError: no input file, or one that cannot be read or written.
  """
  try:
    config, output, docs, input_stats = _inputs_from_flags(argv, flag_values)
  except UsageError:
    raise
  except (ValueError, AssertionError) as e:
    # Config checks, tokenizer loading, TFDS lookup: the user's input.
    raise UsageError(str(e).strip().splitlines()[0]) from e
  stats = create_pretraining_data(
    docs,
    input_stats,
    flag_values.tokenizer,
    config,
    output,
    do_lower_case=flag_values.do_lower_case,
  )
  logging.info(
    '%d examples from %d documents (%.1f MB, %.2f MB/s) in %s',
    stats['examples'],
    stats['documents'],
    stats['input_bytes'] / 1e6,
    stats['mb_per_s'] or 0.0,
    output.output_dir,
  )


def _inputs_from_flags(argv: Sequence[str], fv: flags.FlagValues) -> tuple:
  """Checks the flags; returns (config, output, documents, input stats)."""
  if len(argv) > 1:
    raise UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not fv.output_dir or not fv.tokenizer:
    raise UsageError('--output_dir and --tokenizer are required')
  if bool(fv.input_files) == bool(fv.tfds_name):
    raise UsageError('give exactly one of --input_files and --tfds_name')
  config = CreationConfig(
    max_seq_length=fv.max_seq_length,
    max_predictions_per_seq=fv.max_predictions_per_seq,
    masked_lm_prob=fv.masked_lm_prob,
    short_seq_prob=fv.short_seq_prob,
    dupe_factor=fv.dupe_factor,
    random_seed=fv.random_seed,
    do_whole_word_mask=fv.do_whole_word_mask,
    nsp=not fv.no_nsp,
    mask=not fv.no_mask,
    eval_fraction=fv.eval_fraction,
    unit_chars=fv.unit_chars,
  )
  output = OutputOptions(
    output_dir=fv.output_dir,
    num_shards=fv.num_shards,
    num_eval_shards=fv.num_eval_shards,
    num_workers=fv.num_workers,
  )
  if min(output.num_shards, output.num_eval_shards, output.num_workers) < 1:
    raise UsageError('--num_shards, --num_eval_shards, --num_workers >= 1')
  options = documents.ReadOptions(
    input_format=fv.input_format,
    text_field=fv.text_field,
    invalid_utf8=fv.invalid_utf8,
  )
  if config.dupe_factor > 1 and not config.mask:
    logging.info('--no_mask writes each pair once: dupe_factor is ignored')
  # An unreadable tokenizer fails here, in one line, not in a worker.
  try:
    tokenizers.create_tokenizer(fv.tokenizer, do_lower_case=fv.do_lower_case)
  except ValueError as e:
    raise UsageError(f'cannot load tokenizer: {e}') from e
  input_stats = documents.Stats()
  if fv.tfds_name:
    docs = documents.read_tfds_documents(
      fv.tfds_name,
      fv.tfds_split,
      fv.tfds_data_dir,
      input_stats,
      text_field=fv.text_field,
    )
  else:
    paths = documents.expand_patterns(fv.input_files, input_stats)
    docs = documents.read_documents(paths, options, input_stats)
  return config, output, docs, input_stats


if __name__ == '__main__':
  define_flags()

  def _main(argv: Sequence[str]) -> None:
    try:
      main(argv)
    except UsageError as e:
      raise cli.UserError(str(e)) from e

  app.run(cli.run(_main), flags_parser=cli.parse_flags)
