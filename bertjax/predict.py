r"""Command line: a fine-tuned model's predictions on new data.

  python -m bertjax.predict --model=WORKDIR --input=FILE --output=OUT.jsonl \
    [--batch_size=N]

`--model` is a `bertjax.finetune` workdir (its best params) or one of its
steps. `--input` has the run's format and columns (CSV, TSV or JSONL; CoNLL
words for tagging; SQuAD JSON for QA); labels in it are ignored. Each
output line is one JSON object, in input order:

  classification  {"label": "fresh", "probabilities": {"fresh": 0.91, ...}}
  regression      {"score": 3.7}
  tagging         {"words": ["John", "lives", ...], "tags": ["B-PER", ...]}
  qa              {"id": "q1", "answer": "Zürich", "start": 14, "score": 9.1}
                  ("answer": "" when a v2.0 model answers nothing)
"""

import os

from absl import flags, logging

from data_pipeline import cli


def _define_flags() -> None:
  # Defined only when this module is the command: bertjax.embed, which
  # tests import with the others, has flags of the same names.
  flags.DEFINE_string('model', None, 'Fine-tuning workdir or step.')
  flags.DEFINE_string('input', None, 'CSV, TSV, JSONL, CoNLL or SQuAD file.')
  flags.DEFINE_string('output', None, 'Output JSONL file.')
  flags.DEFINE_integer('batch_size', 32, 'Examples per batch.')


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  for name in ('model', 'input', 'output'):
    if not f[name].value:
      raise cli.UsageError(f'--{name} is required')
  if f.batch_size < 1:
    raise cli.UsageError(f'--batch_size={f.batch_size} must be positive')
  if os.path.isdir(f.output):
    raise cli.UsageError(f'--output={f.output} is a directory')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  # Imported here: TensorFlow (under the tokenizers) loads slowly, and the
  # flag mistakes above should not wait for it.
  from bertjax import tasks
  from data_pipeline import task_data

  tuned = tasks.load_tuned(f.model)
  columns = task_data.Columns(**tuned.task['columns'])
  examples = task_data.read_examples(
    f.input, tuned.kind, columns, labelled=False
  )
  records = tasks.predict(tuned, examples, f.batch_size)
  tasks.write_jsonl(f.output, records)
  logging.info('%d predictions in %s', len(records), f.output)


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
