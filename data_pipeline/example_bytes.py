"""`tf.train.Example` bytes for a batch of examples, built with numpy.

Offline example creation writes millions of records; building protobuf
messages one by one costs ~120 us per example here, more than all the rest
of example creation. `serialize_examples` produces the very bytes of
`tf.train.Example.SerializeToString(deterministic=True)` (features in key
order, packed lists) for a whole batch at once.

The layout of one example, per feature in key order:

  0x0A len(entry) | 0x0A len(key) key | 0x12 len(feature) |
  kind len(list) | 0x0A len(packed) | packed values

after `0x0A len(features)` for the whole. Everything before a feature's
packed values depends only on the packed length, so it comes from a small
table over the distinct lengths of the batch; the packed values are
protobuf varints (int64) or little-endian float32. Each example's bytes are
one row of a `[batch, width]` byte matrix with the unused bytes of shorter
varints marked invalid, compacted once at the end.
"""

import functools

import numpy as np

from data_pipeline import tfrecord

_FLOAT_LIST = 0x12  # Feature.float_list
_INT64_LIST = 0x1A  # Feature.int64_list


def _varint(value: int) -> bytes:
  """The protobuf varint of a non-negative int."""
  out = bytearray()
  while value >= 0x80:
    out.append((value & 0x7F) | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _field(tag: int, payload_length: int) -> bytes:
  """Tag and length of a length-delimited field."""
  return bytes([tag]) + _varint(payload_length)


# Cached: a batch asks for each distinct length, and they repeat across
# batches (building them was ~10% of serializing).
@functools.lru_cache(maxsize=1 << 16)
def _feature_header(key: bytes, kind: int, packed_length: int) -> bytes:
  """The bytes of a feature's map entry up to its packed values."""
  list_head = _field(0x0A, packed_length)  # {Int64,Float}List.value
  list_length = len(list_head) + packed_length
  feature_head = _field(kind, list_length)
  feature_length = len(feature_head) + list_length
  key_field = _field(0x0A, len(key)) + key  # MapEntry.key
  value_head = _field(0x12, feature_length)  # MapEntry.value
  entry_length = len(key_field) + len(value_head) + feature_length
  return (
    _field(0x0A, entry_length)  # Features.feature
    + key_field
    + value_head
    + feature_head
    + list_head
  )


class _Block:
  """One part of every example's bytes: `data [batch, width]` uint8, with
  `valid [batch, width]` bool (None: all valid) and the valid bytes per
  example, `length [batch]` int64."""

  def __init__(self, data, valid, length):
    self.data, self.valid, self.length = data, valid, length

  @classmethod
  def table(cls, values: np.ndarray, make) -> '_Block':
    """`make(value)` bytes for each of `values [batch]`, built once per
    distinct value."""
    low, high = int(values.min()), int(values.max())
    if high - low <= 4 * len(values):
      # Lengths in a narrow range: a counting pass, not np.unique's sort.
      present = np.bincount(values - low, minlength=high - low + 1) > 0
      distinct = np.flatnonzero(present) + low
      inverse = (np.cumsum(present) - 1)[values - low]
    else:
      distinct, inverse = np.unique(values, return_inverse=True)
    rows = [make(v) for v in distinct.tolist()]
    lengths = np.array([len(r) for r in rows], np.int64)
    if lengths.min() == lengths.max():
      # One length (e.g. all with 2-byte varints): no compaction needed.
      data = np.frombuffer(b''.join(rows), np.uint8).reshape(len(rows), -1)
      if len(rows) == 1:
        batch = len(values)
        return cls(
          np.broadcast_to(data, (batch, data.shape[1])), None, lengths[inverse]
        )
      return cls(data[inverse], None, lengths[inverse])
    width = lengths.max()
    data = np.zeros((len(rows), width), np.uint8)
    valid = np.arange(width) < lengths[:, None]
    data[valid] = np.frombuffer(b''.join(rows), np.uint8)
    return cls(data[inverse], valid[inverse], lengths[inverse])


def _varints(values: np.ndarray) -> _Block:
  """Protobuf varints of `[batch, n]` non-negative integers."""
  batch, n = values.shape
  largest = int(values.max(initial=0))
  width = max(1, (largest.bit_length() + 6) // 7)
  if width == 1:
    bytes_ = values.astype(np.uint8, copy=False)
    return _Block(bytes_, None, np.full(batch, n, np.int64))
  # The narrowest type that holds the values: numpy's passes over uint16
  # (token ids of vocabularies up to 64K) take half the time of uint32.
  if largest < 1 << 16:
    values = values.astype(np.uint16)
  else:
    values = values.astype(np.uint32 if width <= 4 else np.uint64)
  one = values.dtype.type(1)
  data = np.empty((batch, n, width), np.uint8)
  valid = np.empty((batch, n, width), bool)
  valid[:, :, 0] = True
  length = np.full(batch, n, np.int64)
  for k in range(width):
    # Byte k exists when the value has more than 7k bits; it has the
    # continuation bit when byte k + 1 exists.
    if k + 1 < width:
      more = values >= (one << np.uint8(7 * (k + 1)))
      valid[:, :, k + 1] = more
      length += np.count_nonzero(more, axis=1)
    shifted = values >> np.uint8(7 * k) if k else values
    byte = (shifted & 0x7F).astype(np.uint8)
    if k + 1 < width:
      byte |= more.view(np.uint8) << np.uint8(7)
    data[:, :, k] = byte
  return _Block(data.reshape(batch, -1), valid.reshape(batch, -1), length)


def _packed(name: str, values: np.ndarray) -> tuple[_Block, int]:
  """A feature's packed values and its list kind."""
  values = np.asarray(values)
  if values.ndim != 2 or values.shape[1] < 1:
    raise ValueError(f'{name}: want [batch, width>=1], got {values.shape}')
  if values.dtype == np.float32:
    data = values.astype('<f4').view(np.uint8).reshape(values.shape[0], -1)
    length = np.full(values.shape[0], data.shape[1], np.int64)
    return _Block(data, None, length), _FLOAT_LIST
  if np.issubdtype(values.dtype, np.integer):
    if values.size and values.min() < 0:
      raise ValueError(f'{name}: negative values are not supported')
    return _varints(values), _INT64_LIST
  raise ValueError(f'{name}: dtype {values.dtype} is neither int nor f32')


def _example_blocks(features: dict[str, np.ndarray]) -> list[_Block]:
  """The blocks of a batch of serialized `tf.train.Example`s, in order."""
  blocks = []
  for name in sorted(features):
    packed, kind = _packed(name, features[name])
    key = name.encode()
    header = functools.partial(_feature_header, key, kind)
    blocks.append(_Block.table(packed.length, header))
    blocks.append(packed)
  total = sum(block.length for block in blocks)
  return [_Block.table(total, _example_header), *blocks]


@functools.lru_cache(maxsize=1 << 16)
def _example_header(length: int) -> bytes:
  """The bytes before the features of an example of `length` bytes."""
  return _field(0x0A, length)  # Example.features


def _compact(blocks: list[_Block]) -> tuple[np.ndarray, np.ndarray]:
  """Each row's valid bytes of all blocks, rows one after another.

  All blocks go side by side in one byte matrix, then the valid bytes are
  taken once: one copy per byte, where concatenating nested fields would
  copy each byte once per level.

  Returns:
    `flat`, uint8, and `ends [batch]` int64, where each row's bytes end.
  """
  batch = len(blocks[0].length)
  width = sum(block.data.shape[1] for block in blocks)
  data = np.empty((batch, width), np.uint8)
  valid = np.ones((batch, width), bool)
  column = 0
  for block in blocks:
    end = column + block.data.shape[1]
    data[:, column:end] = block.data
    if block.valid is not None:
      valid[:, column:end] = block.valid
    column = end
  flat = np.compress(valid.reshape(-1), data.reshape(-1))
  return flat, np.cumsum(sum(block.length for block in blocks))


def serialize_examples(features: dict[str, np.ndarray]) -> list[bytes]:
  """Serializes a batch of examples exactly like `tf.train.Example`.

  Args:
    features: name -> `[batch, width]` array, `width >= 1`; integer arrays
      (non-negative) become an `Int64List`, float32 arrays a `FloatList`.

  Returns:
    `batch` serialized `tf.train.Example`s, each equal to
    `SerializeToString(deterministic=True)` of the same message.
  """
  flat, ends = _compact(_example_blocks(features))
  flat = flat.tobytes()
  starts = np.concatenate([[0], ends[:-1]])
  return [flat[s:e] for s, e in zip(starts.tolist(), ends.tolist())]


def tfrecord_stream(
  features: dict[str, np.ndarray],
) -> tuple[memoryview, np.ndarray]:
  """A batch of examples as TFRecord file contents.

  The bytes equal what `tf.io.TFRecordWriter` writes for the examples of
  `serialize_examples`, in order, but are built for the whole batch at once:
  the record headers are one more block of the byte matrix, and the footers
  (CRCs of the data) are written into 4 bytes left for them.

  Args:
    features: as for `serialize_examples`.

  Returns:
    `stream`, the framed records one after another (a bytes-like view of a
    numpy buffer: one copy fewer than `bytes`), and `ends [batch]` int64,
    the offset in `stream` where each record's frame ends: any run of whole
    records is a valid TFRecord file.
  """
  blocks = _example_blocks(features)
  length = sum(block.length for block in blocks)
  batch = len(length)
  footer = _Block(
    np.zeros((batch, tfrecord.FOOTER_BYTES), np.uint8),
    None,
    np.full(batch, tfrecord.FOOTER_BYTES, np.int64),
  )
  header = _Block.table(length, tfrecord.record_header)
  flat, ends = _compact([header, *blocks, footer])
  footers = ends - tfrecord.FOOTER_BYTES
  starts = footers - length
  crcs = tfrecord.data_crcs(flat.tobytes(), starts, footers)
  # The footer of each record: its 4 CRC bytes, in place.
  flat[footers[:, None] + np.arange(tfrecord.FOOTER_BYTES)] = crcs.view(
    np.uint8
  ).reshape(batch, tfrecord.FOOTER_BYTES)
  return memoryview(flat), ends
