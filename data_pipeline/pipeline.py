"""The per-host `tf.data` input pipeline for BERT pretraining.

Reads pretraining TFRecords, shards them across hosts, shuffles, batches and
masks them (`examples.mask_batch`), and keeps the exact-resume state of the
training iterator. It yields numpy batches and never runs JAX: the trainer
passes `jax.process_index()` and `jax.process_count()` in.

    config = pipeline.PipelineConfig(train_file_patterns=('data/train-*',),
                                     tokenizer_path='vocab.txt', ...)
    it = pipeline.create_train_iterator(config, process_index, process_count)
    batch = next(it)      # dict of numpy arrays, see below
    it.save(prefix)       # writes prefix.index, prefix.data-*, prefix.json
    it.restore(prefix)    # on a new iterator: the batches after the save
    ev = pipeline.create_eval_iterator(config, process_index, process_count)

Batches (per host, `B = per_host_batch_size`, `L = max_seq_length`,
`P = mlm.max_predictions_per_seq`): `input_ids`, `input_mask`, `segment_ids`
`[B, L]` int32; `masked_lm_positions`, `masked_lm_ids` `[B, P]` int32;
`masked_lm_weights` `[B, P]` float32; `next_sentence_labels` `[B]` int32
(0 = IsNext, 1 = random; 0 when the records have none). Eval batches add
`example_mask` `[B]` int32, 0 at padding.

Packing (`packing=True`, training only): rows hold several examples, each
row masked as one sequence (`_pack`): `masked_lm_prob` of its real tokens,
capped at `max_predictions_per_seq` per row, not per example. Rows add
`example_ids` `[B, L]` (1, 2, ... per example, 0 at padding; the model
restarts positions and confines attention by them) and have
`cls_positions`, `next_sentence_labels` and `next_sentence_weights`
`[B, E]`, `E = max_examples_per_row`.

Records hold int64 features as google-research/bert writes them
(`next_sentence_labels` optional, `masked_lm_*` all or none; the format is
read off the first record). Unmasked ones are masked afresh every epoch;
int64 `word_starts` `[L]`, when present, replaces the vocabulary's `##` rule
in whole-word masking (Chinese text).

Exact resume. File order, shuffle windows and every example's mask are
stateless functions of the seed, the epoch and the position in the stream
(batches run across epochs);
`save` writes the `tf.data` iterator state and a fingerprint of the config
and files that `restore` checks, so a restored iterator yields exactly the
batches the uninterrupted one would. (`experimental_symbolic_checkpoint`
would save less, but costs much throughput and does not support `rebatch`.)

Host sharding. The global batch is the hosts' batches concatenated in host
order, as `jax.make_array_from_process_local_data` lays it out. With 'files'
(the default) host `i` of `n` reads files `i, i + n, ...` (with fewer than
`n` files, every host reads all of them and keeps records `i, i + n, ...`);
hosts' epochs may differ in length, and training repeats, so none runs dry.
Its saved state holds for `n` hosts only: on another host count, start
afresh, ideally with a new seed. With 'batch' every host reads all records
and keeps its rows of each global batch: the global batches, masks
included, are those of one host for any `n`, so a run can resume on another
host count (re-reading its epoch up to the saved position).
"""

import collections.abc
import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from data_pipeline import documents, examples, tokenizers

_CHUNK = 128  # Records read from one file as one unit of the interleave.
_CYCLE_LENGTH = 16  # Files read at once by the interleave.
_OPEN_ROWS = 16  # Packing: the newest rows a record may join.
# Example ordinals of different hosts never meet below 2**40 examples.
_HOST_STRIDE = 1 << 40
# Counters for `stateless_fold_in`, one per use of the seed.
_FILE_ORDER = 0
_WINDOW_ORDER = 1
_MASK_SEED = 2
# `_position` of a batch: epoch * _EPOCH_STRIDE + index of a file in the
# epoch's reading order.
_EPOCH_STRIDE = 1 << 32

HOST_SHARDINGS = ('files', 'batch')

_INPUT_FEATURES = ('input_ids', 'input_mask', 'segment_ids')
_MASKED_FEATURES = ('masked_lm_positions', 'masked_lm_ids', 'masked_lm_weights')
BATCH_KEYS = (*_INPUT_FEATURES, *_MASKED_FEATURES, 'next_sentence_labels')


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """What the input pipeline reads and how it batches and masks.

  Attributes:
    eval_file_patterns: the `eval-*` files of `create_pretraining_data
      --eval_fraction`, documents held out by a hash of their text (a
      held-out training shard would not hold out documents).
    tokenizer_path: WordPiece `vocab.txt` or SentencePiece `.model`; needed
      to mask unmasked records.
    mlm: masking options; `max_predictions_per_seq` must match pre-masked
      records.
    shuffle_window: records are permuted within disjoint windows of this
      many consecutive records (after a 16-file interleave); 1 reads files
      in order.
    host_sharding: 'files' or 'batch' (see the module docstring); eval is
      unaffected.
    packing: training rows hold up to `max_examples_per_row` examples each;
      needs unmasked records and 'files'. Eval rows are never packed.
  """

  train_file_patterns: tuple[str, ...] = ()
  eval_file_patterns: tuple[str, ...] = ()
  tokenizer_path: str = ''
  per_host_batch_size: int = 256
  max_seq_length: int = 128
  mlm: examples.MaskingConfig = examples.MaskingConfig()
  seed: int = 0
  shuffle_window: int = 16384
  host_sharding: str = 'files'
  packing: bool = False
  max_examples_per_row: int = 8


class RecordError(ValueError):
  """Records, or a saved input position, that do not fit the config."""


@dataclasses.dataclass(frozen=True)
class _Files:
  """Paths with their sizes, for the fingerprint of a saved position."""

  paths: tuple[str, ...]
  sizes: tuple[int, ...]


def _stat(paths: Sequence[str]) -> _Files:
  return _Files(tuple(paths), tuple(tf.io.gfile.stat(p).length for p in paths))


def _probe_features(files: _Files) -> tf.train.Example:
  """The first record of the first non-empty file."""
  for path, size in zip(files.paths, files.sizes, strict=True):
    if not size:
      continue
    try:
      for record in tf.data.TFRecordDataset(path).take(1):
        return tf.train.Example.FromString(record.numpy())
    except tf.errors.OpError as error:
      raise tf.errors.DataLossError(
        None, None, f'Corrupt TFRecord file {path}: {error.message}'
      ) from error
  raise RecordError(f'No record in {len(files.paths)} files')


@dataclasses.dataclass(frozen=True)
class _RecordFormat:
  """What the records hold, read off the first one."""

  premasked: bool
  has_nsp: bool
  has_word_starts: bool


def _record_format(example: tf.train.Example, config) -> _RecordFormat:
  features = example.features.feature
  lengths = {
    name: len(f.int64_list.value) + len(f.float_list.value)
    for name, f in features.items()
  }
  for name in _INPUT_FEATURES:
    if name not in features:
      raise RecordError(f'Records lack the feature {name!r}')
    if lengths[name] != config.max_seq_length:
      raise RecordError(
        f'Records have {name} of length {lengths[name]}, '
        f'config.max_seq_length={config.max_seq_length}'
      )
  present = [name in features for name in _MASKED_FEATURES]
  if any(present) and not all(present):
    raise RecordError(f'Records have only some of {_MASKED_FEATURES}')
  predictions = config.mlm.max_predictions_per_seq
  if all(present) and lengths['masked_lm_ids'] != predictions:
    raise RecordError(
      f'Records have {lengths["masked_lm_ids"]} predictions, config has '
      f'max_predictions_per_seq={predictions}'
    )
  return _RecordFormat(
    all(present),
    'next_sentence_labels' in features,
    'word_starts' in features,
  )


def _feature_spec(config, record_format):
  length = config.max_seq_length
  predictions = config.mlm.max_predictions_per_seq
  spec = {
    name: tf.io.FixedLenFeature([length], tf.int64) for name in _INPUT_FEATURES
  }
  if record_format.has_nsp:
    spec['next_sentence_labels'] = tf.io.FixedLenFeature([1], tf.int64)
  if record_format.has_word_starts and config.mlm.whole_word_mask:
    spec['word_starts'] = tf.io.FixedLenFeature([length], tf.int64)
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


def _make_batch_fn(config, record_format, mask_kwargs):
  """`fn(ordinals, serialized) -> batch`: parses `[batch]` records and masks
  each with the seed `(seed', ordinal)` (`ordinals`: `[batch]` int64)."""
  parse = _make_parse_fn(config, record_format)
  seed = _mask_seed(config)

  def fn(ordinals, serialized):
    batch = parse(serialized)
    if record_format.premasked:
      return batch
    seeds = tf.stack([tf.fill(tf.shape(ordinals), seed), ordinals], axis=1)
    return _mask(batch, seeds, config, mask_kwargs)

  return fn


def _mask_seed(config, *salts) -> tf.Tensor:
  """The scalar int64 that every example's masking seed starts with."""
  seed = _fold_in(tf.constant([config.seed, 0], tf.int64), _MASK_SEED)
  for salt in salts:
    seed = _fold_in(seed, salt)
  return seed[0]


def _make_parse_fn(config, record_format):
  """`fn(serialized) -> batch`: `[batch]` records as int32 features (and
  float `masked_lm_weights`), `next_sentence_labels` `[batch]`."""
  spec = _feature_spec(config, record_format)

  def fn(serialized):
    features = tf.io.parse_example(serialized, spec)
    batch = {
      name: tf.cast(value, tf.int32)
      for name, value in features.items()
      if name != 'masked_lm_weights'
    }
    if record_format.has_nsp:
      batch['next_sentence_labels'] = batch['next_sentence_labels'][:, 0]
    else:
      batch['next_sentence_labels'] = tf.zeros_like(batch['input_ids'][:, 0])
    if record_format.premasked:
      batch['masked_lm_weights'] = features['masked_lm_weights']
    return batch

  return fn


def _mask(batch, seeds, config, mask_kwargs):
  """`batch` with its rows masked (`examples.mask_batch`), one `[2]` seed
  per row in `seeds`; consumes `word_starts`."""
  batch = dict(batch)
  batch.update(
    examples.mask_batch(
      batch['input_ids'],
      batch['input_mask'],
      seeds,
      config=config.mlm,
      word_starts=batch.pop('word_starts', None),
      **mask_kwargs,
    )
  )
  return batch


def _pack(batch, seq_len: int, max_examples: int):
  """Packs `_make_parse_fn`'s `[n, seq_len]` unmasked records into rows.

  First fit over `_OPEN_ROWS` open rows: each record joins the oldest open
  row with room for its real tokens and fewer than `max_examples` examples,
  else starts a new row, closing the open row with the least room. Bounding
  the rows searched keeps it linear in the records.

  Returns `(rows, record_rows)`: `[m, seq_len]` and `[m, max_examples]` rows
  as in the module docstring (`next_sentence_weights` 1 at real examples),
  and `[n]` int64, the row of each record, rows numbered in the order of
  their first record.
  """
  lengths = tf.reduce_sum(tf.cast(batch['input_mask'] > 0, tf.int32), axis=1)
  count = tf.size(lengths)
  newest = _OPEN_ROWS

  def place(i, open_rows, space, used, num_rows, placed):
    fits = (space >= lengths[i]) & (used < max_examples)
    # Empty slots hold row -1 and no space: the first rows fill them.
    found = tf.reduce_any(fits)
    oldest_fit = tf.argmin(
      tf.where(fits, open_rows, num_rows), output_type=tf.int32
    )
    fullest = tf.argmin(space, output_type=tf.int32)
    slot = tf.where(found, oldest_fit, fullest)
    one = tf.one_hot(slot, newest, dtype=tf.int32)
    if_new = tf.cast(~found, tf.int32) * one
    open_rows += if_new * (num_rows - open_rows)
    space += if_new * (seq_len - space)
    used -= if_new * used
    record = tf.stack([open_rows[slot], seq_len - space[slot], used[slot]])
    space -= one * lengths[i]
    used += one
    num_rows += tf.cast(~found, tf.int32)
    return i + 1, open_rows, space, used, num_rows, placed.write(i, record)

  _, _, _, _, num_rows, placed = tf.while_loop(
    lambda i, *_: i < count,
    place,
    (
      tf.constant(0),
      tf.fill([newest], -1),
      tf.fill([newest], -1),
      tf.zeros([newest], tf.int32),
      tf.constant(0),
      tf.TensorArray(tf.int32, size=count, element_shape=[3]),
    ),
  )
  placed = tf.reshape(placed.stack(), [-1, 3])
  row, offset, slot = (tf.cast(placed[:, j], tf.int64) for j in range(3))
  lengths = tf.cast(lengths, tf.int64)
  num_rows = tf.cast(num_rows, tf.int64)
  real = tf.where(tf.range(seq_len, dtype=tf.int64) < lengths[:, None])
  record, token = real[:, 0], real[:, 1]
  to_row = tf.stack(
    [tf.gather(row, record), tf.gather(offset, record) + token], axis=1
  )

  def tokens(values):
    return tf.scatter_nd(to_row, values, [num_rows, seq_len])

  rows = {
    name: tokens(tf.gather_nd(batch[name], real))
    for name in ('input_ids', 'input_mask', 'segment_ids', 'word_starts')
    if name in batch
  }
  rows['example_ids'] = tokens(tf.cast(tf.gather(slot, record) + 1, tf.int32))
  to_slot = tf.stack([row, slot], 1)
  examples_shape = tf.stack([num_rows, max_examples])
  rows['cls_positions'] = tf.scatter_nd(
    to_slot, tf.cast(offset, tf.int32), examples_shape
  )
  rows['next_sentence_labels'] = tf.scatter_nd(
    to_slot, batch['next_sentence_labels'], examples_shape
  )
  rows['next_sentence_weights'] = tf.scatter_nd(
    to_slot, tf.ones_like(lengths, tf.float32), examples_shape
  )
  return rows, row


def _read_file(path, file_id):
  """Chunks of up to `_CHUNK` records of one file, with its id: per-element
  overhead is what limits `tf.data` on a few cores."""
  return (
    tf.data.TFRecordDataset(path)
    .batch(_CHUNK)
    .map(lambda records: (records, file_id))
  )


def _read_files(paths, file_ids, cycle_length):
  """Chunks of the records of `paths` (`[n]` strings, in reading order),
  `cycle_length` files at a time: a dataset of `(records string, file_ids
  int64, ordinals int64)` `[k]` tensors, `k <= _CHUNK`, `file_ids` from
  `file_ids` (`[n]` int64, to locate errors), `ordinals` numbering the
  records from 0 in reading order."""
  chunks = tf.data.Dataset.from_tensor_slices((paths, file_ids)).interleave(
    _read_file,
    cycle_length=cycle_length,
    block_length=1,
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )

  def count(records_seen, chunk):
    records, file_id = chunk
    size = tf.size(records, tf.int64)
    out = (records, tf.fill([size], file_id), records_seen + tf.range(size))
    return records_seen + size, out

  return chunks.scan(tf.constant(0, tf.int64), count)


def _host_files(files: _Files, config, epoch, process_index, process_count):
  """This host's files in the reading order of an epoch: `[n]` strings."""
  paths = tf.constant(files.paths)
  if len(files.paths) >= process_count:
    paths = paths[process_index::process_count]
  order = tf.random.experimental.stateless_shuffle(
    tf.range(tf.shape(paths)[0]),
    _fold_in(_epoch_seed(config, epoch), _FILE_ORDER),
  )
  return tf.gather(paths, order)


def _epoch_seed(config, epoch):
  return _fold_in(tf.constant([config.seed, 0], tf.int64), epoch)


def _keep_every(chunk, step, offset):
  """The records of a chunk whose ordinal is `offset` modulo `step`."""
  keep = chunk[-1] % step == offset
  return tuple(tf.boolean_mask(part, keep) for part in chunk)


def _drop_before(part, start):
  """The records of `part` numbered (`part[-1]`, ascending) `start` on."""
  count = tf.reduce_sum(tf.cast(part[-1] < start, tf.int32))
  return tuple(value[count:] for value in part)


def _epoch_records(
  files, config, epoch, process_index, process_count, skip=None
):
  """Epoch `epoch` of this host's records, in training order, in chunks.

  `skip` (scalar int64) drops that many records at the start of the epoch:
  read, but dropped before they are shuffled (whole windows) or parsed.
  Yields `(records string, positions int64, offsets int64)` `[k]` tensors:
  `positions` is `epoch * 2**32 + index of the record's file` in the
  epoch's order; `offsets` number the epoch's records in serving order.
  """
  paths = _host_files(files, config, epoch, process_index, process_count)
  file_ids = epoch * _EPOCH_STRIDE + tf.range(tf.size(paths, tf.int64))
  chunks = _read_files(paths, file_ids, _CYCLE_LENGTH)
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
    # comes from the records, not a counter, so that it is the same whether
    # the stream began at record 0 or at `skip`, or was restored from either.
    index = tf.reduce_min(records[-1]) // window
    size = tf.shape(records[0])[0]
    permutation = tf.random.experimental.stateless_shuffle(
      tf.range(size), _fold_in(window_seed, index)
    )
    shuffled = tuple(tf.gather(part, permutation) for part in records[:-1])
    return (*shuffled, index * window + tf.range(size, dtype=tf.int64))

  windows = chunks.rebatch(window).map(shuffle)
  if skip is not None:
    windows = windows.map(lambda *records: _drop_before(records, skip))
  return windows


def _find_corrupt_file(paths: Sequence[str], start: int):
  """`(path, error message)` of the first file, from `start` on (wrapping),
  that fails to read whole; None when every file reads."""
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
  # Own threads and one thread per op: faster than TF's shared defaults.
  options.threading.private_threadpool_size = max(8, os.cpu_count() or 1)
  options.threading.max_intra_op_parallelism = 1
  return options


def _fingerprint(config, files, *hosts) -> str:
  blob = repr((dataclasses.astuple(config), files, *hosts))
  return hashlib.sha256(blob.encode()).hexdigest()


class Iterator(collections.abc.Iterator):
  """Numpy batches from a `tf.data` pipeline, with a savable position.

  A corrupt record raises `tf.errors.DataLossError` naming the first bad
  file (TF's own error names none).

  Attributes:
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

    Batches also carry `_position` (int64, the position of the file read
    last, see `_epoch_records`) and, in training, `_next_record` (`[2]`
    int64: the epoch of the next record and the records of it served
    before). `locate(position)` finds the corrupt file after a
    `DataLossError`; `seek(batches, epoch, records) -> dataset` lets any
    host of any host count restore a state (None: a state holds for its
    own host only).
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
    self.batches = 0

  @property
  def _iterator(self):
    # Started on first use: a started iterator reads ahead in the
    # background, wasted on an iterator that is restored right away.
    if self._started is None:
      self._started = iter(self._dataset)
    return self._started

  def __next__(self) -> dict[str, np.ndarray]:
    # TFRecordDataset's DataLossError does not name the file: find it.
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
    if '_next_record' in batch:
      self._next_record = tuple(batch.pop('_next_record').numpy().tolist())
    self.batches += 1
    return {name: value.numpy() for name, value in batch.items()}

  def save(self, prefix: str) -> None:
    """Writes the position to `prefix.index`, `prefix.data-*` and `.json`;
    call it on every host, with a per-host prefix (bertjax.workdir uses
    `<step>/data/process_<i>/iterator`)."""
    tf.train.Checkpoint(iterator=self._iterator).write(prefix)
    meta = {
      'process_index': self._process[0],
      'process_count': self._process[1],
      'batches': self.batches,
      'global_batch_size': self._global_batch_size,
      'position': self._position,
      'fingerprint': self._fingerprint,
    }
    if self._seek is not None:
      # Where the next record is; only a seek (another host count) reads it,
      # and only batch-sharded unpacked batches carry it.
      meta['epoch'], meta['epoch_records'] = self._next_record
    with tf.io.gfile.GFile(prefix + '.json', 'w') as f:
      json.dump(meta, f)

  def restore(self, prefix: str) -> None:
    """Continues from the position saved at `prefix` (with
    `host_sharding='batch'`, by any host of any host count); raises
    RecordError for a state of another config, file list, global batch
    ('batch') or host ('files')."""
    with tf.io.gfile.GFile(prefix + '.json') as f:
      meta = json.load(f)
    saved = (meta['process_index'], meta['process_count'])
    if self._seek is None and saved[1] != self._process[1]:
      raise RecordError(
        f'Input state at {prefix} was saved with {saved[1]} hosts, this run '
        f'has {self._process[1]}: a position in one sharding means nothing '
        "in another. Start fresh iterators, or use host_sharding='batch' "
        '(see data_pipeline.pipeline).'
      )
    if self._seek is None and saved != self._process:
      raise RecordError(
        f'Input state at {prefix} belongs to host {saved[0]}, this is host '
        f'{self._process[0]}'
      )
    if self._seek and meta['global_batch_size'] != self._global_batch_size:
      raise RecordError(
        f'Input state at {prefix} was saved with a global batch of '
        f'{meta["global_batch_size"]}, this run has {self._global_batch_size}'
      )
    if meta['fingerprint'] != self._fingerprint:
      raise RecordError(
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
    if self._seek is not None:
      self._next_record = (meta['epoch'], meta['epoch_records'])


def _prepare(config, patterns):
  """The files, their record format and the vocab kwargs for masking."""
  files = _stat(documents.expand_patterns(patterns))
  if sum(files.sizes) == 0:
    raise RecordError(f'All {len(files.paths)} files are empty: {patterns}')
  record_format = _record_format(_probe_features(files), config)
  mask_kwargs = {}
  if not record_format.premasked:
    if not config.tokenizer_path:
      raise RecordError('Masking the records needs config.tokenizer_path')
    mask_kwargs = examples.vocab_kwargs(
      tokenizers.create_tokenizer(config.tokenizer_path),
      config.mlm.whole_word_mask,
    )
  return files, record_format, mask_kwargs


def _check_host(process_index: int, process_count: int) -> None:
  if not 0 <= process_index < process_count:
    raise RecordError(f'process_index={process_index} of {process_count}')


def create_train_iterator(
  config: PipelineConfig, process_index: int = 0, process_count: int = 1
) -> Iterator:
  """An endless `Iterator` of this host's batches (see the module docstring)."""
  _check_host(process_index, process_count)
  if config.host_sharding not in HOST_SHARDINGS:
    raise RecordError(
      f'host_sharding={config.host_sharding!r}, not one of {HOST_SHARDINGS}'
    )
  files, record_format, mask_kwargs = _prepare(
    config, config.train_file_patterns
  )
  if config.packing and record_format.premasked:
    raise RecordError(
      'Packing masks rows as it packs them: it needs unmasked records '
      '(create_pretraining_data --no_mask), these hold masks'
    )
  if config.packing and config.host_sharding == 'batch':
    # Packed rows are not runs of consecutive records, so a position in the
    # record stream does not say where another host count would resume.
    raise RecordError(
      "packing=True needs host_sharding='files' (rows of packed records "
      'cannot resume on another host count)'
    )
  if config.packing and config.max_examples_per_row < 1:
    raise RecordError(
      f'max_examples_per_row={config.max_examples_per_row}, must be >= 1'
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
    serialized, positions, offsets = records
    first = first_ordinal + index * global_batch
    ordinals = first + tf.range(batch_size, dtype=tf.int64)
    if by_batch:
      serialized = serialized[first_row : first_row + batch_size]
    batch = parse_and_mask(ordinals, serialized)
    batch['_position'] = tf.reduce_max(positions)
    batch['_next_record'] = tf.stack(
      [positions[-1] // _EPOCH_STRIDE, offsets[-1] + 1]
    )
    return batch

  parse = _make_parse_fn(config, record_format)
  # Rows are masked as a whole, each with a seed from the position of its
  # first record: `(seed', epoch * 2**36 + record)`, hosts apart by salt.
  row_seed = _mask_seed(config, process_index + 1)

  def to_rows(serialized, positions, offsets):
    rows, record_rows = _pack(
      parse(serialized), config.max_seq_length, config.max_examples_per_row
    )
    num_rows = tf.shape(rows['input_ids'], tf.int64)[0]
    rows['_position'] = tf.math.unsorted_segment_max(
      positions, record_rows, num_rows
    )
    rows['_first'] = tf.math.unsorted_segment_min(
      offsets, record_rows, num_rows
    )
    return rows

  def to_packed_batch(rows):
    rows = dict(rows)
    positions = rows.pop('_position')
    ordinals = positions // _EPOCH_STRIDE * (1 << 36) + rows.pop('_first')
    seeds = tf.stack([tf.fill(tf.shape(ordinals), row_seed), ordinals], 1)
    batch = _mask(rows, seeds, config, mask_kwargs)
    batch['_position'] = tf.reduce_max(positions)
    return batch

  def batches_from(batches, epoch, records):
    """The batches from global batch `batches`, which begins with record
    `records` of epoch `epoch`; `records` None leaves out the skipping ops."""
    epochs = tf.data.Dataset.range(epoch, np.iinfo(np.int64).max)

    def epoch_records(e):
      skip = None
      if records is not None:
        skip = tf.where(e == epoch, np.int64(records), np.int64(0))
      return _epoch_records(files, config, e, *reader, skip=skip)

    stream = epochs.flat_map(epoch_records)
    if config.packing:
      stream = (
        stream.map(to_rows, num_parallel_calls=tf.data.AUTOTUNE)
        .rebatch(global_batch, drop_remainder=True)
        .map(to_packed_batch, num_parallel_calls=tf.data.AUTOTUNE)
      )
    else:
      stream = (
        stream.rebatch(global_batch, drop_remainder=True)
        .enumerate(batches)
        .map(to_batch, num_parallel_calls=tf.data.AUTOTUNE)
      )
    return stream.prefetch(tf.data.AUTOTUNE).with_options(_options())

  def locate(position):
    epoch, index = divmod(position, _EPOCH_STRIDE)
    paths = _host_files(files, config, epoch, *reader)
    paths = [p.decode() for p in paths.numpy()]
    return _find_corrupt_file(paths, max(0, index - _CYCLE_LENGTH))

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

  Every host reads all eval files in sorted order and keeps every
  `process_count`-th example. Every host yields the same number of batches,
  the last ones padded with all-zero examples (`example_mask` 0), so
  multi-host eval steps stay in lockstep. Masks depend on an example's
  ordinal in the split only: the same at every eval and for any host count.
  """
  _check_host(process_index, process_count)
  if not config.eval_file_patterns:
    raise RecordError('No eval split: config.eval_file_patterns is empty')
  files, record_format, mask_kwargs = _prepare(
    config, config.eval_file_patterns
  )
  batch_size = config.per_host_batch_size
  parse_and_mask = _make_batch_fn(config, record_format, mask_kwargs)
  chunks = _read_files(
    tf.constant(files.paths),
    tf.range(len(files.paths), dtype=tf.int64),
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
  no_ids = tf.zeros([0], tf.int64)
  empty = (tf.zeros([0], tf.string), no_ids, no_ids)
  padding = tf.data.Dataset.from_tensors(empty).repeat(extra_batches)

  def to_batch(serialized, positions, ordinals):
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
