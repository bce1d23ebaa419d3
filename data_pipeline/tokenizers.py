"""Tokenizers: one interface over BERT WordPiece and SentencePiece.

Turns text into BERT input ids, in Python and in a tf.data graph; tells the
masker the special ids (never masked) and which ids start a word; trains new
vocabularies. `create_tokenizer` picks the implementation from the file.

* WordPieceTokenizer reads a BERT `vocab.txt` and runs Hugging Face
  `tokenizers` with BERT's normaliser and pre-tokenizer: its ids equal those
  of transformers' BertTokenizer and of BERT's original algorithm on English
  and Chinese text, cased and uncased. A literal special token in the text
  ('[MASK]') stays one id, as in transformers.
* SentencePieceTokenizer loads a `.model`; the BERT specials map to single
  ids ([PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4 in models trained by
  data_pipeline.train_tokenizer).

In-graph (`create_tf_tokenize_fn`), WordPiece runs the much faster
`tensorflow_text.FastBertTokenizer` with its own normalisation off, as it is
not BERT's (it keeps U+FFFD, folds full-width forms, splits a literal
'[MASK]'); the graph does BERT's normalisation itself, and its ids equal
the Python ids but on a few recent code points whose Unicode tables differ
between TensorFlow's ICU and the Rust crates. SentencePiece's in-graph op
breaks Viterbi near-ties differently: a few texts get another segmentation
of the same probability ('▁mo de rate' vs '▁mo der ate').
"""

import abc
import collections
import io
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import sentencepiece
import tensorflow as tf
import tensorflow_text as tf_text
import tokenizers as hf_tokenizers
from absl import logging
from sentencepiece import sentencepiece_model_pb2, sentencepiece_pb2

from data_pipeline import files, progress

PAD, UNK, CLS, SEP, MASK = '[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
# SentencePiece marks the start of a word with this meta symbol (U+2581).
SP_WORD_START = '\u2581'
# BERT's WordPiece: a word longer than this becomes one [UNK].
_MAX_CHARS_PER_WORD = 100
# A literal special token in text is kept as one id, as transformers does.
_SPECIALS_RE = r'\[(?:PAD|UNK|CLS|SEP|MASK)\]'
# What BERT's _clean_text deletes: NUL, U+FFFD and control/format characters
# (Unicode category C) except the whitespace controls \t \n \r.
_DELETED_CHARS_RE = r'[\x{0}\x{fffd}]|[^\t\n\r\PC]'
# Text that BERT's clean-up and accent stripping leave as it is, and that
# lower-cases byte by byte: printable ASCII and \t \n \r.
_PLAIN_RE = r'[\t\n\r\x{20}-\x{7e}]*'
# What no vocab token holds: whitespace (re's \s is str.isspace) and C0
# controls; one search per token, far cheaper than a loop over characters.
_NOT_IN_A_TOKEN = re.compile(r'[\s\x00-\x1f\x7f]')


class VocabError(ValueError):
  """A vocab file or SentencePiece model is empty, unreadable or malformed."""


class Tokenizer(abc.ABC):
  """Maps text to BERT input ids and back; no special tokens are added.

  Attributes:
    path: the vocab file or model this tokenizer was read from.
    pad_id, unk_id, cls_id, sep_id, mask_id: ids of the BERT specials.
  """

  def __init__(
    self, path: str, pieces: Sequence[str], special_ids: dict[str, int]
  ):
    """Records a vocabulary that a subclass read from `path`: `pieces` in id
    order, and `special_ids` mapping each of SPECIAL_TOKENS to its id."""
    self.path = path
    self._pieces = list(pieces)
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
      special_ids[token] for token in SPECIAL_TOKENS
    )
    self._word_starts: np.ndarray | None = None

  @property
  def vocab_size(self) -> int:
    """Number of ids: valid ids are 0 .. vocab_size - 1."""
    return len(self._pieces)

  @property
  def special_ids(self) -> np.ndarray:
    """Sorted ids that the masker must never choose, int32 [n]."""
    ids = {self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id}
    return np.array(sorted(ids | self._extra_special_ids()), np.int32)

  def _extra_special_ids(self) -> set[int]:
    """Control ids beyond the BERT five, for subclasses to add."""
    return set()

  @property
  def replacement_range(self) -> tuple[int, int]:
    """(low, high): MLM's random replacements come from these ids: the
    whole vocabulary, as in BERT (the masker leaves out special_ids)."""
    return (0, self.vocab_size)

  def encode(self, text: str) -> list[int]:
    """The ids of one text, without [CLS]/[SEP]."""
    return self.encode_batch([text])[0]

  @abc.abstractmethod
  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """The ids of each text, without [CLS]/[SEP] (computed in parallel where
    the backend can)."""

  @abc.abstractmethod
  def encode_with_offsets(
    self, texts: Sequence[str]
  ) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """The ids of each text (as encode_batch) and, for each id, the
    (start, end) character span of the text it came from (what maps an
    answer span back to the original text)."""

  @abc.abstractmethod
  def decode(self, ids: Sequence[int]) -> str:
    """The text of `ids`, normalised as the tokenizer normalises (e.g.
    lower-cased), with specials written out ('[MASK]')."""

  def id_to_token(self, token_id: int) -> str:
    """Returns the vocabulary piece of one id."""
    return self._pieces[token_id]

  def tokens(self, ids: Sequence[int]) -> list[str]:
    """Returns the vocabulary pieces of ids ('un', '##aff', ...)."""
    return [self._pieces[i] for i in ids]

  def word_start_table(self) -> np.ndarray:
    """Which ids begin a word (specials do), for whole-word masking: bool
    [vocab_size], read-only; gather it with ids (np.take, tf.gather)."""
    if self._word_starts is None:
      table = self._compute_word_starts()
      table[self.special_ids] = True
      table.setflags(write=False)
      self._word_starts = table
    return self._word_starts

  @abc.abstractmethod
  def _compute_word_starts(self) -> np.ndarray:
    """Returns bool [vocab_size]: which pieces begin a word."""

  def is_word_start(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """Returns whether each id begins a word: bool, the shape of ids."""
    return self.word_start_table()[np.asarray(ids)]

  @abc.abstractmethod
  def create_tf_tokenize_fn(self) -> Callable[[tf.Tensor], tf.RaggedTensor]:
    """In-graph tokenization, usable in tf.data.Dataset.map.

    Returns:
      A function: tf.string [batch] -> int32 RaggedTensor [batch, (tokens)]
      (a scalar string gives int32 [tokens]); ids as encode_batch gives.
    """


class WordPieceTokenizer(Tokenizer):
  """BERT WordPiece over a vocab.txt, with BERT's basic tokenizer."""

  def __init__(self, vocab_path: str, do_lower_case: bool | None = None):
    """Reads a vocab.txt (line i is id i; local path or gs://).

    `do_lower_case`: lower-case and strip accents (an uncased vocab); None
    infers it with infer_do_lower_case. Raises as read_vocab_txt does.
    """
    pieces = read_vocab_txt(vocab_path)
    ids = {piece: i for i, piece in enumerate(pieces)}
    super().__init__(vocab_path, pieces, ids)
    if do_lower_case is None:
      do_lower_case = infer_do_lower_case(pieces)
    self.do_lower_case = do_lower_case
    tokenizer = hf_tokenizers.Tokenizer(
      hf_tokenizers.models.WordPiece(
        ids, unk_token=UNK, max_input_chars_per_word=_MAX_CHARS_PER_WORD
      )
    )
    # strip_accents=None follows lowercase, as in BERT.
    tokenizer.normalizer = hf_tokenizers.normalizers.BertNormalizer(
      clean_text=True,
      handle_chinese_chars=True,
      strip_accents=None,
      lowercase=do_lower_case,
    )
    tokenizer.pre_tokenizer = hf_tokenizers.pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = hf_tokenizers.decoders.WordPiece(prefix='##')
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    self._tokenizer = tokenizer

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    # _fast skips computing character offsets, which are not needed here.
    encodings = self._tokenizer.encode_batch_fast(
      list(texts), add_special_tokens=False
    )
    return [e.ids for e in encodings]

  def encode_with_offsets(self, texts):
    encodings = self._tokenizer.encode_batch(
      list(texts), add_special_tokens=False
    )
    return [(e.ids, [tuple(o) for o in e.offsets]) for e in encodings]

  def decode(self, ids: Sequence[int]) -> str:
    return self._tokenizer.decode(list(ids), skip_special_tokens=False)

  def _compute_word_starts(self) -> np.ndarray:
    return np.array([not p.startswith('##') for p in self._pieces])

  def create_tf_tokenize_fn(self) -> Callable[[tf.Tensor], tf.RaggedTensor]:
    fast = tf_text.FastBertTokenizer(
      vocab=self._pieces,
      suffix_indicator='##',
      max_bytes_per_word=_MAX_CHARS_PER_WORD,
      token_out_type=tf.int32,
      unknown_token=UNK,
      # BERT's normalisation is done below; FastBertTokenizer's own differs.
      lower_case_nfd_strip_accents=False,
    )
    values = [self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id]
    special_table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
        tf.constant(SPECIAL_TOKENS), tf.constant(values, tf.int32)
      ),
      default_value=-1,
    )
    do_lower_case = self.do_lower_case

    def normalize(text: tf.Tensor) -> tf.Tensor:
      """BERT's clean-up (and, uncased, lower case and no accents)."""
      text = tf.strings.regex_replace(text, _DELETED_CHARS_RE, '')
      if do_lower_case:
        text = tf.strings.lower(text, encoding='utf-8')
        text = tf_text.normalize_utf8(text, 'NFD')
        text = tf.strings.regex_replace(text, r'\p{Mn}', '')
      return text

    def tokenize_batch(texts: tf.Tensor) -> tf.RaggedTensor:
      # Printable ASCII has nothing to delete or decompose and lower-cases
      # byte by byte: the Unicode passes run on the other texts only.
      plain = tf.strings.regex_full_match(texts, _PLAIN_RE)
      other = tf.where(~plain)[:, 0]
      # regex_split stops at a NUL; U+FFFD is deleted below just as NUL is.
      texts = _on_rows(
        lambda t: tf.strings.regex_replace(t, r'\x{0}', '\ufffd'), texts, other
      )
      # Split out literal specials first: transformers matches them in the
      # raw text, before any normalisation.
      parts = tf_text.regex_split(texts, _SPECIALS_RE, _SPECIALS_RE)
      flat = parts.flat_values
      special_ids = special_table.lookup(flat)
      is_special = special_ids >= 0
      text = tf.where(is_special, '', flat)
      plain_part = tf.gather(plain, parts.value_rowids())
      lowered = tf.strings.lower(text) if do_lower_case else text
      text = _on_rows(
        normalize, lowered, tf.where(~plain_part)[:, 0], source=text
      )
      ids = fast.tokenize(text)
      # Special parts tokenized to nothing; give each its one id.
      specials = tf.RaggedTensor.from_row_lengths(
        tf.boolean_mask(special_ids, is_special), tf.cast(is_special, tf.int64)
      )
      ids = tf.concat([ids, specials], axis=1)
      return parts.with_flat_values(ids).merge_dims(1, 2)

    return _accept_scalars(tokenize_batch)


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model with the BERT specials as single ids."""

  def __init__(self, model_path: str):
    """Loads a SentencePiece .model (local path or gs://).

    [PAD]/[UNK]/[CLS]/[SEP]/[MASK] are looked up as pieces; a model without
    them falls back to its pad, unk, bos and eos ids and a '<mask>' piece.
    Raises VocabError for a file that is no model or lacks a special.
    """
    proto = _read_bytes(model_path)
    if not proto:
      raise VocabError(f'{model_path}: empty SentencePiece model')
    processor = sentencepiece.SentencePieceProcessor()
    try:
      processor.LoadFromSerializedProto(proto)
    except (RuntimeError, OSError) as e:
      raise VocabError(
        f'{model_path}: not a SentencePiece model ({str(e).strip()[:80]})'
      ) from None
    model = sentencepiece_model_pb2.ModelProto.FromString(proto)
    if not model.pieces:
      raise VocabError(f'{model_path}: SentencePiece model has no pieces')
    pieces = [p.piece for p in model.pieces]
    # The processor cannot tell user-defined pieces from normal ones.
    self._piece_types = np.array([p.type for p in model.pieces])
    ids = {p: i for i, p in enumerate(pieces)}
    fallbacks = {
      PAD: processor.pad_id(),
      UNK: processor.unk_id(),
      CLS: processor.bos_id(),
      SEP: processor.eos_id(),
      MASK: ids.get('<mask>', -1),
    }
    special_ids = {s: ids.get(s, fallbacks[s]) for s in SPECIAL_TOKENS}
    missing = [s for s, i in special_ids.items() if i < 0]
    if missing:
      raise VocabError(
        f'{model_path}: no id for {", ".join(missing)}; train the model '
        'with data_pipeline.train_tokenizer'
      )
    super().__init__(model_path, pieces, special_ids)
    self._processor = processor
    self._proto = proto

  def _extra_special_ids(self) -> set[int]:
    piece = sentencepiece_model_pb2.ModelProto.SentencePiece
    not_text = (piece.CONTROL, piece.UNKNOWN, piece.UNUSED)
    return set(np.flatnonzero(np.isin(self._piece_types, not_text)).tolist())

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._processor.encode(list(texts), out_type=int)

  def encode_with_offsets(self, texts):
    out = []
    for text, proto in zip(
      texts,
      # Serialized protos: what every sentencepiece 0.2 returns alike
      # ('immutable_proto' is gone from 0.2.3, 'proto' is new in it).
      self._processor.encode(list(texts), out_type='serialized_proto'),
      strict=True,
    ):
      proto = sentencepiece_pb2.SentencePieceText.FromString(proto)
      # SentencePiece gives byte offsets into the UTF-8 text.
      char_at = np.zeros(len(text.encode('utf-8')) + 1, np.int64)
      position = 0
      for i, ch in enumerate(text):
        width = len(ch.encode('utf-8'))
        char_at[position : position + width] = i
        position += width
      char_at[position] = len(text)
      pieces = proto.pieces
      out.append(
        (
          [p.id for p in pieces],
          [(int(char_at[p.begin]), int(char_at[p.end])) for p in pieces],
        )
      )
    return out

  def decode(self, ids: Sequence[int]) -> str:
    # SentencePiece drops control pieces and shows unknown as ' ⁇ '; write
    # the specials out instead, like WordPiece does.
    special = set(self.special_ids.tolist())
    parts, run = [], []
    for i in ids:
      if i in special:
        parts += [self._processor.decode(run).strip(), self._pieces[i]]
        run = []
      else:
        run.append(i)
    parts.append(self._processor.decode(run).strip())
    return ' '.join(p for p in parts if p)

  def _compute_word_starts(self) -> np.ndarray:
    table = np.array([p.startswith(SP_WORD_START) for p in self._pieces])
    user_defined = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    table[self._piece_types == user_defined] = True
    return table

  def create_tf_tokenize_fn(self) -> Callable[[tf.Tensor], tf.RaggedTensor]:
    sp = tf_text.SentencepieceTokenizer(model=self._proto, out_type=tf.int32)
    return _accept_scalars(sp.tokenize)


def _on_rows(
  fn: Callable[[tf.Tensor], tf.Tensor],
  texts: tf.Tensor,
  rows: tf.Tensor,
  source: tf.Tensor | None = None,
) -> tf.Tensor:
  """`[batch]` strings `texts` with `texts[rows]` (`rows`: `[n]` int64)
  replaced by `fn(source[rows])`; `source` defaults to `texts`."""
  source = texts if source is None else source
  return tf.tensor_scatter_nd_update(
    texts, rows[:, tf.newaxis], fn(tf.gather(source, rows))
  )


def _accept_scalars(
  tokenize_batch: Callable[[tf.Tensor], tf.RaggedTensor],
) -> Callable[[tf.Tensor], tf.RaggedTensor]:
  """Wraps a [batch] -> [batch, (tokens)] function to accept a scalar too."""

  def tokenize(texts: tf.Tensor) -> tf.RaggedTensor:
    texts = tf.convert_to_tensor(texts, tf.string)
    if texts.shape.rank == 0:
      return tokenize_batch(texts[tf.newaxis])[0]
    if texts.shape.rank != 1:
      raise ValueError(f'expected a scalar or [batch] of strings: {texts}')
    return tokenize_batch(texts)

  return tokenize


def _read_bytes(path: str | os.PathLike) -> bytes:
  """Reads a local or gs:// file, raising FileNotFoundError if absent."""
  path = os.fspath(path)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f'no such vocab/model file: {path}')
  if tf.io.gfile.isdir(path):
    raise IsADirectoryError(f'{path} is a directory, not a vocab/model file')
  with tf.io.gfile.GFile(path, 'rb') as f:
    return f.read()


def read_vocab_txt(path: str | os.PathLike) -> list[str]:
  """Reads and checks a BERT vocab.txt; returns the tokens in id order.

  Raises VocabError for a file that is not UTF-8 text, is empty, has a blank
  or whitespace-bearing line or a repeated token, or lacks a BERT special.
  """
  path = os.fspath(path)
  try:
    text = _read_bytes(path).decode('utf-8')
  except UnicodeDecodeError as e:
    raise VocabError(
      f'{path}: not a UTF-8 text vocab (bad byte at offset {e.start}); '
      'SentencePiece models must end in .model'
    ) from None
  lines = text.split('\n')
  if lines[-1] == '':
    lines.pop()
  # A vocab written on Windows ends lines with \r\n; no token ends in \r.
  tokens = [line.removesuffix('\r') for line in lines]
  if not tokens:
    raise VocabError(f'{path}: empty vocab')
  seen: dict[str, int] = {}
  for number, token in enumerate(tokens, start=1):
    if not token:
      raise VocabError(f'{path}: line {number} is blank')
    if '\t' in token:
      raise VocabError(
        f'{path}: line {number} has a tab; a SentencePiece .vocab is not a '
        'WordPiece vocab, use its .model'
      )
    # Format characters (zero-width, ...) occur in real vocabs; whitespace
    # and C0 controls only in a file that is not a vocab.
    if _NOT_IN_A_TOKEN.search(token):
      raise VocabError(
        f'{path}: line {number} ({token[:20]!r}) has whitespace or control '
        'characters'
      )
    if token in seen:
      raise VocabError(
        f'{path}: token {token!r} repeats on lines {seen[token]} and {number}'
      )
    seen[token] = number
  missing = [s for s in SPECIAL_TOKENS if s not in seen]
  if missing:
    raise VocabError(f'{path}: missing special tokens {" ".join(missing)}')
  return tokens


def infer_do_lower_case(pieces: Sequence[str]) -> bool:
  """Whether a WordPiece vocab is uncased: lower-casing changes no token
  outside [BRACKETED] specials. (Not `isupper`: uncased BERT vocabs hold
  'ℝ', upper case with no lower.)"""
  return all(
    p.lower() == p
    for p in pieces
    if not (p.startswith('[') and p.endswith(']'))
  )


def create_tokenizer(
  path: str | os.PathLike, do_lower_case: bool | None = None
) -> Tokenizer:
  """Opens a vocab.txt (WordPiece) or a .model (SentencePiece).

  `path` may also be a directory holding vocab.txt (such as
  `bertjax.pretrained.resolve('all-minilm-l6-v2')`). `do_lower_case` is for
  WordPiece only; None infers it from the vocab.
  """
  path = os.fspath(path)
  if tf.io.gfile.isdir(path):
    path = os.path.join(path, 'vocab.txt')
  if path.endswith('.model'):
    if do_lower_case is not None:
      raise VocabError(
        f'{path}: do_lower_case applies to WordPiece vocabs; a SentencePiece '
        'model carries its own normalisation'
      )
    return SentencePieceTokenizer(path)
  return WordPieceTokenizer(path, do_lower_case=do_lower_case)


def read_text_lines(
  paths: Iterable[str], bar: progress.Progress | None = None
) -> Iterator[str]:
  """Yields the non-blank lines of UTF-8 text files (local or gs://),
  stripped, counting the bytes read on `bar`; raises VocabError for a file
  that is not UTF-8 text."""
  for path in paths:
    with tf.io.gfile.GFile(path, 'rb') as f:
      for number, raw in enumerate(f, start=1):
        if bar is not None:
          bar.update(len(raw))
        try:
          line = raw.decode('utf-8').strip()
        except UnicodeDecodeError:
          raise VocabError(f'{path}: line {number} is not UTF-8 text') from None
        if line:
          yield line


def sample_lines(lines: Iterable[str], size: int, seed: int = 0) -> list[str]:
  """`size` of `lines` (read once) drawn uniformly by reservoir sampling, in
  no particular order; all of them if `size` is 0."""
  if size == 0:
    return list(lines)
  rng = random.Random(seed)
  sample: list[str] = []
  for i, line in enumerate(lines):
    if i < size:
      sample.append(line)
    elif (j := rng.randrange(i + 1)) < size:
      sample[j] = line
  return sample


def train_sentencepiece(
  lines: Sequence[str],
  model_prefix: str,
  vocab_size: int,
  model_type: str = 'unigram',
  character_coverage: float = 1.0,
  max_sentence_length: int = 1 << 16,
) -> list[str]:
  """Trains a SentencePiece model with the BERT specials at ids 0-4.

  `vocab_size` counts the specials; lines longer than `max_sentence_length`
  bytes are skipped. Returns [PREFIX.model, PREFIX.vocab]; raises VocabError
  when SentencePiece rejects the data or settings (e.g. a vocab_size too
  large for the text).
  """
  model = io.BytesIO()
  try:
    sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(lines),
      model_writer=model,
      vocab_size=vocab_size,
      model_type=model_type,
      character_coverage=character_coverage,
      max_sentence_length=max_sentence_length,
      # Lines arrive already sampled (sample_lines); keep them all.
      input_sentence_size=0,
      pad_id=0,
      unk_id=1,
      bos_id=-1,
      eos_id=-1,
      pad_piece=PAD,
      unk_piece=UNK,
      # User-defined, not control, symbols: these are matched in raw text,
      # so '[MASK]' written in a sentence stays one piece.
      user_defined_symbols=[CLS, SEP, MASK],
      num_threads=os.cpu_count() or 1,
      minloglevel=1,
    )
  except RuntimeError as e:
    message = str(e).strip().splitlines()[-1]
    raise VocabError(f'SentencePiece training failed: {message}') from None
  processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
  vocab = ''.join(
    f'{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n'
    for i in range(processor.get_piece_size())
  )
  paths = [model_prefix + '.model', model_prefix + '.vocab']
  files.write_atomic(paths[0], model.getvalue())
  files.write_atomic(paths[1], vocab.encode('utf-8'))
  return paths


def train_wordpiece(
  lines: Iterable[str],
  model_prefix: str,
  vocab_size: int,
  do_lower_case: bool = True,
  limit_alphabet: int = 1000,
) -> str:
  """Trains a WordPiece vocab (specials at ids 0-4); returns PREFIX.vocab.txt.

  The same lines give the same vocab, byte for byte, in any process.
  `limit_alphabet` keeps that many of the most frequent characters; rarer
  ones become [UNK], so Chinese needs more than the default 1,000.
  """
  lines = list(lines)
  trainer = hf_tokenizers.BertWordPieceTokenizer(
    clean_text=True,
    handle_chinese_chars=True,
    strip_accents=None,
    lowercase=do_lower_case,
  )
  # The trainer alone is not deterministic (huggingface/tokenizers#1794): it
  # numbers `##c` tokens, which break ties between equal merges, and picks
  # the alphabet among equal counts, in hash-map order. Both are pinned:
  # the alphabet by (count, character), every `##c` numbered up front, as a
  # special token, in character order.
  normalizer = trainer.normalizer
  counts = collections.Counter()
  for start in range(0, len(lines), 1000):
    counts.update(
      normalizer.normalize_str('\n'.join(lines[start : start + 1000]))
    )
  pre_tokenize = trainer.pre_tokenizer.pre_tokenize_str
  alphabet = sorted(
    (c for c in counts if pre_tokenize(c)),  # Not whitespace.
    key=lambda c: (-counts[c], c),
  )[:limit_alphabet]
  continuations = [
    '##' + c
    for c in sorted(alphabet)
    if [w for w, _ in pre_tokenize(normalizer.normalize_str('x' + c))]
    == ['x' + c]  # c can continue a word (not punctuation, not CJK).
  ]
  trainer.train_from_iterator(
    lines,
    vocab_size=vocab_size,
    min_frequency=2,
    limit_alphabet=len(alphabet),
    initial_alphabet=alphabet,
    special_tokens=list(SPECIAL_TOKENS) + continuations,
    wordpieces_prefix='##',
    # Its own bars, drawn only on a terminal.
    show_progress=progress.on_terminal(),
  )
  by_id = sorted(trainer.get_vocab().items(), key=lambda kv: kv[1])
  if len(by_id) < vocab_size:
    logging.warning(
      'The text supports only %d of the %d tokens asked for (words seen '
      'once are not merged)',
      len(by_id),
      vocab_size,
    )
  path = model_prefix + '.vocab.txt'
  files.write_atomic(
    path, ''.join(f'{token}\n' for token, _ in by_id).encode('utf-8')
  )
  return path
