r"""BERT-base pretraining, with the published recipes.

  python -m bertjax.train --config=configs/bert_base.py:phase=1 \
    --workdir=gs://BUCKET/bert_base/phase1 \
    --config.data.input_files='gs://BUCKET/records/train-*' \
    --config.data.tokenizer=gs://BUCKET/vocab.txt
  python -m bertjax.train --config=configs/bert_base.py:phase=2 \
    --workdir=gs://BUCKET/bert_base/phase2 \
    --config.model.init_from=gs://BUCKET/bert_base/phase1 ...

Arguments after the colon:
  phase: 1 (sequence length 128) or 2 (512).
  optimizer: adam, the BERT paper's (Devlin et al. 2018: batch 256, lr 1e-4,
    10k warmup steps, linear decay, 90% of 1M steps at 128 then 10% at 512),
    or lamb (You et al. 2019 / NVIDIA's recipe: batch 65,536 at 128 for
    7,038 steps, then 32,768 at 512 for 1,563 steps).
  size: the model preset (base; configs/bert_large.py sets large).
"""

from configs import common

# (batch, steps, peak lr, warmup steps, max predictions) per phase.
_RECIPES = {
  ('adam', 1): (256, 900_000, 1e-4, 10_000, 20),
  ('adam', 2): (256, 100_000, 1e-4, 10_000, 80),
  ('lamb', 1): (65_536, 7_038, 6e-3, 2_000, 20),
  ('lamb', 2): (32_768, 1_563, 4e-3, 200, 80),
}


def get_config(arg=None):
  arg = common.parse_arg(arg, phase=1, optimizer='adam', size='base')
  if (arg.optimizer, arg.phase) not in _RECIPES:
    raise ValueError(
      f'no recipe for optimizer={arg.optimizer} phase={arg.phase}; '
      f'known: {sorted(_RECIPES)}'
    )
  batch, steps, lr, warmup, predictions = _RECIPES[arg.optimizer, arg.phase]
  config = common.get_base_config()
  config.batch_size = batch
  config.max_seq_length = 128 if arg.phase == 1 else 512
  config.num_train_steps = steps
  config.log_every_steps = 100
  config.eval_every_steps = 10_000 if arg.optimizer == 'adam' else 500
  config.checkpoint_every_steps = 5_000 if arg.optimizer == 'adam' else 250
  config.model.size = arg.size
  # bfloat16 compute with float32 accumulation, parameters and optimizer.
  config.model.dtype = 'bfloat16'
  config.data.max_predictions_per_seq = predictions
  config.optim.name = 'adamw' if arg.optimizer == 'adam' else 'lamb'
  config.optim.learning_rate = lr
  config.optim.warmup_steps = warmup
  if arg.optimizer == 'lamb':
    # The large LAMB batches do not fit one step on most slices: accumulate.
    config.micro_batches = 8 if arg.phase == 1 else 16
    config.optim.weight_decay = 0.01
    config.optim.b2 = 0.999
  return config.lock()
