"""The original google-research/bert TensorFlow checkpoints, import only.

A Google checkpoint is `bert_config.json` beside `bert_model.ckpt.{index,
data-*}`. Its variable names map one to one onto transformers'
`BertForPreTraining` names, so this is a name rewrite and the kernel
transpose; `hf` does the rest. TensorFlow is imported only to read one.
"""

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from bertjax import hf, model

CONFIG_FILE = 'bert_config.json'
CHECKPOINT_PREFIX = 'bert_model.ckpt'


def checkpoint_prefix(path: str) -> str | None:
  """The checkpoint prefix that `path` (a directory or prefix) names, or
  None when there is no checkpoint there."""
  if os.path.isdir(path):
    path = os.path.join(path, CHECKPOINT_PREFIX)
  return path if os.path.isfile(path + '.index') else None


def _hf_name(name: str) -> str | None:
  """The transformers name of a google-research/bert variable, or None for
  variables that are not model weights (optimizer slots, the step)."""
  parts = name.split('/')
  if parts[-1] in ('adam_m', 'adam_v') or name == 'global_step':
    return None
  special = {
    'cls/predictions/output_bias': 'cls.predictions.bias',
    # Already [2, hidden], the layout of a PyTorch linear weight.
    'cls/seq_relationship/output_weights': 'cls.seq_relationship.weight',
    'cls/seq_relationship/output_bias': 'cls.seq_relationship.bias',
  }
  if name in special:
    return special[name]
  renames = dict(kernel='weight', gamma='weight', beta='bias')
  parts = [renames.get(p, p) for p in parts]
  # layer_3 -> 3, then encoder.3 -> encoder.layer.3 below.
  parts = [p.removeprefix('layer_') for p in parts]
  out = '.'.join(parts).replace('.encoder.', '.encoder.layer.')
  return out + '.weight' if out.endswith('_embeddings') else out


def _read_variables(prefix: str) -> dict[str, np.ndarray]:
  """The model weights of a TF checkpoint under transformers' names."""
  import tensorflow as tf  # Slow to import; only this format needs it.

  try:
    reader = tf.train.load_checkpoint(prefix)
  except (ValueError, tf.errors.OpError) as e:
    raise model.WeightsError(f'{prefix}: not a readable TF checkpoint') from e
  out = {}
  for name in reader.get_variable_to_shape_map():
    hf_name = _hf_name(name)
    if hf_name is not None:
      value = reader.get_tensor(name)
      # TF dense kernels are [in, out]; PyTorch weights are [out, in].
      out[hf_name] = value.T if name.endswith('/kernel') else value
  return out


def read_config(path: str) -> model.BertConfig:
  """The BertConfig of the checkpoint at `path` (a prefix or its directory):
  the `bert_config.json` beside it."""
  if not os.path.isdir(path):
    path = os.path.dirname(checkpoint_prefix(path) or path)
  return hf.read_config(os.path.join(path, CONFIG_FILE))


def read_params(
  path: str,
  config: model.BertConfig,
  rng: jax.Array | None = None,
  require_heads: Sequence[str] = (),
) -> dict[str, Any]:
  """The checkpoint at `path` (a prefix or its directory) as params for
  `config`; heads it lacks are initialised (`hf.params_from_hf`)."""
  prefix = checkpoint_prefix(path)
  if prefix is None:
    raise FileNotFoundError(f'{path}: no TF checkpoint (no .index file)')
  params, _ = hf.params_from_hf(
    _read_variables(prefix), config, rng, require_heads, path
  )
  return params
