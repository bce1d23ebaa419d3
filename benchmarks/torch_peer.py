"""The peer of the benchmarks: transformers' PyTorch `BertForPreTraining`.

Imported only by benchmarks (torch and transformers come with the `test`
extra). The loss is computed in its strongest form: the MLM head at the
masked positions only, as bertjax does; `BertForPreTraining.forward` scores
every position, which costs ~10x more for the tiny model (BENCHMARKS.md).
"""

import numpy as np
import torch
import transformers

from bertjax import model


def build_model(config: model.BertConfig) -> transformers.BertForPreTraining:
  """A randomly initialised `BertForPreTraining` of the same architecture."""
  return transformers.BertForPreTraining(
    transformers.BertConfig(
      vocab_size=config.vocab_size,
      hidden_size=config.hidden_size,
      num_hidden_layers=config.num_hidden_layers,
      num_attention_heads=config.num_attention_heads,
      intermediate_size=config.intermediate_size,
      hidden_act=config.hidden_act,
      hidden_dropout_prob=config.hidden_dropout_prob,
      attention_probs_dropout_prob=config.attention_probs_dropout_prob,
      max_position_embeddings=config.max_position_embeddings,
      type_vocab_size=config.type_vocab_size,
      initializer_range=config.initializer_range,
      layer_norm_eps=config.layer_norm_eps,
    )
  )


def to_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
  """A bertjax batch (numpy) as torch tensors (int64 ids, float weights)."""
  return {
    k: torch.from_numpy(
      np.asarray(v, np.float32 if v.dtype.kind == 'f' else np.int64)
    )
    for k, v in batch.items()
  }


def pretraining_loss(
  hf: transformers.BertForPreTraining, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
  """bertjax's pretraining loss, computed by the transformers model.

  Args:
    hf: the model.
    batch: `to_torch` of a bertjax batch.

  Returns:
    (weighted-mean MLM cross-entropy + mean NSP cross-entropy, and the sums
    `mlm_correct`, `mlm_weight`, `nsp_correct`, `nsp_count` as floats).
  """
  sequence, pooled = hf.bert(
    input_ids=batch['input_ids'],
    attention_mask=batch['input_mask'],
    token_type_ids=batch['segment_ids'],
    return_dict=False,
  )
  positions = batch['masked_lm_positions']
  picked = torch.gather(
    sequence, 1, positions[..., None].expand(-1, -1, sequence.shape[-1])
  )
  logits = hf.cls.predictions(picked).float()
  targets = batch['masked_lm_ids']
  labels = batch['next_sentence_labels']
  # Eval batches are padded with rows that `example_mask` marks as such.
  example = batch.get('example_mask', torch.ones_like(labels)).float()
  weights = batch['masked_lm_weights'] * example[:, None]
  xent = torch.nn.functional.cross_entropy(
    logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction='none'
  )
  mlm = (xent * weights.reshape(-1)).sum() / weights.sum().clamp_min(1e-8)
  nsp_logits = hf.cls.seq_relationship(pooled).float()
  nsp_xent = torch.nn.functional.cross_entropy(
    nsp_logits, labels, reduction='none'
  )
  nsp = (nsp_xent * example).sum() / example.sum().clamp_min(1.0)
  with torch.no_grad():
    sums = dict(
      mlm_correct=float(((logits.argmax(-1) == targets) * weights).sum()),
      mlm_weight=float(weights.sum()),
      nsp_correct=float(((nsp_logits.argmax(-1) == labels) * example).sum()),
      nsp_count=float(example.sum()),
    )
  return mlm + nsp, sums
