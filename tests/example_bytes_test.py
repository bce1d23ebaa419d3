"""Tests of data_pipeline.example_bytes against protobuf itself."""

import numpy as np
import pytest
import tensorflow as tf

from data_pipeline import example_bytes


def _protobuf_bytes(features: dict[str, np.ndarray], row: int) -> bytes:
  example = tf.train.Example()
  for name, values in features.items():
    feature = example.features.feature[name]
    if values.dtype == np.float32:
      feature.float_list.value.extend(values[row].tolist())
    else:
      feature.int64_list.value.extend(values[row].tolist())
  return example.SerializeToString(deterministic=True)


class SerializeExamplesTest:
  def test_bytes_equal_protobuf_deterministic(self):
    rng = np.random.default_rng(0)
    n = 64
    features = {
      'input_ids': rng.integers(0, 2**40, (n, 9))
      >> rng.integers(0, 40, (n, 9)),
      'b_small': rng.integers(0, 2, (n, 3)).astype(np.int32),
      'a_float': rng.standard_normal((n, 4)).astype(np.float32),
      'one': rng.integers(0, 300, (n, 1)),
      # Long enough that list, feature, entry and example lengths take two
      # or three varint bytes, and vary between examples.
      'wide': rng.integers(0, 2**21, (n, 6000)) >> rng.integers(0, 21, (n, 1)),
    }
    features['input_ids'][0, :4] = [0, 127, 128, 2**63 - 1]
    records = example_bytes.serialize_examples(features)
    assert len(records) == n
    assert len({len(r) for r in records}) > 10
    for i in range(n):
      assert records[i] == _protobuf_bytes(features, i)

  def test_one_example_and_constant_lengths(self):
    features = {
      'ids': np.array([[101, 2023, 30000, 102]], np.int32),
      'mask': np.ones((1, 4), np.int32),
    }
    (record,) = example_bytes.serialize_examples(features)
    assert record == _protobuf_bytes(features, 0)
    parsed = tf.io.parse_single_example(
      record, {'ids': tf.io.FixedLenFeature([4], tf.int64)}
    )
    np.testing.assert_array_equal(parsed['ids'], [101, 2023, 30000, 102])

  def test_tfrecord_stream_equals_tensorflow_writer(self, tmp_path):
    rng = np.random.default_rng(1)
    n = 300
    features = {
      'ids': rng.integers(0, 30522, (n, 64)).astype(np.int32),
      'weights': rng.random((n, 5)).astype(np.float32),
      # Record lengths from a few bytes to two-byte and three-byte varints.
      'wide': rng.integers(0, 2**14, (n, 9000)) >> rng.integers(0, 14, (n, 1)),
    }
    stream, ends = example_bytes.tfrecord_stream(features)
    records = example_bytes.serialize_examples(features)
    path = str(tmp_path / 'theirs.tfrecord')
    with tf.io.TFRecordWriter(path) as writer:
      for record in records:
        writer.write(record)
    with open(path, 'rb') as f:
      assert stream == f.read()
    assert ends[-1] == len(stream) and len(ends) == n
    # Any run of whole records is a file of its own.
    part = tmp_path / 'part.tfrecord'
    part.write_bytes(stream[ends[9] : ends[19]])
    read = [r.numpy() for r in tf.data.TFRecordDataset(str(part))]
    assert read == records[10:20]

  def test_rejects_bad_features(self):
    with pytest.raises(ValueError, match='negative'):
      example_bytes.serialize_examples({'x': np.array([[1, -1]])})
    with pytest.raises(ValueError, match='neither int nor f32'):
      example_bytes.serialize_examples({'x': np.ones((2, 2), np.float64)})
    with pytest.raises(ValueError, match=r'want \[batch, width>=1\]'):
      example_bytes.serialize_examples({'x': np.ones(3, np.int32)})
