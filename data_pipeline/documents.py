"""Raw text to documents: file formats, sentence splitting, input accounting.

A *document*, the unit the pretraining-pair builder works on, is a list of
sentences (`list[str]`), in order, none empty. Formats: see `FORMATS` and
`ReadOptions`; paths are local, globs or `gs://` URLs; prepared TFDS
datasets are read by `read_tfds_documents`.

Bad input never crashes the reader and is never dropped silently: whatever
is skipped, or kept but repaired, is counted in `Stats` under a `SKIP_*` or
`FLAG_*` reason. Memory is bounded: files are read in chunks, and over-long
lines and documents are cut.
"""

import codecs
import csv
import dataclasses
import json
import re
from collections.abc import Iterable, Iterator, Sequence

import tensorflow as tf
from absl import logging

# Reasons an input is skipped (its text does not reach the output).
SKIP_DIRECTORY = 'is_a_directory'
SKIP_INCOMPLETE = 'incomplete_output'
SKIP_FILE_NOT_FOUND = 'file_not_found'
SKIP_READ_ERROR = 'read_error'
# A file that gave no document: empty, blank, or all its records skipped.
SKIP_EMPTY_FILE = 'empty_file'
SKIP_EMPTY_DOCUMENT = 'empty_document'
SKIP_INVALID_UTF8 = 'invalid_utf8_line'
SKIP_INVALID_JSON = 'invalid_json_line'
SKIP_INVALID_CSV = 'invalid_csv_row'
SKIP_MISSING_FIELD = 'missing_text_field'
SKIP_LINE_TOO_LONG = 'record_line_too_long'

# Reasons an input is kept but repaired or worth knowing about.
FLAG_INVALID_UTF8 = 'invalid_utf8_replaced'
FLAG_CONTROL_CHARS = 'control_characters_removed'
FLAG_LONG_LINE = 'long_line_cut'
FLAG_LONG_DOCUMENT = 'long_document_cut'
FLAG_SINGLE_SENTENCE = 'single_sentence_document'

FORMATS = ('auto', 'bert', 'lines', 'file', 'jsonl', 'csv')
_FORMAT_BY_EXTENSION = {'.jsonl': 'jsonl', '.json': 'jsonl', '.csv': 'csv'}

# How many locations each reason keeps, to point the user at examples.
_MAX_LOCATIONS = 5


@dataclasses.dataclass
class Stats:
  """Counts of what was read, skipped and repaired; mergeable across workers.

  `files` counts files read to the end, `bytes` also the bytes of files that
  vanished or failed. `skipped` maps a reason to the inputs (files, lines,
  rows, documents) whose text was dropped, `flagged` to those kept but
  repaired or unusual, and `locations` to up to five `path:line` strings
  where it happened.
  """

  files: int = 0
  bytes: int = 0
  documents: int = 0
  sentences: int = 0
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)
  flagged: dict[str, int] = dataclasses.field(default_factory=dict)
  locations: dict[str, list[str]] = dataclasses.field(default_factory=dict)

  def skip(self, reason: str, where: str, count: int = 1) -> None:
    """Counts `count` inputs skipped for `reason` at `where`."""
    self.skipped[reason] = self.skipped.get(reason, 0) + count
    self._locate(reason, where)

  def flag(self, reason: str, where: str, count: int = 1) -> None:
    """Counts `count` inputs kept but repaired or unusual for `reason`."""
    self.flagged[reason] = self.flagged.get(reason, 0) + count
    self._locate(reason, where)

  def _locate(self, reason: str, where: str) -> None:
    seen = self.locations.setdefault(reason, [])
    if len(seen) < _MAX_LOCATIONS:
      seen.append(where)

  def merge(self, other: 'Stats') -> None:
    """Adds `other`'s counts into this object."""
    self.files += other.files
    self.bytes += other.bytes
    self.documents += other.documents
    self.sentences += other.sentences
    for reason, count in other.skipped.items():
      self.skipped[reason] = self.skipped.get(reason, 0) + count
    for reason, count in other.flagged.items():
      self.flagged[reason] = self.flagged.get(reason, 0) + count
    for reason, where in other.locations.items():
      seen = self.locations.setdefault(reason, [])
      seen.extend(where[: _MAX_LOCATIONS - len(seen)])

  def to_dict(self) -> dict:
    """A JSON-ready dict, reasons sorted so the JSON is stable."""
    return {
      name: dict(sorted(value.items())) if isinstance(value, dict) else value
      for name, value in dataclasses.asdict(self).items()
    }


@dataclasses.dataclass(frozen=True)
class ReadOptions:
  """How to read input files.

  Attributes:
    input_format: one of `FORMATS`: `bert` (one sentence per line, a blank
      line between documents), `lines` or `file` (a plain document per line
      or per file), `jsonl` or `csv` with a header (text in `text_field`);
      `auto` picks `jsonl` for `.jsonl`/`.json`, `csv` for `.csv`, else `bert`.
    invalid_utf8: `replace` keeps the line with U+FFFD for invalid bytes
      (flagged); `skip` drops it (skipped).
    max_line_bytes: a longer line is cut into pieces, at a space where
      possible: in text formats each piece goes through the sentence
      splitter; a JSONL/CSV record that long is skipped.
    max_document_chars: a longer document is cut into several.
  """

  input_format: str = 'auto'
  text_field: str = 'text'
  invalid_utf8: str = 'replace'
  chunk_bytes: int = 1 << 20
  max_line_bytes: int = 1 << 20
  max_document_chars: int = 1 << 22

  def __post_init__(self):
    if self.input_format not in FORMATS:
      raise InputError(
        f'input_format must be one of {FORMATS}, not {self.input_format!r}'
      )
    if self.invalid_utf8 not in ('replace', 'skip'):
      raise InputError(
        f"invalid_utf8 must be 'replace' or 'skip', not {self.invalid_utf8!r}"
      )


# Words that end with a period without ending a sentence (lower case, no
# final period). Initials (`J.`) and dotted acronyms (`U.S.`) are recognised
# by shape instead.
_ABBREVIATIONS = frozenset(
  """
  mr mrs ms messrs dr prof sr jr st mt ft rev hon pres gov sen rep gen col lt
  maj capt cmdr adm sgt cpl pvt supt insp det amb atty
  inc ltd co corp bros dept univ assn assoc intl natl
  jan feb mar apr jun jul aug sep sept oct nov dec
  mon tue tues wed thu thur thurs fri sat sun
  vs etc al cf ca approx est fig figs eq vol vols no nos pp ed eds op ch sec
  ave blvd rd hwy mph
  """.split()
)
# A candidate boundary: end punctuation, closing quotes or brackets, and the
# space after. One leading character class lets `re` scan far faster than
# alternatives would; which candidates are real is decided in Python.
_CJK_END = '。！？；'
_BOUNDARY_RE = re.compile(
  r'[.!?' + _CJK_END + r'][.!?' + _CJK_END + r'”’"\')\]」』）》〕】]*(\s*)'
)
_CLOSERS = '”’"\')]」』）》〕】'
_STRIPPED_AFTER_PUNCT = _CLOSERS + ' \t\n'
_LAST_WORD_RE = re.compile(r'[^\W\d_]+(?:\.[^\W\d_]+)*$')
# `U.S`, `e.g`, `p.m` (before their final period), or one capital: `J`.
_INITIALS_RE = re.compile(r'^(?:(?:[^\W\d_]\.)+[^\W\d_]|[^\W\d_a-z])$')


def _is_cjk(char: str) -> bool:
  """Whether `char` is a CJK ideograph or full-width form (no spaces)."""
  return '\u3000' <= char <= '\u9fff' or '\uff00' <= char <= '\uffef'


def _is_abbreviation(text: str, period: int) -> bool:
  """Whether the period at `text[period]` ends an abbreviation or initial."""
  start = text.rfind(' ', 0, period) + 1
  word = text[start:period]
  # The letters (and inner periods) just before the period: `Sen` in
  # `choice,"?Sen.` (the news corpus glues words to broken quotes). The
  # regex is only needed when the word since the space is not all letters.
  if not word.isalpha():
    match = _LAST_WORD_RE.search(text, start, period)
    if not match:
      return False
    word = match.group(0)
  if word.lower() in _ABBREVIATIONS:
    return True
  # `J.`, `U.S.`, `e.g.`: single letters separated by periods, or a single
  # capital (an initial; a lower-case letter ends sentences like `plan b.`).
  return _INITIALS_RE.match(word) is not None


def _is_boundary(text: str, match: re.Match) -> bool:
  """Whether a candidate from `_BOUNDARY_RE` really ends a sentence."""
  punct, spaces = match.group(0, 1)
  end = match.end()
  following = text[end : end + 1]
  if not punct.isascii() and any(c in _CJK_END for c in punct):
    return True
  if not following:
    return True
  # Latin punctuation ends a sentence only before space or a CJK character:
  # `3.14`, `U.S.-based`, `Yahoo!Mail` stay whole.
  if not spaces and not _is_cjk(following):
    return False
  if following.islower():
    return False
  if punct.rstrip(_STRIPPED_AFTER_PUNCT) == '.':
    return not _is_abbreviation(text, match.start())
  return True


def split_sentences(text: str) -> list[str]:
  """Splits a paragraph (newlines count as spaces) into stripped sentences.

  `.`, `!` and `?` end a sentence only before space (3.14 stays whole), not
  before a lower-case word, and (a period) not after a known abbreviation,
  initial or dotted acronym; 。！？； always do. No sentence is empty.
  """
  sentences, start = [], 0
  for match in _BOUNDARY_RE.finditer(text):
    if _is_boundary(text, match):
      sentences.append(text[start : match.end()].strip())
      start = match.end()
  sentences.append(text[start:].strip())
  return [sentence for sentence in sentences if sentence]


# C0 and C1 control characters except tab and newline, plus the Unicode line
# and paragraph separators: they would break lines or the tokenizer.
_CONTROL_RE = re.compile('[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]')


def _cut_point(buf: bytes, limit: int) -> int:
  """Where to cut a long line: after a space, else between UTF-8 characters."""
  space = buf.rfind(b' ', limit // 2, limit)
  if space > 0:
    return space + 1
  cut = limit
  # UTF-8 continuation bytes are 0b10xxxxxx; back up to a leading byte.
  while cut > limit - 4 and (buf[cut] & 0xC0) == 0x80:
    cut -= 1
  return cut


@dataclasses.dataclass
class _Line:
  """One decoded line, or (`is_piece`) one piece of an over-long line."""

  text: str
  number: int
  is_piece: bool


def _read_raw_lines(
  path: str, options: ReadOptions, stats: Stats
) -> Iterator[tuple[bytes, int, bool]]:
  """Yields (bytes, line number, is_piece) from `path`, reading in chunks."""
  limit = options.max_line_bytes
  buf = b''
  number = 1
  in_long_line = False
  with tf.io.gfile.GFile(path, 'rb') as f:
    while chunk := f.read(options.chunk_bytes):
      # Counted as read, so that progress shows while a big file is read.
      stats.bytes += len(chunk)
      buf += chunk
      lines = buf.split(b'\n')
      buf = lines.pop()
      for line in lines:
        yield line, number, in_long_line
        number += 1
        in_long_line = False
      while len(buf) > limit:
        if not in_long_line:
          stats.flag(FLAG_LONG_LINE, f'{path}:{number}')
        in_long_line = True
        cut = _cut_point(buf, limit)
        yield buf[:cut], number, True
        buf = buf[cut:]
  if buf:
    yield buf, number, in_long_line
  stats.files += 1


def _decode(raw: bytes, where: str, stats: Stats, skip_invalid=False):
  """`raw` as clean text, repairs flagged; None if skipped as invalid UTF-8."""
  try:
    text = codecs.decode(raw, 'utf-8')
  except UnicodeDecodeError:
    if skip_invalid:
      stats.skip(SKIP_INVALID_UTF8, where)
      return None
    text = codecs.decode(raw, 'utf-8', 'replace')
    stats.flag(FLAG_INVALID_UTF8, where)
  if _CONTROL_RE.search(text):
    text = _CONTROL_RE.sub(' ', text)
    stats.flag(FLAG_CONTROL_CHARS, where)
  return text


def _read_lines(
  path: str, options: ReadOptions, stats: Stats
) -> Iterator[_Line]:
  """Yields decoded, cleaned lines of `path`, counting what was repaired."""
  skip_invalid = options.invalid_utf8 == 'skip'
  first = True
  for raw, number, is_piece in _read_raw_lines(path, options, stats):
    # The \r of a CRLF line end goes before it could count as a control.
    raw = raw.removesuffix(b'\r')
    text = _decode(raw, f'{path}:{number}', stats, skip_invalid)
    if text is None:
      continue
    if first:
      text, first = text.removeprefix('\ufeff'), False
    yield _Line(text, number, is_piece)


# A document as the readers produce it: its sentences and where it starts.
_Located = tuple[list[str], str]


class _DocumentBuilder:
  """Accumulates sentences into documents, cutting over-long ones."""

  def __init__(self, max_chars: int, stats: Stats):
    self._max_chars = max_chars
    self._stats = stats
    self._sentences: list[str] = []
    self._chars = 0
    self._where = ''

  def add(self, sentences: Iterable[str], where: str) -> list[_Located]:
    """Adds sentences; returns the documents completed by a cut, if any."""
    sentences = list(sentences)
    chars = sum(map(len, sentences))
    if sentences and self._chars + chars <= self._max_chars:
      # No cut: all at once, sparing a Python step per sentence.
      if not self._sentences:
        self._where = where
      self._sentences.extend(sentences)
      self._chars += chars
      return []
    done = []
    for sentence in sentences:
      if self._sentences and self._chars + len(sentence) > self._max_chars:
        self._stats.flag(FLAG_LONG_DOCUMENT, where)
        done.append(self.finish())
      if not self._sentences:
        self._where = where
      self._sentences.append(sentence)
      self._chars += len(sentence)
    return done

  def finish(self) -> _Located:
    """Ends the current document; returns its sentences (maybe none)."""
    document = (self._sentences, self._where)
    self._sentences, self._chars = [], 0
    return document


def _bert_documents(path, options, stats) -> Iterator[_Located]:
  builder = _DocumentBuilder(options.max_document_chars, stats)
  for line in _read_lines(path, options, stats):
    text = line.text.strip()
    if not text:
      yield builder.finish()
      continue
    # A line too long to be a sentence is prose: split it.
    sentences = split_sentences(text) if line.is_piece else [text]
    yield from builder.add(sentences, f'{path}:{line.number}')
  yield builder.finish()


def _line_documents(path, options, stats) -> Iterator[_Located]:
  builder = _DocumentBuilder(options.max_document_chars, stats)
  number = 0
  for line in _read_lines(path, options, stats):
    # The pieces of a cut line share its number and its document.
    if line.number != number:
      yield builder.finish()
      number = line.number
    yield from builder.add(split_sentences(line.text), f'{path}:{line.number}')
  yield builder.finish()


def _file_documents(path, options, stats) -> Iterator[_Located]:
  builder = _DocumentBuilder(options.max_document_chars, stats)
  for line in _read_lines(path, options, stats):
    yield from builder.add(split_sentences(line.text), f'{path}:{line.number}')
  yield builder.finish()


def _record_text(record, field: str, where: str, stats: Stats) -> str | None:
  """The text field of a JSON object or CSV row, or None (counted)."""
  text = record.get(field) if isinstance(record, dict) else None
  if not isinstance(text, str):
    stats.skip(SKIP_MISSING_FIELD, where)
    return None
  return text


def _record_lines(path, options, stats) -> Iterator[_Line]:
  """The lines of a JSONL or CSV file; over-long ones are skipped (counted)."""
  skipped_line = 0
  for line in _read_lines(path, options, stats):
    if not line.is_piece:
      yield line
    elif line.number != skipped_line:
      stats.skip(SKIP_LINE_TOO_LONG, f'{path}:{line.number}')
      skipped_line = line.number


def _jsonl_documents(path, options, stats) -> Iterator[_Located]:
  for line in _record_lines(path, options, stats):
    where = f'{path}:{line.number}'
    if not line.text.strip():
      continue
    try:
      record = json.loads(line.text)
    except json.JSONDecodeError:
      stats.skip(SKIP_INVALID_JSON, where)
      continue
    text = _record_text(record, options.text_field, where, stats)
    if text is not None:
      yield from _split_record(text, where, options, stats)


def _split_record(text, where, options, stats) -> Iterator[_Located]:
  """A record's text (a paragraph per line) as one document, or several."""
  builder = _DocumentBuilder(options.max_document_chars, stats)
  sentences = [s for p in text.split('\n') for s in split_sentences(p)]
  yield from builder.add(sentences, where)
  document = builder.finish()
  if document[0]:
    yield document
  else:
    stats.skip(SKIP_EMPTY_DOCUMENT, where)


def _csv_documents(path, options, stats) -> Iterator[_Located]:
  numbers = []

  def text_lines():
    for line in _record_lines(path, options, stats):
      numbers.append(line.number)
      yield line.text + '\n'

  # The csv module keeps its field limit process-wide; a document-sized field
  # is legitimate here, and memory is bounded by max_line_bytes anyway.
  csv.field_size_limit(max(csv.field_size_limit(), options.max_line_bytes))
  reader = csv.DictReader(text_lines())
  while True:
    try:
      row = next(reader)
    except StopIteration:
      return
    except csv.Error:
      stats.skip(SKIP_INVALID_CSV, f'{path}:{numbers[-1] if numbers else 1}')
      continue
    where = f'{path}:{numbers[-1]}'
    if options.text_field not in (reader.fieldnames or ()):
      stats.skip(SKIP_MISSING_FIELD, f'{path}:1')
      return
    text = _record_text(row, options.text_field, where, stats)
    if text is not None:
      yield from _split_record(text, where, options, stats)


_READERS = {
  'bert': _bert_documents,
  'lines': _line_documents,
  'file': _file_documents,
  'jsonl': _jsonl_documents,
  'csv': _csv_documents,
}


def get_format(path: str, options: ReadOptions) -> str:
  """The format `path` is read in under `options`."""
  if options.input_format != 'auto':
    return options.input_format
  extension = path.lower().rpartition('.')[2]
  return _FORMAT_BY_EXTENSION.get('.' + extension, 'bert')


class InputError(ValueError):
  """Input that cannot be read as asked: files of the wrong kind (TFRecords
  where text goes, bytes that are neither), or reading options that do not
  exist."""


# What bertjax's own writers name a file they have not finished (records
# shards in `create_pretraining_data`; `files.replacing`): never an input.
_INCOMPLETE_SUFFIXES = ('.incomplete', '.partial')
_SNIFF_BYTES = 1 << 16


def file_kind(path: str) -> str:
  """'tfrecord', 'text' or 'binary', from what `path` holds, not its name:
  TFRecords if the first record reads with its length and CRCs intact; text
  if UTF-8 without NUL bytes, a few bad bytes allowed (they are repaired when
  read), or empty; anything else is binary."""
  with tf.io.gfile.GFile(path, 'rb') as f:
    head = f.read(_SNIFF_BYTES)
  if len(head) >= 16:
    try:
      next(iter(tf.data.TFRecordDataset(path).take(1)))
      return 'tfrecord'
    except (tf.errors.OpError, StopIteration):
      pass
  if b'\0' in head:
    return 'binary'
  text = head.decode('utf-8', 'replace')
  bad = text.count('\ufffd') + len(_CONTROL_RE.findall(text.replace('\r', '')))
  # The sample may end inside a character; repaired bytes are rare in text.
  return 'binary' if bad > 4 + len(text) // 100 else 'text'


def check_text_inputs(paths: Sequence[str]) -> None:
  """Raises `InputError` naming the first of `paths` that is not text."""
  for path in paths:
    kind = file_kind(path)
    if kind != 'text':
      raise InputError(
        f'{path}: not text but {"TFRecords" if kind == "tfrecord" else kind} '
        '(this takes text files; records go to training as they are)'
        if kind == 'tfrecord'
        else f'{path}: binary data, not UTF-8 text'
      )


def split_patterns(patterns: str | Sequence[str]) -> list[str]:
  """Globs from a comma-separated string (or a list), blanks dropped."""
  if isinstance(patterns, str):
    patterns = patterns.split(',')
  return [p.strip() for p in patterns if p and p.strip()]


def expand_patterns(
  patterns: str | Sequence[str], stats: Stats | None = None
) -> list[str]:
  """Expands globs (local or `gs://`) into a sorted, de-duplicated file list.

  `patterns` is a glob, a comma-separated string of globs or a list of them.
  Directories and unfinished outputs are left out (and counted in `stats`,
  if given). A pattern that matches no file raises FileNotFoundError, so a
  typo cannot drop data silently.
  """
  files = set()
  for pattern in split_patterns(patterns):
    try:
      matches = tf.io.gfile.glob(pattern)
    except tf.errors.NotFoundError:  # A gs:// bucket that does not exist.
      matches = []
    found = False
    for path in matches:
      if path.endswith(_INCOMPLETE_SUFFIXES):
        # Left by a writer that was killed: a torn file, never data.
        logging.warning('Skipping %s: an unfinished output', path)
        if stats is not None:
          stats.skip(SKIP_INCOMPLETE, path)
      elif not tf.io.gfile.isdir(path):
        files.add(path)
        found = True
      elif stats is not None:
        stats.skip(SKIP_DIRECTORY, path)
    if not found:
      raise FileNotFoundError(f'no file matches {pattern!r}')
  if not files:
    raise FileNotFoundError('no input files given')
  return sorted(files)


def total_size(paths: Sequence[str]) -> int:
  """The bytes in `paths` (local or `gs://`), as `Stats.bytes` counts them."""
  return sum(tf.io.gfile.stat(path).length for path in paths)


def read_file_documents(
  path: str, options: ReadOptions, stats: Stats
) -> Iterator[list[str]]:
  """Yields the documents (lists of sentences) of a local or `gs://` file.

  Never raises for bad input: a file that is missing (it may vanish after
  the glob) or fails mid-read is counted as skipped; documents already read
  from it are kept, the one being read when it failed is dropped.
  """
  reader = _READERS[get_format(path, options)]
  produced = 0
  try:
    for document in _counted(reader(path, options, stats), stats):
      produced += 1
      yield document
  except tf.errors.NotFoundError:
    stats.skip(SKIP_FILE_NOT_FOUND, path)
    return
  except (tf.errors.OpError, OSError) as e:
    stats.skip(SKIP_READ_ERROR, f'{path}: {type(e).__name__}')
    return
  if not produced:
    stats.skip(SKIP_EMPTY_FILE, path)


def _counted(located: Iterable[_Located], stats: Stats) -> Iterator[list[str]]:
  """The non-empty documents of `located`, counted."""
  for sentences, where in located:
    if sentences:
      if len(sentences) == 1:
        stats.flag(FLAG_SINGLE_SENTENCE, where)
      stats.documents += 1
      stats.sentences += len(sentences)
      yield sentences


def read_documents(
  paths: Sequence[str], options: ReadOptions, stats: Stats
) -> Iterator[list[str]]:
  """Yields the documents of `paths` in order (see `read_file_documents`)."""
  for path in paths:
    yield from read_file_documents(path, options, stats)


def read_tfds_documents(
  name: str,
  split: str,
  data_dir: str | None,
  stats: Stats,
  text_field: str = 'text',
  max_document_chars: int = ReadOptions.max_document_chars,
) -> Iterator[list[str]]:
  """The documents (lists of sentences) of a prepared TFDS text dataset.

  Never downloads: prepare it first, or build one from local files with
  `python -m data_pipeline.build_tfds`. `name` may carry a config and
  version (`wikipedia/20230601.en`), `split` a slice (`train[:10%]`). Each
  example's `text_field` is one document, newlines separating paragraphs.
  The dataset is opened now, so an unknown or unprepared one raises here
  (FileNotFoundError, or TFDS's DatasetNotFoundError, a ValueError), as does
  one without `text_field` (InputError).
  """
  import tensorflow_datasets as tfds  # Heavy; only TFDS inputs need it.

  try:
    ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
  except AssertionError as e:  # How TFDS reports a dataset not prepared.
    raise FileNotFoundError(f'TFDS dataset {name}: {e}') from e
  if text_field not in ds.element_spec:
    raise InputError(
      f'{name} has no feature {text_field!r}: it has {sorted(ds.element_spec)}'
    )
  options = ReadOptions(max_document_chars=max_document_chars)
  return _tfds_documents(ds, f'{name}/{split}', text_field, options, stats)


def _tfds_documents(ds, source, text_field, options, stats):
  for number, example in enumerate(ds.as_numpy_iterator()):
    where = f'{source}:{number}'
    text = _decode(example[text_field], where, stats)
    yield from _counted(_split_record(text, where, options, stats), stats)
