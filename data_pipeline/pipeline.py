"""The per-host `tf.data` input pipeline for BERT pretraining.

This module owns reading pretraining TFRecords, sharding them across hosts,
shuffling, batching, dynamic MLM masking (through `masking.mask_batch`), the
exact-resume state of the training iterator and the eval split. It hands the
trainer numpy batches; JAX never runs here, so the trainer passes
`jax.process_index()` and `jax.process_count()` in.

Public API:

    config = pipeline.PipelineConfig(train_file_patterns=('data/train-*',),
                                     tokenizer_path='vocab.txt', ...)
    it = pipeline.create_train_iterator(config, process_index, process_count)
    batch = next(it)      # dict of numpy arrays, see below
    it.save(prefix)       # writes prefix.index, prefix.data-*, prefix.json
    it = pipeline.create_train_iterator(config, process_index, process_count)
    it.restore(prefix)    # the next batches are those after the save
    ev = pipeline.create_eval_iterator(config, process_index, process_count)
    for batch in ev: ...  # finite, same number of batches on every host

Batches (per host, `B = config.per_host_batch_size`, `L = max_seq_length`,
`P = mlm.max_predictions_per_seq`): `input_ids`, `input_mask`,
`segment_ids` `[B, L]` int32; `masked_lm_positions`, `masked_lm_ids` `[B, P]`
int32; `masked_lm_weights` `[B, P]` float32; `next_sentence_labels` `[B]`
int32 (0 = IsNext, 1 = random; 0 when the records have none, as with
`--no_nsp`). Eval batches add `example_mask` `[B]` int32, 0 for the padding
that fills the last batches.

Records. Either pre-masked records with the original BERT features (int64
`input_ids`, `input_mask`, `segment_ids` `[L]`, `masked_lm_positions`,
`masked_lm_ids` `[P]`, float `masked_lm_weights` `[P]`, int64
`next_sentence_labels` `[1]`) or unmasked pair records (the same without the
`masked_lm_*` features). Which one is read off the first record. Unmasked
records are masked in-graph after batching, with a fresh mask every epoch;
pre-masked ones pass through unchanged unless `config.remask`, which restores
the original tokens and masks them afresh.

Order. A pure function of the config, the files and the host (as written
for the default `host_sharding='files'`; see "Host sharding" for 'batch'):

1. Files matching the patterns, sorted. Host `i` of `n` reads files
   `i, i + n, ...` when there are at least `n` files; otherwise every host
   reads all of them and keeps examples `i, i + n, ...` (example sharding).
   Hosts with more files get more examples per epoch; training repeats, so
   no host runs dry.
2. Epoch `e` permutes the host's files with a stateless shuffle seeded by
   `(seed, e)`, reads `cycle_length` of them at a time, interleaving chunks
   of `_CHUNK` consecutive records, and shuffles windows of
   `shuffle_window` consecutive records, each with a stateless permutation
   seeded by `(seed, e, window index)`. Epochs follow one another forever
   (or for `num_epochs`); batches run across epoch boundaries.
3. The example at position `k` of the host's stream is masked with the
   stateless seed `(seed, process_index * 2**40 + k)`, so each epoch masks
   afresh and the mask is a function of the position alone.

Records travel in chunks and batches, never one by one (`rebatch`, not
`unbatch` + `batch`): per-element overhead is what limits `tf.data` on a
few cores.

Exact resume. `save` writes the `tf.data` iterator state through
`tf.train.Checkpoint(iterator=...)`: positions in the files, the counters,
the part of the shuffle window not yet served and the prefetched batches.
As everything random is a function of positions, the restored iterator
yields exactly the batches the uninterrupted one would. Size, measured with
batch 256 and the default window of 16384 records: 6.3 MB at seq 128,
23 MB at seq 512 (2.8 and 10 MB with a window of 4096); saving takes
0.1-0.2 s, restoring 0.3-0.7 s. `experimental_symbolic_checkpoint`, which
saves positions only (18 KB here), was measured and left out: its
per-element bookkeeping cut throughput 2-4x on this 2-core machine (TFRecord
reading and batching: 71k against 206k records/s) and it supports neither
`rebatch` nor `ignore_errors`. `save` also writes `prefix.json` with the
host, the host count, the batches consumed and a fingerprint of the config
and the files (names and sizes), and the epoch and the records of it served
before the next batch; `restore` refuses a state saved with another config,
other files or (with `host_sharding='files'`) another host count.

Host sharding. The global batch is the hosts' batches concatenated in host
order, as `jax.make_array_from_process_local_data` lays it out on the data
axis.

- `host_sharding='files'` (the default; what pods want): host `i` of `n`
  reads 1/n of the data, so reading scales with the hosts. The global
  batches depend on `n`, and a state is a position in a shard that is a
  function of `n`, so it cannot be carried over to another host count:
  `restore` raises. To continue with another host count, build fresh
  iterators, ideally with a new `seed`: training goes on with a new data
  order from the start of an epoch, so the examples of the interrupted
  epoch may be seen twice and others not at all in that epoch.
- `host_sharding='batch'`: every host reads the stream of host 0 of 1 above
  (all files, the same file order and shuffle windows), cuts it into global
  batches of `per_host_batch_size * n` records and keeps rows
  `[i * per_host_batch_size, (i + 1) * per_host_batch_size)` of each. The
  example at position `k` of that stream is masked with `(seed, k)`. So the
  global batches, masks included, are bit for bit those of one host with
  the global batch in either mode, for any `n`, and a run can resume on
  another host count with the same global batch. The price: every host
  reads all the records (n times the reading in total; each host still
  parses and masks only its rows). Measured at seq 128 with 256 examples
  per host on this 2-core machine: 17.7, 24.5 and 34.9 us of CPU per
  example of a host with 1, 2 and 4 hosts (94k, 60k and 33k examples/s
  per host): each host more adds the reading of one record per example,
  about 6 us. Use it to compare or debug runs across host counts, or to
  resume on another host count; use 'files' on large pods.

Resuming with 'batch'. The state is global: the global batches consumed,
the epoch of the next record and the records of that epoch before it. The
fingerprint covers the config with the global batch in place of the
per-host one and the files, not the host. A host restoring its own state
with the same host count reads the `tf.data` checkpoint as above. Any other
host or host count (say, every host of a larger run restoring host 0's
state) builds the pipeline at the saved position instead: it reads the
saved epoch from its start and drops the records before the position,
whole shuffle windows before they are shuffled and all of them before
parsing, so the cost is the reading, of at most one epoch. Measured on
this (shared) 2-core machine at seq 128 and 512: 2-5 us per record skipped
(200k-500k records/s), i.e. 3-8 minutes per 100M records, on top of the
1-1.3 s that any restore takes to the first batch.

Corrupt input. `TFRecordDataset` reports a corrupt or truncated record
without the file's name. By default `next()` then looks for the file: it
reads this host's files, starting with those being read when the error came,
and raises `tf.errors.DataLossError` naming the first bad one (costly only
on this failure path). With `skip_corrupt_files`, files are read through
`ignore_errors` and the bytes read are compared with each file's size at its
end: the records before the damage are kept, the rest of that file is
skipped (TFRecord framing cannot be resynchronised), a warning names the file
and `iterator.num_corrupt_files` counts such files in the current epoch.
"""

import collections.abc
import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from data_pipeline import masking, tokenizers

# Records read from one file as one unit of the interleave; also the
# granularity of the corrupt-file check, so its cost is per chunk.
_CHUNK = 128
# Bytes of TFRecord framing around each record: length, length CRC, data CRC.
_RECORD_OVERHEAD = 16
# Example ordinals of different hosts never meet below 2**40 examples.
_HOST_STRIDE = 1 << 40
# Counters for `stateless_fold_in`, one per use of the seed.
_FILE_ORDER = 0
_WINDOW_ORDER = 1
_MASK_SEED = 2
# `_position` of a batch: epoch * _EPOCH_STRIDE + index of a file in the
# epoch's reading order.
_EPOCH_STRIDE = 1 << 32

# Values of `PipelineConfig.host_sharding`.
_HOST_SHARDINGS = ('files', 'batch')

_MASKED_FEATURES = ('masked_lm_positions', 'masked_lm_ids', 'masked_lm_weights')
BATCH_KEYS = (
  'input_ids',
  'input_mask',
  'segment_ids',
  'masked_lm_positions',
  'masked_lm_ids',
  'masked_lm_weights',
  'next_sentence_labels',
)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """What the input pipeline reads and how it batches and masks.

  Attributes:
    train_file_patterns: globs (local or `gs://`) of training TFRecords.
    eval_file_patterns: globs of eval TFRecords: the `eval-*` files that
      `create_pretraining_data --eval_fraction` writes from documents held
      out by a hash of their text (holding out training files instead would
      not hold out documents: the tool spreads a document's examples over
      all shards).
    tokenizer_path: WordPiece `vocab.txt` or SentencePiece `.model`; needed
      to mask unmasked records (special ids, `[MASK]`, word starts).
    per_host_batch_size: examples per batch on this host.
    max_seq_length: length of `input_ids` in the records.
    mlm: masking options; `max_predictions_per_seq` must match pre-masked
      records.
    remask: mask pre-masked records afresh (their original tokens are
      restored first) instead of passing their masks through.
    seed: seeds file order, shuffling and masking.
    shuffle_window: records shuffled together; 1 reads files in order.
    cycle_length: files read at once by the interleave.
    num_epochs: passes over the data; None repeats forever.
    skip_corrupt_files: keep going past a corrupt file (counted and logged)
      instead of raising.
    host_sharding: how training hosts share the data (eval is unaffected).
      'files': host `i` of `n` reads its own files (or examples `i::n`),
      1/n of the data. 'batch': every host reads all files in the order of
      a lone host, cuts the stream into global batches of
      `per_host_batch_size * n` records and keeps rows
      `[i * per_host_batch_size, (i + 1) * per_host_batch_size)` of each;
      the global batches, masks included, are then the same for any host
      count and a saved state can be restored with another host count, at
      the cost of n times the reading. See the module docstring.
  """

  train_file_patterns: tuple[str, ...] = ()
  eval_file_patterns: tuple[str, ...] = ()
  tokenizer_path: str = ''
  per_host_batch_size: int = 256
  max_seq_length: int = 128
  mlm: masking.MaskingConfig = masking.MaskingConfig()
  remask: bool = False
  seed: int = 0
  shuffle_window: int = 16384
  cycle_length: int = 16
  num_epochs: int | None = None
  skip_corrupt_files: bool = False
  host_sharding: str = 'files'


@dataclasses.dataclass(frozen=True)
class _Files:
  """Paths with their sizes, for the corrupt-file check."""

  paths: tuple[str, ...]
  sizes: tuple[int, ...]


def _glob(patterns: Sequence[str]) -> list[str]:
  """The sorted union of the files matching `patterns`."""
  paths = set()
  for pattern in patterns:
    matched = tf.io.gfile.glob(pattern)
    if not matched:
      raise FileNotFoundError(f'No file matches {pattern!r}')
    paths.update(matched)
  return sorted(paths)


def _stat(paths: Sequence[str]) -> _Files:
  return _Files(tuple(paths), tuple(tf.io.gfile.stat(p).length for p in paths))


def _probe_features(files: _Files, skip_corrupt: bool) -> tf.train.Example:
  """The first record of the first readable, non-empty file."""
  for path, size in zip(files.paths, files.sizes, strict=True):
    if not size:
      continue
    try:
      for record in tf.data.TFRecordDataset(path).take(1):
        return tf.train.Example.FromString(record.numpy())
    except tf.errors.OpError as error:
      if not skip_corrupt:
        raise tf.errors.DataLossError(
          None, None, f'Corrupt TFRecord file {path}: {error.message}'
        ) from error
  raise ValueError(f'No readable record in {len(files.paths)} files')


@dataclasses.dataclass(frozen=True)
class _RecordFormat:
  """What the records hold, read off the first one."""

  premasked: bool
  has_nsp: bool


def _record_format(example: tf.train.Example, config) -> _RecordFormat:
  features = example.features.feature
  lengths = {
    name: len(f.int64_list.value) + len(f.float_list.value)
    for name, f in features.items()
  }
  for name in ('input_ids', 'input_mask', 'segment_ids'):
    if name not in features:
      raise ValueError(f'Records lack the feature {name!r}')
    if lengths[name] != config.max_seq_length:
      raise ValueError(
        f'Records have {name} of length {lengths[name]}, '
        f'config.max_seq_length={config.max_seq_length}'
      )
  present = [name in features for name in _MASKED_FEATURES]
  if any(present) and not all(present):
    raise ValueError(f'Records have only some of {_MASKED_FEATURES}')
  predictions = config.mlm.max_predictions_per_seq
  if all(present) and lengths['masked_lm_ids'] != predictions:
    raise ValueError(
      f'Records have {lengths["masked_lm_ids"]} predictions, config has '
      f'max_predictions_per_seq={predictions}'
    )
  return _RecordFormat(all(present), 'next_sentence_labels' in features)


def _feature_spec(config, record_format):
  length = config.max_seq_length
  predictions = config.mlm.max_predictions_per_seq
  spec = {
    name: tf.io.FixedLenFeature([length], tf.int64)
    for name in ('input_ids', 'input_mask', 'segment_ids')
  }
  if record_format.has_nsp:
    spec['next_sentence_labels'] = tf.io.FixedLenFeature([1], tf.int64)
  if record_format.premasked:
    spec['masked_lm_positions'] = tf.io.FixedLenFeature([predictions], tf.int64)
    spec['masked_lm_ids'] = tf.io.FixedLenFeature([predictions], tf.int64)
    spec['masked_lm_weights'] = tf.io.FixedLenFeature([predictions], tf.float32)
  return spec


def _fold_in(seed: tf.Tensor, data) -> tf.Tensor:
  """A new `[2]` int64 stateless seed from `seed` and an int `data`."""
  return tf.random.experimental.stateless_fold_in(
    seed, tf.cast(data, tf.int64), alg='philox'
  )


def _masking_kwargs(tokenizer, whole_word_mask: bool) -> dict:
  """The vocabulary arguments of `masking.mask_batch` from a tokenizer."""
  return {
    'special_ids': tokenizer.special_ids.tolist(),
    'mask_id': tokenizer.mask_id,
    'replacement_range': tokenizer.replacement_range,
    'word_start_table': (
      tokenizer.word_start_table() if whole_word_mask else None
    ),
  }


def _unmask(ids, positions, original_ids, weights):
  """Puts the original tokens of pre-masked records back.

  Args:
    ids: `[batch, seq_len]` int32 masked ids.
    positions: `[batch, predictions]` int32.
    original_ids: `[batch, predictions]` int32.
    weights: `[batch, predictions]` float32, 0 in padded slots.

  Returns:
    `[batch, seq_len]` int32.
  """
  current = tf.gather(ids, positions, batch_dims=1)
  # Adding deltas (0 in padded slots, all at position 0) is order-free.
  delta = tf.where(weights > 0, original_ids - current, 0)
  rows = tf.broadcast_to(
    tf.range(tf.shape(ids)[0])[:, tf.newaxis], tf.shape(positions)
  )
  return tf.tensor_scatter_nd_add(ids, tf.stack([rows, positions], -1), delta)


def _make_batch_fn(config, record_format, mask_kwargs):
  """Returns `fn(ordinals, serialized) -> batch` that parses and masks.

  The masking seed of an example is `(seed', ordinal)`: `ordinals` `[batch]`
  int64 name the examples, `serialized` `[batch]` holds their records.
  """
  spec = _feature_spec(config, record_format)
  seed = _fold_in(tf.constant([config.seed, 0], tf.int64), _MASK_SEED)[0]

  def fn(ordinals, serialized):
    features = tf.io.parse_example(serialized, spec)
    batch = {
      name: tf.cast(value, tf.int32)
      for name, value in features.items()
      if name != 'masked_lm_weights'
    }
    size = tf.shape(serialized)[0]
    if record_format.has_nsp:
      batch['next_sentence_labels'] = batch['next_sentence_labels'][:, 0]
    else:
      batch['next_sentence_labels'] = tf.zeros([size], tf.int32)
    if record_format.premasked and not config.remask:
      batch['masked_lm_weights'] = features['masked_lm_weights']
      return batch
    ids = batch['input_ids']
    if record_format.premasked:
      ids = _unmask(
        ids,
        batch['masked_lm_positions'],
        batch['masked_lm_ids'],
        features['masked_lm_weights'],
      )
    seeds = tf.stack([tf.fill([size], seed), ordinals], axis=1)
    batch.update(
      masking.mask_batch(
        ids,
        batch['input_mask'],
        seeds,
        config=config.mlm,
        **mask_kwargs,
      )
    )
    return batch

  return fn


def _read_file(path, size, file_id, skip_corrupt):
  """Chunks of up to `_CHUNK` records of one file.

  Args:
    path: scalar string.
    size: scalar int64, the file's size in bytes when the pipeline was built.
    file_id: scalar int64 carried along to locate errors.
    skip_corrupt: Python bool; when true, a corrupt or unreadable file ends
      early instead of failing, and a last, empty chunk flags it.

  Returns:
    A dataset of `(records [<= _CHUNK] string, file_id, corrupt bool)`.
  """
  if not skip_corrupt:
    return (
      tf.data.TFRecordDataset(path)
      .batch(_CHUNK)
      .map(lambda records: (records, file_id, False))
    )
  chunks = tf.data.TFRecordDataset(path).ignore_errors().batch(_CHUNK)
  chunks = chunks.concatenate(
    tf.data.Dataset.from_tensors(tf.constant([], tf.string))
  )

  def count(total, records):
    lengths = tf.strings.length(records, unit='BYTE') + _RECORD_OVERHEAD
    total += tf.reduce_sum(tf.cast(lengths, tf.int64))
    return total, (records, tf.size(records) == 0, total)

  def check(records, is_last, total):
    corrupt = is_last & (total != size)
    warn = tf.cond(
      corrupt,
      lambda: tf.print(
        'WARNING: skipping the rest of corrupt or unreadable TFRecord file',
        path,
        '(read',
        total,
        'of',
        size,
        'bytes)',
      ),
      tf.no_op,
    )
    with tf.control_dependencies([warn]):
      return tf.identity(records), file_id, corrupt

  return chunks.scan(tf.constant(0, tf.int64), count).map(check)


def _read_files(paths, sizes, file_ids, config, cycle_length):
  """Chunks of records of files, interleaved, with where they come from.

  Everything downstream works on chunks and batches, never on single
  records: per-element overhead is what limits tf.data on few cores.

  Args:
    paths: `[n]` string tensor, in reading order.
    sizes: `[n]` int64 tensor, their sizes.
    file_ids: `[n]` int64 tensor, carried to locate errors.
    config: the pipeline config.
    cycle_length: files read at once.

  Returns:
    A dataset of tuples of `[k]` tensors, `k <= _CHUNK`: `(records string,
    file_ids int64, corrupt_files int32, ordinals int64)`, where
    `corrupt_files` counts the corrupt files skipped before a record and
    `ordinals` numbers the records in reading order from 0.
  """
  chunks = tf.data.Dataset.from_tensor_slices((paths, sizes, file_ids))
  chunks = chunks.interleave(
    lambda path, size, file_id: _read_file(
      path, size, file_id, config.skip_corrupt_files
    ),
    cycle_length=cycle_length,
    block_length=1,
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )

  def count(state, chunk):
    corrupt_seen, records_seen = state
    records, file_id, corrupt = chunk
    corrupt_seen += tf.cast(corrupt, tf.int32)
    size = tf.size(records, tf.int64)
    ordinals = records_seen + tf.range(size)
    out = (
      records,
      tf.fill([size], file_id),
      tf.fill([size], corrupt_seen),
      ordinals,
    )
    return (corrupt_seen, records_seen + size), out

  initial = (tf.constant(0, tf.int32), tf.constant(0, tf.int64))
  return chunks.scan(initial, count)


def _host_files(files: _Files, config, epoch, process_index, process_count):
  """This host's files in the reading order of an epoch.

  Returns:
    `(paths [n] string, sizes [n] int64)` tensors.
  """
  paths = tf.constant(files.paths)
  sizes = tf.constant(files.sizes, tf.int64)
  if len(files.paths) >= process_count:
    paths = paths[process_index::process_count]
    sizes = sizes[process_index::process_count]
  order = tf.random.experimental.stateless_shuffle(
    tf.range(tf.shape(paths)[0]),
    _fold_in(_epoch_seed(config, epoch), _FILE_ORDER),
  )
  return tf.gather(paths, order), tf.gather(sizes, order)


def _epoch_seed(config, epoch):
  return _fold_in(tf.constant([config.seed, 0], tf.int64), epoch)


def _keep_every(chunk, step, offset):
  """The records of a chunk whose ordinal is `offset` modulo `step`."""
  keep = chunk[3] % step == offset
  return tuple(tf.boolean_mask(part, keep) for part in chunk)


def _drop_before(part, start):
  """The records of a chunk or window numbered (`part[3]`) `start` or later.

  The numbers ascend within a chunk or window, so this is a slice.
  """
  count = tf.reduce_sum(tf.cast(part[3] < start, tf.int32))
  return tuple(value[count:] for value in part)


def _epoch_records(
  files, config, epoch, process_index, process_count, skip=None
):
  """One epoch of this host's records in training order, in chunks.

  Args:
    files: all training files.
    config: the pipeline config.
    epoch: scalar int64 tensor.
    process_index: the host whose share is read.
    process_count: hosts sharing the files.
    skip: None, or a scalar int64 tensor: records at the start of the
      epoch's stream to leave out, to begin in the middle of the epoch.
      They are read, but dropped before they are shuffled (whole windows)
      or parsed, so leaving them out costs their reading only.

  Returns:
    A dataset of `(records string, positions int64, corrupt_files int32,
    offsets int64)` `[k]` tensors: `position` is `epoch * 2**32 + index of
    the record's file` in the epoch's order; `corrupt_files` restarts every
    epoch; `offsets` number the records of the epoch's stream from 0 in the
    order they are served.
  """
  paths, sizes = _host_files(files, config, epoch, process_index, process_count)
  file_ids = epoch * _EPOCH_STRIDE + tf.range(tf.size(paths, tf.int64))
  chunks = _read_files(paths, sizes, file_ids, config, config.cycle_length)
  if len(files.paths) < process_count:

    def keep_mine(*chunk):
      # Renumbered so that the ordinals count this host's records.
      *kept, ordinals = _keep_every(chunk, process_count, process_index)
      return (*kept, ordinals // process_count)

    chunks = chunks.map(keep_mine)
  window = max(config.shuffle_window, 1)
  if skip is not None:
    # Reading resumes with the window that holds record `skip`.
    start = skip // window * window
    chunks = chunks.map(lambda *chunk: _drop_before(chunk, start))
  if window == 1:
    return chunks
  window_seed = _fold_in(_epoch_seed(config, epoch), _WINDOW_ORDER)

  def shuffle(*records):
    # Window `k` holds records `[k * window, (k + 1) * window)`. Its index
    # comes from the records, not from a counter, so that it is the same
    # whether the stream began at record 0 or at a position (`skip`), and
    # after a `tf.data` state saved by either is restored into the other.
    index = tf.reduce_min(records[3]) // window
    size = tf.shape(records[0])[0]
    permutation = tf.random.experimental.stateless_shuffle(
      tf.range(size), _fold_in(window_seed, index)
    )
    shuffled = tuple(tf.gather(part, permutation) for part in records[:3])
    return (*shuffled, index * window + tf.range(size, dtype=tf.int64))

  windows = chunks.rebatch(window).map(shuffle)
  if skip is not None:
    windows = windows.map(lambda *records: _drop_before(records, skip))
  return windows


def _find_corrupt_file(paths: Sequence[str], start: int):
  """The first file, from `start` on (wrapping), that fails to read whole.

  Returns:
    `(path, error message)`, or None when every file reads.
  """
  for k in range(len(paths)):
    path = paths[(start + k) % len(paths)]
    try:
      tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda n, _: n + 1)
    except tf.errors.OpError as error:
      return path, error.message
  return None


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = True
  # Own threads, and one thread per op: measured at seq 128 on 2 cores,
  # 72-100k examples/s against 58-70k with TF's shared defaults.
  options.threading.private_threadpool_size = max(8, os.cpu_count() or 1)
  options.threading.max_intra_op_parallelism = 1
  return options


def _fingerprint(config, files, *hosts) -> str:
  blob = repr((dataclasses.astuple(config), files, *hosts))
  return hashlib.sha256(blob.encode()).hexdigest()


class Iterator(collections.abc.Iterator):
  """Numpy batches from a `tf.data` pipeline, with a savable position.

  Attributes:
    num_corrupt_files: corrupt files skipped so far in the current epoch
      (always 0 unless `skip_corrupt_files`).
    batches: batches returned since the start of the run, restored too.
  """

  def __init__(
    self,
    dataset,
    fingerprint,
    process_index,
    process_count,
    locate,
    seek=None,
    global_batch_size=None,
  ):
    """Wraps a dataset of batch dicts.

    Args:
      dataset: yields batch dicts plus `_position` (int64, the position of
        the file read last, see `_epoch_records`), `_corrupt_files` and,
        for training, `_next_record` (`[2]` int64: the epoch of the next
        record and the records of that epoch served before it).
      fingerprint: of what determines the order, checked by `restore`.
      process_index: this host.
      process_count: hosts.
      locate: `locate(position) -> (path, message) | None`, which finds the
        corrupt file after a `DataLossError`.
      seek: None when a saved state holds only for this host and host
        count; otherwise `seek(batches, epoch, records) -> dataset`, the
        batches from global batch `batches` on, which begins with record
        `records` of epoch `epoch`, so that any host of any host count can
        continue from any host's state.
      global_batch_size: examples per step over all hosts, for training.
    """
    self._dataset = dataset
    self._started = None
    self._fingerprint = fingerprint
    self._process = (process_index, process_count)
    self._locate = locate
    self._seek = seek
    self._global_batch_size = global_batch_size
    self._position = 0
    self._next_record = (0, 0)
    self.num_corrupt_files = 0
    self.batches = 0

  @property
  def _iterator(self):
    # Started on first use: a started iterator reads ahead in the
    # background, wasted on an iterator that is restored right away.
    if self._started is None:
      self._started = iter(self._dataset)
    return self._started

  def __next__(self) -> dict[str, np.ndarray]:
    try:
      batch = next(self._iterator)
    except tf.errors.DataLossError as error:
      found = self._locate(self._position)
      if found is None:
        raise
      path, message = found
      raise tf.errors.DataLossError(
        None, None, f'Corrupt TFRecord file {path}: {message}'
      ) from error
    self._position = int(batch.pop('_position'))
    self.num_corrupt_files = int(batch.pop('_corrupt_files'))
    if '_next_record' in batch:
      self._next_record = tuple(batch.pop('_next_record').numpy().tolist())
    self.batches += 1
    return {name: value.numpy() for name, value in batch.items()}

  def save(self, prefix: str) -> None:
    """Writes the position to `prefix.index`, `prefix.data-*` and `.json`.

    Call it on every host with a per-host prefix, say
    `{checkpoint_dir}/input_{process_index}`.
    """
    tf.train.Checkpoint(iterator=self._iterator).write(prefix)
    meta = {
      'process_index': self._process[0],
      'process_count': self._process[1],
      'batches': self.batches,
      'global_batch_size': self._global_batch_size,
      'position': self._position,
      'epoch': self._next_record[0],
      'epoch_records': self._next_record[1],
      'num_corrupt_files': self.num_corrupt_files,
      'fingerprint': self._fingerprint,
    }
    with tf.io.gfile.GFile(prefix + '.json', 'w') as f:
      json.dump(meta, f)

  def restore(self, prefix: str) -> None:
    """Continues from the position saved at `prefix`.

    With `host_sharding='batch'`, a state saved by another host or with
    another host count is restored by reading the stream from the start of
    the saved epoch up to the saved position (see the module docstring).

    Raises:
      ValueError: the state was saved with another config or file list, or
        with `host_sharding='batch'` another global batch, or with 'files'
        another host count or host.
    """
    with tf.io.gfile.GFile(prefix + '.json') as f:
      meta = json.load(f)
    saved = (meta['process_index'], meta['process_count'])
    if self._seek is None and saved[1] != self._process[1]:
      raise ValueError(
        f'Input state at {prefix} was saved with {saved[1]} hosts, this run '
        f'has {self._process[1]}: a position in one sharding means nothing '
        "in another. Start fresh iterators, or use host_sharding='batch' "
        '(see data_pipeline.pipeline).'
      )
    if self._seek is None and saved != self._process:
      raise ValueError(
        f'Input state at {prefix} belongs to host {saved[0]}, this is host '
        f'{self._process[0]}'
      )
    if (
      self._seek is not None
      and meta['global_batch_size'] != self._global_batch_size
    ):
      raise ValueError(
        f'Input state at {prefix} was saved with a global batch of '
        f'{meta["global_batch_size"]}, this run has {self._global_batch_size}'
      )
    if meta['fingerprint'] != self._fingerprint:
      raise ValueError(
        f'Input state at {prefix} was saved with another pipeline config or '
        'other files'
      )
    if saved == self._process:
      checkpoint = tf.train.Checkpoint(iterator=self._iterator)
      checkpoint.read(prefix).assert_consumed()
    else:
      self._dataset = self._seek(
        meta['batches'], meta['epoch'], meta['epoch_records']
      )
      self._started = None
    self.batches = meta['batches']
    self._position = meta['position']
    self._next_record = (meta['epoch'], meta['epoch_records'])
    self.num_corrupt_files = meta['num_corrupt_files']


def _prepare(config, paths):
  """Stats files, reads their format and builds the masking arguments."""
  files = _stat(paths)
  if sum(files.sizes) == 0:
    raise ValueError(f'All {len(paths)} files are empty: {paths[:3]}...')
  record_format = _record_format(
    _probe_features(files, config.skip_corrupt_files), config
  )
  mask_kwargs = {}
  if not record_format.premasked or config.remask:
    if not config.tokenizer_path:
      raise ValueError('Masking the records needs config.tokenizer_path')
    mask_kwargs = _masking_kwargs(
      tokenizers.create_tokenizer(config.tokenizer_path),
      config.mlm.whole_word_mask,
    )
  return files, record_format, mask_kwargs


def _check_host(process_index: int, process_count: int) -> None:
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} of {process_count}')


def create_train_iterator(
  config: PipelineConfig, process_index: int = 0, process_count: int = 1
) -> Iterator:
  """An endless (unless `num_epochs`) iterator of this host's batches.

  Args:
    config: the pipeline config.
    process_index: this host, `jax.process_index()`.
    process_count: hosts, `jax.process_count()`.

  Returns:
    An `Iterator` of dicts of numpy arrays (see the module docstring).
  """
  _check_host(process_index, process_count)
  if config.host_sharding not in _HOST_SHARDINGS:
    raise ValueError(
      f'host_sharding={config.host_sharding!r}, not one of {_HOST_SHARDINGS}'
    )
  files, record_format, mask_kwargs = _prepare(
    config, _glob(config.train_file_patterns)
  )
  batch_size = config.per_host_batch_size
  by_batch = config.host_sharding == 'batch'
  if by_batch:
    # Every host reads the stream of a lone host and keeps its rows of each
    # global batch; ordinals are positions in that stream.
    reader = (0, 1)
    global_batch = batch_size * process_count
    first_row = first_ordinal = process_index * batch_size
    fingerprint = _fingerprint(
      dataclasses.replace(config, per_host_batch_size=global_batch), files
    )
  else:
    reader = (process_index, process_count)
    global_batch, first_row = batch_size, 0
    first_ordinal = process_index * _HOST_STRIDE
    fingerprint = _fingerprint(config, files, process_index, process_count)
  parse_and_mask = _make_batch_fn(config, record_format, mask_kwargs)

  def to_batch(index, records):
    serialized, positions, corrupt_files, offsets = records
    first = first_ordinal + index * global_batch
    ordinals = first + tf.range(batch_size, dtype=tf.int64)
    if by_batch:
      serialized = serialized[first_row : first_row + batch_size]
    batch = parse_and_mask(ordinals, serialized)
    batch['_position'] = tf.reduce_max(positions)
    batch['_corrupt_files'] = tf.reduce_max(corrupt_files)
    batch['_next_record'] = tf.stack(
      [positions[-1] // _EPOCH_STRIDE, offsets[-1] + 1]
    )
    return batch

  def batches_from(batches, epoch, records):
    """The batches from global batch `batches` on.

    Global batch `batches` begins with record `records` of epoch `epoch`.
    `records` None leaves the skipping ops out ('files' never seeks).
    """
    epochs = tf.data.Dataset.range(
      epoch, config.num_epochs or np.iinfo(np.int64).max
    )

    def epoch_records(e):
      skip = None
      if records is not None:
        skip = tf.where(e == epoch, np.int64(records), np.int64(0))
      return _epoch_records(files, config, e, *reader, skip=skip)

    return (
      epochs.flat_map(epoch_records)
      .rebatch(global_batch, drop_remainder=True)
      .enumerate(batches)
      .map(to_batch, num_parallel_calls=tf.data.AUTOTUNE)
      .prefetch(tf.data.AUTOTUNE)
      .with_options(_options())
    )

  def locate(position):
    epoch, index = divmod(position, _EPOCH_STRIDE)
    paths, _ = _host_files(files, config, epoch, *reader)
    paths = [p.decode() for p in paths.numpy()]
    return _find_corrupt_file(paths, max(0, index - config.cycle_length))

  # With host_sharding='batch' the skipping ops are built in from the start,
  # so that saved states fit iterators started fresh or by `seek` alike.
  dataset = batches_from(0, 0, 0 if by_batch else None)
  return Iterator(
    dataset,
    fingerprint,
    process_index,
    process_count,
    locate,
    seek=batches_from if by_batch else None,
    global_batch_size=batch_size * process_count,
  )


def _count_records(paths: Sequence[str]) -> int:
  dataset = tf.data.TFRecordDataset(list(paths), num_parallel_reads=4)
  return int(dataset.reduce(np.int64(0), lambda n, _: n + 1))


def create_eval_iterator(
  config: PipelineConfig, process_index: int = 0, process_count: int = 1
) -> Iterator:
  """A finite, unshuffled, deterministic iterator over the eval split.

  Every host reads all eval files in sorted order and keeps examples
  `process_index, process_index + process_count, ...`. Every host yields
  the same number of batches, the last ones padded with all-zero examples
  (`example_mask` 0), so multi-host eval steps stay in lockstep. Unmasked
  records are masked with seeds from their ordinal in the split, so the
  masks are the same at every eval and for any host count.

  Args:
    config: the pipeline config.
    process_index: this host, `jax.process_index()`.
    process_count: hosts, `jax.process_count()`.

  Returns:
    An `Iterator` of dicts of numpy arrays with `example_mask` `[B]` int32
    added.
  """
  _check_host(process_index, process_count)
  if not config.eval_file_patterns:
    raise ValueError('No eval split: config.eval_file_patterns is empty')
  files, record_format, mask_kwargs = _prepare(
    config, _glob(config.eval_file_patterns)
  )
  batch_size = config.per_host_batch_size
  parse_and_mask = _make_batch_fn(config, record_format, mask_kwargs)
  chunks = _read_files(
    tf.constant(files.paths),
    tf.constant(files.sizes, tf.int64),
    tf.range(len(files.paths), dtype=tf.int64),
    config,
    cycle_length=1,
  )
  chunks = chunks.map(
    lambda *chunk: _keep_every(chunk, process_count, process_index)
  )
  extra_batches = 0
  if process_count > 1:
    # Hosts hold at most one example more than another; those a batch short
    # of the longest add a batch of padding alone.
    num_examples = _count_records(files.paths)
    num_batches = -(-num_examples // process_count // batch_size)
    mine = len(range(process_index, num_examples, process_count))
    extra_batches = num_batches - -(-mine // batch_size)
  empty = (
    tf.zeros([0], tf.string),
    tf.zeros([0], tf.int64),
    tf.zeros([0], tf.int32),
    tf.zeros([0], tf.int64),
  )
  padding = tf.data.Dataset.from_tensors(empty).repeat(extra_batches)

  def to_batch(serialized, positions, corrupt_files, ordinals):
    real = tf.shape(serialized)[0]
    batch = parse_and_mask(ordinals, serialized)
    batch = {
      name: tf.pad(
        value, [[0, batch_size - real]] + [[0, 0]] * (value.shape.rank - 1)
      )
      for name, value in batch.items()
    }
    batch['example_mask'] = tf.cast(tf.range(batch_size) < real, tf.int32)
    batch['_position'] = tf.reduce_max(tf.concat([positions, [0]], 0))
    batch['_corrupt_files'] = tf.reduce_max(tf.concat([corrupt_files, [0]], 0))
    return batch

  dataset = (
    chunks.rebatch(batch_size)
    .concatenate(padding)
    .map(to_batch, num_parallel_calls=tf.data.AUTOTUNE)
    .prefetch(tf.data.AUTOTUNE)
    .with_options(_options())
  )

  def locate(position):
    return _find_corrupt_file(files.paths, max(0, position - 1))

  fingerprint = _fingerprint(config, files, process_index, process_count)
  return Iterator(dataset, fingerprint, process_index, process_count, locate)
