r"""Text (or text-pair) classification: sentiment, topic, entailment, ...

  python -m bertjax.finetune --config=configs/finetune/classification.py \
    --workdir=/tmp/sentiment --config.init=all-minilm-l6-v2 \
    --config.data.train_file=train.csv --config.data.eval_file=dev.csv

Labels are read from the training file's label column (any names). For
pairs (MRPC, MNLI, ...) set `--config.data.text_pair_column`. With no
`data.train_file`, `data.demo=sentiment-en` (the default here) fine-tunes on
real Rotten Tomatoes snippets.
"""

from configs.finetune import common


def get_config():
  config = common.get_config('classification')
  config.data.demo = 'sentiment-en'
  return config.lock()
