r"""BERT-large pretraining: the BERT-base recipes with the large model.

  python -m bertjax.train \
    --config=configs/bert_large.py:phase=1,optimizer=lamb \
    --workdir=gs://BUCKET/bert_large/phase1 \
    --config.data.input_files='gs://BUCKET/records/train-*' \
    --config.data.tokenizer=gs://BUCKET/vocab.txt

Arguments after the colon: phase (1 | 2) and optimizer (adam | lamb), as in
configs/bert_base.py.
"""

from configs import bert_base, common


def get_config(arg=None):
  arg = common.parse_arg(arg, phase=1, optimizer='adam')
  config = bert_base.get_config(
    f'phase={arg.phase},optimizer={arg.optimizer},size=large'
  )
  with config.unlocked():
    # BERT-large keeps activations of 24 layers: rematerialise the cheap
    # ones so seq 512 fits.
    config.model.remat_policy = 'dots'
  return config
