r"""Offline example creation throughput: MB/s of raw text per worker.

  python benchmarks/create_pretraining_data.py [--copies=4] [--keep]
  python benchmarks/create_pretraining_data.py --corpus=peoples-daily-zh

With `--corpus=peoples-daily-zh` (People's Daily, 5.6 MB, a paragraph per
line, a WordPiece vocabulary trained on it here) it compares whole-word
masking with Chinese word segmentation (jieba) against without (one word
per character) and against no whole words.

Input: the English news corpus (`data_pipeline.corpora` 'news-en', 12.5 MB
of article text), one article per line, repeated `--copies` times so that
start-up (imports, tracing) weighs little. Each configuration runs the CLI

  taskset -c 0[,1] python -m data_pipeline.create_pretraining_data \
    --input_files=news.txt --input_format=lines --tokenizer=vocab.txt ...

pinned to as many cores as it has workers, and reports from its
`stats.json`: wall-clock MB/s of raw text per worker (interpreter start
excluded), the same after the first unit ("steady": without the start-up
of seconds that spawning workers and tracing cost), MB per CPU-second
(unchanged by other load on the machine, which wall-clock figures are not),
and the peak resident memory of the main process.
The original google-research/bert tool measured 0.25-0.45 MB/s on one core
of the machine in BENCHMARKS.md; the floor is >= 1 MB/s per worker at the
default --dupe_factor=10 (the recommended route, --no_mask pairs masked by
the tf.data pipeline, is several times faster).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from bertjax import pretrained
from data_pipeline import corpora, tokenizers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WWM = '--do_whole_word_mask'
# (label, extra flags, workers, copies of the corpus or None for --copies)
RUNS = (
  ('pairs (--no_mask), 1 copy', ['--no_mask'], 1, 1),
  ('pairs (--no_mask)', ['--no_mask'], 1, None),
  ('masked, dupe_factor=1', ['--dupe_factor=1'], 1, None),
  ('masked, dupe_factor=1, whole words', ['--dupe_factor=1', WWM], 1, None),
  ('masked, dupe_factor=10 (default)', ['--dupe_factor=10'], 1, None),
  ('masked, dupe_factor=1, 2 workers', ['--dupe_factor=1'], 2, None),
)
RUNS_ZH = (
  ('pairs (--no_mask)', ['--no_mask'], 1, None),
  ('pairs, word starts (jieba)', ['--no_mask', WWM], 1, None),
  ('masked, dupe_factor=1', ['--dupe_factor=1'], 1, None),
  (
    'masked, whole characters (no segmenter)',
    ['--dupe_factor=1', WWM, '--word_segmenter=none'],
    1,
    None,
  ),
  ('masked, whole words (jieba)', ['--dupe_factor=1', WWM], 1, None),
  ('masked, whole words (jieba), dupe 10', ['--dupe_factor=10', WWM], 1, None),
)


def _write_corpus(path: str, copies: int, corpus: str) -> int:
  articles = [a.replace('\n', ' ') for a in corpora.DEMO_CORPORA[corpus]()]
  text = '\n'.join(articles) + '\n'
  with open(path, 'w', encoding='utf-8') as f:
    for _ in range(copies):
      f.write(text)
  return os.path.getsize(path)


def _run(command: list[str], log_path: str) -> int:
  """Runs a command; returns the peak resident memory of its main process
  in MB (workers, if any, not included)."""
  with open(log_path, 'wb') as log:
    process = subprocess.Popen(command, cwd=ROOT, stderr=log)
    # wait4, not wait: it also gives the process's resource usage.
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
  if process.returncode:
    with open(log_path, errors='replace') as log:
      sys.exit(log.read()[-3000:])
  return usage.ru_maxrss // 1024


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--copies', type=int, default=4)
  parser.add_argument('--keep', action='store_true', help='keep the output')
  parser.add_argument(
    '--corpus', default='news-en', choices=sorted(corpora.DEMO_CORPORA)
  )
  args = parser.parse_args()
  work = tempfile.mkdtemp(prefix='bench_cpd_')
  runs = RUNS
  if args.corpus == 'news-en':
    vocab = os.path.join(pretrained.resolve('all-minilm-l6-v2'), 'vocab.txt')
  else:
    runs = RUNS_ZH
    vocab = tokenizers.train_wordpiece(
      corpora.DEMO_CORPORA[args.corpus](),
      os.path.join(work, 'vocab'),
      vocab_size=21_128,
      limit_alphabet=6000,
    )
  inputs = {}
  for copies in {args.copies, 1}:
    path = os.path.join(work, f'corpus_x{copies}.txt')
    inputs[copies] = (path, _write_corpus(path, copies, args.corpus))
  taskset = shutil.which('taskset')
  print(
    f'{"configuration":42s} {"MB":>5s} {"s":>6s} {"MB/s/worker":>11s} '
    f'{"steady":>6s} {"MB/cpu-s":>8s} {"examples":>9s} {"RSS MB":>6s}'
  )
  try:
    for label, extra, workers, copies in runs:
      path, size = inputs[copies or args.copies]
      output_dir = os.path.join(work, 'out')
      shutil.rmtree(output_dir, ignore_errors=True)
      command = [
        sys.executable,
        '-m',
        'data_pipeline.create_pretraining_data',
        f'--input_files={path}',
        '--input_format=lines',
        f'--output_dir={output_dir}',
        f'--tokenizer={vocab}',
        '--max_seq_length=128',
        '--max_predictions_per_seq=20',
        '--random_seed=12345',
        f'--num_workers={workers}',
        f'--num_shards={4 * workers}',
        *extra,
      ]
      if taskset:
        cores = ','.join(str(c) for c in range(workers))
        command = [taskset, '-c', cores, *command]
      peak_mb = _run(command, os.path.join(work, 'log.txt'))
      with open(os.path.join(output_dir, 'stats.json')) as f:
        stats = json.load(f)
      steady = (stats['steady_mb_per_s'] or 0.0) / workers
      print(
        f'{label:42s} {size / 1e6:5.1f} {stats["seconds"]:6.1f} '
        f'{stats["mb_per_s_per_worker"]:11.2f} {steady:6.2f} '
        f'{stats["mb_per_cpu_s"]:8.2f} {stats["examples"]:9d} {peak_mb:6d}'
      )
      nsp = stats['nsp']
      print(
        f'{"":42s} NSP random: {nsp["random_next_fraction"]:.4f} overall, '
        f'{nsp["random_next_fraction_where_continuation_possible"]:.4f} '
        'where a continuation was possible'
      )
  finally:
    if not args.keep:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
  main()
