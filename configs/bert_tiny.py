r"""The CPU demo: a tiny BERT pretrained on real English news in minutes.

Needs no prepared data: with `data.input_files=''` it fetches the English
news corpus (3,824 articles, checksum-verified, cached), trains a WordPiece
vocabulary on it and creates NSP sentence pairs once (cached), then masks
them dynamically every epoch.

  python -m bertjax.train --config=configs/bert_tiny.py --workdir=/tmp/tiny

Arguments after the colon (`--config=configs/bert_tiny.py:steps=2000`):
  steps: optimizer steps (600 reaches well above the most-frequent-token
    baseline on 2 CPU cores in a few minutes).
  batch_size: global batch.
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, steps=600, batch_size=32)
  config = common.get_base_config()
  config.seed = 0
  config.batch_size = arg.batch_size
  config.max_seq_length = 128
  config.num_train_steps = arg.steps
  config.log_every_steps = 50
  config.eval_every_steps = 200
  config.eval_steps = 20
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 2

  config.model.size = 'tiny'
  config.model.dtype = 'float32'

  config.data.input_files = ''
  config.data.demo_corpus = 'news-en'
  config.data.demo_vocab_size = 30522
  config.data.eval_fraction = 0.02
  config.data.shuffle_buffer = 4096

  # A tiny model on a short run underfits: dropout only slows it (as in
  # Cramming), and it tolerates a learning rate 20x BERT-base's with a short
  # warmup (the sweep is in BENCHMARKS.md).
  config.model.hidden_dropout_prob = 0.0
  config.model.attention_probs_dropout_prob = 0.0
  config.optim.name = 'adamw'
  config.optim.learning_rate = 2e-3
  config.optim.warmup_steps = 60
  config.optim.weight_decay = 0.01
  # CPUs have no data-sheet peak (bertjax.train_step.PEAK_FLOPS_PER_DEVICE):
  # this is the float32 matmul ceiling JAX reaches on a 2-core Zen 4 VM
  # (BENCHMARKS.md), so perf/mfu is relative to such a machine. Set your own.
  config.perf.peak_flops_per_device = 190e9
  return config.lock()
