r"""Command line: a fine-tuned model's predictions on new data.

  python -m bertjax.predict --model=WORKDIR --input=FILE --output=OUT.jsonl \
    [--batch_size=N]

`--model` is a `bertjax.finetune` workdir (its best params) or one step in
its `best/` or `checkpoints/`. `--input` is a file of the run's format and
columns (CSV, TSV or JSONL with the text column, and the pair column for
pair tasks; a CoNLL-style file of words for tagging, tags optional; SQuAD
JSON for QA); labels in it are ignored. Each output line is one JSON
object, in input order:

  classification  {"label": "fresh", "probabilities": {"fresh": 0.91, ...}}
  regression      {"score": 3.7}
  tagging         {"words": ["John", "lives", ...], "tags": ["B-PER", ...]}
  qa              {"id": "q1", "answer": "Zürich", "start": 14, "score": 9.1}
                  ("answer": "" when a v2.0 model answers nothing)
"""

import json
import os

from absl import flags, logging

from data_pipeline import cli

_MODEL = flags.DEFINE_string('model', None, 'Fine-tuning workdir or step.')
_INPUT = flags.DEFINE_string('input', None, 'CSV, TSV, JSONL or CoNLL file.')
_OUTPUT = flags.DEFINE_string('output', None, 'Output JSONL file.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Examples per batch.')


def main(argv: list[str]) -> None:
  del argv
  for holder in (_MODEL, _INPUT, _OUTPUT):
    if not holder.value:
      raise ValueError(f'--{holder.name} is required')
  if _BATCH_SIZE.value < 1:
    raise ValueError(f'--batch_size={_BATCH_SIZE.value} must be positive')
  if os.path.isdir(_OUTPUT.value):
    raise ValueError(f'--output={_OUTPUT.value} is a directory')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  # Imported here: TensorFlow (under the tokenizers) loads slowly, and the
  # flag mistakes above should not wait for it.
  from bertjax import tasks
  from data_pipeline import task_data

  tuned = tasks.load_tuned(_MODEL.value)
  columns = task_data.Columns(**tuned.task['columns'])
  examples = task_data.read_examples(
    _INPUT.value, tuned.kind, columns, labelled=False
  )
  records = tasks.predict(tuned, examples, _BATCH_SIZE.value)
  tmp = _OUTPUT.value + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + '\n')
  os.replace(tmp, _OUTPUT.value)
  logging.info('%d predictions in %s', len(records), _OUTPUT.value)


if __name__ == '__main__':
  cli.run(main)
