"""Shared pieces of the recipes: argument parsing and the default config.

`--config=configs/bert_base.py:phase=2,batch_size=512` passes the string
after the colon to `get_config`; `parse_arg` turns it into typed values
against declared defaults, so a misspelt or ill-typed argument fails loudly.
"""

import ml_collections


def parse_arg(arg: str | None, **defaults):
  """Parses `key=value,key=value` against typed defaults.

  Args:
    arg: the string after the colon in `--config=FILE:ARG`, or None.
    **defaults: every accepted key with its default (its type is enforced).

  Returns:
    A ConfigDict with the defaults overridden by `arg`.

  Raises:
    ValueError: an unknown key or a value of the wrong type.
  """
  values = dict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, raw = item.partition('=')
    key = key.strip()
    if not sep or key not in defaults:
      raise ValueError(
        f'config argument {item!r} is not key=value with key in '
        f'{sorted(defaults)}'
      )
    kind = type(defaults[key])
    try:
      if kind is bool:
        if raw.lower() not in ('true', 'false', '1', '0'):
          raise ValueError(raw)
        values[key] = raw.lower() in ('true', '1')
      else:
        values[key] = kind(raw)
    except ValueError:
      raise ValueError(
        f'config argument {key}={raw!r} is not a {kind.__name__}'
      ) from None
  return ml_collections.ConfigDict(values)


def get_base_config() -> ml_collections.ConfigDict:
  """Every field the trainer reads, with the defaults of BERT-base phase 1.

  Recipes start from this and change what differs; the README documents the
  field names users and scripts rely on.
  """
  config = ml_collections.ConfigDict()
  # Seed of parameter init, dropout and data order.
  config.seed = 0
  # Global batch size (sequences per optimizer step, all hosts together).
  config.batch_size = 256
  # Tokens per sequence, [CLS] and [SEP]s included.
  config.max_seq_length = 128
  # Optimizer steps of this run.
  config.num_train_steps = 900_000
  # Split each step's batch into this many sequential micro-batches
  # (gradient accumulation by lax.scan).
  config.micro_batches = 1
  # Log + metrics.jsonl + TensorBoard every N steps (0: only at the end).
  config.log_every_steps = 100
  # Evaluate on the held-out split every N steps (0: only at the end), when
  # there is one.
  config.eval_every_steps = 10_000
  # Batches of the eval split per evaluation.
  config.eval_steps = 50
  # Save a checkpoint every N steps (and always at the end and on SIGTERM).
  config.checkpoint_every_steps = 10_000
  # Checkpoints kept on disk (the newest ones).
  config.keep_checkpoints = 3
  # What a NaN/Inf loss does: stop (keep the last good checkpoint) | skip
  # (drop that step's update and go on).
  config.nan_policy = 'stop'

  config.model = ml_collections.ConfigDict()
  # A preset of bertjax.model.PRESETS: tiny, mini, small, medium, base,
  # large, or L-<layers>_H-<hidden>.
  config.model.size = 'base'
  # Compute dtype: float32 | bfloat16 (parameters stay float32).
  config.model.dtype = 'float32'
  # Stack layers with nn.scan (compile time independent of depth).
  config.model.scan_layers = True
  # Rematerialisation per layer: none | full | dots | dots_no_batch.
  config.model.remat_policy = 'none'
  # Attention: auto | xla | cudnn | splash. The fused kernels (cuDNN flash
  # attention on NVIDIA GPUs, Pallas splash on TPUs) have no dropout on
  # attention probabilities: auto takes them in bfloat16 when
  # attention_probs_dropout_prob is 0, and xla otherwise.
  config.model.attention = 'auto'
  config.model.hidden_dropout_prob = 0.1
  config.model.attention_probs_dropout_prob = 0.1
  config.model.max_position_embeddings = 512
  # Start from these weights: a Hugging Face or bertjax model directory, a
  # Google TF checkpoint, or another run's workdir (its newest checkpoint;
  # params only, fresh optimizer: how phase 2 starts from phase 1);
  # '' initialises randomly.
  config.model.init_from = ''

  config.data = ml_collections.ConfigDict()
  # Comma-separated globs: raw text in BERT format (one sentence per line,
  # blank line between documents) or TFRecords from
  # data_pipeline.create_pretraining_data. '' = the demo corpus.
  config.data.input_files = ''
  # Globs of held-out records/text ('' = split off eval_fraction).
  config.data.eval_files = ''
  # Fraction of documents held out for eval when eval_files is ''.
  config.data.eval_fraction = 0.02
  # WordPiece vocab.txt or SentencePiece .model; '' = train a WordPiece
  # vocab on the text inputs (or the demo corpus).
  config.data.tokenizer = ''
  # Lower-case WordPiece input (uncased vocabularies).
  config.data.do_lower_case = True
  # Which real demo corpus to use when input_files is ''.
  config.data.demo_corpus = 'news-en'
  # Vocabulary size of the tokenizer built for the demo corpus.
  config.data.demo_vocab_size = 30522
  # Masked positions per sequence, at most (the width of masked_lm_*).
  config.data.max_predictions_per_seq = 20
  # Share of a sequence's tokens to predict.
  config.data.masked_lm_prob = 0.15
  # What a chosen token becomes: [MASK], a random ordinary token, or
  # itself, with these probabilities (BERT's 80/10/10; they sum to 1).
  config.data.mask_token_prob = 0.8
  config.data.random_token_prob = 0.1
  config.data.keep_token_prob = 0.1
  # Mask all pieces of a word or none.
  config.data.whole_word_mask = False
  # With whole_word_mask, where the words of Chinese text start: 'jieba'
  # segments it, 'whitespace' reads pre-segmented text (words apart by
  # spaces), 'none' makes every Chinese character a word (the vocabulary's
  # rule). Text with no Chinese character is never segmented.
  config.data.word_segmenter = 'jieba'
  # Next-sentence prediction (False packs full sentences, RoBERTa-style).
  config.data.nsp = True
  # Share of documents cut into shorter pairs (text inputs).
  config.data.short_seq_prob = 0.1
  # Records shuffled together.
  config.data.shuffle_buffer = 10_000
  # How hosts share the training data: 'files' (each host reads 1/n of the
  # files; what pods want) or 'batch' (every host reads the whole stream
  # and keeps its slice of each global batch: bit-identical batches and
  # exact resume whatever the host count, at n times the reading).
  config.data.host_sharding = 'files'
  # Several examples per training row, each with its own positions,
  # attention and NSP (data_pipeline.pipeline, "Packing"): less padding.
  # Needs unmasked records and host_sharding='files'.
  config.data.packing = False
  config.data.max_examples_per_row = 8

  config.optim = ml_collections.ConfigDict()
  # adamw | lamb.
  config.optim.name = 'adamw'
  config.optim.learning_rate = 1e-4
  config.optim.warmup_steps = 10_000
  # 0 = decay over num_train_steps.
  config.optim.decay_steps = 0
  config.optim.end_learning_rate = 0.0
  config.optim.decay_power = 1.0
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-6
  config.optim.weight_decay = 0.01
  config.optim.grad_clip_norm = 1.0

  config.mesh = ml_collections.ConfigDict()
  # Sizes of the (data, fsdp, tensor) mesh axes; one may be -1.
  config.mesh.shape = (-1, 1, 1)
  # Extra (logical_axis, mesh_axis) rules, taking precedence over
  # bertjax.sharding.default_logical_axis_rules().
  config.mesh.extra_rules = ()

  config.perf = ml_collections.ConfigDict()
  # Peak FLOP/s of one device for MFU; 0 = the data-sheet table in
  # bertjax.trainer.
  config.perf.peak_flops_per_device = 0.0
  return config
