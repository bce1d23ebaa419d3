r"""Named-entity recognition (and any tagging): a tag per word, read from
CoNLL-style files (the word first, its BIO tag last on each line, a blank
line between sentences), scored by entity-level F1.

  python -m bertjax.finetune --config=configs/finetune/ner.py \
    --workdir=/tmp/ner --config.init=all-minilm-l6-v2 \
    --config.data.train_file=train.conll --config.data.eval_file=dev.conll

The tag sits on the first piece of each word; predictions are mapped back
to words.
"""

from configs.finetune import common


def get_config():
  config = common.get_config('tagging')
  config.learning_rate = 5e-5
  return config.lock()
