"""BERT checkpoints in Hugging Face and Google formats, to and from bertjax.

This module owns the name and layout mapping between bertjax parameters and
foreign checkpoints:

* Hugging Face `transformers` (`config.json` + `model.safetensors`, sharded
  `model.safetensors.index.json`, or `pytorch_model.bin`), both
  `BertForPreTraining` (names under `bert.` and `cls.`) and `BertModel`
  (no prefix, no pretraining heads);
* the original google-research/bert TensorFlow checkpoints (`bert_config.json`
  + `bert_model.ckpt.*`), import only.

Everything here works on numpy arrays: PyTorch linear weights are
`[out, in]`, bertjax kernels are `[in, ...out]` with the attention
projections split into `[heads, head_dim]`, and scanned layers are stacked on
a leading `[num_layers]` axis. Pretraining heads absent from a checkpoint are
initialised with the model's own initialisers and reported
(`init_params`; `abstract_params` gives the shapes any config implies, which
every tensor is checked against). torch is only
imported to read a `pytorch_model.bin` (with `weights_only=True`), TensorFlow
only to read a Google checkpoint.
"""

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
from absl import logging

from bertjax import cli, model

# The BertConfig fields that Hugging Face and Google configs share with ours,
# under the same names. Our `dtype`, `param_dtype`, `scan_layers` and
# `remat_policy` are how bertjax runs a model, not what the checkpoint is, so
# they are never read from a foreign config (HF's own `dtype` is the storage
# dtype of its tensors, unrelated to our compute dtype).
_SHARED_FIELDS = (
  'vocab_size',
  'hidden_size',
  'num_hidden_layers',
  'num_attention_heads',
  'intermediate_size',
  'hidden_act',
  'hidden_dropout_prob',
  'attention_probs_dropout_prob',
  'max_position_embeddings',
  'type_vocab_size',
  'initializer_range',
  'layer_norm_eps',
)

# Config fields that fix parameter shapes: a loaded checkpoint cannot change
# them. (`scan_layers` changes only the layout, `param_dtype` the storage.)
_SHAPE_FIELDS = (
  'vocab_size',
  'hidden_size',
  'num_hidden_layers',
  'num_attention_heads',
  'intermediate_size',
  'max_position_embeddings',
  'type_vocab_size',
)

# Pretraining heads a checkpoint may lack, as bertjax parameter paths.
POOLER = 'bert/pooler'
MLM_HEAD = 'mlm_head'
NSP_HEAD = 'nsp_head'

# Non-parameter tensors that some transformers versions serialise.
_BUFFERS = ('embeddings.position_ids', 'embeddings.token_type_ids')

SAFETENSORS_FILE = 'model.safetensors'
SAFETENSORS_INDEX_FILE = 'model.safetensors.index.json'
PYTORCH_FILE = 'pytorch_model.bin'
PYTORCH_INDEX_FILE = 'pytorch_model.bin.index.json'
CONFIG_FILE = 'config.json'
TOKENIZER_CONFIG_FILE = 'tokenizer_config.json'
GOOGLE_CONFIG_FILE = 'bert_config.json'
GOOGLE_CHECKPOINT_PREFIX = 'bert_model.ckpt'
# Tokenizer files of a model directory: a WordPiece vocabulary or a
# SentencePiece model (transformers' name for it); readers also accept the
# other common SentencePiece name.
VOCAB_FILE = 'vocab.txt'
SENTENCEPIECE_FILE = 'spiece.model'
_TOKENIZER_FILES = (VOCAB_FILE, SENTENCEPIECE_FILE, 'sentencepiece.model')


def config_from_hf(hf_config: Mapping[str, Any]) -> model.BertConfig:
  """Reads a Hugging Face `config.json` (or Google `bert_config.json`).

  Fields bertjax has no use for (`architectures`, `transformers_version`,
  `pad_token_id`, `dtype`, label maps, ...) are ignored; fields that would
  change what the network computes in ways bertjax does not implement are
  rejected.

  Args:
    hf_config: the parsed JSON.

  Returns:
    The equivalent BertConfig with bertjax's defaults for the run-time fields.

  Raises:
    cli.UserError: not a BERT encoder, or an invalid configuration.
  """
  model_type = hf_config.get('model_type', 'bert')
  if model_type != 'bert':
    raise cli.UserError(
      f'model_type {model_type!r} is not supported: only BERT (model_type '
      f"'bert') checkpoints convert to bertjax"
    )
  position_type = hf_config.get('position_embedding_type', 'absolute')
  if position_type != 'absolute':
    raise cli.UserError(
      f'position_embedding_type {position_type!r} is not supported: bertjax '
      "implements only 'absolute' position embeddings"
    )
  for flag in ('is_decoder', 'add_cross_attention'):
    if hf_config.get(flag):
      raise cli.UserError(
        f'{flag}=true is not supported: bertjax is an encoder-only BERT'
      )
  values = {k: hf_config[k] for k in _SHARED_FIELDS if k in hf_config}
  try:
    return model.BertConfig.from_dict(values)
  except model.ConfigError as e:
    raise cli.UserError(f'invalid BERT config: {e}') from e


def config_to_hf(config: model.BertConfig) -> dict[str, Any]:
  """The `config.json` of a transformers `BertForPreTraining`."""
  values = {k: getattr(config, k) for k in _SHARED_FIELDS}
  return dict(
    architectures=['BertForPreTraining'],
    model_type='bert',
    **values,
    pad_token_id=0,
    tie_word_embeddings=True,
    # The storage dtype of model.safetensors (we write parameters as is).
    dtype=config.param_dtype,
  )


def apply_overrides(
  config: model.BertConfig,
  overrides: Mapping[str, Any] | None,
  source: str,
) -> model.BertConfig:
  """Changes the run-time fields of a saved model's config.

  Args:
    config: the config the checkpoint was saved with.
    overrides: fields to change (`dtype`, `param_dtype`, `scan_layers`,
      dropout rates, `remat_policy`, ...); None changes nothing.
    source: the checkpoint, for error messages.

  Raises:
    cli.UserError: an override of a field that fixes parameter shapes, or
      an invalid value.
  """
  overrides = dict(overrides or {})
  for name in _SHAPE_FIELDS:
    if name in overrides and overrides[name] != getattr(config, name):
      raise cli.UserError(
        f'cannot override {name} of {source} ({getattr(config, name)} -> '
        f'{overrides[name]}): its parameters fix it'
      )
  try:
    return config.replace(**overrides)
  except model.ConfigError as e:
    raise cli.UserError(f'config override for {source}: {e}') from e


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """How one Hugging Face tensor maps onto one bertjax parameter.

  Attributes:
    hf_name: name in a `BertForPreTraining` state dict.
    path: bertjax parameter path below `params`, for one layer when the
      tensor belongs to an encoder layer.
    hf_shape: shape in the Hugging Face checkpoint.
    linear: a PyTorch `nn.Linear` weight (`[out, in]`), transposed to our
      `[in, out]` kernel; otherwise only reshaped.
  """

  hf_name: str
  path: tuple[str, ...]
  hf_shape: tuple[int, ...]
  linear: bool = False


def _tensor_groups(config: model.BertConfig) -> dict[str, list[_Tensor]]:
  """Every tensor of a `BertForPreTraining`, grouped by optional part.

  Groups `encoder` (the embeddings) and `layer` (one encoder layer) must be
  in any checkpoint; the other groups are the heads a checkpoint may lack.
  Layer tensors use the placeholder `{i}` in `hf_name` and have paths
  relative to the layer.
  """
  h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
  emb = 'bert.embeddings'
  lyr = 'bert.encoder.layer.{i}'
  encoder = [
    _Tensor(
      f'{emb}.word_embeddings.weight', ('word_embeddings', 'embedding'), (v, h)
    ),
    _Tensor(
      f'{emb}.position_embeddings.weight',
      ('position_embeddings', 'embedding'),
      (config.max_position_embeddings, h),
    ),
    _Tensor(
      f'{emb}.token_type_embeddings.weight',
      ('token_type_embeddings', 'embedding'),
      (config.type_vocab_size, h),
    ),
    _Tensor(f'{emb}.LayerNorm.weight', ('layer_norm', 'scale'), (h,)),
    _Tensor(f'{emb}.LayerNorm.bias', ('layer_norm', 'bias'), (h,)),
  ]
  encoder = [
    dataclasses.replace(t, path=('bert', 'embeddings', *t.path))
    for t in encoder
  ]

  def dense(hf, ours, n_in, n_out):
    return [
      _Tensor(f'{lyr}.{hf}.weight', (*ours, 'kernel'), (n_out, n_in), True),
      _Tensor(f'{lyr}.{hf}.bias', (*ours, 'bias'), (n_out,)),
    ]

  def norm(hf, ours):
    return [
      _Tensor(f'{lyr}.{hf}.weight', (ours, 'scale'), (h,)),
      _Tensor(f'{lyr}.{hf}.bias', (ours, 'bias'), (h,)),
    ]

  layer = [
    *dense('attention.self.query', ('attention', 'query'), h, h),
    *dense('attention.self.key', ('attention', 'key'), h, h),
    *dense('attention.self.value', ('attention', 'value'), h, h),
    *dense('attention.output.dense', ('attention', 'output'), h, h),
    *norm('attention.output.LayerNorm', 'attention_layer_norm'),
    *dense('intermediate.dense', ('intermediate',), h, i),
    *dense('output.dense', ('output',), i, h),
    *norm('output.LayerNorm', 'output_layer_norm'),
  ]
  return dict(
    encoder=encoder,
    layer=layer,
    pooler=[
      _Tensor(
        'bert.pooler.dense.weight', ('bert', 'pooler', 'kernel'), (h, h), True
      ),
      _Tensor('bert.pooler.dense.bias', ('bert', 'pooler', 'bias'), (h,)),
    ],
    mlm_head=[
      _Tensor(
        'cls.predictions.transform.dense.weight',
        ('mlm_head', 'transform', 'kernel'),
        (h, h),
        True,
      ),
      _Tensor(
        'cls.predictions.transform.dense.bias',
        ('mlm_head', 'transform', 'bias'),
        (h,),
      ),
      _Tensor(
        'cls.predictions.transform.LayerNorm.weight',
        ('mlm_head', 'layer_norm', 'scale'),
        (h,),
      ),
      _Tensor(
        'cls.predictions.transform.LayerNorm.bias',
        ('mlm_head', 'layer_norm', 'bias'),
        (h,),
      ),
      _Tensor('cls.predictions.bias', ('mlm_head', 'output_bias'), (v,)),
    ],
    nsp_head=[
      _Tensor(
        'cls.seq_relationship.weight', ('nsp_head', 'kernel'), (2, h), True
      ),
      _Tensor('cls.seq_relationship.bias', ('nsp_head', 'bias'), (2,)),
    ],
  )


# bertjax path of each optional group, as reported to the user.
_HEADS = dict(pooler=POOLER, mlm_head=MLM_HEAD, nsp_head=NSP_HEAD)


def _layer_path(config: model.BertConfig, i: int) -> tuple[str, ...]:
  if config.scan_layers:
    return ('bert', 'encoder', 'layers')
  return ('bert', 'encoder', f'layer_{i}')


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def abstract_params(config: model.BertConfig) -> dict[str, Any]:
  """`jax.ShapeDtypeStruct`s of `BertForPreTraining` params (no compute)."""
  return jax.eval_shape(_init_fn(config), jax.random.key(0))


def _init_fn(config: model.BertConfig) -> Callable[[jax.Array], Any]:
  bert = model.BertForPreTraining(config)
  ids = jnp.zeros((1, 1), jnp.int32)

  def init(rng):
    variables = bert.init(rng, ids, masked_lm_positions=ids)
    return nn.unbox(variables)['params']

  return init


def init_params(
  config: model.BertConfig,
  rng: jax.Array,
  paths: tuple[str, ...] | None = None,
) -> dict[str, Any]:
  """Initialises `BertForPreTraining` params, or only some subtrees.

  Args:
    config: the model config.
    rng: PRNG key for `model.init`.
    paths: '/'-separated subtree paths (e.g. `bert/pooler`) to return; all
      params when None. Only those subtrees are computed (XLA drops the
      rest), yet each equals the same subtree of a full `model.init(rng)`.

  Returns:
    A nested dict of numpy arrays, holding only `paths` when given.
  """
  init = _init_fn(config)

  def select(rng):
    params = init(rng)
    if paths is None:
      return params
    out = {}
    for p in paths:
      _set(out, tuple(p.split('/')), _get(params, tuple(p.split('/'))))
    return out

  return jax.tree.map(np.asarray, jax.jit(select)(rng))


def _canonical_names(
  state_dict: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], Callable[[str], str]]:
  """Renames a state dict to `BertForPreTraining` names.

  Returns:
    The renamed dict, and a function from a `BertForPreTraining` name to the
    name the checkpoint uses (or would use) for it, for messages.
  """
  prefixed = any(k.startswith('bert.') for k in state_dict)
  out, original = {}, {}
  for name, value in state_dict.items():
    canonical = name
    # TF-era PyTorch checkpoints call LayerNorm's parameters gamma / beta.
    if canonical.endswith('LayerNorm.gamma'):
      canonical = canonical[: -len('gamma')] + 'weight'
    elif canonical.endswith('LayerNorm.beta'):
      canonical = canonical[: -len('beta')] + 'bias'
    if not prefixed:
      canonical = f'bert.{canonical}'
    out[canonical] = value
    original[canonical] = name

  def shown(name: str) -> str:
    if name in original:
      return original[name]
    return name if prefixed else name.removeprefix('bert.')

  return out, shown


def _check_shape(name: str, value: np.ndarray, shape: tuple[int, ...]):
  if tuple(value.shape) != tuple(shape):
    raise cli.UserError(
      f'tensor {name} has shape {list(value.shape)}, expected '
      f'{list(shape)} from the model config'
    )


def _to_ours(
  t: _Tensor, value: np.ndarray, shape: tuple[int, ...], dtype
) -> np.ndarray:
  value = np.asarray(value)
  if t.linear:
    value = value.T
  return np.ascontiguousarray(value.reshape(shape), dtype=dtype)


def params_from_hf(
  state_dict: Mapping[str, np.ndarray],
  config: model.BertConfig,
  rng: jax.Array | None = None,
) -> tuple[dict[str, Any], list[str]]:
  """Converts a Hugging Face BERT state dict to bertjax params.

  Accepts `BertForPreTraining` names (`bert.*`, `cls.*`) and `BertModel`
  names (no prefix, no heads); LayerNorm `gamma`/`beta` are read as
  `weight`/`bias`. The MLM decoder weight, if present, must equal the word
  embeddings (bertjax ties them). Tensors of other heads (a fine-tuned
  classifier, say) are ignored with a warning.

  Args:
    state_dict: tensor name -> numpy array, as stored.
    config: the model config; every tensor's shape is checked against it.
    rng: PRNG key for heads the checkpoint lacks (default key 0).

  Returns:
    `params` (the nested dict under `params` of `BertForPreTraining`, numpy
    arrays of `config.param_dtype`, layers stacked when `config.scan_layers`)
    and the bertjax paths of the heads that were missing and freshly
    initialised (a subset of `bert/pooler`, `mlm_head`, `nsp_head`).

  Raises:
    cli.UserError: a missing encoder tensor, a shape that does not fit the
      config, or an untied MLM decoder.
  """
  tensors, shown = _canonical_names(state_dict)
  groups = _tensor_groups(config)
  abstract = abstract_params(config)
  dtype = jnp.dtype(config.param_dtype)
  used = set()
  params: dict[str, Any] = {}

  # cls.predictions.decoder.bias is transformers' alias of
  # cls.predictions.bias (one tensor, tied); some checkpoints hold only it.
  if 'cls.predictions.bias' not in tensors:
    if 'cls.predictions.decoder.bias' in tensors:
      tensors['cls.predictions.bias'] = tensors['cls.predictions.decoder.bias']
  used.add('cls.predictions.decoder.bias')

  missing = [
    t.hf_name for t in groups['encoder'] if t.hf_name not in tensors
  ] + [
    t.hf_name.format(i=i)
    for i in range(config.num_hidden_layers)
    for t in groups['layer']
    if t.hf_name.format(i=i) not in tensors
  ]
  if missing:
    raise cli.UserError(
      f'checkpoint lacks {len(missing)} BERT encoder tensor(s), e.g. '
      f'{", ".join(shown(n) for n in missing[:3])} (is it a BERT checkpoint '
      f'with '
      f'{config.num_hidden_layers} layers?)'
    )

  for t in groups['encoder']:
    value = tensors[t.hf_name]
    _check_shape(shown(t.hf_name), value, t.hf_shape)
    shape = _get(abstract, t.path).shape
    _set(params, t.path, _to_ours(t, value, shape, dtype))
    used.add(t.hf_name)

  for t in groups['layer']:
    per_layer = []
    for i in range(config.num_hidden_layers):
      name = t.hf_name.format(i=i)
      value = tensors[name]
      _check_shape(shown(name), value, t.hf_shape)
      shape = _get(abstract, _layer_path(config, i) + t.path).shape
      if config.scan_layers:
        shape = shape[1:]
      per_layer.append(_to_ours(t, value, shape, dtype))
      used.add(name)
    if config.scan_layers:
      _set(params, _layer_path(config, 0) + t.path, np.stack(per_layer))
    else:
      for i, value in enumerate(per_layer):
        _set(params, _layer_path(config, i) + t.path, value)

  missing_heads = []
  for group, head in _HEADS.items():
    present = [t.hf_name for t in groups[group] if t.hf_name in tensors]
    if not present:
      missing_heads.append(head)
      continue
    if len(present) != len(groups[group]):
      absent = [t.hf_name for t in groups[group] if t.hf_name not in tensors]
      raise cli.UserError(
        f'checkpoint has part of {head}: lacks {", ".join(absent)}'
      )
    for t in groups[group]:
      value = tensors[t.hf_name]
      _check_shape(shown(t.hf_name), value, t.hf_shape)
      shape = _get(abstract, t.path).shape
      _set(params, t.path, _to_ours(t, value, shape, dtype))
      used.add(t.hf_name)

  decoder = tensors.get('cls.predictions.decoder.weight')
  if decoder is not None:
    word = tensors['bert.embeddings.word_embeddings.weight']
    _check_shape('cls.predictions.decoder.weight', decoder, word.shape)
    if not np.array_equal(np.asarray(decoder), np.asarray(word)):
      raise cli.UserError(
        'cls.predictions.decoder.weight differs from the word embeddings: '
        'bertjax ties the MLM decoder to them and cannot load an untied one'
      )
    used.add('cls.predictions.decoder.weight')

  ignored = sorted(
    shown(k) for k in tensors if k not in used and not k.endswith(_BUFFERS)
  )
  if ignored:
    logging.warning(
      'ignored %d checkpoint tensor(s) that BertForPreTraining does not '
      'have: %s',
      len(ignored),
      ', '.join(ignored),
    )
  if missing_heads:
    if rng is None:
      rng = jax.random.key(0)
    fresh = init_params(config, rng, tuple(missing_heads))
    for head in missing_heads:
      path = tuple(head.split('/'))
      _set(params, path, _get(fresh, path))
    logging.warning(
      'checkpoint has no %s: initialised freshly', ', '.join(missing_heads)
    )
  return params, missing_heads


def _flatten(tree: Mapping[str, Any], prefix=()) -> Iterator:
  for key, value in tree.items():
    if isinstance(value, Mapping):
      yield from _flatten(value, (*prefix, key))
    else:
      yield (*prefix, key), value


def params_to_hf(
  params: Mapping[str, Any], config: model.BertConfig
) -> dict[str, np.ndarray]:
  """Converts bertjax params to a transformers `BertForPreTraining` state dict.

  The tied MLM decoder is not written (transformers 5 ties
  `cls.predictions.decoder.weight` to the word embeddings and
  `cls.predictions.decoder.bias` to `cls.predictions.bias` when loading).

  Args:
    params: the full `BertForPreTraining` params (plain or
      `nn.Partitioned`-boxed arrays, layers stacked or not as
      `config.scan_layers` says).
    config: the model config.

  Returns:
    Tensor name -> contiguous numpy array in `config.param_dtype`.

  Raises:
    cli.UserError: a parameter is missing or does not fit the config.
  """
  params = nn.unbox(params)
  groups = _tensor_groups(config)
  abstract = abstract_params(config)
  expected = {p: v.shape for p, v in _flatten(abstract)}
  given = dict(_flatten(params))
  for path, shape in expected.items():
    if path not in given:
      raise cli.UserError(f'params lack {"/".join(path)}')
    if tuple(np.shape(given[path])) != tuple(shape):
      raise cli.UserError(
        f'param {"/".join(path)} has shape {list(np.shape(given[path]))}, '
        f'expected {list(shape)} from the model config'
      )
  extra = sorted('/'.join(p) for p in given if p not in expected)
  if extra:
    raise cli.UserError(f'params have unknown entries: {", ".join(extra)}')

  def to_hf(t: _Tensor, value) -> np.ndarray:
    value = np.asarray(value)
    if t.linear:
      value = value.reshape(t.hf_shape[::-1]).T
    return np.ascontiguousarray(value.reshape(t.hf_shape))

  out = {}
  for group, tensors in groups.items():
    if group == 'layer':
      continue
    for t in tensors:
      out[t.hf_name] = to_hf(t, _get(params, t.path))
  for i in range(config.num_hidden_layers):
    for t in groups['layer']:
      value = _get(params, _layer_path(config, i) + t.path)
      if config.scan_layers:
        value = np.asarray(value)[i]
      out[t.hf_name.format(i=i)] = to_hf(t, value)
  return out


def tokenizer_file_name(path: str) -> str:
  """The name a tokenizer file gets inside a model directory."""
  if path.endswith('.txt'):
    return VOCAB_FILE
  if path.endswith('.model'):
    return SENTENCEPIECE_FILE
  raise cli.UserError(
    f'{path}: not a tokenizer file (expected a WordPiece .txt vocabulary '
    'or a SentencePiece .model)'
  )


def find_tokenizer_file(model_dir: str) -> str | None:
  """The WordPiece vocabulary or SentencePiece model in a directory."""
  for name in _TOKENIZER_FILES:
    path = os.path.join(model_dir, name)
    if os.path.isfile(path):
      return path
  return None


def read_do_lower_case(model_dir: str) -> bool | None:
  """`do_lower_case` from a Hugging Face `tokenizer_config.json`, if any."""
  path = os.path.join(model_dir, TOKENIZER_CONFIG_FILE)
  if not os.path.isfile(path):
    return None
  value = _read_json(path).get('do_lower_case')
  return None if value is None else bool(value)


def _read_json(path: str) -> dict[str, Any]:
  with open(path, encoding='utf-8') as f:
    try:
      value = json.load(f)
    except json.JSONDecodeError as e:
      raise cli.UserError(f'{path}: not valid JSON ({e})') from e
  if not isinstance(value, dict):
    raise cli.UserError(f'{path}: expected a JSON object')
  return value


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  out = {}
  with safetensors.safe_open(path, framework='np') as f:
    names = list(f.keys())
    # numpy has no bfloat16, so safetensors' numpy reader refuses it; its
    # Flax reader gives jax arrays whose numpy view is ml_dtypes' bfloat16.
    bf16 = {n for n in names if f.get_slice(n).get_dtype() == 'BF16'}
    for name in names:
      if name not in bf16:
        out[name] = f.get_tensor(name)
  if bf16:
    with safetensors.safe_open(path, framework='flax') as f:
      for name in bf16:
        out[name] = np.asarray(f.get_tensor(name))
  return out


def _read_pytorch(path: str) -> dict[str, np.ndarray]:
  try:
    # Imported here: torch is optional and only reads this file format.
    import torch
  except ImportError as e:
    raise cli.UserError(
      f'{path}: reading pytorch_model.bin needs torch, which is not '
      'installed; convert it to model.safetensors first'
    ) from e
  # weights_only: never unpickle arbitrary objects from a checkpoint.
  state = torch.load(path, map_location='cpu', weights_only=True)
  if not isinstance(state, Mapping):
    raise cli.UserError(f'{path}: not a state dict')
  out = {}
  for name, tensor in state.items():
    if not isinstance(tensor, torch.Tensor):
      raise cli.UserError(f'{path}: entry {name} is not a tensor')
    if tensor.dtype == torch.bfloat16:
      tensor = tensor.float()
    out[name] = tensor.detach().numpy()
  return out


def _read_sharded(
  model_dir: str, index_file: str, read: Callable[[str], dict]
) -> dict[str, np.ndarray]:
  index = _read_json(os.path.join(model_dir, index_file))
  weight_map = index.get('weight_map')
  if not isinstance(weight_map, dict):
    raise cli.UserError(f'{index_file} in {model_dir} has no weight_map')
  out = {}
  for shard in sorted(set(weight_map.values())):
    path = os.path.join(model_dir, shard)
    if not os.path.isfile(path):
      raise cli.UserError(f'{path}: shard listed in {index_file} is missing')
    out.update(read(path))
  absent = sorted(set(weight_map) - set(out))
  if absent:
    raise cli.UserError(
      f'{index_file} lists {len(absent)} tensor(s) that its shards lack, '
      f'e.g. {absent[0]}'
    )
  return out


def read_hf_state_dict(model_dir: str) -> dict[str, np.ndarray]:
  """Reads the weights of a Hugging Face model directory as numpy arrays."""
  if os.path.isfile(os.path.join(model_dir, SAFETENSORS_FILE)):
    return _read_safetensors(os.path.join(model_dir, SAFETENSORS_FILE))
  if os.path.isfile(os.path.join(model_dir, SAFETENSORS_INDEX_FILE)):
    return _read_sharded(model_dir, SAFETENSORS_INDEX_FILE, _read_safetensors)
  if os.path.isfile(os.path.join(model_dir, PYTORCH_FILE)):
    return _read_pytorch(os.path.join(model_dir, PYTORCH_FILE))
  if os.path.isfile(os.path.join(model_dir, PYTORCH_INDEX_FILE)):
    return _read_sharded(model_dir, PYTORCH_INDEX_FILE, _read_pytorch)
  raise cli.UserError(
    f'{model_dir}: no {SAFETENSORS_FILE}, {SAFETENSORS_INDEX_FILE} or '
    f'{PYTORCH_FILE} weights'
  )


def load_hf_dir(
  model_dir: str,
  config_overrides: Mapping[str, Any] | None = None,
  rng: jax.Array | None = None,
) -> tuple[model.BertConfig, dict[str, Any], str | None]:
  """Loads a Hugging Face BERT directory.

  Args:
    model_dir: holds `config.json`, the weights and usually `vocab.txt`.
    config_overrides: run-time BertConfig fields (see `apply_overrides`).
    rng: PRNG key for heads the checkpoint lacks (default key 0).

  Returns:
    (config, params, tokenizer file path or None); params as
    `params_from_hf` returns them for the overridden config.

  Raises:
    cli.UserError: a missing or malformed file, or weights that do not fit.
  """
  if not os.path.isdir(model_dir):
    raise cli.UserError(f'{model_dir}: not a directory')
  config_path = os.path.join(model_dir, CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise cli.UserError(f'{model_dir}: no {CONFIG_FILE}')
  config = apply_overrides(
    config_from_hf(_read_json(config_path)), config_overrides, model_dir
  )
  params, _ = params_from_hf(read_hf_state_dict(model_dir), config, rng)
  return config, params, find_tokenizer_file(model_dir)


def save_hf_dir(
  model_dir: str,
  config: model.BertConfig,
  params: Mapping[str, Any],
  vocab_file: str | None,
  do_lower_case: bool | None = None,
) -> None:
  """Writes a directory `transformers.BertForPreTraining` loads as is.

  Args:
    model_dir: created if needed; existing files of the same names are
      overwritten.
    config: the model config.
    params: full `BertForPreTraining` params.
    vocab_file: a WordPiece vocabulary (copied as `vocab.txt`) or a
      SentencePiece model (copied as `spiece.model`); None writes none.
    do_lower_case: when given, written to `tokenizer_config.json` so that
      transformers' tokenizer lower-cases (or not) like ours.
  """
  state_dict = params_to_hf(params, config)
  if vocab_file is not None:
    tokenizer_name = tokenizer_file_name(vocab_file)
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, CONFIG_FILE), 'w', encoding='utf-8') as f:
    json.dump(config_to_hf(config), f, indent=2, sort_keys=True)
    f.write('\n')
  # transformers expects the 'pt' format tag that its own writer sets.
  safetensors.numpy.save_file(
    state_dict,
    os.path.join(model_dir, SAFETENSORS_FILE),
    metadata={'format': 'pt'},
  )
  if vocab_file is not None:
    shutil.copyfile(vocab_file, os.path.join(model_dir, tokenizer_name))
  if do_lower_case is not None:
    path = os.path.join(model_dir, TOKENIZER_CONFIG_FILE)
    with open(path, 'w', encoding='utf-8') as f:
      json.dump(
        dict(tokenizer_class='BertTokenizer', do_lower_case=do_lower_case),
        f,
        indent=2,
      )
      f.write('\n')


def _google_to_hf_name(name: str) -> str | None:
  """Maps a google-research/bert variable name to its transformers name.

  Returns None for variables that are not model weights (optimizer slots,
  the global step).
  """
  parts = name.split('/')
  if parts[-1] in ('adam_m', 'adam_v') or name == 'global_step':
    return None
  if name == 'cls/predictions/output_bias':
    return 'cls.predictions.bias'
  if name == 'cls/seq_relationship/output_weights':
    # Already [2, hidden], the layout of a PyTorch linear weight.
    return 'cls.seq_relationship.weight'
  if name == 'cls/seq_relationship/output_bias':
    return 'cls.seq_relationship.bias'
  renames = dict(kernel='weight', gamma='weight', beta='bias')
  parts = [renames.get(p, p) for p in parts]
  # layer_3 -> 3, then encoder.3 -> encoder.layer.3 below.
  parts = [p[len('layer_') :] if p.startswith('layer_') else p for p in parts]
  out = '.'.join(parts).replace('.encoder.', '.encoder.layer.')
  if out.endswith('_embeddings'):
    out += '.weight'
  return out


def _read_google(prefix: str) -> dict[str, np.ndarray]:
  try:
    # Imported here: TensorFlow is slow to import and only reads this format.
    import tensorflow as tf
  except ImportError as e:
    raise cli.UserError(
      f'{prefix}: reading a TensorFlow checkpoint needs tensorflow'
    ) from e
  try:
    reader = tf.train.load_checkpoint(prefix)
  except (ValueError, tf.errors.OpError) as e:
    raise cli.UserError(f'{prefix}: not a readable TF checkpoint') from e
  out = {}
  for name in reader.get_variable_to_shape_map():
    hf_name = _google_to_hf_name(name)
    if hf_name is None:
      continue
    value = reader.get_tensor(name)
    # TF dense kernels are [in, out]; PyTorch weights are [out, in].
    if name.endswith('/kernel'):
      value = value.T
    out[hf_name] = value
  return out


def google_checkpoint_prefix(path: str) -> str | None:
  """The checkpoint prefix that `path` (a directory or prefix) names."""
  if os.path.isdir(path):
    path = os.path.join(path, GOOGLE_CHECKPOINT_PREFIX)
  if os.path.isfile(path + '.index'):
    return path
  return None


def load_google_checkpoint(
  path: str,
  config_overrides: Mapping[str, Any] | None = None,
  rng: jax.Array | None = None,
) -> tuple[model.BertConfig, dict[str, Any], str | None]:
  """Loads an original google-research/bert TensorFlow checkpoint.

  Args:
    path: the checkpoint prefix (`.../bert_model.ckpt`) or its directory,
      which also holds `bert_config.json` and usually `vocab.txt`.
    config_overrides: run-time BertConfig fields (see `apply_overrides`).
    rng: PRNG key for heads the checkpoint lacks (default key 0).

  Returns:
    (config, params, tokenizer file path or None).
  """
  prefix = google_checkpoint_prefix(path)
  if prefix is None:
    raise cli.UserError(f'{path}: no TF checkpoint (no .index file)')
  model_dir = os.path.dirname(prefix)
  config_path = os.path.join(model_dir, GOOGLE_CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise cli.UserError(f'{model_dir}: no {GOOGLE_CONFIG_FILE}')
  config = apply_overrides(
    config_from_hf(_read_json(config_path)), config_overrides, prefix
  )
  params, _ = params_from_hf(_read_google(prefix), config, rng)
  return config, params, find_tokenizer_file(model_dir)
