r"""Offline pretraining records: the command line.

google-research/bert's `create_pretraining_data.py`, with its flags and
semantics, without its limits (one process, the corpus in memory):

  python -m data_pipeline.create_pretraining_data \
    --input_files='corpus/*.txt' --output_dir=/tmp/bert_data \
    --tokenizer=vocab.txt --max_seq_length=128 --max_predictions_per_seq=20 \
    --masked_lm_prob=0.15 --short_seq_prob=0.1 --dupe_factor=10 \
    --random_seed=12345 --num_shards=16 --num_workers=4

Reads text in any format `data_pipeline.documents` reads (or a TFDS
dataset); writes `train-*.tfrecord` (and `eval-*`) shards of the original
BERT features and `stats.json`, the same bytes whatever `--num_workers` is
(`data_pipeline.records`). `--no_mask` writes unmasked pairs once, for the
recommended route: the `tf.data` pipeline masks them afresh every epoch.
"""

from collections.abc import Sequence

if __name__ == '__main__':
  # Restarted with malloc on huge pages before numpy and TensorFlow load
  # (data_pipeline.cli); worker processes inherit it.
  from data_pipeline import cli

  cli.restart_with_malloc_huge_pages()

from absl import flags, logging  # noqa: E402

from data_pipeline import (  # noqa: E402
  cli,
  documents,
  examples,
  records,
  segmentation,
  tokenizers,
)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this command's flags; not at import time, so that a program can
  run `main` with flags of its own (`flags.FlagValues()`), as tests do."""
  fv = {'flag_values': flag_values}
  flags.DEFINE_list(
    'input_files',
    None,
    'Comma-separated globs of input text (local or gs://).',
    **fv,
  )
  flags.DEFINE_enum(
    'input_format',
    'auto',
    documents.FORMATS,
    'bert: a sentence per line, blank line between documents; lines: a '
    'document per line; file: a document per file; jsonl/csv: the document '
    'in --text_field; auto: by extension (.jsonl, .csv, else bert).',
    **fv,
  )
  flags.DEFINE_string(
    'text_field', 'text', 'JSONL key, CSV column or TFDS feature.', **fv
  )
  flags.DEFINE_enum(
    'invalid_utf8',
    'replace',
    ['replace', 'skip'],
    'Lines with invalid UTF-8: decode with U+FFFD, or skip (both counted).',
    **fv,
  )
  flags.DEFINE_string(
    'tfds_name', None, 'Read a prepared TFDS dataset instead of files.', **fv
  )
  flags.DEFINE_string('tfds_split', 'train', 'TFDS split.', **fv)
  flags.DEFINE_string('tfds_data_dir', None, 'TFDS data_dir.', **fv)
  flags.DEFINE_string('output_dir', None, 'Output directory.', **fv)
  flags.DEFINE_string(
    'tokenizer', None, 'WordPiece vocab.txt or SentencePiece .model.', **fv
  )
  flags.DEFINE_bool(
    'do_lower_case',
    None,
    'Lower-case the input; default: as the vocab says.',
    **fv,
  )
  defaults = records.CreationConfig()
  masking = defaults.masking
  flags.DEFINE_integer(
    'max_seq_length', defaults.max_seq_length, 'Tokens per example.', **fv
  )
  flags.DEFINE_integer(
    'max_predictions_per_seq',
    masking.max_predictions_per_seq,
    'Masked positions per example, at most.',
    **fv,
  )
  flags.DEFINE_float(
    'masked_lm_prob', masking.masked_lm_prob, 'Fraction masked.', **fv
  )
  flags.DEFINE_float(
    'short_seq_prob',
    defaults.short_seq_prob,
    'Probability of a shorter target length, per document.',
    **fv,
  )
  flags.DEFINE_integer(
    'dupe_factor',
    defaults.dupe_factor,
    'Copies of each document, with other pairs and masks.',
    **fv,
  )
  flags.DEFINE_integer(
    'random_seed', defaults.seed, 'Seed of every random choice.', **fv
  )
  flags.DEFINE_bool('do_whole_word_mask', False, 'Mask whole words.', **fv)
  flags.DEFINE_enum(
    'word_segmenter',
    defaults.word_segmenter,
    list(segmentation.SEGMENTERS),
    'With --do_whole_word_mask, where words of text with Chinese characters '
    'start: jieba segments it, whitespace reads words of pre-segmented text, '
    'none uses the vocabulary alone (one word per Chinese character).',
    **fv,
  )
  flags.DEFINE_bool(
    'no_nsp',
    False,
    'Pack sentences RoBERTa-style, no NSP pairs (next_sentence_labels 0).',
    **fv,
  )
  flags.DEFINE_bool(
    'no_mask',
    False,
    'Write unmasked pairs once (no dupe copies), for dynamic masking.',
    **fv,
  )
  flags.DEFINE_float(
    'eval_fraction', 0.0, 'Fraction of documents held out as eval.', **fv
  )
  flags.DEFINE_integer('num_shards', 1, 'Train shards.', **fv)
  flags.DEFINE_integer('num_eval_shards', 1, 'Eval shards.', **fv)
  flags.DEFINE_integer(
    'num_workers', 1, 'Worker processes; 1 works in this process.', **fv
  )
  flags.DEFINE_integer(
    'unit_chars',
    defaults.unit_chars,
    'Characters of text per unit of work, also the window random next '
    'sentences are drawn from. The output depends on it.',
    **fv,
  )


def main(
  argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS
) -> dict:
  """Creates the records the flags describe; returns the stats.

  Flags, tokenizer and inputs are all checked before the output directory
  is created.
  """
  del argv
  fv = flag_values
  if not fv.output_dir or not fv.tokenizer:
    raise cli.UsageError('--output_dir and --tokenizer are required')
  if bool(fv.input_files) == bool(fv.tfds_name):
    raise cli.UsageError('give exactly one of --input_files and --tfds_name')
  config = records.CreationConfig(
    max_seq_length=fv.max_seq_length,
    short_seq_prob=fv.short_seq_prob,
    dupe_factor=fv.dupe_factor,
    seed=fv.random_seed,
    nsp=not fv.no_nsp,
    mask=not fv.no_mask,
    masking=examples.MaskingConfig(
      masked_lm_prob=fv.masked_lm_prob,
      max_predictions_per_seq=fv.max_predictions_per_seq,
      whole_word_mask=fv.do_whole_word_mask,
    ),
    eval_fraction=fv.eval_fraction,
    unit_chars=fv.unit_chars,
    word_segmenter=fv.word_segmenter,
  )
  output = records.OutputOptions(
    output_dir=fv.output_dir,
    num_shards=fv.num_shards,
    num_eval_shards=fv.num_eval_shards,
    num_workers=fv.num_workers,
  )
  if config.dupe_factor > 1 and not config.mask:
    logging.info('--no_mask writes each pair once: dupe_factor is ignored')
  # An unreadable tokenizer fails here, in one line, not in a worker.
  tokenizers.create_tokenizer(fv.tokenizer, do_lower_case=fv.do_lower_case)
  input_stats = documents.Stats()
  if fv.tfds_name:
    docs = documents.read_tfds_documents(
      fv.tfds_name,
      fv.tfds_split,
      fv.tfds_data_dir,
      input_stats,
      text_field=fv.text_field,
    )
  else:
    options = documents.ReadOptions(
      input_format=fv.input_format,
      text_field=fv.text_field,
      invalid_utf8=fv.invalid_utf8,
    )
    paths = documents.expand_patterns(fv.input_files, input_stats)
    documents.check_text_inputs(paths)
    docs = documents.read_documents(paths, options, input_stats)
  stats = records.create_pretraining_data(
    docs,
    input_stats,
    fv.tokenizer,
    config,
    output,
    fv.do_lower_case,
    # TFDS datasets' sizes are not known in advance.
    total_bytes=None if fv.tfds_name else documents.total_size(paths),
  )
  if not stats['examples']:
    raise documents.InputError(
      f'no examples from {stats["documents"]} documents '
      f'({stats["input_bytes"]} bytes) of {fv.input_files or fv.tfds_name}: '
      'each needs text of two sentences or more'
      if stats['documents']
      else f'no documents in {fv.input_files or fv.tfds_name}'
    )
  logging.info(
    '%d examples from %d documents (%.1f MB, %.2f MB/s) in %s',
    stats['examples'],
    stats['documents'],
    stats['input_bytes'] / 1e6,
    stats['mb_per_s'] or 0.0,
    output.output_dir,
  )
  return stats


if __name__ == '__main__':
  define_flags()
  cli.run(main)
