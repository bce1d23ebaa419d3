"""Trains a BERT vocabulary: a SentencePiece model or a WordPiece vocab.txt.

This CLI owns building new vocabularies from text files (one sentence or
document per line, read through tf.io.gfile so gs:// globs work). Both kinds
reserve the BERT specials as single ids, first:

  [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4

SentencePiece (unigram or bpe) gets [PAD]/[UNK] as its pad/unk pieces and
[CLS]/[SEP]/[MASK] as user-defined symbols, so a literal '[MASK]' in text
stays one token; it writes PREFIX.model and PREFIX.vocab. WordPiece uses
Hugging Face `tokenizers` with BERT's normaliser and writes PREFIX.vocab.txt
(BERT's own vocabs put [PAD] at 0 and [UNK]..[MASK] at 100..103; a new vocab
has no reason to). Open either with data_pipeline.tokenizers.create_tokenizer.

Usage:

  python -m data_pipeline.train_tokenizer --input_files='/data/news/*.txt' \\
    --model_prefix=/tmp/news_sp --vocab_size=8000 --model_type=unigram
  python -m data_pipeline.train_tokenizer --input_files=gs://b/wiki-*.txt \\
    --model_prefix=gs://b/vocab/wiki_wp --vocab_size=30522 \\
    --model_type=wordpiece --do_lower_case
"""

import io
import os
import random
from collections.abc import Iterable, Iterator, Sequence

import sentencepiece
import tensorflow as tf
import tokenizers as hf_tokenizers
from absl import flags, logging

from data_pipeline import tokenizers

MODEL_TYPES = ('unigram', 'bpe', 'wordpiece')


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this CLI's flags.

  Not at import time: other modules import the training functions, and
  their programs define flags of the same names (--input_files).

  Args:
    flag_values: where to define them.
  """
  fv = {'flag_values': flag_values}
  flags.DEFINE_list(
    'input_files',
    None,
    'Text files, one sentence or document per line: comma-separated paths or '
    'globs (gs:// works).',
    **fv,
  )
  flags.DEFINE_string(
    'model_prefix',
    None,
    'Output prefix: writes PREFIX.model and PREFIX.vocab (SentencePiece) or '
    'PREFIX.vocab.txt (wordpiece).',
    **fv,
  )
  flags.DEFINE_integer(
    'vocab_size',
    None,
    'Vocabulary size, specials included.',
    lower_bound=len(tokenizers.SPECIAL_TOKENS) + 1,
    **fv,
  )
  flags.DEFINE_enum('model_type', 'unigram', MODEL_TYPES, 'Algorithm.', **fv)
  flags.DEFINE_float(
    'character_coverage',
    1.0,
    'SentencePiece: share of characters the alphabet covers. Below 1.0 the '
    "rarest become [UNK]; at SentencePiece's 0.9995 that is '!', '%' and '@' "
    'in 2 MB of English news. 0.9995 suits CJK text with a small vocab.',
    **fv,
  )
  flags.DEFINE_integer(
    'input_sentence_size',
    1_000_000,
    'Train on at most this many lines, sampled uniformly at random; 0: all.',
    lower_bound=0,
    **fv,
  )
  flags.DEFINE_bool(
    'do_lower_case',
    True,
    'wordpiece: lower-case and strip accents (an uncased vocab).',
    **fv,
  )
  flags.DEFINE_integer(
    'limit_alphabet',
    1000,
    'wordpiece: keep this many of the most frequent characters; raise it '
    'for Chinese or Japanese text.',
    lower_bound=1,
    **fv,
  )
  flags.DEFINE_integer(
    'max_sentence_length',
    1 << 16,
    'SentencePiece: longer lines (in bytes) are skipped. Above its 4192 '
    'default so that whole documents count.',
    **fv,
  )


class TrainingError(ValueError):
  """The trainer rejected its input or settings."""


def expand_input_files(patterns: Sequence[str]) -> list[str]:
  """Expands comma-separated paths and globs.

  Args:
    patterns: paths or glob patterns (local or gs://).

  Returns:
    The matching files, sorted, without repeats.

  Raises:
    FileNotFoundError: a pattern matches no file.
  """
  paths = set()
  for pattern in patterns:
    try:
      matched = tf.io.gfile.glob(pattern)
    except tf.errors.NotFoundError:  # A gs:// bucket that does not exist.
      matched = []
    matched = [p for p in matched if not tf.io.gfile.isdir(p)]
    if not matched:
      raise FileNotFoundError(f'--input_files: no file matches {pattern!r}')
    paths.update(matched)
  return sorted(paths)


def read_lines(paths: Iterable[str]) -> Iterator[str]:
  """Yields the non-blank lines of UTF-8 text files, stripped.

  Args:
    paths: files (local or gs://).

  Yields:
    Lines without surrounding whitespace.

  Raises:
    TrainingError: a file is not UTF-8 text.
  """
  for path in paths:
    with tf.io.gfile.GFile(path, 'rb') as f:
      for number, raw in enumerate(f, start=1):
        try:
          line = raw.decode('utf-8').strip()
        except UnicodeDecodeError:
          raise TrainingError(
            f'{path}: line {number} is not UTF-8 text'
          ) from None
        if line:
          yield line


def sample_lines(lines: Iterable[str], size: int, seed: int = 0) -> list[str]:
  """Returns `size` lines drawn uniformly (reservoir sampling), or all.

  Args:
    lines: the input lines; read once.
    size: how many to keep; 0 keeps all.
    seed: for the sample.

  Returns:
    The sample, in no particular order.
  """
  if size == 0:
    return list(lines)
  rng = random.Random(seed)
  sample: list[str] = []
  for i, line in enumerate(lines):
    if i < size:
      sample.append(line)
    else:
      j = rng.randrange(i + 1)
      if j < size:
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

  Args:
    lines: training text, one sentence or document per item.
    model_prefix: output prefix (local or gs://).
    vocab_size: pieces in the model, specials included.
    model_type: 'unigram' or 'bpe'.
    character_coverage: share of characters the alphabet must cover.
    max_sentence_length: longer lines, in bytes, are skipped.

  Returns:
    [PREFIX.model, PREFIX.vocab].

  Raises:
    TrainingError: SentencePiece rejected the data or settings (e.g. a
      vocab_size too large for the text).
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
      pad_piece=tokenizers.PAD,
      unk_piece=tokenizers.UNK,
      # User-defined, not control, symbols: these are matched in raw text,
      # so '[MASK]' written in a sentence stays one piece.
      user_defined_symbols=[tokenizers.CLS, tokenizers.SEP, tokenizers.MASK],
      num_threads=os.cpu_count() or 1,
      minloglevel=1,
    )
  except RuntimeError as e:
    message = str(e).strip().splitlines()[-1]
    raise TrainingError(f'SentencePiece training failed: {message}') from None
  processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
  vocab = ''.join(
    f'{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n'
    for i in range(processor.get_piece_size())
  )
  paths = [model_prefix + '.model', model_prefix + '.vocab']
  _write(paths[0], model.getvalue())
  _write(paths[1], vocab.encode('utf-8'))
  return paths


def train_wordpiece(
  lines: Iterable[str],
  model_prefix: str,
  vocab_size: int,
  do_lower_case: bool = True,
  limit_alphabet: int = 1000,
) -> str:
  """Trains a BERT WordPiece vocab with the BERT specials at ids 0-4.

  Args:
    lines: training text, one sentence or document per item (read once).
    model_prefix: output prefix (local or gs://).
    vocab_size: tokens in the vocab, specials included.
    do_lower_case: an uncased vocab (lower-cased, accents stripped).
    limit_alphabet: keep this many of the most frequent characters; rarer
      ones become [UNK]. Chinese needs more than the default 1,000 (People's
      Daily has 4,687 characters).

  Returns:
    PREFIX.vocab.txt.
  """
  trainer = hf_tokenizers.BertWordPieceTokenizer(
    clean_text=True,
    handle_chinese_chars=True,
    strip_accents=None,
    lowercase=do_lower_case,
  )
  trainer.train_from_iterator(
    lines,
    vocab_size=vocab_size,
    min_frequency=2,
    limit_alphabet=limit_alphabet,
    special_tokens=list(tokenizers.SPECIAL_TOKENS),
    wordpieces_prefix='##',
    show_progress=False,
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
  _write(path, ''.join(f'{token}\n' for token, _ in by_id).encode('utf-8'))
  return path


def _write(path: str, data: bytes) -> None:
  """Writes a file through gfile, creating its directory."""
  directory = os.path.dirname(path)
  if directory:
    tf.io.gfile.makedirs(directory)
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(data)


def main(
  argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS
) -> None:
  """Trains the vocabulary the flags describe and logs what it wrote.

  Args:
    argv: leftover command-line arguments; must be just the program name.
    flag_values: parsed flags, as define_flags defines them.

  Raises:
    FileNotFoundError: an input pattern matches nothing.
    TrainingError: a missing flag, no text, or the trainer failed.
  """
  if len(argv) > 1:
    raise TrainingError(f'unexpected arguments: {" ".join(argv[1:])}')
  fv = flag_values
  for name in ('input_files', 'model_prefix', 'vocab_size'):
    if not fv[name].value:
      raise TrainingError(f'--{name} is required')
  paths = expand_input_files(fv.input_files)
  lines = sample_lines(read_lines(paths), fv.input_sentence_size)
  if not lines:
    raise TrainingError(f'no text in {", ".join(paths)}')
  logging.info('Training on %d lines from %d files', len(lines), len(paths))
  if fv.model_type == 'wordpiece':
    written = [
      train_wordpiece(
        lines,
        fv.model_prefix,
        fv.vocab_size,
        do_lower_case=fv.do_lower_case,
        limit_alphabet=fv.limit_alphabet,
      )
    ]
  else:
    written = train_sentencepiece(
      lines,
      fv.model_prefix,
      fv.vocab_size,
      model_type=fv.model_type,
      character_coverage=fv.character_coverage,
      max_sentence_length=fv.max_sentence_length,
    )
  # The vocab must open as the pipeline will open it.
  tokenizer = tokenizers.create_tokenizer(written[0])
  logging.info('Wrote %s (%d ids)', ', '.join(written), tokenizer.vocab_size)


if __name__ == '__main__':
  from absl import app

  from bertjax import cli

  define_flags()

  def _main(argv: Sequence[str]) -> None:
    try:
      main(argv)
    except (TrainingError, tokenizers.VocabError) as e:
      raise cli.UserError(str(e)) from e

  app.run(cli.run(_main), flags_parser=cli.parse_flags)
