"""Checkpoints on disk: bertjax model directories, and any pretrained format.

A bertjax model directory is

  bert_config.json   `BertConfig.to_dict()`
  params/            the `params` tree of `BertForPreTraining`, saved by
                     Orbax (`StandardCheckpointer`), so that it restores
                     straight onto any sharding
  vocab.txt          the WordPiece vocabulary (or `spiece.model`, a
                     SentencePiece model), when the model has one; named as
                     in a Hugging Face directory

`load_pretrained` reads that or a foreign format (Hugging Face, Google TF,
see `hf_convert`), recognised by what the path holds. Restores check every
array's shape against the config first, because Orbax itself restores the
saved shape whatever the target says.

Training state belongs here too, as an Orbax `CheckpointManager` over the
train state, restored onto the abstract sharded state like `load_model`
restores params.
"""

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from bertjax import cli, hf_convert, model

CONFIG_FILE = 'bert_config.json'
PARAMS_DIR = 'params'
# Where `TrainCheckpointer` keeps the steps of a training workdir.
TRAINING_CHECKPOINTS_DIR = 'checkpoints'


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
  """Hides absl INFO logs while Orbax saves or restores a model.

  Orbax logs some twenty INFO lines per save or restore (handlers, barriers,
  throughput), which bury what the command lines have to say. Asking for
  more than INFO (`-v 1`) keeps them.
  """
  verbosity = logging.get_verbosity()
  if verbosity == logging.INFO:
    logging.set_verbosity(logging.WARNING)
  try:
    yield
  finally:
    logging.set_verbosity(verbosity)


def _path_str(path) -> str:
  return '/'.join(str(getattr(k, 'key', k)) for k in path)


def check_param_shapes(
  shapes: Any, config: model.BertConfig, source: str
) -> None:
  """Checks a params tree (of arrays or shape metadata) against a config.

  Args:
    shapes: a nested dict whose leaves have a `.shape`.
    config: the config the tree should fit.
    source: what the tree came from, for the error message.

  Raises:
    cli.UserError: naming the first missing, unexpected or misshapen entry.
  """
  expected = {
    _path_str(p): v.shape
    for p, v in jax.tree_util.tree_flatten_with_path(
      hf_convert.abstract_params(config)
    )[0]
  }
  given = {
    _path_str(p): tuple(v.shape)
    for p, v in jax.tree_util.tree_flatten_with_path(shapes)[0]
  }
  for name, shape in expected.items():
    if name not in given:
      raise cli.UserError(f'{source}: no parameter {name}')
    if given[name] != shape:
      raise cli.UserError(
        f'{source}: parameter {name} has shape {list(given[name])}, '
        f'expected {list(shape)} from the config'
      )
  extra = sorted(set(given) - set(expected))
  if extra:
    raise cli.UserError(
      f'{source}: unexpected parameter(s) {", ".join(extra)} for the config'
    )


def save_model(
  model_dir: str,
  config: model.BertConfig,
  params: Mapping[str, Any],
  tokenizer_file: str | None = None,
) -> None:
  """Writes a bertjax model directory.

  Args:
    model_dir: created if needed; must not hold a model already.
    config: the model config.
    params: `BertForPreTraining` params (numpy or jax arrays, possibly
      sharded or `nn.Partitioned`-boxed).
    tokenizer_file: a WordPiece vocabulary or SentencePiece model to copy in.

  Raises:
    cli.UserError: the directory already holds a model, or params do not
      fit the config.
  """
  params = nn.unbox(params)
  check_param_shapes(params, config, 'params to save')
  params_dir = os.path.join(os.path.abspath(model_dir), PARAMS_DIR)
  if os.path.exists(params_dir):
    raise cli.UserError(f'{model_dir}: already holds a model ({PARAMS_DIR}/)')
  if tokenizer_file is not None:
    tokenizer_name = hf_convert.tokenizer_file_name(tokenizer_file)
  os.makedirs(model_dir, exist_ok=True)
  if tokenizer_file is not None:
    shutil.copyfile(tokenizer_file, os.path.join(model_dir, tokenizer_name))
  with _quiet_orbax(), ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(params_dir, params)
    checkpointer.wait_until_finished()
  # Written last: a directory with a config is a complete model.
  with open(os.path.join(model_dir, CONFIG_FILE), 'w', encoding='utf-8') as f:
    json.dump(config.to_dict(), f, indent=2)
    f.write('\n')


def read_config(model_dir: str) -> model.BertConfig:
  """Reads `bert_config.json` of a bertjax model directory."""
  path = os.path.join(model_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise cli.UserError(f'{model_dir}: no {CONFIG_FILE}')
  with open(path, encoding='utf-8') as f:
    try:
      values = json.load(f)
    except json.JSONDecodeError as e:
      raise cli.UserError(f'{path}: not valid JSON ({e})') from e
  if not isinstance(values, dict):
    raise cli.UserError(f'{path}: expected a JSON object')
  try:
    return model.BertConfig.from_dict(values)
  except model.ConfigError as e:
    raise cli.UserError(f'{path}: {e}') from e


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


def _restore_target(
  saved: model.BertConfig, config: model.BertConfig, shardings: Any
) -> tuple[Any, bool]:
  """What to restore params saved as `saved` onto, to be used as `config`.

  Returns:
    (ShapeDtypeStruct tree in the saved layout with the wanted param dtype
    and shardings, whether the layers must be restacked afterwards).
  """
  relayout = saved.scan_layers != config.scan_layers
  target = hf_convert.abstract_params(
    saved.replace(param_dtype=config.param_dtype)
  )
  if shardings is None or relayout:
    # This process's own device: in a multi-host run every process reads
    # the whole params (then placed onto the global shardings).
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target_shardings = jax.tree.map(lambda _: device, target)
  else:
    target_shardings = shardings
  target = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    target,
    target_shardings,
  )
  return target, relayout


def _finish_restore(params, config, relayout: bool, shardings: Any):
  if relayout:
    params = _relayout(params, config.num_hidden_layers, config.scan_layers)
    if shardings is not None:
      params = jax.device_put(params, shardings)
  return params


def load_model(
  model_dir: str,
  config_overrides: Mapping[str, Any] | None = None,
  shardings: Any = None,
) -> tuple[model.BertConfig, dict[str, Any], str | None]:
  """Reads a bertjax model directory.

  Args:
    model_dir: written by `save_model`.
    config_overrides: BertConfig fields to change, e.g. `dtype`,
      `param_dtype` (params are cast), `scan_layers` (layers are restacked),
      dropout rates. Fields that fix parameter shapes cannot change.
    shardings: a tree of `jax.sharding.Sharding` matching the params of the
      overridden config; params are restored directly onto it. Default: the
      first device.

  Returns:
    (config with the overrides, params as jax arrays, tokenizer file path or
    None).

  Raises:
    cli.UserError: a missing file, a bad config or override, or params that
      do not fit the config.
  """
  if not os.path.isdir(model_dir):
    raise cli.UserError(f'{model_dir}: not a directory')
  saved = read_config(model_dir)
  config = hf_convert.apply_overrides(saved, config_overrides, model_dir)

  params_dir = os.path.join(os.path.abspath(model_dir), PARAMS_DIR)
  if not os.path.isdir(params_dir):
    raise cli.UserError(f'{model_dir}: no {PARAMS_DIR}/ directory')
  with _quiet_orbax(), ocp.StandardCheckpointer() as checkpointer:
    try:
      metadata = checkpointer.metadata(params_dir).item_metadata
    except (OSError, ValueError) as e:
      raise cli.UserError(
        f'{params_dir}: not a readable Orbax checkpoint'
      ) from e
    if metadata is None:
      # Orbax logs and returns None when its metadata files are gone.
      raise cli.UserError(f'{params_dir}: not a readable Orbax checkpoint')
    check_param_shapes(metadata.tree, saved, params_dir)
    target, relayout = _restore_target(saved, config, shardings)
    params = checkpointer.restore(params_dir, target)
  params = _finish_restore(params, config, relayout, shardings)
  return config, params, hf_convert.find_tokenizer_file(model_dir)


def detect_format(path: str) -> str:
  """What kind of checkpoint `path` is.

  Returns:
    'bertjax' (a directory with `bert_config.json` and `params/`), 'hf' (a
    directory with `config.json`), 'google' (a TF checkpoint prefix, or a
    directory with `bert_model.ckpt.index`) or 'training' (a
    `bertjax.train` workdir, its `checkpoints/` directory, or one step in
    it).

  Raises:
    cli.UserError: none of these.
  """
  if _training_checkpoints(path) is not None:
    return 'training'
  if os.path.isdir(path):
    if os.path.isdir(os.path.join(path, PARAMS_DIR)):
      return 'bertjax'
    if os.path.isfile(os.path.join(path, hf_convert.CONFIG_FILE)):
      return 'hf'
  if hf_convert.google_checkpoint_prefix(path) is not None:
    return 'google'
  if os.path.isdir(path):
    if os.path.isfile(os.path.join(path, CONFIG_FILE)):
      raise cli.UserError(
        f'{path}: has {CONFIG_FILE} but neither {PARAMS_DIR}/ (bertjax '
        f'model) nor {hf_convert.GOOGLE_CHECKPOINT_PREFIX}.index (Google '
        'checkpoint)'
      )
    raise cli.UserError(
      f'{path}: not a model directory (no {CONFIG_FILE} or '
      f'{hf_convert.CONFIG_FILE})'
    )
  raise cli.UserError(f'{path}: no such model directory or TF checkpoint')


def load_pretrained(
  path: str,
  config_overrides: Mapping[str, Any] | None = None,
  rng: jax.Array | None = None,
) -> tuple[model.BertConfig, dict[str, Any], str | None]:
  """Loads a model in any supported format (see `detect_format`).

  Args:
    path: a bertjax or Hugging Face model directory, a Google checkpoint,
      or a training workdir (its newest checkpoint) or checkpoint step.
    config_overrides: run-time BertConfig fields (`dtype`, `param_dtype`,
      `scan_layers`, dropout, ...).
    rng: PRNG key for pretraining heads a foreign checkpoint lacks.

  Returns:
    (config, params, tokenizer file path or None). Missing heads of a
    foreign checkpoint are initialised and logged.
  """
  kind = detect_format(path)
  if kind == 'bertjax':
    return load_model(path, config_overrides)
  if kind == 'training':
    return load_training_params(path, config_overrides)
  loader = dict(
    hf=hf_convert.load_hf_dir, google=hf_convert.load_google_checkpoint
  )[kind]
  return loader(path, config_overrides, rng)


# BertConfig fields that say how a model runs or trains, not what it computes
# from given weights: a pretrained checkpoint takes them from the new config.
_RUN_TIME_FIELDS = (
  'dtype',
  'param_dtype',
  'scan_layers',
  'remat_policy',
  'hidden_dropout_prob',
  'attention_probs_dropout_prob',
  'initializer_range',
)


def load_pretrained_params(
  path: str, config: model.BertConfig, rng: jax.Array | None = None
) -> dict[str, Any]:
  """Params of a pretrained model in any format, to train further as `config`.

  Args:
    path: a model `load_pretrained` reads.
    config: the config to train; its run-time fields (dtypes, layout,
      remat, dropout, init range) apply, every other field must equal the
      checkpoint's.
    rng: PRNG key for pretraining heads a foreign checkpoint lacks.

  Returns:
    `BertForPreTraining` params laid out and typed for `config`.

  Raises:
    cli.UserError: the checkpoint's architecture differs from `config`.
  """
  overrides = {k: getattr(config, k) for k in _RUN_TIME_FIELDS}
  loaded, params, _ = load_pretrained(path, overrides, rng)
  differ = [
    f'{k} {getattr(loaded, k)!r} (config: {getattr(config, k)!r})'
    for k, v in config.to_dict().items()
    if getattr(loaded, k) != v
  ]
  if differ:
    raise cli.UserError(f'{path} does not fit the config: {"; ".join(differ)}')
  return params


# --- Training checkpoints -------------------------------------------------


class _DataIteratorHandler(ocp.CheckpointHandler):
  """Saves each process's input-iterator state inside the Orbax step.

  Every process writes its own `process_<i>/` files into the step's
  directory before Orbax commits the step (atomically, with the train
  state), so a step on disk always has the data position that matches its
  parameters. The iterator is anything with `save(prefix)` and
  `restore(prefix)`, such as `data_pipeline.pipeline.Iterator`.
  """

  def _prefix(self, directory) -> str:
    return os.path.join(
      os.fspath(directory), f'process_{jax.process_index()}', 'iterator'
    )

  def save(self, directory, args: 'DataIteratorSave') -> None:
    prefix = self._prefix(directory)
    epath.Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    args.iterator.save(prefix)

  def restore(self, directory, args: 'DataIteratorRestore' = None):
    prefix = self._prefix(directory)
    if not epath.Path(prefix).parent.exists():
      raise cli.UserError(
        f'{directory}: no input-iterator state for process '
        f'{jax.process_index()} (was this run saved with fewer processes?)'
      )
    args.iterator.restore(prefix)
    return args.iterator

  def metadata(self, directory):
    del directory
    return None

  def finalize(self, directory) -> None:
    del directory

  def close(self) -> None:
    pass


@ocp.args.register_with_handler(_DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
  iterator: Any


@ocp.args.register_with_handler(_DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
  iterator: Any


class TrainCheckpointer:
  """Orbax checkpoints of a training run: state, input position, config.

  Layout: `<workdir>/checkpoints/<step>/{state,data,meta}`. Saves are
  asynchronous for the state (training goes on while it is written) and
  keep the newest `keep` steps. Orbax writes each step into a temporary
  directory and commits it by renaming (or a commit marker on GCS), so a
  step interrupted mid-write is never listed or restored: the run falls back
  to the last complete step.
  """

  def __init__(
    self,
    workdir: str,
    keep: int,
    config: Any = None,
    model_config: model.BertConfig | None = None,
    tokenizer_path: str | None = None,
  ):
    self.workdir = os.fspath(workdir)
    self.directory = os.path.join(self.workdir, TRAINING_CHECKPOINTS_DIR)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      create=True,
      enable_async_checkpointing=True,
      cleanup_tmp_directories=True,
    )
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=options,
      item_handlers={
        'state': ocp.StandardCheckpointHandler(),
        'data': _DataIteratorHandler(),
        'meta': ocp.JsonCheckpointHandler(),
      },
    )
    # What `load_training_params` needs to use a step as a model: the
    # architecture and the tokenizer, beside the run's config.
    self._meta = {
      'config': (
        json.loads(config.to_json_best_effort()) if config is not None else {}
      ),
      'model': model_config.to_dict() if model_config is not None else None,
      'tokenizer': tokenizer_path
      and (
        tokenizer_path
        if '://' in tokenizer_path
        else os.path.abspath(tokenizer_path)
      ),
    }

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any) -> None:
    """Saves (asynchronously) the state and this process's input position."""
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=DataIteratorSave(data_iterator),
        meta=ocp.args.JsonSave({'step': int(step), **self._meta}),
      ),
    )

  def restore_latest(self, state: Any, data_iterator: Any) -> tuple[Any, int]:
    """Restores the newest complete step onto `state`'s shardings.

    Args:
      state: a freshly created state (its shapes, dtypes and shardings are
        the restore target, so a run may resume on another mesh).
      data_iterator: restored in place to the saved input position.

    Returns:
      (state, step), or (the given state, 0) when there is no checkpoint.
    """
    step = self._manager.latest_step()
    if step is None:
      return state, 0
    target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state,
    )
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target),
        data=DataIteratorRestore(data_iterator),
      ),
    )
    return restored.state, int(step)

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _first_line(error: Exception) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _training_checkpoints(path: str) -> tuple[str, int | None] | None:
  """(checkpoints directory, step or None for the newest) when `path` is a
  training workdir, its checkpoints directory or one step in it.

  Through `etils.epath`, as Orbax writes them: local or `gs://` alike.
  """
  path = epath.Path(path if '://' in str(path) else os.path.abspath(path))
  if (path / TRAINING_CHECKPOINTS_DIR).is_dir():
    return os.fspath(path / TRAINING_CHECKPOINTS_DIR), None
  if path.name == TRAINING_CHECKPOINTS_DIR and path.is_dir():
    return os.fspath(path), None
  # A step that is not there (yet) still names its run: the error can say
  # which steps are.
  parent = path.parent
  if (
    path.name.isdigit()
    and parent.name == TRAINING_CHECKPOINTS_DIR
    and parent.is_dir()
  ):
    return os.fspath(parent), int(path.name)
  return None


def load_training_params(
  path: str,
  config_overrides: Mapping[str, Any] | None = None,
  shardings: Any = None,
) -> tuple[model.BertConfig, dict[str, Any], str | None]:
  """The model params of a `bertjax.train` checkpoint, as `load_model`.

  Only `params` is read (Orbax partial restore), not the optimizer state,
  so phase 2 of a recipe can start from phase 1 with `init_from=WORKDIR`
  and `bertjax.convert --from=WORKDIR` exports a run.

  Args:
    path: a training workdir (its newest complete step), its `checkpoints/`
      directory, or `checkpoints/<step>`.
    config_overrides: run-time BertConfig fields to change (see
      `load_model`).
    shardings: where to restore the params (see `load_model`).

  Returns:
    (config with the overrides, params, tokenizer file or None when the
    recorded one is gone).

  Raises:
    cli.UserError: no complete step, a step saved without its model config,
      or unreadable params.
  """
  found = _training_checkpoints(path)
  if found is None:
    raise cli.UserError(f'{path}: not a training workdir or checkpoint step')
  directory, step = found
  options = ocp.CheckpointManagerOptions(read_only=True, create=False)
  handlers = {
    'state': ocp.PyTreeCheckpointHandler(),
    'meta': ocp.JsonCheckpointHandler(),
  }
  with (
    _quiet_orbax(),
    ocp.CheckpointManager(
      directory, options=options, item_handlers=handlers
    ) as manager,
  ):
    steps = manager.all_steps()
    if step is None:
      if not steps:
        raise cli.UserError(f'{path}: no complete training checkpoint')
      step = max(steps)
    elif step not in steps:
      raise cli.UserError(
        f'{path}: step {step} is not a complete checkpoint (complete: '
        f'{sorted(steps) or "none"})'
      )
    where = os.path.join(directory, str(step))
    try:
      meta = manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
      ).meta
    except (KeyError, ValueError, OSError) as e:
      raise cli.UserError(
        f'{where}: not a readable training checkpoint ({_first_line(e)})'
      ) from e
    if not isinstance(meta, dict) or not isinstance(meta.get('model'), dict):
      raise cli.UserError(
        f'{where}: records no model config (saved by an older bertjax); '
        'export it with the bertjax version that wrote it'
      )
    try:
      saved = model.BertConfig.from_dict(meta['model'])
    except model.ConfigError as e:
      raise cli.UserError(f'{where}: bad model config: {e}') from e
    config = hf_convert.apply_overrides(saved, config_overrides, where)
    target, relayout = _restore_target(saved, config, shardings)
    try:
      restored = manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
            item={'params': target},
            restore_args={
              'params': ocp.checkpoint_utils.construct_restore_args(target)
            },
            partial_restore=True,
          )
        ),
      )
    except (KeyError, ValueError, OSError) as e:
      raise cli.UserError(
        f'{where}: its params do not restore as the recorded model '
        f'({_first_line(e)})'
      ) from e
  params = _finish_restore(
    restored.state['params'], config, relayout, shardings
  )
  tokenizer = meta.get('tokenizer')
  if tokenizer and not epath.Path(tokenizer).is_file():
    logging.warning('%s: its tokenizer %s is gone', where, tokenizer)
    tokenizer = None
  return config, params, tokenizer
