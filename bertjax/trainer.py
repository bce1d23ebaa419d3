"""The pretraining loop: state, steps, and `train_and_evaluate`.

Owns: deriving run quantities from the config (once), creating the sharded
train state, the pure `train_step` / `eval_step`, and the loop that feeds
batches, logs, evaluates, checkpoints, resumes and stops cleanly on SIGTERM
or a non-finite loss. It is the only place where host batches become global
device arrays (`jax.make_array_from_process_local_data`).

Loss: weighted-mean MLM cross-entropy over `masked_lm_weights` plus mean NSP
cross-entropy. With gradient accumulation each micro-batch's sums are
divided by the whole batch's denominators, so the accumulated gradient is
the big batch's gradient (up to float summation order).
"""

import dataclasses
import functools
import os
import signal
import time
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from flax.training import train_state
from jax.experimental import multihost_utils

from bertjax import checkpoint, flops, model, optimizer, reporting, sharding
from data_pipeline import masking, pipeline, prepare

TrainState = train_state.TrainState
Batch = Mapping[str, Any]


class TrainingError(ValueError):
  """A run that cannot start or go on as configured."""


@dataclasses.dataclass(frozen=True)
class RunShape:
  """Quantities derived from the config and the machine, computed once."""

  global_batch: int
  per_host_batch: int
  micro_batches: int
  micro_batch: int
  total_steps: int
  data_parallel: int
  num_devices: int
  process_count: int


def compute_run_shape(
  config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> RunShape:
  """Checks the batch against the mesh and splits it per host and micro-batch.

  Raises:
    TrainingError: a batch that the data-parallel size, the host count or
      the micro-batch count does not divide.
  """
  process_count = jax.process_count()
  data_parallel = mesh.shape[sharding.DATA] * mesh.shape[sharding.FSDP]
  global_batch = int(config.batch_size)
  micro = int(config.micro_batches)
  if micro < 1:
    raise TrainingError(f'micro_batches must be >= 1, got {micro}')
  if global_batch % (data_parallel * micro):
    raise TrainingError(
      f'batch_size {global_batch} is not divisible by data-parallel size '
      f'{data_parallel} (data x fsdp) x micro_batches {micro}'
    )
  if global_batch % process_count:
    raise TrainingError(
      f'batch_size {global_batch} is not divisible by the {process_count} '
      'processes'
    )
  if config.num_train_steps < 1:
    raise TrainingError(
      f'num_train_steps must be >= 1, got {config.num_train_steps}'
    )
  return RunShape(
    global_batch=global_batch,
    per_host_batch=global_batch // process_count,
    micro_batches=micro,
    micro_batch=global_batch // micro,
    total_steps=int(config.num_train_steps),
    data_parallel=data_parallel,
    num_devices=jax.device_count(),
    process_count=process_count,
  )


def get_model_config(
  config: ml_collections.ConfigDict, vocab_size: int
) -> model.BertConfig:
  """The BertConfig of a run: a preset plus the run's overrides."""
  m = config.model
  bert = model.get_config(
    m.size,
    vocab_size=vocab_size,
    dtype=m.dtype,
    scan_layers=m.scan_layers,
    remat_policy=m.remat_policy,
    hidden_dropout_prob=m.hidden_dropout_prob,
    attention_probs_dropout_prob=m.attention_probs_dropout_prob,
    max_position_embeddings=m.max_position_embeddings,
  )
  if config.max_seq_length > bert.max_position_embeddings:
    raise TrainingError(
      f'max_seq_length {config.max_seq_length} exceeds '
      f'max_position_embeddings {bert.max_position_embeddings}'
    )
  return bert


def get_optimizer_config(
  config: ml_collections.ConfigDict,
) -> optimizer.OptimizerConfig:
  o = config.optim
  return optimizer.OptimizerConfig(
    name=o.name,
    learning_rate=o.learning_rate,
    warmup_steps=o.warmup_steps,
    total_steps=o.decay_steps or config.num_train_steps,
    end_learning_rate=o.end_learning_rate,
    decay_power=o.decay_power,
    b1=o.b1,
    b2=o.b2,
    eps=o.eps,
    weight_decay=o.weight_decay,
    grad_clip_norm=o.grad_clip_norm,
  )


def get_batch_shapes(
  batch_size: int, seq_len: int, num_predictions: int
) -> dict[str, jax.ShapeDtypeStruct]:
  """Abstract global batch: what the train step is compiled for."""
  i32, f32 = jnp.int32, jnp.float32
  return dict(
    input_ids=jax.ShapeDtypeStruct((batch_size, seq_len), i32),
    input_mask=jax.ShapeDtypeStruct((batch_size, seq_len), i32),
    segment_ids=jax.ShapeDtypeStruct((batch_size, seq_len), i32),
    masked_lm_positions=jax.ShapeDtypeStruct(
      (batch_size, num_predictions), i32
    ),
    masked_lm_ids=jax.ShapeDtypeStruct((batch_size, num_predictions), i32),
    masked_lm_weights=jax.ShapeDtypeStruct((batch_size, num_predictions), f32),
    next_sentence_labels=jax.ShapeDtypeStruct((batch_size,), i32),
  )


def _state_init_fn(module: model.BertForPreTraining, tx):
  """`key -> TrainState` of randomly initialised params."""
  dummy = jnp.zeros((1, 8), jnp.int32)

  def init(key):
    params = module.init(
      key, dummy, masked_lm_positions=jnp.zeros((1, 1), jnp.int32)
    )['params']
    return TrainState.create(apply_fn=module.apply, params=params, tx=tx)

  return init


def abstract_train_state(
  module: model.BertForPreTraining,
  tx: optax.GradientTransformation,
  mesh: jax.sharding.Mesh,
  rules: sharding.Rules,
) -> TrainState:
  """The train state as sharded `ShapeDtypeStruct`s, with no memory touched.

  What `jax.jit(train_step).lower(...)` needs to compile the step ahead of
  time for a mesh (for instance a TPU topology described on a CPU host).
  """
  init = _state_init_fn(module, tx)
  abstract = jax.eval_shape(init, jax.random.key(0))
  shardings = sharding.get_shardings(abstract, mesh, rules)
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    nn.unbox(abstract),
    shardings,
  )


def create_train_state(
  module: model.BertForPreTraining,
  tx: optax.GradientTransformation,
  mesh: jax.sharding.Mesh,
  rules: sharding.Rules,
  rng: jax.Array,
  init_params: Any = None,
) -> tuple[TrainState, Any]:
  """A train state born sharded over the mesh.

  Args:
    module: the model.
    tx: the optimizer.
    mesh: device mesh.
    rules: logical-axis rules.
    rng: init key.
    init_params: optional pretrained params (unboxed) to start from; they
      must match the model's shapes.

  Returns:
    (state, its NamedSharding tree).
  """
  init = _state_init_fn(module, tx)
  if init_params is None:
    return sharding.create_sharded(init, mesh, rules, rng)
  abstract = jax.eval_shape(init, rng)
  shardings = sharding.get_shardings(abstract, mesh, rules)
  # Every process holds the whole params; each device takes its shard, which
  # also works when the mesh spans processes.
  host = jax.device_get(init_params)
  params = jax.tree.map(
    lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: x[i]),
    host,
    shardings.params,
  )

  def init_from(params):
    return TrainState.create(apply_fn=module.apply, params=params, tx=tx)

  with jax.set_mesh(mesh):
    state = jax.jit(init_from, out_shardings=shardings)(params)
  return state, shardings


def compute_loss_sums(
  logits: Mapping[str, jax.Array], batch: Batch, use_nsp: bool
) -> dict[str, jax.Array]:
  """Sums and counts of the losses and accuracies of one (micro-)batch.

  Args:
    logits: `mlm_logits` float32 `[b, p, vocab]`, `nsp_logits` `[b, 2]`.
    batch: with `masked_lm_ids` `[b, p]`, `masked_lm_weights` `[b, p]`,
      `next_sentence_labels` `[b]` and optionally `example_mask` `[b]`.
    use_nsp: whether NSP counts.

  Returns:
    float32 scalars: mlm_loss_sum, mlm_weight, mlm_correct, nsp_loss_sum,
    nsp_correct, nsp_count.
  """
  example = batch.get('example_mask')
  example = (
    jnp.ones(batch['next_sentence_labels'].shape, jnp.float32)
    if example is None
    else example.astype(jnp.float32)
  )
  weights = batch['masked_lm_weights'].astype(jnp.float32) * example[:, None]
  mlm_logits = logits['mlm_logits']
  mlm_xent = optax.softmax_cross_entropy_with_integer_labels(
    mlm_logits, batch['masked_lm_ids']
  )
  mlm_hit = jnp.argmax(mlm_logits, -1) == batch['masked_lm_ids']
  sums = dict(
    mlm_loss_sum=jnp.sum(mlm_xent * weights),
    mlm_weight=jnp.sum(weights),
    mlm_correct=jnp.sum(mlm_hit * weights),
  )
  if use_nsp:
    labels = batch['next_sentence_labels']
    nsp_logits = logits['nsp_logits']
    nsp_xent = optax.softmax_cross_entropy_with_integer_labels(
      nsp_logits, labels
    )
    sums.update(
      nsp_loss_sum=jnp.sum(nsp_xent * example),
      nsp_correct=jnp.sum((jnp.argmax(nsp_logits, -1) == labels) * example),
      nsp_count=jnp.sum(example),
    )
  return sums


def _forward(module, params, batch, rng, deterministic):
  return module.apply(
    {'params': params},
    batch['input_ids'],
    batch['input_mask'],
    batch['segment_ids'],
    batch['masked_lm_positions'],
    deterministic=deterministic,
    rngs=None if deterministic else {'dropout': rng},
  )


def train_step(
  state: TrainState,
  batch: Batch,
  rng: jax.Array,
  *,
  module: model.BertForPreTraining,
  schedule: optax.Schedule,
  micro_batches: int,
  use_nsp: bool,
  nan_policy: str,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a global batch.

  Args:
    state: the train state.
    batch: global arrays `[global_batch, ...]` (see `get_batch_shapes`).
    rng: base key; the step is folded in so every step drops out afresh and
      a resumed run repeats the same randomness.
    module: the model (bound with functools.partial, not traced).
    schedule: learning-rate schedule, for the metric.
    micro_batches: sequential micro-batches (gradient accumulation).
    use_nsp: whether the NSP loss counts.
    nan_policy: 'stop' applies the update regardless (the host stops);
      'skip' keeps the old state when the loss is not finite.

  Returns:
    (new state, metric sums and scalars).
  """
  step_rng = jax.random.fold_in(rng, state.step)
  mlm_denominator = jnp.maximum(jnp.sum(batch['masked_lm_weights']), 1e-8)
  nsp_denominator = float(batch['next_sentence_labels'].shape[0])

  def loss_fn(params, micro, key):
    logits = _forward(module, params, micro, key, deterministic=False)
    sums = compute_loss_sums(logits, micro, use_nsp)
    loss = sums['mlm_loss_sum'] / mlm_denominator
    if use_nsp:
      loss += sums['nsp_loss_sum'] / nsp_denominator
    return loss, sums

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if micro_batches == 1:
    (loss, sums), grads = grad_fn(state.params, batch, step_rng)
  else:
    micro = jax.tree.map(
      lambda x: x.reshape(micro_batches, -1, *x.shape[1:]), batch
    )
    keys = jax.random.split(step_rng, micro_batches)
    zero_grads = jax.tree.map(jnp.zeros_like, state.params)

    def accumulate(carry, xs):
      grads_acc, loss_acc, sums_acc = carry
      micro_batch, key = xs
      (loss, sums), grads = grad_fn(state.params, micro_batch, key)
      grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
      sums_acc = jax.tree.map(jnp.add, sums_acc, sums)
      return (grads_acc, loss_acc + loss, sums_acc), None

    first = jax.tree.map(lambda x: x[0], micro)
    zero_sums = jax.tree.map(
      lambda s: jnp.zeros(s.shape, s.dtype),
      jax.eval_shape(lambda: grad_fn(state.params, first, step_rng)[0][1]),
    )
    (grads, loss, sums), _ = jax.lax.scan(
      accumulate,
      (zero_grads, jnp.zeros((), jnp.float32), zero_sums),
      (micro, keys),
    )
  new_state = state.apply_gradients(grads=grads)
  finite = jnp.isfinite(loss)
  if nan_policy == 'skip':
    new_state = jax.tree.map(
      lambda new, old: jnp.where(finite, new, old), new_state, state
    )
    # The step counter advances either way, so data and rng move on.
    new_state = new_state.replace(step=state.step + 1)
  metrics = dict(
    sums,
    loss=loss,
    finite=finite.astype(jnp.float32),
    grad_norm=optax.tree.norm(grads),
    param_norm=optax.tree.norm(new_state.params),
    learning_rate=schedule(state.step),
    tokens=jnp.sum(batch['input_mask']).astype(jnp.float32),
  )
  return new_state, metrics


def jit_train_step(
  module: model.BertForPreTraining,
  schedule: optax.Schedule,
  *,
  micro_batches: int = 1,
  use_nsp: bool = True,
  nan_policy: str = 'stop',
  state_shardings: Any = None,
  batch_shardings: Any = None,
):
  """`train_step` jitted once, the state donated: `(state, batch, rng) ->
  (state, metrics)`. With shardings (the trainer's), inputs and the new
  state are pinned to them; without, they follow the arguments."""
  step = functools.partial(
    train_step,
    module=module,
    schedule=schedule,
    micro_batches=micro_batches,
    use_nsp=use_nsp,
    nan_policy=nan_policy,
  )
  if state_shardings is None:
    return jax.jit(step, donate_argnums=0)
  return jax.jit(
    step,
    in_shardings=(state_shardings, batch_shardings, None),
    out_shardings=(state_shardings, None),
    donate_argnums=0,
  )


def eval_step(
  params: Any, batch: Batch, *, module: model.BertForPreTraining, use_nsp: bool
) -> dict[str, jax.Array]:
  """Loss and accuracy sums of an eval batch (padding rows masked out)."""
  logits = _forward(module, params, batch, None, deterministic=True)
  return compute_loss_sums(logits, batch, use_nsp)


def summarize(sums: Mapping[str, float], prefix: str) -> dict[str, float]:
  """Normalises metric sums on the host (`train/mlm_loss`, ...)."""
  out = {}
  mlm_weight = max(float(sums['mlm_weight']), 1e-8)
  out[f'{prefix}/mlm_loss'] = sums['mlm_loss_sum'] / mlm_weight
  out[f'{prefix}/mlm_accuracy'] = sums['mlm_correct'] / mlm_weight
  loss = out[f'{prefix}/mlm_loss']
  if 'nsp_count' in sums:
    nsp_count = max(float(sums['nsp_count']), 1e-8)
    out[f'{prefix}/nsp_loss'] = sums['nsp_loss_sum'] / nsp_count
    out[f'{prefix}/nsp_accuracy'] = sums['nsp_correct'] / nsp_count
    loss += out[f'{prefix}/nsp_loss']
  out[f'{prefix}/loss'] = loss
  return {k: float(v) for k, v in out.items()}


class _Preemption:
  """Turns SIGTERM into a flag the loop checks after each step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread (e.g. inside a test runner).
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM: finishing this step, saving, exiting.')
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _every(step: int, every: int, total: int) -> bool:
  """The one helper for every "each N steps" decision (and the last step)."""
  return step == total or (every > 0 and step % every == 0)


def _make_global(batch: Batch, shardings) -> dict[str, jax.Array]:
  """Host-local numpy batches -> global arrays sharded over the batch axis."""
  return {
    k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v))
    for k, v in batch.items()
  }


def data_pipeline_config(
  config, data_files: prepare.PreparedData, per_host_batch: int
) -> pipeline.PipelineConfig:
  """The input pipeline of a run: `config.data` over the prepared files."""
  d = config.data
  return pipeline.PipelineConfig(
    train_file_patterns=tuple(data_files.train_patterns),
    eval_file_patterns=tuple(data_files.eval_patterns),
    tokenizer_path=data_files.tokenizer_path,
    per_host_batch_size=per_host_batch,
    max_seq_length=config.max_seq_length,
    mlm=masking.MaskingConfig(
      masked_lm_prob=d.masked_lm_prob,
      max_predictions_per_seq=d.max_predictions_per_seq,
      whole_word_mask=d.whole_word_mask,
    ),
    seed=config.seed,
    shuffle_window=d.shuffle_buffer,
    host_sharding=d.host_sharding,
  )


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str
) -> dict[str, float]:
  """Pretrains BERT as `config` says, in (and resuming from) `workdir`.

  Args:
    config: a recipe from `configs/` (see `configs/common.py`).
    workdir: checkpoints, metrics.jsonl, TensorBoard events, curves PNG.

  Returns:
    The last logged training metrics and the last eval metrics.
  """
  if config.nan_policy not in ('stop', 'skip'):
    raise TrainingError(
      f'nan_policy {config.nan_policy!r} is not one of stop, skip'
    )
  _check_workdir(workdir)
  mesh = sharding.create_mesh(tuple(config.mesh.shape))
  rules = sharding.default_logical_axis_rules(config.mesh.extra_rules)
  shape = compute_run_shape(config, mesh)
  data_files = prepare.prepare_data(
    config.data,
    max_seq_length=config.max_seq_length,
    cache_dir=os.path.join(workdir, 'data'),
    is_writer=jax.process_index() == 0,
    barrier=_barrier,
  )
  tokenizer_vocab_size = data_files.vocab_size
  bert_config = get_model_config(config, tokenizer_vocab_size)
  module = model.BertForPreTraining(bert_config)
  opt_config = get_optimizer_config(config)
  tx, schedule = optimizer.create_optimizer(opt_config)
  use_nsp = bool(config.data.nsp)

  # Created after every input is validated: the manager starts background
  # threads that an early error would leave behind at interpreter exit.
  ckpt = checkpoint.TrainCheckpointer(
    workdir,
    keep=config.keep_checkpoints,
    config=config,
    model_config=bert_config,
    tokenizer_path=data_files.tokenizer_path,
  )
  rng = jax.random.key(config.seed)
  init_rng, dropout_rng = jax.random.split(rng)
  init_params = None
  if config.model.init_from:
    init_params = checkpoint.load_pretrained_params(
      config.model.init_from, bert_config
    )
  state, state_shardings = create_train_state(
    module, tx, mesh, rules, init_rng, init_params
  )

  data_config = data_pipeline_config(config, data_files, shape.per_host_batch)
  train_iter = pipeline.create_train_iterator(
    data_config, jax.process_index(), jax.process_count()
  )
  state, start_step = ckpt.restore_latest(state, train_iter)
  if start_step:
    logging.info('Resumed from step %d in %s', start_step, workdir)

  batch_shapes = get_batch_shapes(
    shape.global_batch,
    config.max_seq_length,
    config.data.max_predictions_per_seq,
  )
  batch_sharding = sharding.batch_sharding(mesh)
  batch_shardings = {k: batch_sharding for k in batch_shapes}
  step_fn = jit_train_step(
    module,
    schedule,
    micro_batches=shape.micro_batches,
    use_nsp=use_nsp,
    nan_policy=config.nan_policy,
    state_shardings=state_shardings,
    batch_shardings=batch_shardings,
  )
  eval_fn = jax.jit(
    functools.partial(eval_step, module=module, use_nsp=use_nsp),
    in_shardings=(state_shardings.params, None),
  )

  writer = reporting.MetricsWriter(workdir, enabled=jax.process_index() == 0)
  flops_per_example = flops.get_train_flops_per_example(
    bert_config,
    config.max_seq_length,
    config.data.max_predictions_per_seq,
    use_nsp,
  )
  device_kind = jax.devices()[0].device_kind
  peak = flops.get_peak_flops_per_device(
    device_kind, config.perf.peak_flops_per_device
  )
  logging.info(
    'Model %s (%.1fM params), mesh %s, global batch %d (%d per host, %d '
    'micro-batches), %d steps from step %d, %s x %d',
    config.model.size,
    sum(x.size for x in jax.tree.leaves(state.params)) / 1e6,
    dict(mesh.shape),
    shape.global_batch,
    shape.per_host_batch,
    shape.micro_batches,
    shape.total_steps,
    start_step,
    device_kind,
    shape.num_devices,
  )

  def run_eval(params) -> dict[str, float]:
    if not data_files.eval_patterns:
      return {}
    eval_iter = pipeline.create_eval_iterator(
      data_config, jax.process_index(), jax.process_count()
    )
    totals = None
    for i, batch in enumerate(eval_iter):
      if config.eval_steps and i >= config.eval_steps:
        break
      batch.pop('corrupt_files', None)
      shardings = {k: batch_sharding for k in batch}
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        sums = eval_fn(params, _make_global(batch, shardings))
      sums = jax.device_get(sums)
      totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    return summarize(totals, 'eval') if totals else {}

  step = start_step
  window = _Window()
  last_train: dict[str, float] = {}
  last_eval: dict[str, float] = {}
  with (
    _Preemption() as preemption,
    jax.set_mesh(mesh),
    nn.logical_axis_rules(rules),
  ):
    while step < shape.total_steps:
      t0 = time.perf_counter()
      host_batch = next(train_iter)
      host_batch.pop('corrupt_files', None)
      batch = _make_global(host_batch, batch_shardings)
      t1 = time.perf_counter()
      state, metrics = step_fn(state, batch, dropout_rng)
      step += 1
      # Fetching this step's metrics waits for it; on accelerators the next
      # batch is already being prepared by tf.data's prefetch meanwhile.
      metrics = jax.device_get(metrics)
      window.add(metrics, time.perf_counter() - t0, t1 - t0)
      if not metrics['finite']:
        latest = ckpt.latest_step()
        message = f'non-finite loss ({metrics["loss"]}) at step {step}; ' + (
          f'the last good checkpoint is step {latest}'
          if latest is not None
          else 'no checkpoint was saved before it'
        )
        if config.nan_policy == 'stop':
          ckpt.wait()
          raise TrainingError(message)
        logging.warning('Skipped the update of step %d: %s', step, message)
      if _every(step, config.log_every_steps, shape.total_steps):
        last_train = window.summarize(shape, flops_per_example, peak)
        writer.write(step, last_train)
        eta = (shape.total_steps - step) * last_train['perf/step_time_s']
        logging.info(
          reporting.format_console_line(
            step, shape.total_steps, last_train, eta
          )
        )
        window = _Window()
      if _every(step, config.eval_every_steps, shape.total_steps):
        last_eval = run_eval(state.params)
        if last_eval:
          writer.write(step, last_eval)
          logging.info(
            'eval at step %d: %s',
            step,
            ', '.join(f'{k} {v:.4f}' for k, v in last_eval.items()),
          )
      if preemption.requested or _every(
        step, config.checkpoint_every_steps, shape.total_steps
      ):
        ckpt.save(step, state, train_iter)
      if preemption.requested:
        logging.warning('Saved step %d after SIGTERM; exiting.', step)
        break
  ckpt.wait()
  ckpt.close()
  writer.flush()
  writer.close()
  logging.info(
    'Finished at step %d; params checksum %s',
    step,
    _params_checksum(state.params),
  )
  if data_files.majority_token_accuracy and 'train/mlm_accuracy' in last_train:
    logging.info(
      'MLM accuracy %.4f (train, last %d steps)%s against %.4f for always '
      'predicting the most frequent token',
      last_train['train/mlm_accuracy'],
      config.log_every_steps,
      f', {last_eval["eval/mlm_accuracy"]:.4f} (eval)'
      if 'eval/mlm_accuracy' in last_eval
      else '',
      data_files.majority_token_accuracy,
    )
  if jax.process_index() == 0:
    reporting.plot_learning_curves(
      workdir,
      {'most frequent token': data_files.majority_token_accuracy}
      if data_files.majority_token_accuracy
      else None,
    )
  return {**last_train, **last_eval}


def _barrier(name: str) -> None:
  """Waits for every process (no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'bertjax:{name}')


def _check_workdir(workdir: str) -> None:
  """Fails early, in one line, when the workdir cannot be written."""
  path = epath.Path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f'.write_probe_{jax.process_index()}'
    probe.write_text('ok')
    probe.unlink()
  except (OSError, ValueError) as e:
    raise TrainingError(f'workdir {workdir} is not writable: {e}') from None


def _params_checksum(params: Any) -> str:
  """Sum and sum of squares of every parameter, as float64 on the host.

  Logged at the end by every process, so a multi-process run shows that all
  processes hold the same parameters.
  """
  leaves = [
    np.asarray(multihost_utils.process_allgather(x, tiled=True), np.float64)
    if not x.is_fully_addressable
    else np.asarray(x, np.float64)
    for x in jax.tree.leaves(params)
  ]
  total = sum(float(x.sum()) for x in leaves)
  squares = sum(float((x * x).sum()) for x in leaves)
  return f'sum={total:.10e} sumsq={squares:.10e}'


class _Window:
  """Metric sums and timings since the last log line."""

  def __init__(self):
    self.sums: dict[str, float] = {}
    self.steps = 0
    self.step_time = 0.0
    self.data_time = 0.0
    self.last: dict[str, float] = {}

  def add(self, metrics: Mapping[str, Any], step_s: float, data_s: float):
    for key in (
      'mlm_loss_sum',
      'mlm_weight',
      'mlm_correct',
      'nsp_loss_sum',
      'nsp_correct',
      'nsp_count',
      'tokens',
    ):
      if key in metrics:
        self.sums[key] = self.sums.get(key, 0.0) + float(metrics[key])
    self.last = {k: float(v) for k, v in metrics.items()}
    self.steps += 1
    # The first step of a run includes compilation; it still counts, but
    # later windows show the steady state.
    self.step_time += step_s
    self.data_time += data_s

  def summarize(self, shape, flops_per_example, peak):
    out = summarize(self.sums, 'train')
    step_s = self.step_time / max(self.steps, 1)
    examples_per_s = shape.global_batch / step_s
    tflops = examples_per_s * flops_per_example / shape.num_devices / 1e12
    out.update(
      {
        'train/learning_rate': self.last['learning_rate'],
        'train/grad_norm': self.last['grad_norm'],
        'train/param_norm': self.last['param_norm'],
        'perf/step_time_s': step_s,
        'perf/data_wait_s': self.data_time / max(self.steps, 1),
        'perf/examples_per_s': examples_per_s,
        'perf/tokens_per_s': self.sums.get('tokens', 0.0)
        / max(self.step_time, 1e-9),
        'perf/tflops_per_device': tflops,
      }
    )
    if peak > 0:
      out['perf/mfu'] = tflops * 1e12 / peak
    return out
