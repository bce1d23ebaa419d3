"""Pretraining records: documents in, TFRecord shards of BERT examples out.

The library of `python -m data_pipeline.create_pretraining_data`, and
`prepare_data`: a training run's text (the demo corpus or the user's) made
into the vocabulary and records it trains on, once, cached.

The main process reads documents in input order, sends each to the train or
the eval split by a hash of its text (the same split in every run), and
groups a split's consecutive documents into units of about `unit_chars`
characters. Workers turn each unit into shuffled, serialized examples
(`Worker.process`); the main process writes them in unit order, then
`stats.json`. Units depend on the input and `unit_chars` only, and every
random choice derives from (seed, split, unit, ...), never from a worker: a
seed gives the same bytes whatever `num_workers` is.
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from data_pipeline import (
  corpora,
  documents,
  examples,
  files,
  progress,
  segmentation,
  tokenizers,
)

SPLITS = ('train', 'eval')
# Masking seeds pack (split, unit, example) into one int64: the unit index
# and the example index within a unit get these many bits.
_UNIT_BITS = 28
_EXAMPLE_BITS = 24
# Sentences per tokenization call, examples per masking-and-serializing call.
_TOKENIZE_BATCH = 4096
_EXAMPLE_BATCH = 4096


class CreationError(ValueError):
  """Settings of example creation that cannot work."""


@dataclasses.dataclass(frozen=True)
class CreationConfig:
  """What examples to create; the defaults are the original BERT's.

  Attributes:
    short_seq_prob: probability of a shorter target length, per document,
      so the model also sees short inputs.
    dupe_factor: copies of each document, each with other pairs and masks.
    nsp: build NSP sentence pairs; False packs sentences RoBERTa-style.
    mask: write masked examples; False writes unmasked pairs, once.
    unit_chars: characters of text per unit of work; also the window random
      next sentences are drawn from, so the output depends on it.
    word_segmenter: with whole-word masking, how word starts are found in
      text with Chinese characters; unmasked records then carry them as the
      feature `word_starts`.
  """

  max_seq_length: int = 128
  short_seq_prob: float = 0.1
  dupe_factor: int = 10
  seed: int = 12345
  nsp: bool = True
  mask: bool = True
  masking: examples.MaskingConfig = examples.MaskingConfig()
  eval_fraction: float = 0.0
  unit_chars: int = 1 << 20
  word_segmenter: str = 'jieba'

  def __post_init__(self):
    segmentation.check_segmenter(self.word_segmenter)
    if self.max_seq_length < 5:
      raise CreationError(f'max_seq_length={self.max_seq_length} < 5')
    if not 0.0 <= self.short_seq_prob <= 1.0:
      raise CreationError(f'short_seq_prob={self.short_seq_prob} not in [0, 1]')
    if not 0.0 <= self.eval_fraction < 1.0:
      raise CreationError(f'eval_fraction={self.eval_fraction} not in [0, 1)')
    if self.dupe_factor < 1:
      raise CreationError(f'dupe_factor={self.dupe_factor} < 1')
    if not 0 <= self.seed < 2**63:
      raise CreationError(f'seed={self.seed} not in [0, 2**63)')

  @property
  def segments_words(self) -> bool:
    """Whether word starts are computed per token (not read off the ids)."""
    return self.masking.whole_word_mask and self.word_segmenter != 'none'

  def dupes(self, split: str) -> int:
    """Copies made of each document of `split`."""
    return self.dupe_factor if self.mask and split == 'train' else 1


def derive_seed(*parts: object) -> int:
  """A 64-bit seed from any printable parts, stable across runs/platforms."""
  text = '/'.join(str(p) for p in parts).encode()
  return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), 'big')


@dataclasses.dataclass
class Unit:
  """Consecutive documents of one split; `index` counts the split's units."""

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
  split's last documents join the unit before them when they are fewer than
  two, so that every unit can draw random next sentences.
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
  cpu_seconds: float = 0.0  # worker CPU time on units, all its threads
  text_bytes: int = 0  # UTF-8 bytes of the unit's text

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
  """A unit's serialized `tf.train.Example`s, shuffled, and its stats."""

  split: str
  index: int
  records: list[bytes]
  stats: UnitStats


def serialize_examples(features: dict[str, tf.Tensor]) -> tf.Tensor:
  """`tf.train.Example`s of a batch, serialized in the graph: `[batch]`
  tf.string from `features` name -> `[batch, width]` (float32 to a
  `FloatList`, integers to an `Int64List`).

  The same bytes as `SerializeToString(deterministic=True)` of each example.
  Building the messages one by one in Python would cost more than all the
  rest of example creation.
  """
  batch = tf.shape(next(iter(features.values())))[0]

  def encode(message, **fields):
    """One `tensorflow.<message>` per row of the `[batch, n]` fields."""
    sizes = tf.stack(
      [tf.fill([batch], tf.shape(v)[1]) for v in fields.values()], -1
    )
    return tf.io.encode_proto(
      sizes, list(fields.values()), list(fields), f'tensorflow.{message}'
    )

  entries = []
  for name in sorted(features):
    values = features[name]
    if values.dtype == tf.float32:
      kind, values = 'float_list', encode('FloatList', value=values)
    else:
      values = encode('Int64List', value=tf.cast(values, tf.int64))
      kind = 'int64_list'
    feature = encode('Feature', **{kind: values[:, None]})
    key = tf.fill([batch, 1], name)
    entries.append(
      encode('Features.FeatureEntry', key=key, value=feature[:, None])
    )
  feature_map = encode('Features', feature=tf.stack(entries, axis=1))
  return encode('Example', features=feature_map[:, None])


class Worker:
  """Turns units into serialized records; one per process, holding what is
  costly to build: the tokenizer and the traced tokenize and finish (mask
  and serialize) graphs."""

  def __init__(
    self,
    tokenizer_path: str,
    do_lower_case: bool | None,
    config: CreationConfig,
  ):
    self.config = config
    self.tokenizer = tok = tokenizers.create_tokenizer(
      tokenizer_path, do_lower_case=do_lower_case
    )
    tokenize = tok.create_tf_tokenize_fn()

    def tokenize_and_count(texts):
      # The text's UTF-8 bytes for the stats: free here, costly in Python.
      return tokenize(texts), tf.reduce_sum(tf.strings.length(texts))

    # autograph=False: plain graph code; converting it cost seconds of CPU.
    self._tokenize = tf.function(
      tokenize_and_count,
      input_signature=[tf.TensorSpec([None], tf.string)],
      autograph=False,
    )
    length = config.max_seq_length
    vocab = examples.vocab_kwargs(tok, config.masking.whole_word_mask)

    # A closure, not functools.partial: tf.function would turn the numpy
    # word-start table into a traced argument.
    @tf.function(
      input_signature=[
        tf.TensorSpec([None, length], tf.int32),
        tf.TensorSpec([None, length], tf.uint8),  # as `PairBuilder.arrays`
        tf.TensorSpec([None, length], tf.uint8),
        tf.TensorSpec([None, 1], tf.int32),
        tf.TensorSpec([None, 2], tf.int64),
        tf.TensorSpec([None, length], tf.uint8),
      ],
      autograph=False,
    )
    def finish(input_ids, input_mask, segment_ids, labels, seeds, starts):
      features = dict(
        input_ids=input_ids,
        input_mask=input_mask,
        segment_ids=segment_ids,
        next_sentence_labels=labels,
      )
      if config.mask:
        features.update(
          examples.mask_batch(
            input_ids,
            input_mask,
            seeds,
            config=config.masking,
            word_starts=starts if config.segments_words else None,
            **vocab,
          )
        )
      elif config.segments_words:
        # The pipeline masks these records later: it needs the word starts
        # the text gave, which the ids alone do not hold.
        features['word_starts'] = starts
      masked = tf.reduce_sum(features.get('masked_lm_weights', 0.0))
      return serialize_examples(features), masked

    self._finish = finish

  def tokenize(
    self, unit: Unit, stats: UnitStats
  ) -> tuple[np.ndarray, np.ndarray | None, list[list[int]]]:
    """Tokenizes a unit's documents; empty sentences are dropped (counted).

    Returns `tokens`, `[num_tokens]` int32, one `[SEP]` between documents;
    `starts`, `[num_tokens]` uint8, 1 where a token begins a word (None
    unless `config.segments_words`); and per document with tokens, its
    sentence boundaries as offsets into `tokens` (sentences + 1).
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
    starts = None
    if self.config.segments_words:
      starts = self._word_starts(sentences, values, lengths)
    separator = np.array([self.tokenizer.sep_id], np.int32)
    pieces, start_pieces, bounds = [], [], []
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
        if starts is not None:
          start_pieces.append(np.ones(1, np.uint8))  # [SEP] starts a word
        offset += 1
      count = int(kept.sum())
      pieces.append(values[source : source + count])
      if starts is not None:
        start_pieces.append(starts[source : source + count])
      source += count
      bounds.append([offset] + (offset + np.cumsum(kept)).tolist())
      offset += count
      stats.documents += 1
      stats.sentences += len(kept)
      stats.tokens += count
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    if starts is not None:
      starts = np.concatenate(start_pieces or [np.zeros(0, np.uint8)])
    return tokens, starts, bounds

  def _word_starts(
    self, sentences: Sequence[str], ids: np.ndarray, lengths: np.ndarray
  ) -> np.ndarray:
    """`[len(ids)]` uint8 word starts of the sentences' tokens `ids` (their
    concatenation; `lengths` per sentence): the vocabulary's, and for the
    sentences with Chinese characters `segmentation.batch_word_starts`."""
    table = self.tokenizer.word_start_table()
    starts = table[ids].astype(np.uint8)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    chinese = [i for i, s in enumerate(sentences) if segmentation.has_cjk(s)]
    texts = [sentences[i] for i in chinese]
    encoded = self.tokenizer.encode_with_offsets(texts)
    for i, (their_ids, _) in zip(chinese, encoded, strict=True):
      if not np.array_equal(ids[bounds[i] : bounds[i + 1]], their_ids):
        # The in-graph and the Python tokenizer are one function (tested);
        # differing ids would make the word starts point at other tokens.
        raise CreationError(
          f'the two tokenizations of {sentences[i][:40]!r} differ'
        )
    found = segmentation.batch_word_starts(
      texts, encoded, table, self.config.word_segmenter
    )
    for i, sentence_starts in zip(chinese, found, strict=True):
      starts[bounds[i] : bounds[i + 1]] = sentence_starts
    return starts

  def process(self, unit: Unit) -> UnitResult:
    """Creates, shuffles, masks and serializes the examples of a unit."""
    cpu_started = time.process_time()
    config = self.config
    stats = UnitStats()
    tokens, starts, bounds = self.tokenize(unit, stats)
    pairs = examples.PairBuilder()
    dupes = config.dupes(unit.split)
    lengths = (config.max_seq_length, config.short_seq_prob)
    if config.nsp:
      rng = np.random.default_rng(
        derive_seed(config.seed, unit.split, unit.index, 'pairs')
      )
      dropped = examples.create_document_pairs(
        bounds, *lengths, rng, dupes, pairs
      )
      if dropped:
        stats.skipped.skip(
          'chunk_without_other_document',
          f'{unit.split} unit {unit.index}',
          dropped,
        )
    else:
      for dupe in range(dupes):
        rng = random.Random(
          derive_seed(config.seed, unit.split, unit.index, dupe)
        )
        examples.create_packed_sequences(bounds, *lengths, rng, pairs)
    n = len(pairs)
    # The original shuffles all examples; here those of a unit, so that the
    # dupe copies of a document are spread out.
    order = np.random.default_rng(
      derive_seed(config.seed, unit.split, unit.index, 'shuffle')
    ).permutation(n)
    features = pairs.arrays(
      tokens,
      config.max_seq_length,
      self.tokenizer.cls_id,
      self.tokenizer.sep_id,
      order,
    )
    if starts is None:
      word_starts = np.zeros_like(features['input_mask'])
    else:
      # The same gather as the ids': [CLS] and [SEP] start words.
      word_starts = pairs.arrays(
        starts.astype(np.int32), config.max_seq_length, 1, 1, order
      )['input_ids'].astype(np.uint8)
    labels = pairs.labels.astype(bool)
    possible = pairs.possible.astype(bool)
    stats.examples[unit.split] = n
    stats.random_next = int(labels.sum())
    stats.continuation_possible = int(possible.sum())
    stats.random_next_where_possible = int((labels & possible).sum())
    stats.example_tokens = int(features['input_mask'].sum())
    seeds = self._mask_seeds(unit, n)
    records = []
    for start in range(0, n, _EXAMPLE_BATCH):
      part = slice(start, start + _EXAMPLE_BATCH)
      serialized, masked = self._finish(
        features['input_ids'][part],
        features['input_mask'][part],
        features['segment_ids'][part],
        features['next_sentence_labels'][part],
        seeds[part],
        word_starts[part],
      )
      records.extend(serialized.numpy().tolist())
      stats.masked_positions += int(masked)
    stats.cpu_seconds = time.process_time() - cpu_started
    return UnitResult(unit.split, unit.index, records, stats)

  def _mask_seeds(self, unit: Unit, n: int) -> np.ndarray:
    """`[n, 2]` int64 stateless seeds: (seed, split|unit|ordinal)."""
    if n >= 1 << _EXAMPLE_BITS or unit.index >= 1 << _UNIT_BITS:
      raise ValueError(f'unit {unit.index} with {n} examples is too large')
    ordinal = (
      (SPLITS.index(unit.split) << (_UNIT_BITS + _EXAMPLE_BITS))
      | (unit.index << _EXAMPLE_BITS)
      | np.arange(n, dtype=np.int64)
    )
    return np.stack([np.full(n, self.config.seed), ordinal], axis=1)


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


def shard_name(split: str, index: int, count: int) -> str:
  """`<split>-XXXXX-of-YYYYY.tfrecord`."""
  return f'{split}-{index:05d}-of-{count:05d}.tfrecord'


class _ShardWriters:
  """Writes records over a split's shards, renamed into place only when
  complete, so a failed run leaves no shard that looks whole.

  Each unit's records are cut into one contiguous run per shard, of the
  sizes a round robin (continuing from the previous unit) would give: shards
  stay within one record of each other, and as records are shuffled within
  a unit, a run is as random a sample of it as a round robin's.
  """

  def __init__(self, output_dir: str, split: str, count: int):
    self.names = [shard_name(split, i, count) for i in range(count)]
    self.paths = [os.path.join(output_dir, name) for name in self.names]
    self._writers = [
      tf.io.TFRecordWriter(path + '.incomplete') for path in self.paths
    ]
    self._next = 0

  def write(self, records: Sequence[bytes]) -> None:
    count, n = len(self._writers), len(records)
    first = 0
    for offset in range(min(count, n)):
      size = n // count + (offset < n % count)
      writer = self._writers[(self._next + offset) % count]
      for record in records[first : first + size]:
        writer.write(record)
      first += size
    self._next = (self._next + n) % count

  def close(self, complete: bool) -> None:
    for writer, path in zip(self._writers, self.paths, strict=True):
      writer.close()
      if complete:
        tf.io.gfile.rename(path + '.incomplete', path, overwrite=True)
      else:
        tf.io.gfile.remove(path + '.incomplete')


@dataclasses.dataclass(frozen=True)
class OutputOptions:
  """Where records go (shards and `stats.json`) and how many processes
  make them (1: this process); eval shards only with `eval_fraction > 0`."""

  output_dir: str
  num_shards: int = 1
  num_eval_shards: int = 1
  num_workers: int = 1

  def __post_init__(self):
    if min(self.num_shards, self.num_eval_shards, self.num_workers) < 1:
      raise CreationError(
        f'num_shards ({self.num_shards}), num_eval_shards '
        f'({self.num_eval_shards}) and num_workers ({self.num_workers}) '
        'must be >= 1'
      )


def create_pretraining_data(
  docs: Iterable[list[str]],
  input_stats: documents.Stats,
  tokenizer_path: str,
  config: CreationConfig,
  output: OutputOptions,
  do_lower_case: bool | None = None,
  total_bytes: int | None = None,
) -> dict:
  """Creates pretraining records from documents; writes shards and stats.

  `docs` (lists of sentences, e.g. from `documents.read_documents`) are
  consumed once, as a stream; `input_stats` is what their reader fills in;
  `total_bytes`, if known, sizes the progress bar. Returns the stats also
  written to `<output_dir>/stats.json`; raises FileExistsError if the
  output directory holds shards of another run.
  """
  started = time.perf_counter()
  cpu_started = time.process_time()
  splits = ['train'] + (['eval'] if config.eval_fraction > 0 else [])
  counts = {'train': output.num_shards, 'eval': output.num_eval_shards}
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
  bar = progress.Progress('Creating examples', total=total_bytes, unit='B')
  try:
    units = group_units(docs, config.unit_chars, config.eval_fraction)
    worker_args = (tokenizer_path, do_lower_case, config)
    for n, result in enumerate(
      _process_units(units, output.num_workers, worker_args)
    ):
      writers[result.split].write(result.records)
      total.merge(result.stats)
      # Input read so far (a few units ahead of those done with a pool).
      bar.update(input_stats.bytes - bar.done)
      if n == 0:
        # Start-up (spawning workers, tokenizer, tracing) and the first unit
        # end here; what follows is the steady throughput.
        first_unit_done = time.perf_counter()
        first_unit_bytes = total.text_bytes
    complete = True
  finally:
    bar.close()
    for writer in writers.values():
      writer.close(complete)
  ended = time.perf_counter()
  steady = None  # Undefined with a single unit.
  if total.text_bytes > first_unit_bytes and ended > first_unit_done:
    steady = (total.text_bytes - first_unit_bytes) / 1e6
    steady /= ended - first_unit_done
  # This process's CPU plus, with a pool, the workers'.
  cpu_seconds = time.process_time() - cpu_started
  if output.num_workers > 1:
    cpu_seconds += total.cpu_seconds
  stats = _stats_dict(
    total,
    input_stats,
    config,
    output,
    writers,
    (ended - started, cpu_seconds, steady),
    tokenizer_path,
  )
  with tf.io.gfile.GFile(stats_path + '.incomplete', 'w') as f:
    f.write(json.dumps(stats, indent=2, ensure_ascii=False) + '\n')
  tf.io.gfile.rename(stats_path + '.incomplete', stats_path, overwrite=True)
  return stats


def _check_no_foreign_shards(output_dir, splits, counts) -> None:
  """Refuses shards of another run: a pipeline globbing would read both."""
  ours = {shard_name(s, i, counts[s]) for s in splits for i in range(counts[s])}
  for split in SPLITS:
    for path in tf.io.gfile.glob(
      os.path.join(output_dir, f'{split}-*.tfrecord')
    ):
      if os.path.basename(path) not in ours:
        raise FileExistsError(
          f'{output_dir} holds {os.path.basename(path)} from another run; '
          'remove it or pick another output directory'
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
  num_examples = sum(total.examples.values())
  megabytes = input_stats.bytes / 1e6
  nsp = None
  if config.nsp:
    nsp = {
      'random_next_fraction': _fraction(total.random_next, num_examples),
      'random_next_fraction_where_continuation_possible': _fraction(
        total.random_next_where_possible, total.continuation_possible
      ),
      'continuation_possible_fraction': _fraction(
        total.continuation_possible, num_examples
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
    'examples': num_examples,
    'examples_per_split': {s: total.examples[s] for s in writers},
    'shards': {s: w.names for s, w in writers.items()},
    'example_tokens': total.example_tokens,
    'masked_positions': total.masked_positions,
    'masked_positions_per_example': _fraction(
      total.masked_positions, num_examples
    ),
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
    # MB/s of text after the first unit: start-up (imports, tracing) left out.
    'steady_mb_per_s': steady_mb_per_s and round(steady_mb_per_s, 3),
  }


# Seed of pair creation for a run's text: fixed, so the cache is shared by
# runs that differ only in their training seed.
_RUN_CREATION_SEED = 12345
# Records read to estimate the most-frequent-token baseline.
_BASELINE_RECORDS = 20_000


@dataclasses.dataclass(frozen=True)
class PreparedData:
  """What the pipeline and the model need to know about a run's data."""

  train_patterns: tuple[str, ...]  # globs of training records
  eval_patterns: tuple[str, ...]  # globs of eval records; () for no eval
  tokenizer_path: str  # the vocab.txt or SentencePiece .model
  vocab_size: int
  # The MLM accuracy of always predicting the most frequent non-special
  # token of the training records: the baseline a run must beat.
  majority_token_accuracy: float


def _are_records(paths: Sequence[str]) -> bool:
  """Whether `paths` are TFRecords (True) or text (False), by what they
  hold: one kind, or an `InputError` naming a file of each kind."""
  kinds: dict[str, str] = {}
  for path in paths:
    kind = documents.file_kind(path)
    if kind == 'binary':
      raise documents.InputError(
        f'{path}: neither text nor TFRecords (data.input_files)'
      )
    kinds.setdefault(kind, path)
  if len(kinds) > 1:
    raise documents.InputError(
      f'data.input_files mixes TFRecords ({kinds["tfrecord"]}) and text '
      f'({kinds["text"]})'
    )
  return 'tfrecord' in kinds


def _write_demo_text(name: str, path: str) -> str:
  """Writes the demo corpus `name` as BERT-format text to `path`, unless it
  exists; through a temporary name, so `path` is always whole."""
  if name not in corpora.DEMO_CORPORA:
    raise corpora.CorpusError(
      f'data.demo_corpus {name!r} is not one of {list(corpora.DEMO_CORPORA)}'
    )
  with _building(path):
    if not tf.io.gfile.exists(path):
      _write_lines(path, name)
  return path


def _building(path: str) -> files.Lock:
  """The lock of a cache entry under construction: a second process (the
  same demo started twice) waits for the first, then finds it built."""
  return files.Lock(path + '.lock', f'cache entry {path}', wait=True)


def _write_lines(path: str, name: str) -> None:
  lines = []
  for doc in corpora.DEMO_CORPORA[name]():
    sentences = [
      s for line in doc.splitlines() for s in documents.split_sentences(line)
    ]
    if sentences:
      lines.extend(sentences)
      lines.append('')
  files.write_atomic(path, '\n'.join(lines) + '\n')


def _fingerprint(parts: Any) -> str:
  return hashlib.sha256(
    json.dumps(parts, sort_keys=True, default=str).encode('utf-8')
  ).hexdigest()[:16]


def _train_vocab(text_paths, vocab_size, do_lower_case, out_dir) -> str:
  path = os.path.join(out_dir, 'wordpiece.vocab.txt')
  with _building(out_dir):
    if tf.io.gfile.exists(path):
      return path
    logging.info('Training a %d-token WordPiece vocabulary', vocab_size)
    lines = (line for line in tokenizers.read_text_lines(text_paths) if line)
    # Written whole (`files.write_atomic`): no half vocabulary is found.
    return tokenizers.train_wordpiece(
      lines, os.path.join(out_dir, 'wordpiece'), vocab_size, do_lower_case
    )


def _create_run_records(text_paths, tokenizer_path, data, max_seq_length, out):
  with _building(out):
    if not tf.io.gfile.exists(os.path.join(out, 'stats.json')):
      _create_records(text_paths, tokenizer_path, data, max_seq_length, out)


def _create_records(text_paths, tokenizer_path, data, max_seq_length, out):
  if tf.io.gfile.exists(out):
    # An earlier run stopped mid-way: start over rather than mix shards.
    tf.io.gfile.rmtree(out)
  stats = documents.Stats()
  docs = documents.read_documents(
    text_paths, documents.ReadOptions(input_format='bert'), stats
  )
  config = CreationConfig(
    max_seq_length=max_seq_length,
    short_seq_prob=data.short_seq_prob,
    dupe_factor=1,
    seed=_RUN_CREATION_SEED,
    nsp=data.nsp,
    mask=False,
    # Only whether words are segmented matters to unmasked records.
    masking=examples.MaskingConfig(whole_word_mask=data.whole_word_mask),
    eval_fraction=data.eval_fraction,
    word_segmenter=data.word_segmenter,
  )
  output = OutputOptions(
    output_dir=out,
    num_shards=4,
    num_workers=min(4, os.cpu_count() or 1),
  )
  result = create_pretraining_data(
    docs, stats, tokenizer_path, config, output, data.do_lower_case
  )
  logging.info('Created %s examples in %s', result['examples'], out)


def measure_majority_accuracy(
  patterns: Sequence[str], tokenizer: tokenizers.Tokenizer
) -> float:
  """Share of the most frequent non-special token among real tokens.

  Masking picks positions uniformly among non-special tokens, so this is the
  MLM accuracy of always predicting that token (measured on up to
  `_BASELINE_RECORDS` records).
  """
  spec = {'input_ids': tf.io.VarLenFeature(tf.int64)}
  dataset = (
    tf.data.TFRecordDataset(documents.expand_patterns(patterns))
    .take(_BASELINE_RECORDS)
    .batch(1024)
    .map(lambda x: tf.io.parse_example(x, spec)['input_ids'].values)
  )
  counts = np.zeros(tokenizer.vocab_size, np.int64)
  for ids in dataset.as_numpy_iterator():
    counts += np.bincount(ids, minlength=tokenizer.vocab_size)[: len(counts)]
  counts[tokenizer.special_ids] = 0
  total = counts.sum()
  return float(counts.max() / total) if total else 0.0


def prepare_data(
  data: Any,
  max_seq_length: int,
  cache_dir: str,
  is_writer: bool = True,
  barrier: Callable[[str], None] | None = None,
) -> PreparedData:
  """Makes sure records and a tokenizer exist for a run's `config.data`.

  TFRecord inputs (told from text by their contents) are used as they are.
  Raw text (or the demo corpus) gets a WordPiece vocabulary when none is
  given, and unmasked NSP pair records with a held-out eval split by
  document, made once (the pipeline masks them afresh every epoch) and
  cached under a fingerprint of the inputs and settings in `cache_dir` (the
  demo's in the shared corpus cache).

  Multi-host: only the writer process (`is_writer`, process 0) creates
  files; every process calls `barrier(name)` after each step, then reads the
  same paths (a shared filesystem or gs://). On pods, create records once
  offline with `create_pretraining_data`.
  """
  segmentation.check_segmenter(data.word_segmenter)
  patterns = documents.split_patterns(data.input_files)
  demo = not patterns
  root = (
    os.path.join(corpora.get_cache_dir(), 'prepared') if demo else cache_dir
  )
  if data.tokenizer and not tf.io.gfile.exists(data.tokenizer):
    raise FileNotFoundError(f'data.tokenizer {data.tokenizer!r} does not exist')
  if demo:
    text_path = os.path.join(root, 'text', f'{data.demo_corpus}.txt')
    if is_writer:
      _write_demo_text(data.demo_corpus, text_path)
    if barrier:
      barrier('demo_corpus')
    patterns = [text_path]
  paths = documents.expand_patterns(patterns)
  records = _are_records(paths)
  eval_patterns = documents.split_patterns(data.eval_files)
  if eval_patterns:
    documents.expand_patterns(eval_patterns)

  tokenizer_path = data.tokenizer
  if records:
    if not tokenizer_path:
      raise documents.InputError(
        'data.tokenizer is required with TFRecord inputs (the vocabulary '
        'the records were made with)'
      )
    train_patterns = patterns
  else:
    identity = [
      (path, stat.length, stat.mtime_nsec)
      for path, stat in zip(paths, map(tf.io.gfile.stat, paths), strict=True)
    ]
    if not tokenizer_path:
      vocab_dir = os.path.join(
        root,
        'vocab',
        _fingerprint([identity, data.demo_vocab_size, data.do_lower_case]),
      )
      tokenizer_path = os.path.join(vocab_dir, 'wordpiece.vocab.txt')
      if is_writer:
        _train_vocab(paths, data.demo_vocab_size, data.do_lower_case, vocab_dir)
      if barrier:
        barrier('vocab')
    with tf.io.gfile.GFile(tokenizer_path, 'rb') as f:
      tokenizer_hash = hashlib.sha256(f.read()).hexdigest()
    settings = [
      identity,
      tokenizer_hash,
      data.do_lower_case,
      max_seq_length,
      data.nsp,
      data.short_seq_prob,
      data.eval_fraction,
      data.max_predictions_per_seq,
      _RUN_CREATION_SEED,
    ]
    if data.whole_word_mask and data.word_segmenter != 'none':
      # Records with word starts; without, the settings (and so the cached
      # records of earlier runs) are as before.
      settings.append(['word_starts', data.word_segmenter])
    out = os.path.join(root, 'records', _fingerprint(settings))
    if is_writer:
      _create_run_records(paths, tokenizer_path, data, max_seq_length, out)
    if barrier:
      barrier('records')
    train_patterns = [os.path.join(out, 'train-*')]
    if not eval_patterns and data.eval_fraction > 0:
      eval_patterns = [os.path.join(out, 'eval-*')]

  tokenizer = tokenizers.create_tokenizer(
    tokenizer_path, do_lower_case=data.do_lower_case
  )
  return PreparedData(
    train_patterns=tuple(train_patterns),
    eval_patterns=tuple(eval_patterns),
    tokenizer_path=tokenizer_path,
    vocab_size=tokenizer.vocab_size,
    majority_token_accuracy=measure_majority_accuracy(
      train_patterns, tokenizer
    ),
  )
