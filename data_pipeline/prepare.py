"""Getting a training run's data ready: text in, TFRecords and vocab out.

Owns the step between `config.data` and `data_pipeline.pipeline`: when the
inputs are raw text (or the demo corpus), it trains a WordPiece vocabulary
if none is given and creates unmasked NSP pair records once
(`create_pretraining_data` with `mask=False`; the pipeline masks them afresh
every epoch), with a held-out eval split by document. Results are cached
under a fingerprint of the inputs and settings, so a rerun or a resumed run
reuses them. TFRecord inputs (file names containing `.tfrecord` or
`.record`) are used as they are.

Multi-host: only the writer process creates files; the others wait at the
barrier the caller passes (the trainer passes a JAX cross-process barrier)
and then read the same paths, so a shared filesystem (or gs://) is assumed
when text has to be prepared. On pods, prepare records once offline with
`python -m data_pipeline.create_pretraining_data` instead.
"""

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from data_pipeline import (
  corpora,
  create_pretraining_data,
  documents,
  tokenizers,
  train_tokenizer,
)

# Seed of pair creation for prepared text: fixed, so the cache is shared by
# runs that differ only in their training seed.
_CREATION_SEED = 12345
# Records read to estimate the most-frequent-token baseline.
_BASELINE_RECORDS = 20_000
_DEMO_CORPORA = ('english_news',)
_RECORD_MARKERS = ('.tfrecord', '.record')


@dataclasses.dataclass(frozen=True)
class PreparedData:
  """What the pipeline and the model need to know about the data.

  Attributes:
    train_patterns: globs of training records.
    eval_patterns: globs of eval records (empty: no eval).
    tokenizer_path: the vocab.txt or SentencePiece model.
    vocab_size: the tokenizer's vocabulary size.
    majority_token_accuracy: MLM accuracy of always predicting the most
      frequent non-special token of the training records (a baseline), or 0
      when not measured.
  """

  train_patterns: tuple[str, ...]
  eval_patterns: tuple[str, ...]
  tokenizer_path: str
  vocab_size: int
  majority_token_accuracy: float


def _split_patterns(value: str) -> list[str]:
  return [p.strip() for p in (value or '').split(',') if p.strip()]


def is_record_pattern(pattern: str) -> bool:
  """TFRecords are recognised by name (`*.tfrecord*`, `*.record*`)."""
  name = os.path.basename(pattern)
  return any(marker in name for marker in _RECORD_MARKERS)


def _expand(patterns: Sequence[str], what: str) -> list[str]:
  paths = []
  for pattern in patterns:
    matched = sorted(tf.io.gfile.glob(pattern))
    if not matched:
      raise FileNotFoundError(f'{what} {pattern!r} matches no file')
    paths.extend(matched)
  return paths


def _fingerprint(parts: Any) -> str:
  return hashlib.sha256(
    json.dumps(parts, sort_keys=True, default=str).encode('utf-8')
  ).hexdigest()[:16]


def _file_identity(paths: Sequence[str]) -> list[tuple[str, int, float]]:
  identity = []
  for path in paths:
    stat = tf.io.gfile.stat(path)
    identity.append((path, stat.length, stat.mtime_nsec))
  return identity


def write_demo_corpus(name: str, path: str) -> str:
  """Writes a registry corpus as BERT-format text (sentence per line).

  Args:
    name: one of the demo corpora (`english_news`).
    path: the text file to write (atomically).

  Returns:
    path.
  """
  if name not in _DEMO_CORPORA:
    raise ValueError(
      f'data.demo_corpus {name!r} is not one of {list(_DEMO_CORPORA)}'
    )
  if tf.io.gfile.exists(path):
    return path
  lines = []
  for doc in corpora.news_documents(with_title=False):
    sentences = [
      s for line in doc.splitlines() for s in documents.split_sentences(line)
    ]
    if sentences:
      lines.extend(sentences)
      lines.append('')
  tf.io.gfile.makedirs(os.path.dirname(path))
  tmp = path + '.tmp'
  with tf.io.gfile.GFile(tmp, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return path


def _train_vocab(text_paths, vocab_size, do_lower_case, out_dir) -> str:
  path = os.path.join(out_dir, 'wordpiece.vocab.txt')
  if tf.io.gfile.exists(path):
    return path
  logging.info(
    'Training a %d-token WordPiece vocabulary on %d file(s)',
    vocab_size,
    len(text_paths),
  )
  lines = (line for line in train_tokenizer.read_lines(text_paths) if line)
  tmp_prefix = os.path.join(out_dir, 'tmp', 'wordpiece')
  written = train_tokenizer.train_wordpiece(
    lines, tmp_prefix, vocab_size, do_lower_case=do_lower_case
  )
  tf.io.gfile.rename(written, path, overwrite=True)
  return path


def _create_records(text_paths, tokenizer_path, data, max_seq_length, out):
  stats_path = os.path.join(out, 'stats.json')
  if tf.io.gfile.exists(stats_path):
    return
  if tf.io.gfile.exists(out):
    # An earlier run stopped mid-way: start over rather than mix shards.
    tf.io.gfile.rmtree(out)
  stats = documents.Stats()
  docs = documents.read_documents(
    text_paths, documents.ReadOptions(input_format='bert'), stats
  )
  config = create_pretraining_data.CreationConfig(
    max_seq_length=max_seq_length,
    max_predictions_per_seq=data.max_predictions_per_seq,
    masked_lm_prob=data.masked_lm_prob,
    short_seq_prob=data.short_seq_prob,
    dupe_factor=1,
    random_seed=_CREATION_SEED,
    nsp=data.nsp,
    mask=False,
    eval_fraction=data.eval_fraction,
  )
  output = create_pretraining_data.OutputOptions(
    output_dir=out,
    num_shards=4,
    num_eval_shards=1,
    num_workers=min(4, os.cpu_count() or 1),
  )
  result = create_pretraining_data.create_pretraining_data(
    docs, stats, tokenizer_path, config, output, data.do_lower_case
  )
  logging.info(
    'Created %s examples from %s documents in %s',
    result.get('examples'),
    result.get('documents'),
    out,
  )


def measure_majority_accuracy(
  patterns: Sequence[str], tokenizer: tokenizers.Tokenizer
) -> float:
  """Share of the most frequent non-special token among real tokens.

  Masking picks positions uniformly among non-special tokens, so this is the
  MLM accuracy of always predicting that token (measured on up to
  `_BASELINE_RECORDS` records).
  """
  paths = _expand(patterns, 'records')
  spec = {'input_ids': tf.io.VarLenFeature(tf.int64)}
  dataset = (
    tf.data.TFRecordDataset(paths)
    .take(_BASELINE_RECORDS)
    .batch(1024)
    .map(lambda x: tf.io.parse_example(x, spec)['input_ids'].values)
  )
  counts = np.zeros(tokenizer.vocab_size, np.int64)
  for ids in dataset.as_numpy_iterator():
    counts += np.bincount(ids, minlength=tokenizer.vocab_size)[: len(counts)]
  counts[tokenizer.special_ids] = 0
  total = counts.sum()
  return float(counts.max() / total) if total else 0.0


def prepare_data(
  data: Any,
  max_seq_length: int,
  cache_dir: str,
  is_writer: bool = True,
  barrier: Callable[[str], None] | None = None,
) -> PreparedData:
  """Makes sure records and a tokenizer exist for `data`; returns them.

  Args:
    data: `config.data` (see configs/common.py): input_files, eval_files,
      tokenizer, do_lower_case, demo_corpus, demo_vocab_size, eval_fraction,
      nsp, short_seq_prob, max_predictions_per_seq, masked_lm_prob.
    max_seq_length: sequence length of the records.
    cache_dir: where prepared files of user text go (the demo corpus uses
      the shared registry cache instead, so every demo run reuses it).
    is_writer: this process creates files (process 0).
    barrier: called with a name after the writer is done, on every process.

  Returns:
    The prepared data.

  Raises:
    FileNotFoundError: an input or eval pattern matches nothing, or the
      tokenizer file is missing.
    ValueError: TFRecord inputs without a tokenizer, an unknown demo corpus.
  """
  patterns = _split_patterns(data.input_files)
  demo = not patterns
  root = (
    os.path.join(str(corpora.get_cache_dir()), 'prepared')
    if demo
    else cache_dir
  )
  if data.tokenizer and not tf.io.gfile.exists(data.tokenizer):
    raise FileNotFoundError(f'data.tokenizer {data.tokenizer!r} does not exist')
  if demo:
    text_path = os.path.join(root, 'text', f'{data.demo_corpus}.txt')
    if is_writer:
      write_demo_corpus(data.demo_corpus, text_path)
    if barrier:
      barrier('demo_corpus')
    patterns = [text_path]
  records = all(is_record_pattern(p) for p in patterns)
  if any(is_record_pattern(p) for p in patterns) and not records:
    raise ValueError(
      f'data.input_files mixes TFRecords and text: {", ".join(patterns)}'
    )
  paths = _expand(patterns, 'data.input_files')
  eval_patterns = _split_patterns(data.eval_files)
  if eval_patterns:
    _expand(eval_patterns, 'data.eval_files')

  if records:
    if not data.tokenizer:
      raise ValueError(
        'data.tokenizer is required with TFRecord inputs (the vocabulary '
        'the records were made with)'
      )
    tokenizer_path = data.tokenizer
    train_patterns = patterns
  else:
    identity = _file_identity(paths)
    tokenizer_path = data.tokenizer
    if not tokenizer_path:
      vocab_dir = os.path.join(
        root,
        'vocab',
        _fingerprint([identity, data.demo_vocab_size, data.do_lower_case]),
      )
      tokenizer_path = os.path.join(vocab_dir, 'wordpiece.vocab.txt')
      if is_writer:
        _train_vocab(paths, data.demo_vocab_size, data.do_lower_case, vocab_dir)
      if barrier:
        barrier('vocab')
    with tf.io.gfile.GFile(tokenizer_path, 'rb') as f:
      tokenizer_hash = hashlib.sha256(f.read()).hexdigest()
    out = os.path.join(
      root,
      'records',
      _fingerprint(
        [
          identity,
          tokenizer_hash,
          data.do_lower_case,
          max_seq_length,
          data.nsp,
          data.short_seq_prob,
          data.eval_fraction,
          data.max_predictions_per_seq,
          _CREATION_SEED,
        ]
      ),
    )
    if is_writer:
      _create_records(paths, tokenizer_path, data, max_seq_length, out)
    if barrier:
      barrier('records')
    train_patterns = [os.path.join(out, 'train-*')]
    if not eval_patterns and data.eval_fraction > 0:
      eval_patterns = [os.path.join(out, 'eval-*')]

  tokenizer = tokenizers.create_tokenizer(
    tokenizer_path, do_lower_case=data.do_lower_case
  )
  return PreparedData(
    train_patterns=tuple(train_patterns),
    eval_patterns=tuple(eval_patterns),
    tokenizer_path=tokenizer_path,
    vocab_size=tokenizer.vocab_size,
    majority_token_accuracy=measure_majority_accuracy(
      train_patterns, tokenizer
    ),
  )
