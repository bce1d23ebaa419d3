r"""Command line: sentence embeddings from a BERT encoder.

  python -m bertjax.embed --model=all-minilm-l6-v2 --input=texts.txt \
    --output=vectors.npy [--pooling=mean|cls] [--normalize] \
    [--max_seq_length=N] [--batch_size=N]

`--model` is a Hugging Face or bertjax model directory, a Google TF
checkpoint, or a registered pretrained model name (`all-minilm-l6-v2`,
fetched by `data_pipeline.corpora`). Only the encoder is used.

Input: UTF-8 text, one text per line (`\n` or `\r\n`; the last newline is
optional). A blank line is a text too, the empty string, embedded as
`[CLS] [SEP]`: row i of the output is always line i of the input, so the
vectors stay aligned with whatever else is keyed by line number. An empty
file is an error.

Each text becomes `[CLS] tokens [SEP]`, truncated to `--max_seq_length`
(default min(512, max_position_embeddings)). `mean` pooling averages the
final hidden states over the real tokens, [CLS] and [SEP] included (as
sentence-transformers does); `cls` takes the final [CLS] hidden state (not
the tanh pooler). Texts are sorted by length and batched at a few bucketed
shapes (powers of two), so one `jax.jit` compiles a handful of times. The
output is float32 `[lines, hidden_size]` (`np.load` reads it).
"""

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from bertjax import checkpoint, cli, hf_convert, model
from data_pipeline import corpora

_MODEL = flags.DEFINE_string(
  'model',
  None,
  'HF or bertjax model directory, TF checkpoint, or a registered model name '
  '(all-minilm-l6-v2).',
)
_INPUT = flags.DEFINE_string('input', None, 'UTF-8 text file, one per line.')
_OUTPUT = flags.DEFINE_string('output', None, 'Output .npy file.')
_POOLING = flags.DEFINE_enum(
  'pooling', 'mean', ['mean', 'cls'], 'Mean of real tokens, or [CLS].'
)
_NORMALIZE = flags.DEFINE_bool('normalize', False, 'Scale to unit L2 norm.')
_MAX_SEQ_LENGTH = flags.DEFINE_integer(
  'max_seq_length',
  None,
  'Tokens per text with [CLS] and [SEP]; default min(512, '
  'max_position_embeddings).',
)
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Texts per batch.')
_DO_LOWER_CASE = flags.DEFINE_bool(
  'do_lower_case',
  None,
  'Lower-case before WordPiece; default: tokenizer_config.json, else '
  'inferred from the vocabulary.',
)

# Shortest padded length: shorter buckets save little and compile more.
_MIN_BUCKET = 16


def resolve_model(name_or_path: str) -> str:
  """A model path, or the directory of a registered pretrained model."""
  if os.path.exists(name_or_path) or os.path.exists(name_or_path + '.index'):
    return name_or_path
  try:
    return str(corpora.pretrained_model_dir(name_or_path))
  except corpora.CorpusError:
    raise cli.UserError(
      f'--model={name_or_path}: no such directory or checkpoint, and not a '
      'registered model name (all-minilm-l6-v2)'
    ) from None


def _import_tokenizers() -> Any:
  """Imports `data_pipeline.tokenizers`, which imports TensorFlow.

  Not at the top of this module: TensorFlow takes seconds to import, which
  errors found earlier need not wait for. And while it is imported,
  TensorFlow 2.21's C++ runtime writes start-up log lines ('Could not find
  cuda drivers ...') straight to file descriptor 2, whatever
  TF_CPP_MIN_LOG_LEVEL says, which would bury this command's one-line error
  report; so descriptor 2 points at /dev/null meanwhile. Exceptions still
  propagate; only what is written to stderr during the import is lost.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, 'w') as devnull:
      os.dup2(devnull.fileno(), 2)
      try:
        from data_pipeline import tokenizers
      finally:
        os.dup2(saved, 2)
  finally:
    os.close(saved)
  return tokenizers


def load_encoder(
  path: str,
  do_lower_case: bool | None = None,
  max_seq_length: int | None = None,
) -> tuple[model.BertConfig, dict[str, Any], Any]:
  """Loads a model's encoder and its tokenizer.

  Args:
    path: a model in any format `checkpoint.detect_format` recognises.
    do_lower_case: WordPiece lower-casing; None reads the model's
      `tokenizer_config.json`, else infers it from the vocabulary.
    max_seq_length: if given, checked against the model before the
      tokenizer is loaded.

  Returns:
    (config, `BertModel` params (the `bert` subtree), a
    `data_pipeline.tokenizers.Tokenizer`).

  Raises:
    cli.UserError: no tokenizer, one with more ids than the model has, or a
      max_seq_length the model cannot take.
  """
  config, params, tokenizer_file = checkpoint.load_pretrained(path)
  get_max_seq_length(config, max_seq_length)
  if tokenizer_file is None:
    raise cli.UserError(f'{path}: no vocab.txt or SentencePiece model')
  tokenizers = _import_tokenizers()
  if do_lower_case is None and not tokenizer_file.endswith('.model'):
    do_lower_case = hf_convert.read_do_lower_case(
      os.path.dirname(tokenizer_file)
    )
  tokenizer = tokenizers.create_tokenizer(tokenizer_file, do_lower_case)
  if tokenizer.vocab_size > config.vocab_size:
    raise cli.UserError(
      f'{tokenizer_file}: {tokenizer.vocab_size} tokens, but the model has '
      f'only {config.vocab_size} word embeddings'
    )
  return config, params['bert'], tokenizer


def read_lines(path: str) -> list[str]:
  """Reads one text per line (see the module docstring)."""
  if not os.path.isfile(path):
    raise cli.UserError(f'{path}: no such input file')
  # utf-8-sig: a byte-order mark is not part of the first text.
  with open(path, encoding='utf-8-sig', newline='') as f:
    try:
      text = f.read()
    except UnicodeDecodeError as e:
      raise cli.UserError(
        f'{path}: not UTF-8 text (bad byte at offset {e.start})'
      ) from None
  if not text:
    raise cli.UserError(f'{path}: empty input, nothing to embed')
  lines = text.split('\n')
  if lines[-1] == '':
    lines.pop()
  return [line.removesuffix('\r') for line in lines]


def get_max_seq_length(config: model.BertConfig, requested: int | None) -> int:
  """The checked `--max_seq_length`, or its default."""
  if requested is None:
    return min(512, config.max_position_embeddings)
  if not 2 <= requested <= config.max_position_embeddings:
    raise cli.UserError(
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
  """The jitted `(bert_params, input_ids, input_mask) -> embeddings`.

  Args:
    config: the encoder config.
    pooling: 'mean' over tokens where input_mask is 1, or 'cls'.
    normalize: scale each embedding to unit L2 norm.

  Returns:
    A function of params, int32 `[batch, seq_len]` ids and 0/1 mask,
    returning float32 `[batch, hidden_size]`.
  """
  if pooling not in ('mean', 'cls'):
    raise cli.UserError(f'pooling {pooling!r} is not mean or cls')
  encoder = model.BertModel(config)

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
  """Embeds texts with a BERT encoder.

  Args:
    config: the encoder config.
    params: `BertModel` params.
    tokenizer: a `data_pipeline.tokenizers.Tokenizer` (adds no specials;
      `[CLS]`/`[SEP]` are added here).
    texts: any strings, empty ones included.
    pooling: 'mean' or 'cls' (see the module docstring).
    normalize: scale each embedding to unit L2 norm.
    max_seq_length: tokens per text, specials included (longer texts are
      truncated); default min(512, max_position_embeddings).
    batch_size: texts per device call.

  Returns:
    float32 `[len(texts), hidden_size]`, in the order of `texts`.
  """
  if not texts:
    raise cli.UserError('no texts to embed')
  if batch_size < 1:
    raise cli.UserError(f'--batch_size={batch_size} must be positive')
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
  lengths = np.array([len(x) for x in ids])
  # Sorting by length lets each batch pad to a short bucket.
  order = np.argsort(lengths, kind='stable')
  rows = min(batch_size, _next_power_of_two(len(ids)))
  embed = create_embed_fn(config, pooling, normalize)
  out = np.empty((len(ids), config.hidden_size), np.float32)
  for start in range(0, len(ids), rows):
    index = order[start : start + rows]
    seq_len = min(
      max(_next_power_of_two(int(lengths[index].max())), _MIN_BUCKET),
      max_seq_length,
    )
    input_ids = np.full((rows, seq_len), tokenizer.pad_id, np.int32)
    input_mask = np.zeros((rows, seq_len), np.int32)
    for row, i in enumerate(index):
      input_ids[row, : lengths[i]] = ids[i]
      input_mask[row, : lengths[i]] = 1
    result = embed(params, input_ids, input_mask)
    out[index] = np.asarray(result)[: len(index)]
  return out


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise cli.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  for holder in (_MODEL, _INPUT, _OUTPUT):
    if not holder.value:
      raise cli.UserError(f'--{holder.name} is required')
  texts = read_lines(_INPUT.value)
  config, params, tokenizer = load_encoder(
    resolve_model(_MODEL.value), _DO_LOWER_CASE.value, _MAX_SEQ_LENGTH.value
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
    pooling=_POOLING.value,
    normalize=_NORMALIZE.value,
    max_seq_length=_MAX_SEQ_LENGTH.value,
    batch_size=_BATCH_SIZE.value,
  )
  seconds = time.perf_counter() - start
  # A file object: np.save would append '.npy' to a path without it.
  with open(_OUTPUT.value, 'wb') as f:
    np.save(f, vectors)
  logging.info(
    'embedded %d lines in %.1f s (%.1f lines/s) into %s %s',
    len(texts),
    seconds,
    len(texts) / seconds,
    _OUTPUT.value,
    list(vectors.shape),
  )


if __name__ == '__main__':
  app.run(cli.run(main), flags_parser=cli.parse_flags)
