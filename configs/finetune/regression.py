r"""Sentence-pair similarity and other scores (STS-B style): one number per
text or pair, learnt by squared error, scored by Pearson and Spearman.

  python -m bertjax.finetune --config=configs/finetune/regression.py \
    --workdir=/tmp/sts --config.init=all-minilm-l6-v2 \
    --config.data.train_file=train.tsv --config.data.eval_file=dev.tsv \
    --config.data.text_column=sentence1 \
    --config.data.text_pair_column=sentence2 --config.data.label_column=score
"""

from configs.finetune import common


def get_config():
  config = common.get_config('regression')
  config.data.text_pair_column = 'text_pair'
  return config.lock()
