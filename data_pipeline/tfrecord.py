"""The TFRecord container format, for writers that build records in bulk.

A TFRecord file is a sequence of records, each

  uint64 length | uint32 masked CRC-32C of the length | data |
  uint32 masked CRC-32C of the data

(little-endian; `tensorflow/core/lib/io/record_writer.h`), so a file is the
concatenation of its framed records. Offline example creation frames a whole
batch of records in one byte buffer (`example_bytes.tfrecord_stream`) and
writes it with one call, where `tf.io.TFRecordWriter` takes one call per
record and computes the CRC in software: 1.8 ns per byte in TensorFlow's
wheels on the dev machine, 2.5 us for an 800-byte pretraining example.
`google_crc32c` uses the CPU's CRC instructions (SSE4.2, ARMv8): 0.06 ns per
byte plus 0.3 us per call. Reading stays with `tf.data.TFRecordDataset`,
which checks both CRCs.
"""

import functools
import struct

import google_crc32c
import numpy as np

HEADER_BYTES = 12
FOOTER_BYTES = 4
_MASK_DELTA = 0xA282EAD8


def mask_crcs(crcs: np.ndarray) -> np.ndarray:
  """TFRecord's masking of CRC-32C values: rotate right by 15 bits, add a
  constant (so that a CRC over data holding CRCs is not trivial).

  Args:
    crcs: `[n]` CRC-32C values.

  Returns:
    `[n]` uint32.
  """
  crcs = np.asarray(crcs, np.uint32)
  rotated = (crcs >> np.uint32(15)) | (crcs << np.uint32(17))
  return rotated + np.uint32(_MASK_DELTA)  # wraps modulo 2**32


def masked_crc(data: bytes) -> int:
  """The masked CRC-32C of `data`, as a TFRecord header or footer holds it."""
  return int(mask_crcs(np.array([google_crc32c.value(data)]))[0])


# Cached: a batch asks for each distinct record length, and lengths repeat
# across batches.
@functools.lru_cache(maxsize=1 << 16)
def record_header(length: int) -> bytes:
  """The 12 bytes that precede a record of `length` bytes."""
  size = struct.pack('<Q', length)
  return size + struct.pack('<I', masked_crc(size))


def data_crcs(stream: bytes, starts: np.ndarray, ends: np.ndarray):
  """Masked CRC-32Cs of `stream[start:end]` for each record, as `[n]` uint32
  (little-endian bytes: the footers)."""
  value = google_crc32c.value
  crcs = [value(stream[s:e]) for s, e in zip(starts.tolist(), ends.tolist())]
  return mask_crcs(np.array(crcs, np.uint32)).astype('<u4')
