r"""Masked-token prediction: the likeliest tokens for each `[MASK]` in a text.

  python -m bertjax.fill_mask --model=WORKDIR_OR_DIR [--top_k=5] \
    --text="The capital of France is [MASK]." [--text="A [MASK] too." ...]

In Python:

  from bertjax import fill_mask
  lm = fill_mask.load('path/to/model')
  fill_mask.fill_mask(lm, ['The capital of France is [MASK].'])
  # -> [[[{'token_str': 'paris', 'token': 3000, 'score': 0.41}, ...]]]

`--model` is anything `bertjax.pretrained` loads that has a trained
masked-LM head; one without (all-MiniLM-L6-v2, a fine-tuned classifier) is
refused: its head would be random. Texts are encoded as transformers'
`fill-mask` pipeline does, so the scores (the softmax over the vocabulary)
equal that pipeline's on the same checkpoint.
"""

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from bertjax import embed, model
from data_pipeline import cli


class FillMaskError(ValueError):
  """A text or setting that masked-token prediction cannot work with."""


@dataclasses.dataclass(frozen=True)
class MaskedLm:
  """A BERT with its masked-LM head, and its tokenizer."""

  config: model.BertConfig
  params: Any  # BertForPreTraining params.
  tokenizer: Any  # A data_pipeline.tokenizers.Tokenizer.


def load(
  path: str,
  do_lower_case: bool | None = None,
  max_seq_length: int | None = None,
) -> MaskedLm:
  """Loads a model with a trained masked-LM head (see the module docstring);
  `model.WeightsError` for a model without one."""
  config, params, tokenizer = embed.load_model(
    path, do_lower_case, max_seq_length, require_heads=('mlm_head',)
  )
  return MaskedLm(config, params, tokenizer)


# Cached: a notebook calls fill_mask again and again on one model.
@functools.lru_cache(maxsize=4)
def _top_k_fn(config: model.BertConfig, top_k: int):
  """The jitted `(params, input_ids [b, s], input_mask [b, s], positions
  [b, m]) -> (scores [b, m, top_k], ids [b, m, top_k])`: the softmax over
  the vocabulary at each position, its `top_k` largest."""
  module = model.BertForPreTraining(config)

  def top(params, input_ids, input_mask, positions):
    logits = module.apply(
      {'params': params},
      input_ids,
      input_mask,
      masked_lm_positions=positions,
    )['mlm_logits']
    return jax.lax.top_k(jax.nn.softmax(logits.astype(jnp.float32)), top_k)

  return jax.jit(top)


def fill_mask(
  lm: MaskedLm,
  texts: str | Sequence[str],
  top_k: int = 5,
  max_seq_length: int | None = None,
  batch_size: int = 32,
) -> list[list[list[dict[str, Any]]]]:
  """Predicts the tokens at every `[MASK]` of each text.

  Returns, for each text, for each of its masks in order, `top_k` dicts,
  likeliest first: `token_str` (the vocabulary entry), `token` (its id) and
  `score` (its probability). `max_seq_length` counts [CLS] and [SEP]
  (default min(512, max_position_embeddings)); a text without `[MASK]`, or
  with one past it, raises `FillMaskError`.
  """
  if isinstance(texts, str):
    texts = [texts]
  if not texts:
    raise FillMaskError('no texts')
  tokenizer, config = lm.tokenizer, lm.config
  if not 1 <= top_k <= config.vocab_size:
    raise FillMaskError(
      f'top_k={top_k} must be between 1 and the vocabulary size '
      f'({config.vocab_size})'
    )
  if batch_size < 1:
    raise FillMaskError(f'batch_size={batch_size} must be positive')
  max_seq_length = embed.get_max_seq_length(config, max_seq_length)
  ids = [
    [tokenizer.cls_id, *x, tokenizer.sep_id]
    for x in tokenizer.encode_batch(list(texts))
  ]
  masks = [np.flatnonzero(np.array(x) == tokenizer.mask_id) for x in ids]
  for i, (text, where) in enumerate(zip(texts, masks, strict=True)):
    if not where.size:
      raise FillMaskError(f'text {i + 1} has no [MASK]: {text[:80]!r}')
    if where[-1] >= max_seq_length - 1:
      raise FillMaskError(
        f'text {i + 1}: a [MASK] at token {where[-1]} lies past '
        f'max_seq_length {max_seq_length}'
      )
  # Truncation keeps every mask (checked above).
  ids = [
    x[: max_seq_length - 1] + x[-1:] if len(x) > max_seq_length else x
    for x in ids
  ]
  width = max(len(m) for m in masks)
  top = _top_k_fn(config, top_k)
  out: list[list[list[dict[str, Any]]]] = [[] for _ in ids]
  for index, input_ids, input_mask in embed.batches(
    ids, batch_size, max_seq_length, tokenizer.pad_id
  ):
    positions = np.zeros((len(input_ids), width), np.int32)
    for row, i in enumerate(index):
      positions[row, : len(masks[i])] = masks[i]
    scores, token_ids = jax.device_get(
      top(lm.params, input_ids, input_mask, positions)
    )
    for row, i in enumerate(index):
      out[i] = [
        [
          dict(
            token_str=tokenizer.id_to_token(int(t)),
            token=int(t),
            score=float(p),
          )
          for p, t in zip(scores[row, m], token_ids[row, m], strict=True)
        ]
        for m in range(len(masks[i]))
      ]
  return out


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  if not f.model:
    raise cli.UsageError('--model is required')
  texts = f.text
  if not texts:
    raise cli.UsageError('--text is required (one or more, with [MASK])')
  lm = load(f.model, f.do_lower_case, f.max_seq_length)
  predictions = fill_mask(
    lm, texts, f.top_k, f.max_seq_length, batch_size=f.batch_size
  )
  print(format_predictions(texts, predictions))


def format_predictions(
  texts: Sequence[str], predictions: list[list[list[dict[str, Any]]]]
) -> str:
  """`fill_mask`'s predictions as lines to read: each text, then per mask
  its tokens and probabilities, likeliest first."""
  lines = []
  for text, per_mask in zip(texts, predictions, strict=True):
    lines.append(text)
    for i, tokens in enumerate(per_mask):
      # ' | ' apart: a token may be a comma.
      best = ' | '.join(f'{t["token_str"]} {t["score"]:.3f}' for t in tokens)
      lines.append(f'  [MASK] {i + 1}: {best}')
  return '\n'.join(lines)


if __name__ == '__main__':
  flags.DEFINE_string(
    'model',
    None,
    'Pretraining workdir or step, bertjax or Hugging Face model directory, '
    'or TF checkpoint, with a masked-LM head.',
  )
  flags.DEFINE_multi_string('text', None, 'A text with [MASK]; repeatable.')
  flags.DEFINE_integer('top_k', 5, 'Tokens per [MASK], likeliest first.')
  embed.define_model_flags()
  cli.run(main)
