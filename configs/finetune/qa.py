r"""Extractive question answering on SQuAD v1.1 or v2.0 JSON files.

  python -m bertjax.finetune --config=configs/finetune/qa.py \
    --workdir=/tmp/squad --config.init=PATH \
    --config.data.train_file=train-v1.1.json \
    --config.data.eval_file=dev-v1.1.json

Each question and its context become windows of the context
(`qa.doc_stride` tokens apart), answers map back to character offsets of the
original context, and eval reports SQuAD's exact match and F1 (as
fractions). Data with unanswerable questions (v2.0) lets the model answer
nothing, and eval splits the scores into has_ans_* and no_ans_*.
"""

import ml_collections

from configs.finetune import common


def get_config():
  config = common.get_config('qa')
  # BERT's SQuAD recipe: 384 tokens, stride 128, 2 epochs at 3e-5 (batch 32).
  config.max_seq_length = 384
  config.num_train_epochs = 2.0
  config.learning_rate = 3e-5
  config.qa = ml_collections.ConfigDict()
  # Distance between the starts of a context's windows, in tokens.
  config.qa.doc_stride = 128
  # Tokens kept of a question (longer ones are cut).
  config.qa.max_query_length = 64
  # Longest answer predicted, in tokens.
  config.qa.max_answer_length = 30
  # Start and end candidates scored per window.
  config.qa.n_best_size = 20
  # SQuAD v2.0: answer nothing when the null score beats the best span's by
  # more than this.
  config.qa.null_score_diff_threshold = 0.0
  return config.lock()
