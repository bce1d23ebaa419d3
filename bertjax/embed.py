r"""Command line: sentence embeddings from a BERT encoder.

  python -m bertjax.embed --model=all-minilm-l6-v2 --input=texts.txt \
    --output=vectors.npy [--pooling=mean|cls] [--normalize] \
    [--max_seq_length=N] [--batch_size=N]

`--model` is anything `bertjax.pretrained` loads; only its encoder is used.
The input is UTF-8, one text per line (`\n` or `\r\n`; a final newline
adds no text). Row i of the output is always line i of the input, so a
blank line is embedded too (as `[CLS] [SEP]`); an empty file is an error.
Each text becomes `[CLS] tokens [SEP]`, truncated to `--max_seq_length`.
`mean` pooling averages the final hidden states over the real tokens, [CLS]
and [SEP] included (as sentence-transformers does); `cls` takes the final
[CLS] hidden state (not the tanh pooler). The output is float32
`[lines, hidden_size]` (`np.load` reads it).
"""

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from bertjax import model, pretrained
from data_pipeline import cli, files


def _define_flags() -> None:
  # Defined only when this module is the command: bertjax.fill_mask imports
  # it and has flags of the same names.
  flags.DEFINE_string(
    'model',
    None,
    'HF or bertjax model directory, TF checkpoint, training workdir, or a '
    'pretrained model name (all-minilm-l6-v2).',
  )
  flags.DEFINE_string('input', None, 'UTF-8 text file, one per line.')
  flags.DEFINE_string('output', None, 'Output .npy file.')
  flags.DEFINE_enum(
    'pooling', 'mean', ['mean', 'cls'], 'Mean of real tokens, or [CLS].'
  )
  flags.DEFINE_bool('normalize', False, 'Scale to unit L2 norm.')
  define_model_flags()


def define_model_flags() -> None:
  """The flags of every command that loads a model to run on text."""
  flags.DEFINE_integer(
    'max_seq_length',
    None,
    'Tokens per text with [CLS] and [SEP]; default min(512, '
    'max_position_embeddings).',
  )
  flags.DEFINE_integer('batch_size', 32, 'Texts per batch.')
  flags.DEFINE_bool(
    'do_lower_case',
    None,
    'Lower-case before WordPiece; default: tokenizer_config.json, else '
    'inferred from the vocabulary.',
  )


# Shortest padded length: shorter buckets save little and compile more.
_MIN_BUCKET = 16


class EmbedError(ValueError):
  """An input or setting that embedding cannot work with."""


def _import_tokenizers() -> None:
  """Imports `data_pipeline.tokenizers`, which imports TensorFlow.

  Late, so that earlier errors need not wait for TensorFlow's slow import;
  with file descriptor 2 on /dev/null meanwhile, because TF 2.21's C++
  runtime writes start-up lines ('Could not find cuda drivers ...') there
  whatever TF_CPP_MIN_LOG_LEVEL says, burying this command's one-line error
  report.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, 'w') as devnull:
      os.dup2(devnull.fileno(), 2)
      try:
        from data_pipeline import tokenizers  # noqa: F401
      finally:
        os.dup2(saved, 2)
  finally:
    os.close(saved)


def load_encoder(
  path: str,
  do_lower_case: bool | None = None,
  max_seq_length: int | None = None,
) -> tuple[model.BertConfig, dict[str, Any], Any]:
  """Loads a model's encoder and its tokenizer as `load_model` does:
  (config, `BertModel` params (the `bert` subtree), tokenizer)."""
  config, params, tokenizer = load_model(path, do_lower_case, max_seq_length)
  return config, params['bert'], tokenizer


def load_model(
  path: str,
  do_lower_case: bool | None = None,
  max_seq_length: int | None = None,
  require_heads: Sequence[str] = (),
) -> tuple[model.BertConfig, dict[str, Any], Any]:
  """Loads a model (`pretrained.load`) and its tokenizer: (config, params,
  a `data_pipeline.tokenizers.Tokenizer`).

  `do_lower_case=None` reads the model's `tokenizer_config.json`, else infers
  it from the vocabulary; `max_seq_length` is checked against the model
  (`EmbedError`) before the slow tokenizer load; `require_heads` as
  `pretrained.load`.
  """
  config, params, tokenizer_file = pretrained.load(
    pretrained.resolve(path), require_heads=require_heads
  )
  get_max_seq_length(config, max_seq_length)
  _import_tokenizers()
  tokenizer = pretrained.open_tokenizer(
    tokenizer_file, config, do_lower_case, path
  )
  return config, params, tokenizer


def read_lines(path: str) -> list[str]:
  """Reads one text per line (see the module docstring)."""
  if not os.path.isfile(path):
    raise EmbedError(f'{path}: no such input file')
  # utf-8-sig: a byte-order mark is not part of the first text.
  with open(path, encoding='utf-8-sig', newline='') as f:
    try:
      text = f.read()
    except UnicodeDecodeError as e:
      raise EmbedError(
        f'{path}: not UTF-8 text (bad byte at offset {e.start})'
      ) from None
  if not text:
    raise EmbedError(f'{path}: empty input, nothing to embed')
  lines = text.split('\n')
  if lines[-1] == '':
    lines.pop()
  return [line.removesuffix('\r') for line in lines]


def get_max_seq_length(config: model.BertConfig, requested: int | None) -> int:
  """The checked `--max_seq_length`, or its default."""
  if requested is None:
    return min(512, config.max_position_embeddings)
  if not 2 <= requested <= config.max_position_embeddings:
    raise EmbedError(
      f'--max_seq_length={requested} must be between 2 ([CLS] and [SEP]) '
      f"and the model's max_position_embeddings "
      f'({config.max_position_embeddings})'
    )
  return requested


def _next_power_of_two(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


def create_embed_fn(
  config: model.BertConfig, pooling: str, normalize: bool
) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
  """The jitted `(bert_params, input_ids, input_mask) -> embeddings`: int32
  `[batch, seq_len]` ids and 0/1 mask -> float32 `[batch, hidden_size]`,
  pooled (`mean` over the mask's tokens, or `cls`) and optionally scaled to
  unit L2 norm."""
  if pooling not in ('mean', 'cls'):
    raise EmbedError(f'pooling {pooling!r} is not mean or cls')
  # The pooler is not used (and a tagging or QA model has none).
  encoder = model.BertModel(config, add_pooling_layer=False)

  def embed(params, input_ids, input_mask):
    sequence, _ = encoder.apply({'params': params}, input_ids, input_mask)
    sequence = sequence.astype(jnp.float32)
    if pooling == 'cls':
      out = sequence[:, 0]
    else:
      mask = input_mask[..., None].astype(jnp.float32)
      # A padding row of the last batch has no tokens: avoid 0 / 0.
      out = (sequence * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)
    if normalize:
      norm = jnp.linalg.norm(out, axis=-1, keepdims=True)
      out = out / jnp.maximum(norm, 1e-12)
    return out

  return jax.jit(embed)


def embed_texts(
  config: model.BertConfig,
  params: Any,
  tokenizer: Any,
  texts: Sequence[str],
  pooling: str = 'mean',
  normalize: bool = False,
  max_seq_length: int | None = None,
  batch_size: int = 32,
) -> np.ndarray:
  """Embeds texts (any strings, empty ones included) as the module says:
  float32 `[len(texts), hidden_size]`, in the order of `texts`.

  `params` are `BertModel`'s; the tokenizer adds no specials (`[CLS]` and
  `[SEP]` are added here); the other arguments are as the flags.
  """
  if not texts:
    raise EmbedError('no texts to embed')
  if batch_size < 1:
    raise EmbedError(f'--batch_size={batch_size} must be positive')
  max_seq_length = get_max_seq_length(config, max_seq_length)
  ids = tokenizer.encode_batch(list(texts))
  truncated = sum(len(x) > max_seq_length - 2 for x in ids)
  if truncated:
    logging.info(
      '%d of %d texts truncated to %d tokens',
      truncated,
      len(ids),
      max_seq_length,
    )
  ids = [
    [tokenizer.cls_id, *x[: max_seq_length - 2], tokenizer.sep_id] for x in ids
  ]
  embed = create_embed_fn(config, pooling, normalize)
  out = np.empty((len(ids), config.hidden_size), np.float32)
  for index, input_ids, input_mask in batches(
    ids, batch_size, max_seq_length, tokenizer.pad_id
  ):
    out[index] = np.asarray(embed(params, input_ids, input_mask))[: len(index)]
  return out


def batches(
  ids: Sequence[Sequence[int]],
  batch_size: int,
  max_seq_length: int,
  pad_id: int,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Padded batches of token id lists, shortest first: (the indices into
  `ids` of the batch's real rows, int32 `input_ids` `[rows, seq_len]`, int32
  0/1 `input_mask` of the same shape).

  Each batch pads to a short bucket (a power of two from `_MIN_BUCKET` to
  `max_seq_length`), so a jitted function compiles a handful of times; every
  batch has the same number of rows (the last is padded with empty rows).
  """
  lengths = np.array([len(x) for x in ids])
  order = np.argsort(lengths, kind='stable')
  rows = min(batch_size, _next_power_of_two(len(ids)))
  for start in range(0, len(ids), rows):
    index = order[start : start + rows]
    seq_len = min(
      max(_next_power_of_two(int(lengths[index].max())), _MIN_BUCKET),
      max_seq_length,
    )
    input_ids = np.full((rows, seq_len), pad_id, np.int32)
    input_mask = np.zeros((rows, seq_len), np.int32)
    for row, i in enumerate(index):
      input_ids[row, : lengths[i]] = ids[i]
      input_mask[row, : lengths[i]] = 1
    yield index, input_ids, input_mask


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  for name in ('model', 'input', 'output'):
    if not f[name].value:
      raise EmbedError(f'--{name} is required')
  texts = read_lines(f.input)
  config, params, tokenizer = load_encoder(
    f.model, f.do_lower_case, f.max_seq_length
  )
  blank = sum(not t.strip() for t in texts)
  if blank:
    logging.warning('%d blank line(s) embedded as [CLS] [SEP]', blank)
  start = time.perf_counter()
  vectors = embed_texts(
    config,
    params,
    tokenizer,
    texts,
    pooling=f.pooling,
    normalize=f.normalize,
    max_seq_length=f.max_seq_length,
    batch_size=f.batch_size,
  )
  seconds = time.perf_counter() - start
  # A file object: np.save would append '.npy' to a path without it.
  with files.replacing(f.output, 'wb') as out:
    np.save(out, vectors)
  logging.info(
    'embedded %d lines in %.1f s (%.1f lines/s) into %s %s',
    len(texts),
    seconds,
    len(texts) / seconds,
    f.output,
    list(vectors.shape),
  )


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
