"""The fields of every fine-tuning recipe, with BERT's fine-tuning defaults.

BERT's paper fine-tunes with Adam at 2e-5 to 5e-5, batch 16 or 32, for 2 to
4 epochs, warming up over the first 10% of steps and decaying linearly to
zero, with dropout 0.1 kept on; these defaults follow it. The task recipes
(`classification.py`, `regression.py`, `ner.py`, `qa.py`) start from
`get_config`.
"""

import ml_collections


def get_config(task: str) -> ml_collections.ConfigDict:
  """Every field `bertjax.tasks.finetune` reads; `task` is its kind."""
  config = ml_collections.ConfigDict()
  # The model to start from: a bertjax or Hugging Face model directory, a
  # Google TF checkpoint, a training workdir (or one of its steps), or a
  # pretrained model name (all-minilm-l6-v2). Its encoder is kept, the head
  # is new; its vocabulary tokenizes the data.
  config.init = ''
  # classification | regression | tagging | qa.
  config.task = task
  # Seed of the head's init, dropout and data order.
  config.seed = 0
  # Global batch size (examples per optimizer step, all hosts together).
  config.batch_size = 32
  # Tokens per example, [CLS] and [SEP]s included; longer ones are cut.
  config.max_seq_length = 128
  # Passes over the training data (fractions allowed: 0.5 = half of one).
  config.num_train_epochs = 3.0
  # Peak learning rate (AdamW), reached after the warmup, then linear decay
  # to zero at the last step.
  config.learning_rate = 2e-5
  # Share of the steps spent warming up from zero.
  config.warmup_proportion = 0.1
  config.weight_decay = 0.01
  # Split each step's batch into this many sequential micro-batches.
  config.micro_batches = 1
  # Log + metrics.jsonl + TensorBoard every N steps (0: only at the end).
  config.log_every_steps = 50
  # Evaluate on data.eval_file every N steps (0: every epoch, and at the
  # end). The best evaluation's params are kept in WORKDIR/best.
  config.eval_every_steps = 0
  # Save a checkpoint every N steps (0: every epoch; always at the end and
  # on SIGTERM).
  config.checkpoint_every_steps = 0
  # Checkpoints kept in WORKDIR/checkpoints (the newest ones).
  config.keep_checkpoints = 1
  # The eval metric that picks the best params ('' = accuracy for
  # classification, pearson for regression, entity f1 for tagging).
  config.best_metric = ''
  # What a NaN/Inf loss does: stop | skip (drop that step's update).
  config.nan_policy = 'stop'

  config.model = ml_collections.ConfigDict()
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
  # Dropout while fine-tuning (the encoder's and the head's).
  config.model.hidden_dropout_prob = 0.1
  config.model.attention_probs_dropout_prob = 0.1

  config.data = ml_collections.ConfigDict()
  # Training and eval files: .csv, .tsv or .jsonl with named columns, or
  # CoNLL-style .conll/.iob/.bio (a word and its tag per line) for tagging.
  config.data.train_file = ''
  config.data.eval_file = ''
  # A prepared TFDS dataset instead of files (glue/sst2, glue/mrpc,
  # squad/v1.1, conll2003, ...; read with download=False: prepare it once
  # with `tfds build` where it can be downloaded), its directory ('' = the
  # TFDS default) and splits ('' eval split = no eval).
  config.data.tfds_name = ''
  config.data.tfds_data_dir = ''
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  # A real demo task, used when train_file is '' ('sentiment-en': Rotten
  # Tomatoes snippets, fresh or rotten).
  config.data.demo = ''
  # Column of the text, of the second text of a pair ('' = single texts),
  # and of the label.
  config.data.text_column = 'text'
  config.data.text_pair_column = ''
  config.data.label_column = 'label'
  # Lower-case before WordPiece: '' = as the model's tokenizer_config.json
  # says, else inferred from its vocabulary; 'true' | 'false'.
  config.data.do_lower_case = ''
  # Batch examples of similar length and pad to a few lengths (powers of
  # two) instead of max_seq_length.
  config.data.bucketing = True
  # Skip (and count) bad rows instead of stopping at the first.
  config.data.skip_bad_rows = False
  # Use only the first N examples (0 = all): quick trials.
  config.data.max_train_examples = 0
  config.data.max_eval_examples = 0

  config.optim = ml_collections.ConfigDict()
  # adamw | lamb (learning rate, warmup and weight decay are set above).
  config.optim.name = 'adamw'
  config.optim.end_learning_rate = 0.0
  config.optim.decay_power = 1.0
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-6
  config.optim.grad_clip_norm = 1.0

  config.mesh = ml_collections.ConfigDict()
  # Sizes of the (data, fsdp, tensor) mesh axes; one may be -1.
  config.mesh.shape = (-1, 1, 1)
  config.mesh.extra_rules = ()

  config.perf = ml_collections.ConfigDict()
  # Unused by fine-tuning's variable-length batches (no MFU reported); kept
  # so the shared loop reads the same fields.
  config.perf.peak_flops_per_device = 0.0
  return config
