"""Tests of data_pipeline.tfrecord (framing; whole streams are tested in
example_bytes_test against TensorFlow's writer)."""

import google_crc32c
import numpy as np
import tensorflow as tf

from data_pipeline import tfrecord


class FramingTest:
  def test_masked_crc_of_the_check_string(self):
    # CRC-32C('123456789') is 0xE3069283 (the standard check value).
    assert google_crc32c.value(b'123456789') == 0xE3069283
    crc = 0xE3069283
    expected = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert tfrecord.masked_crc(b'123456789') == expected

  def test_a_hand_framed_file_reads_back_and_a_flipped_byte_is_caught(
    self, tmp_path
  ):
    records = [b'', b'hello world', bytes(range(256)) * 3]
    frames = [
      tfrecord.record_header(len(r))
      + r
      + tfrecord.masked_crc(r).to_bytes(4, 'little')
      for r in records
    ]
    assert [len(f) for f in frames] == [len(r) + 16 for r in records]
    path = tmp_path / 'x.tfrecord'
    path.write_bytes(b''.join(frames))
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == records
    data = bytearray(path.read_bytes())
    data[len(frames[0]) + 12 + 3] ^= 1  # a byte of the second record's data
    path.write_bytes(bytes(data))
    try:
      list(tf.data.TFRecordDataset(str(path)))
    except tf.errors.DataLossError as e:
      assert 'corrupted record' in str(e)
    else:
      raise AssertionError('a corrupt record was read without error')

  def test_data_crcs_match_one_by_one(self):
    rng = np.random.default_rng(0)
    stream = rng.bytes(5000)
    ends = np.array([10, 10, 700, 5000])
    starts = np.array([0, 10, 10, 700])
    crcs = tfrecord.data_crcs(stream, starts, ends)
    assert crcs.dtype == np.dtype('<u4')
    assert crcs.tolist() == [
      tfrecord.masked_crc(stream[s:e]) for s, e in zip(starts, ends)
    ]
