"""Hugging Face BERT checkpoints: the name and layout mapping, reader, writer.

A Hugging Face BERT directory holds `config.json` and `model.safetensors`
(or a sharded index, or `pytorch_model.bin`), with `BertForPreTraining`
names (under `bert.` and `cls.`) or `BertModel` names (no prefix, no
pretraining heads). PyTorch linear weights are `[out, in]`; bertjax kernels
are `[in, ...out]`, attention projections split into `[heads, head_dim]`,
scanned layers stacked on a leading `[num_layers]` axis. Everything here
works on numpy arrays; torch is imported only to read `pytorch_model.bin`,
with `weights_only=True`. `google` maps Google's checkpoints onto these names.
"""

import dataclasses
import functools
import json
import operator
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
from absl import logging

from bertjax import model
from data_pipeline import files

CONFIG_FILE = 'config.json'
SAFETENSORS_FILE = 'model.safetensors'
SAFETENSORS_INDEX_FILE = 'model.safetensors.index.json'
PYTORCH_FILE = 'pytorch_model.bin'
PYTORCH_INDEX_FILE = 'pytorch_model.bin.index.json'
TOKENIZER_CONFIG_FILE = 'tokenizer_config.json'

# Pretraining heads a checkpoint may lack, as bertjax parameter paths.
HEADS = ('bert/pooler', 'mlm_head', 'nsp_head')
# Non-parameter tensors that some transformers versions serialise.
_BUFFERS = ('embeddings.position_ids', 'embeddings.token_type_ids')


def config_from_hf(hf_config: Mapping[str, Any]) -> model.BertConfig:
  """Reads a Hugging Face `config.json` (or Google `bert_config.json`).

  Fields bertjax has no use for (`architectures`, `pad_token_id`, `dtype`,
  label maps, ...) are ignored; a model that is not a BERT encoder, or that
  computes what bertjax does not implement, raises `model.ConfigError`.
  """
  model_type = hf_config.get('model_type', 'bert')
  if model_type != 'bert':
    raise model.ConfigError(
      f'model_type {model_type!r} is not supported: only BERT (model_type '
      f"'bert') checkpoints convert to bertjax"
    )
  position_type = hf_config.get('position_embedding_type', 'absolute')
  if position_type != 'absolute':
    raise model.ConfigError(
      f'position_embedding_type {position_type!r} is not supported: bertjax '
      "implements only 'absolute' position embeddings"
    )
  for flag in ('is_decoder', 'add_cross_attention'):
    if hf_config.get(flag):
      raise model.ConfigError(
        f'{flag}=true is not supported: bertjax is an encoder-only BERT'
      )
  shared = model.BertConfig.shared_fields()
  return model.BertConfig.from_dict(
    {k: v for k, v in hf_config.items() if k in shared}
  )


# The transformers class of each `model.Head` kind.
ARCHITECTURES = {
  'pretraining': 'BertForPreTraining',
  'sequence_classification': 'BertForSequenceClassification',
  'token_classification': 'BertForTokenClassification',
  'question_answering': 'BertForQuestionAnswering',
}


def config_to_hf(
  config: model.BertConfig,
  head: model.Head = model.PRETRAINING,
  labels: list[str] | None = None,
) -> dict[str, Any]:
  """The `config.json` of the transformers class of `head`; `labels` (the
  class names, by id) become its `id2label` / `label2id`."""
  out = dict(
    architectures=[ARCHITECTURES[head.kind]],
    model_type='bert',
    **{k: getattr(config, k) for k in config.shared_fields()},
    pad_token_id=0,
    tie_word_embeddings=True,
    # The storage dtype of model.safetensors (`params_to_hf` casts to it).
    dtype=config.param_dtype,
  )
  if head.kind in ('sequence_classification', 'token_classification'):
    out['num_labels'] = head.num_labels
    if head.kind == 'sequence_classification':
      out['problem_type'] = (
        'regression' if head.num_labels == 1 else 'single_label_classification'
      )
    if labels:
      out['id2label'] = {str(i): name for i, name in enumerate(labels)}
      out['label2id'] = {name: i for i, name in enumerate(labels)}
  return out


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """How one Hugging Face tensor maps onto one bertjax parameter."""

  hf_name: str  # in a `BertForPreTraining` state dict
  path: str  # of the bertjax parameter, below `params`
  hf_shape: tuple[int, ...]
  # The encoder layer, whose slice of `path` it is when layers are scanned.
  layer: int | None = None
  head: str | None = None  # the optional head (of `HEADS`) it belongs to
  linear: bool = False  # an `nn.Linear` `[out, in]` weight: transposed


def _tensors(
  config: model.BertConfig, head: model.Head = model.PRETRAINING
) -> list[_Tensor]:
  """Every tensor of the transformers class of `head` with `config`."""
  h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size

  def dense(hf, ours, n_in, n_out, **where):
    return [
      _Tensor(
        f'{hf}.weight', f'{ours}/kernel', (n_out, n_in), linear=True, **where
      ),
      _Tensor(f'{hf}.bias', f'{ours}/bias', (n_out,), **where),
    ]

  def norm(hf, ours, **where):
    return [
      _Tensor(f'{hf}.weight', f'{ours}/scale', (h,), **where),
      _Tensor(f'{hf}.bias', f'{ours}/bias', (h,), **where),
    ]

  tensors = [
    _Tensor(
      f'bert.embeddings.{name}.weight',
      f'bert/embeddings/{name}/embedding',
      (rows, h),
    )
    for name, rows in (
      ('word_embeddings', v),
      ('position_embeddings', config.max_position_embeddings),
      ('token_type_embeddings', config.type_vocab_size),
    )
  ]
  tensors += norm('bert.embeddings.LayerNorm', 'bert/embeddings/layer_norm')
  for k in range(config.num_hidden_layers):
    hf = f'bert.encoder.layer.{k}'
    ours = 'bert/encoder/' + ('layers' if config.scan_layers else f'layer_{k}')
    where = dict(layer=k)
    for hf_part, our_part, n_in, n_out in (
      ('attention.self.query', 'attention/query', h, h),
      ('attention.self.key', 'attention/key', h, h),
      ('attention.self.value', 'attention/value', h, h),
      ('attention.output.dense', 'attention/output', h, h),
      ('intermediate.dense', 'intermediate', h, i),
      ('output.dense', 'output', i, h),
    ):
      tensors += dense(
        f'{hf}.{hf_part}', f'{ours}/{our_part}', n_in, n_out, **where
      )
    tensors += norm(
      f'{hf}.attention.output.LayerNorm',
      f'{ours}/attention_layer_norm',
      **where,
    )
    tensors += norm(
      f'{hf}.output.LayerNorm', f'{ours}/output_layer_norm', **where
    )
  pooler = dense('bert.pooler.dense', 'bert/pooler', h, h, head='bert/pooler')
  if head.kind == 'sequence_classification':
    classifier = dense('classifier', 'classifier', h, head.num_labels)
    return [*tensors, *pooler, *classifier]
  if head.kind == 'token_classification':
    return [*tensors, *dense('classifier', 'classifier', h, head.num_labels)]
  if head.kind == 'question_answering':
    return [*tensors, *dense('qa_outputs', 'qa_outputs', h, 2)]
  cls = 'cls.predictions'
  return [
    *tensors,
    *pooler,
    *dense(
      f'{cls}.transform.dense', 'mlm_head/transform', h, h, head='mlm_head'
    ),
    *norm(f'{cls}.transform.LayerNorm', 'mlm_head/layer_norm', head='mlm_head'),
    _Tensor(f'{cls}.bias', 'mlm_head/output_bias', (v,), head='mlm_head'),
    *dense('cls.seq_relationship', 'nsp_head', h, 2, head='nsp_head'),
  ]


def _canonical_names(
  state_dict: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], Callable[[str], str]]:
  """Renames a state dict to `BertForPreTraining` names; also returns, for
  messages, a function from such a name to the checkpoint's own."""
  prefixed = any(k.startswith('bert.') for k in state_dict)
  out, original = {}, {}
  for name, value in state_dict.items():
    canonical = name if prefixed else f'bert.{name}'
    stem, _, leaf = canonical.rpartition('.')
    # TF-era PyTorch checkpoints call LayerNorm's parameters gamma / beta.
    if stem.endswith('LayerNorm') and leaf in ('gamma', 'beta'):
      canonical = stem + ('.weight' if leaf == 'gamma' else '.bias')
    out[canonical] = value
    original[canonical] = name

  def shown(name: str) -> str:
    return original.get(name, name if prefixed else name.removeprefix('bert.'))

  return out, shown


def _get(tree: Mapping[str, Any], path: str) -> Any:
  return functools.reduce(operator.getitem, path.split('/'), tree)


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
  *parents, leaf = path.split('/')
  for key in parents:
    tree = tree.setdefault(key, {})
  tree[leaf] = value


def params_from_hf(
  state_dict: Mapping[str, np.ndarray],
  config: model.BertConfig,
  rng: jax.Array | None = None,
  require_heads: Sequence[str] = (),
  source: str = 'checkpoint',
) -> tuple[dict[str, Any], list[str]]:
  """Converts a Hugging Face BERT state dict to bertjax params.

  Takes either naming (LayerNorm `gamma`/`beta` read as `weight`/`bias`).
  A missing encoder tensor, a shape that does not fit `config`, an MLM
  decoder that differs from the word embeddings (bertjax ties them), a head
  only partly present or a missing head of `require_heads` raises
  `model.WeightsError`; other wholly missing heads are initialised from
  `rng` (default key 0), and other heads' tensors are ignored with a
  warning.

  Returns the params of `BertForPreTraining` (numpy arrays of
  `config.param_dtype`, layers stacked when `config.scan_layers`) and the
  heads (of `HEADS`) that were missing and freshly initialised.
  """
  tensors, shown = _canonical_names(state_dict)
  # cls.predictions.decoder.bias is transformers' alias of
  # cls.predictions.bias (one tensor, tied); some checkpoints hold only it.
  bias = tensors.pop('cls.predictions.decoder.bias', None)
  if bias is not None:
    tensors.setdefault('cls.predictions.bias', bias)
  table = _tensors(config)
  missing = [t.hf_name for t in table if t.hf_name not in tensors]
  encoder = [n for n in missing if not n.startswith(('bert.pooler', 'cls.'))]
  if encoder:
    raise model.WeightsError(
      f'checkpoint lacks {len(encoder)} BERT encoder tensor(s), e.g. '
      f'{", ".join(shown(n) for n in encoder[:3])} (is it a BERT checkpoint '
      f'with {config.num_hidden_layers} layers?)'
    )
  missing_heads = []
  for head in HEADS:
    names = [t.hf_name for t in table if t.head == head]
    absent = [n for n in names if n in missing]
    if absent and len(absent) < len(names):
      raise model.WeightsError(
        f'checkpoint has part of {head}: lacks '
        f'{", ".join(shown(n) for n in absent)}'
      )
    if absent:
      missing_heads.append(head)
  needed = [h for h in require_heads if h in missing_heads]
  if needed:
    raise model.WeightsError(missing_heads_message(source, needed))
  present = [t for t in table if t.hf_name in tensors]
  model.check_shapes(
    {shown(t.hf_name): tensors[t.hf_name] for t in present},
    {shown(t.hf_name): t.hf_shape for t in present},
    'checkpoint',
    kind='tensor',
  )

  ours = model.param_shapes(config)
  dtype = jnp.dtype(config.param_dtype)
  params: dict[str, Any] = {}
  layers: dict[str, list[np.ndarray]] = {}
  for t in present:
    value = np.asarray(tensors[t.hf_name])
    if t.linear:
      value = value.T
    stacked = config.scan_layers and t.layer is not None
    shape = ours[t.path][1:] if stacked else ours[t.path]
    value = np.ascontiguousarray(value.reshape(shape), dtype=dtype)
    if stacked:
      layers.setdefault(t.path, []).append(value)
    else:
      _set(params, t.path, value)
  for path, values in layers.items():
    _set(params, path, np.stack(values))

  decoder = tensors.get('cls.predictions.decoder.weight')
  word = tensors['bert.embeddings.word_embeddings.weight']
  if decoder is not None and not np.array_equal(decoder, word):
    raise model.WeightsError(
      'cls.predictions.decoder.weight differs from the word embeddings: '
      'bertjax ties the MLM decoder to them and cannot load an untied one'
    )
  used = {t.hf_name for t in present} | {'cls.predictions.decoder.weight'}
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
    fresh = jax.device_get(_init_heads(config, rng, tuple(missing_heads)))
    for head in missing_heads:
      _set(params, head, _get(fresh, head))
    logging.warning(
      'checkpoint has no %s: initialised freshly', ', '.join(missing_heads)
    )
  return params, missing_heads


def missing_heads_message(source: str, heads: Sequence[str]) -> str:
  """The error for a model that lacks heads a command needs trained."""
  return (
    f'{source} has no trained {", ".join(heads)}: this needs a model with '
    'its pretraining heads (a pretraining workdir, a bertjax model '
    'directory, or a Hugging Face BertForPreTraining or BertForMaskedLM)'
  )


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_heads(config, rng, heads):
  """Only the subtrees `heads` of `model.init_params` (XLA drops the rest),
  each equal to the same subtree of a full init."""
  params = nn.unbox(model.init_params(config, rng))
  out = {}
  for head in heads:
    _set(out, head, _get(params, head))
  return out


def params_to_hf(
  params: Mapping[str, Any],
  config: model.BertConfig,
  head: model.Head = model.PRETRAINING,
) -> dict[str, np.ndarray]:
  """Converts bertjax params (of `config` and `head`, boxed or not) to the
  state dict of the transformers class of `head`: tensor name -> contiguous
  numpy array in `config.param_dtype`.

  The tied MLM decoder is not written: transformers ties it to the word
  embeddings (and its bias to `cls.predictions.bias`) when loading.
  """
  params = nn.unbox(params)
  model.check_params(params, config, 'params', head)
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  flat = {'/'.join(str(k.key) for k in path): x for path, x in leaves}
  dtype = jnp.dtype(config.param_dtype)
  out = {}
  for t in _tensors(config, head):
    value = np.asarray(flat[t.path])
    if config.scan_layers and t.layer is not None:
      value = value[t.layer]
    if t.linear:
      value = value.reshape(t.hf_shape[::-1]).T
    out[t.hf_name] = np.ascontiguousarray(
      value.reshape(t.hf_shape), dtype=dtype
    )
  return out


def read_json(path: str) -> dict[str, Any]:
  """A JSON object from a file (a config, an index); `model.WeightsError`
  when the file holds anything else."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such file')
  with open(path, encoding='utf-8') as f:
    try:
      value = json.load(f)
    except json.JSONDecodeError as e:
      raise model.WeightsError(f'{path}: not valid JSON ({e})') from e
  if not isinstance(value, dict):
    raise model.WeightsError(f'{path}: expected a JSON object')
  return value


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  out = {}
  try:
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
  except safetensors.SafetensorError as e:
    raise model.WeightsError(
      f'{path}: not a readable safetensors file ({e})'
    ) from e
  return out


def _read_pytorch(path: str) -> dict[str, np.ndarray]:
  try:
    # Imported here: torch is optional and only reads this file format.
    import torch
  except ImportError as e:
    raise model.WeightsError(
      f'{path}: reading pytorch_model.bin needs torch, which is not '
      'installed; convert it to model.safetensors first'
    ) from e
  # weights_only: never unpickle arbitrary objects from a checkpoint.
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
    # torch's own message is a page of advice to unpickle unsafely.
    raise model.WeightsError(
      f'{path}: not a PyTorch state dict of plain tensors (torch.load with '
      'weights_only=True refuses it)'
    ) from e
  if not isinstance(state, Mapping):
    raise model.WeightsError(f'{path}: not a state dict')
  out = {}
  for name, tensor in state.items():
    if not isinstance(tensor, torch.Tensor):
      raise model.WeightsError(f'{path}: entry {name} is not a tensor')
    if tensor.dtype == torch.bfloat16:
      tensor = tensor.float()
    out[name] = tensor.detach().numpy()
  return out


def _read_sharded(
  model_dir: str, index_file: str, read: Callable[[str], dict]
) -> dict[str, np.ndarray]:
  weight_map = read_json(os.path.join(model_dir, index_file)).get('weight_map')
  if not isinstance(weight_map, dict):
    raise model.WeightsError(f'{index_file} in {model_dir} has no weight_map')
  out = {}
  inside = os.path.realpath(model_dir)
  for shard in sorted(set(map(str, weight_map.values()))):
    path = os.path.join(model_dir, shard)
    # The index is the file's to say, not where the files are read from.
    if os.path.commonpath([inside, os.path.realpath(path)]) != inside:
      raise model.WeightsError(
        f'{index_file} in {model_dir} lists a shard outside it: {shard!r}'
      )
    if not os.path.isfile(path):
      raise model.WeightsError(
        f'{path}: shard listed in {index_file} is missing'
      )
    out.update(read(path))
  absent = sorted(set(weight_map) - set(out))
  if absent:
    raise model.WeightsError(
      f'{index_file} lists {len(absent)} tensor(s) that its shards lack, '
      f'e.g. {absent[0]}'
    )
  return out


def read_state_dict(model_dir: str) -> dict[str, np.ndarray]:
  """The weights of a Hugging Face model directory, as numpy arrays."""
  for name, index, read in (
    (SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE, _read_safetensors),
    (PYTORCH_FILE, PYTORCH_INDEX_FILE, _read_pytorch),
  ):
    if os.path.isfile(os.path.join(model_dir, name)):
      return read(os.path.join(model_dir, name))
    if os.path.isfile(os.path.join(model_dir, index)):
      return _read_sharded(model_dir, index, read)
  raise FileNotFoundError(
    f'{model_dir}: no {SAFETENSORS_FILE}, {SAFETENSORS_INDEX_FILE} or '
    f'{PYTORCH_FILE} weights'
  )


def read_config(path: str) -> model.BertConfig:
  """The BertConfig of a JSON config file (HF `config.json` or Google
  `bert_config.json`), or of a directory's `config.json`; errors name the
  file."""
  if os.path.isdir(path):
    path = os.path.join(path, CONFIG_FILE)
  try:
    return config_from_hf(read_json(path))
  except model.ConfigError as e:
    raise model.ConfigError(f'{path}: {e}') from e


def read_params(
  model_dir: str,
  config: model.BertConfig,
  rng: jax.Array | None = None,
  require_heads: Sequence[str] = (),
) -> dict[str, Any]:
  """A Hugging Face directory's weights as params for `config` (see
  `params_from_hf`)."""
  params, _ = params_from_hf(
    read_state_dict(model_dir), config, rng, require_heads, model_dir
  )
  return params


def save(
  model_dir: str,
  config: model.BertConfig,
  params: Mapping[str, Any],
  head: model.Head = model.PRETRAINING,
  labels: list[str] | None = None,
) -> None:
  """Writes `config.json` and `model.safetensors`, which the transformers
  class of `head` (`ARCHITECTURES`) loads with `from_pretrained` as they
  are; `labels` name the classes of a classification head."""
  state_dict = params_to_hf(params, config, head)
  with files.replacing_path(os.path.join(model_dir, SAFETENSORS_FILE)) as tmp:
    # transformers expects the 'pt' format tag that its own writer sets.
    safetensors.numpy.save_file(state_dict, tmp, metadata={'format': 'pt'})
  # Written last: a directory with a config is a complete model.
  files.write_atomic(
    os.path.join(model_dir, CONFIG_FILE),
    json.dumps(config_to_hf(config, head, labels), indent=2, sort_keys=True)
    + '\n',
  )


def read_do_lower_case(model_dir: str) -> bool | None:
  """`do_lower_case` of a `tokenizer_config.json`, if the directory has one."""
  path = os.path.join(model_dir, TOKENIZER_CONFIG_FILE)
  if not os.path.isfile(path):
    return None
  value = read_json(path).get('do_lower_case')
  return None if value is None else bool(value)


def write_do_lower_case(model_dir: str, do_lower_case: bool) -> None:
  """Writes a `tokenizer_config.json` saying how transformers' tokenizer
  should case text (it lower-cases when it is not told)."""
  path = os.path.join(model_dir, TOKENIZER_CONFIG_FILE)
  config = dict(tokenizer_class='BertTokenizer', do_lower_case=do_lower_case)
  files.write_atomic(path, json.dumps(config, indent=2) + '\n')
