"""Word boundaries for whole-word masking, read where the text is tokenized.

WordPiece marks the later pieces of a word with '##', so word starts can be
read off the ids (`Tokenizer.word_start_table`). Chinese has no spaces, and
BERT's tokenizer makes each CJK character a token with no '##'
(SentencePiece, pieces with no '▁'), so the ids alone make every character
its own word (WordPiece) or whole sentences one word (SentencePiece).
Whole-word masking for Chinese (Cui et al. 2019, Chinese-BERT-wwm) masks
the characters of a segmented word together: here a segmenter cuts the text
into words, and `word_starts` combines them with the vocabulary's rule.
Texts without a CJK ideograph never reach the segmenter.

Segmenters (`word_segmenter`): 'jieba' (the default; jieba's dictionary and
HMM segmentation through rjieba, its faster Rust port); 'whitespace' (text
segmented already, words apart by whitespace, such as People's Daily's; it
leaves WordPiece ids unchanged); 'none' (the vocabulary's rule alone).
"""

import re
from collections.abc import Sequence

import numpy as np

SEGMENTERS = ('jieba', 'whitespace', 'none')

# The CJK ideograph blocks that BERT's tokenizer splits into single
# characters (`_is_chinese_char` of google-research/bert).
_CJK_RANGES = (
  (0x4E00, 0x9FFF),
  (0x3400, 0x4DBF),
  (0x20000, 0x2A6DF),
  (0x2A700, 0x2B73F),
  (0x2B740, 0x2B81F),
  (0x2B820, 0x2CEAF),
  (0xF900, 0xFAFF),
  (0x2F800, 0x2FA1F),
)
_CJK_RE = re.compile(
  '[' + ''.join(f'{chr(a)}-{chr(b)}' for a, b in _CJK_RANGES) + ']'
)
_WORD_RE = re.compile(r'\S+')


class SegmenterError(ValueError):
  """An unknown segmenter name."""


def check_segmenter(name: str) -> str:
  """Returns `name` if it is one of SEGMENTERS; raises SegmenterError."""
  if name not in SEGMENTERS:
    raise SegmenterError(
      f'word_segmenter {name!r} is not one of {list(SEGMENTERS)}'
    )
  return name


def has_cjk(text: str) -> bool:
  """Whether `text` holds a CJK ideograph (what segmentation can change)."""
  return _CJK_RE.search(text) is not None


def word_spans(text: str, segmenter: str) -> list[tuple[int, int]]:
  """The words of `text` as (start, end) character offsets, in order.

  'jieba' covers the whole text (whitespace and punctuation are words of
  their own); 'whitespace' gives the runs of non-space characters; 'none'
  gives no words.
  """
  check_segmenter(segmenter)
  if segmenter == 'whitespace':
    return [m.span() for m in _WORD_RE.finditer(text)]
  if segmenter == 'jieba':
    # Imported here: loading jieba's dictionary takes a moment, and only
    # Chinese text with whole-word masking needs it.
    import rjieba

    return [(start, end) for _, start, end in rjieba.tokenize(text)]
  return []


def word_starts(
  text: str,
  ids: Sequence[int],
  offsets: Sequence[tuple[int, int]],
  word_start_table: np.ndarray,
  segmenter: str,
) -> np.ndarray:
  """Which tokens of one text begin a word: `[len(ids)]` bool.

  `ids` and `offsets` are as `Tokenizer.encode_with_offsets` gives them (no
  `[CLS]`/`[SEP]`); `word_start_table` is `[vocab_size]` bool. A token whose
  first non-space character is a CJK ideograph starts a word iff a
  segmented word starts there. Any other token starts one where the table
  says so, and also where a segmented word starts: SentencePiece writes no
  '▁' before English glued to Chinese ('用tensorflow'). WordPiece's '##'
  pieces never begin a segmented word (jieba keeps runs of letters and
  digits whole), so English words stay as they were.
  """
  [starts] = batch_word_starts(
    [text], [(ids, offsets)], word_start_table, segmenter
  )
  return starts


def batch_word_starts(
  texts: Sequence[str],
  encodings: Sequence[tuple[Sequence[int], Sequence[tuple[int, int]]]],
  word_start_table: np.ndarray,
  segmenter: str,
) -> list[np.ndarray]:
  """`word_starts` of many texts at once: `encodings` holds each text's
  (ids, offsets); one segmenter call and one set of array operations for
  all of them (per-text calls cost more than the segmenting)."""
  check_segmenter(segmenter)
  if not encodings:
    return []
  lengths = [len(ids) for ids, _ in encodings]
  ids = np.fromiter(
    (i for token_ids, _ in encodings for i in token_ids), np.int64
  )
  starts = np.array(word_start_table[ids], bool)
  if segmenter != 'none' and len(ids):
    # One text: jieba never joins characters across a newline, and every
    # offset shifts by its text's place in it.
    joined = '\n'.join(texts)
    bases = np.cumsum([0] + [len(t) + 1 for t in texts[:-1]])
    codes = np.frombuffer(joined.encode('utf-32-le'), np.uint32)
    first = np.fromiter(
      (a for _, offsets in encodings for a, _ in offsets), np.int64, len(ids)
    )
    ends = np.fromiter(
      (b for _, offsets in encodings for _, b in offsets), np.int64, len(ids)
    )
    shift = np.repeat(bases, lengths)
    first, ends = first + shift, ends + shift
    # SentencePiece's pieces may begin with the space they replace ('▁').
    spaces = np.append(np.isin(codes, _SPACE_CODES), False)
    first = np.where(spaces[first] & (first + 1 < ends), first + 1, first)
    cjk = np.zeros(len(codes) + 1, bool)
    for low, high in _CJK_RANGES:
      cjk[:-1] |= (codes >= low) & (codes <= high)
    begins = np.zeros(len(codes) + 1, bool)
    begins[[start for start, _ in word_spans(joined, segmenter)]] = True
    starts = np.where(cjk[first], begins[first], starts | begins[first])
  return np.split(starts, np.cumsum(lengths)[:-1])


# Code points that str.isspace() calls whitespace (none lies above U+3000).
_SPACE_CODES = np.array([c for c in range(0x3001) if chr(c).isspace()])
