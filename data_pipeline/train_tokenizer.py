"""Trains a BERT vocabulary: a SentencePiece model or a WordPiece vocab.txt.

Both kinds reserve the BERT specials first, as single ids: [PAD]=0 [UNK]=1
[CLS]=2 [SEP]=3 [MASK]=4 (BERT's own vocabs put [UNK]..[MASK] at 100..103;
a new vocab has no reason to). SentencePiece (unigram, bpe) writes
PREFIX.model and PREFIX.vocab, with [CLS]/[SEP]/[MASK] as user-defined
symbols so a literal '[MASK]' stays one token; WordPiece (Hugging Face
`tokenizers`, BERT's normaliser) writes PREFIX.vocab.txt. Open either with
data_pipeline.tokenizers.create_tokenizer.

  python -m data_pipeline.train_tokenizer --input_files='/data/news/*.txt' \\
    --model_prefix=/tmp/news_sp --vocab_size=8000 --model_type=unigram
  python -m data_pipeline.train_tokenizer --input_files=gs://b/wiki-*.txt \\
    --model_prefix=gs://b/vocab/wiki_wp --vocab_size=30522 \\
    --model_type=wordpiece --do_lower_case
"""

from collections.abc import Sequence

from absl import flags, logging

from data_pipeline import documents, progress, tokenizers

MODEL_TYPES = ('unigram', 'bpe', 'wordpiece')


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this CLI's flags; not at import, as other programs define flags
  of the same names (--input_files)."""
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
    "rarest become [UNK] (at SentencePiece's 0.9995, even '!' and '%' in "
    'English news). 0.9995 suits CJK text with a small vocab.',
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


def main(
  argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS
) -> list[str]:
  """Trains the vocabulary the flags describe and returns the files written;
  raises FileNotFoundError when an input pattern matches nothing, and
  tokenizers.VocabError for a missing flag, no text, or a failed trainer."""
  del argv
  fv = flag_values
  for name in ('input_files', 'model_prefix', 'vocab_size'):
    if not fv[name].value:
      raise tokenizers.VocabError(f'--{name} is required')
  paths = documents.expand_patterns(fv.input_files)
  with progress.Progress(
    'Reading text', total=documents.total_size(paths), unit='B'
  ) as bar:
    lines = tokenizers.sample_lines(
      tokenizers.read_text_lines(paths, bar), fv.input_sentence_size
    )
  if not lines:
    raise tokenizers.VocabError(f'no text in {", ".join(paths)}')
  logging.info('Training on %d lines from %d files', len(lines), len(paths))
  if fv.model_type == 'wordpiece':
    written = [
      tokenizers.train_wordpiece(
        lines,
        fv.model_prefix,
        fv.vocab_size,
        do_lower_case=fv.do_lower_case,
        limit_alphabet=fv.limit_alphabet,
      )
    ]
  else:
    written = tokenizers.train_sentencepiece(
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
  return written


if __name__ == '__main__':
  from data_pipeline import cli

  define_flags()
  cli.run(main)
