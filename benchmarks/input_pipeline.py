r"""Input-pipeline throughput: stored TFRecords to masked numpy batches.

Measures `data_pipeline.pipeline` (parse, dynamic MLM masking, NSP labels,
per-host batches of numpy arrays, with its file interleave and shuffle
window) at seq 128 and 512, beside the peer measured in the same run:
transformers' `DataCollatorForLanguageModeling` masking the same examples,
already tokenized and in memory (MLM only, one process).

The records are real text: the English news corpus (`data_pipeline.corpora`)
turned into unmasked NSP pairs by `data_pipeline.create_pretraining_data
--no_mask` with the MiniLM vocab, made once and kept in `--workdir`.

  python benchmarks/input_pipeline.py [--seconds=10] [--rounds=2]

The peer is given its fastest input: a list of per-example id arrays, which
it stacks with `torch.stack` (dicts with attention masks and token types go
through `tokenizer.pad` and run at about half that speed here). Each figure
is the best of `--rounds` runs of `--seconds`, alternating ours and the peer,
so that load from other processes hits both alike.
"""

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
import torch
import transformers
from absl import app, flags

from bertjax import pretrained
from data_pipeline import corpora, examples, pipeline

_SEQ_LENGTHS = flags.DEFINE_list(
  'seq_lengths', ['128', '512'], 'Sequence lengths to measure.'
)
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 256, 'Examples per batch.')
_SECONDS = flags.DEFINE_float('seconds', 10.0, 'Seconds per measurement.')
_ROUNDS = flags.DEFINE_integer('rounds', 2, 'Measurements per figure.')
_WORKDIR = flags.DEFINE_string(
  'workdir', '/tmp/bertjax_input_benchmark', 'Where the records are kept.'
)
_WHOLE_WORD = flags.DEFINE_bool(
  'whole_word', True, 'Also measure whole-word masking (no peer).'
)
_PACKING = flags.DEFINE_bool(
  'packing', True, 'Also measure packed rows (no peer) and padding.'
)


def create_records(workdir: str, seq_len: int) -> str:
  """Unmasked pair records of the English news, made once.

  Returns:
    The directory holding `train-*.tfrecord`.
  """
  out = os.path.join(workdir, f'seq{seq_len}')
  if tf.io.gfile.exists(os.path.join(out, 'stats.json')):
    return out
  news = corpora.fetch('news-en') / 'NewsArticles.csv'
  vocab = os.path.join(pretrained.resolve('all-minilm-l6-v2'), 'vocab.txt')
  subprocess.run(
    [
      sys.executable,
      '-m',
      'data_pipeline.create_pretraining_data',
      f'--input_files={news}',
      f'--output_dir={out}',
      f'--tokenizer={vocab}',
      f'--max_seq_length={seq_len}',
      '--no_mask',
      '--num_shards=8',
      '--num_workers=2',
    ],
    check=True,
  )
  return out


def read_input_ids(directory: str, seq_len: int, count: int) -> np.ndarray:
  """The first `count` examples' `input_ids`, `[count, seq_len]` int64."""
  spec = {'input_ids': tf.io.FixedLenFeature([seq_len], tf.int64)}
  files = sorted(tf.io.gfile.glob(os.path.join(directory, 'train-*')))
  dataset = tf.data.TFRecordDataset(files).take(count).batch(count)
  serialized = next(iter(dataset))
  return tf.io.parse_example(serialized, spec)['input_ids'].numpy()


def measure(next_batch: Callable[[], object], batch_size, seconds) -> float:
  """Examples per second of `next_batch()` after a warm-up."""
  for _ in range(5):
    next_batch()
  start = time.perf_counter()
  batches = 0
  while time.perf_counter() - start < seconds:
    next_batch()
    batches += 1
  return batches * batch_size / (time.perf_counter() - start)


def ours(
  directory, seq_len, batch_size, whole_word, packing=False
) -> Callable[[], object]:
  config = pipeline.PipelineConfig(
    train_file_patterns=(os.path.join(directory, 'train-*'),),
    tokenizer_path=str(
      os.path.join(pretrained.resolve('all-minilm-l6-v2'), 'vocab.txt')
    ),
    per_host_batch_size=batch_size,
    max_seq_length=seq_len,
    mlm=examples.MaskingConfig(whole_word_mask=whole_word),
    packing=packing,
  )
  iterator = pipeline.create_train_iterator(config)
  return lambda: next(iterator)


def measure_rows(next_batch, seconds) -> dict[str, float]:
  """Examples and real tokens per second, and the padding share, of
  `next_batch()` (packed rows count their examples), after a warm-up."""
  for _ in range(5):
    next_batch()
  start = time.perf_counter()
  examples = tokens = slots = 0
  while time.perf_counter() - start < seconds:
    batch = next_batch()
    weights = batch.get('next_sentence_weights')
    examples += len(batch['input_ids']) if weights is None else weights.sum()
    tokens += batch['input_mask'].sum()
    slots += batch['input_mask'].size
  elapsed = time.perf_counter() - start
  return dict(
    examples_per_s=examples / elapsed,
    tokens_per_s=tokens / elapsed,
    padding=1 - tokens / slots,
  )


def peer(input_ids: np.ndarray, batch_size: int) -> Callable[[], object]:
  """transformers' collator over in-memory examples, to numpy."""
  tokenizer = transformers.AutoTokenizer.from_pretrained(
    pretrained.resolve('all-minilm-l6-v2')
  )
  collator = transformers.DataCollatorForLanguageModeling(
    tokenizer, mlm_probability=0.15
  )
  examples = list(input_ids)
  starts = iter(range(0, 1 << 62, batch_size))

  def next_batch():
    start = next(starts) % (len(examples) - batch_size)
    batch = collator(examples[start : start + batch_size])
    return {name: value.numpy() for name, value in batch.items()}

  return next_batch


def main(argv: Sequence[str]) -> None:
  del argv
  batch_size, seconds = _BATCH_SIZE.value, _SECONDS.value
  print(
    f'batch {batch_size}, best of {_ROUNDS.value} x {seconds:g} s, '
    f'{os.cpu_count()} CPUs, tensorflow {tf.__version__}, '
    f'transformers {transformers.__version__}, torch {torch.__version__} '
    f'({torch.get_num_threads()} threads)'
  )
  rows = []
  for seq_len in map(int, _SEQ_LENGTHS.value):
    directory = create_records(_WORKDIR.value, seq_len)
    input_ids = read_input_ids(directory, seq_len, 40 * batch_size)
    figures = {'ours': [], 'peer': [], 'ours_wwm': []}
    for _ in range(_ROUNDS.value):
      figures['ours'].append(
        measure(
          ours(directory, seq_len, batch_size, False), batch_size, seconds
        )
      )
      figures['peer'].append(
        measure(peer(input_ids, batch_size), batch_size, seconds)
      )
      if _WHOLE_WORD.value and seq_len == 128:
        figures['ours_wwm'].append(
          measure(
            ours(directory, seq_len, batch_size, True), batch_size, seconds
          )
        )
    best = {name: max(values) for name, values in figures.items() if values}
    rows.append((seq_len, best))
    if _PACKING.value:
      for packing in (False, True):
        rate = measure_rows(
          ours(directory, seq_len, batch_size, False, packing), seconds
        )
        print(
          f'seq {seq_len}, {"packed" if packing else "unpacked"}: '
          f'{rate["examples_per_s"]:.0f} examples/s, '
          f'{rate["tokens_per_s"]:.0f} real tokens/s, padding '
          f'{rate["padding"]:.1%}'
        )
  header = ('seq', 'ours ex/s', 'peer ex/s', 'ratio', 'ours wwm ex/s')
  print('{:>4} {:>10} {:>10} {:>6} {:>14}'.format(*header))
  for seq_len, best in rows:
    wwm = f'{best["ours_wwm"]:14.0f}' if 'ours_wwm' in best else ''
    print(
      f'{seq_len:4d} {best["ours"]:10.0f} {best["peer"]:10.0f} '
      f'{best["ours"] / best["peer"]:6.2f} {wwm}'
    )


if __name__ == '__main__':
  app.run(main)
