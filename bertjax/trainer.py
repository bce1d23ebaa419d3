"""The run around the step: `train_and_evaluate` and the loop all runs share.

Owns the run quantities derived from the config, the run's jitted step on
its mesh, and `fit`, the loop that feeds batches, logs, evaluates,
checkpoints, resumes and stops cleanly on SIGTERM or a non-finite step. It
is the only place where host batches become global device arrays. What a
step computes lives in `train_step`.
"""

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import periodic_actions
from jax.experimental import multihost_utils

from bertjax import model, sharding, train_step, workdir
from data_pipeline import cli, examples, pipeline, records

TrainState = train_step.TrainState
Batch = train_step.Batch


class TrainingError(ValueError):
  """A run that cannot start or go on as configured."""


@dataclasses.dataclass(frozen=True)
class RunShape:
  """The mesh, its rules and the quantities derived from the config and the
  machine, computed once."""

  mesh: jax.sharding.Mesh
  rules: sharding.Rules
  global_batch: int
  per_host_batch: int
  micro_batches: int
  total_steps: int
  num_devices: int


def compute_run_shape(
  config: ml_collections.ConfigDict, devices: Sequence[Any] | None = None
) -> RunShape:
  """Makes the mesh `config.mesh` asks for over `devices` (by default every
  process's; `bertjax.aot` passes a TPU slice's), checks that the
  data-parallel size, the host count and the micro-batch count divide the
  batch (else `TrainingError`), and splits it per host and micro-batch."""
  devices = jax.devices() if devices is None else list(devices)
  mesh = sharding.create_mesh(tuple(config.mesh.shape), devices)
  process_count = len({d.process_index for d in devices})
  data_parallel = mesh.shape[sharding.DATA] * mesh.shape[sharding.FSDP]
  global_batch = int(config.batch_size)
  micro = int(config.micro_batches)
  if micro < 1:
    raise TrainingError(f'micro_batches must be >= 1, got {micro}')
  if global_batch < 1:
    raise TrainingError(f'batch_size must be >= 1, got {global_batch}')
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
  if config.nan_policy not in ('stop', 'skip'):
    raise TrainingError(
      f'nan_policy {config.nan_policy!r} is not one of stop, skip'
    )
  for name in ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps'):
    if config[name] < 0:
      raise TrainingError(f'{name} must be >= 0, got {config[name]}')
  return RunShape(
    mesh=mesh,
    rules=sharding.default_logical_axis_rules(config.mesh.extra_rules),
    global_batch=global_batch,
    per_host_batch=global_batch // process_count,
    micro_batches=micro,
    total_steps=int(config.num_train_steps),
    num_devices=len(devices),
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
    attention=m.attention,
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


def jit_run_step(
  config: ml_collections.ConfigDict,
  shape: RunShape,
  objective: train_step.Objective,
  schedule: optax.Schedule,
  state_shardings: Any,
):
  """The jitted train step a run of `config` takes on `shape`'s mesh: the
  one `fit` runs and `bertjax.aot` compiles for a TPU slice."""
  return train_step.jit_train_step(
    objective,
    schedule,
    micro_batches=shape.micro_batches,
    nan_policy=config.nan_policy,
    state_shardings=state_shardings,
    batch_shardings=sharding.batch_sharding(shape.mesh),
  )


class _Window:
  """The steps since the last metric write: their metrics stay on the
  device until `summarize` fetches them all at once."""

  def __init__(self, objective: train_step.Objective):
    self._objective = objective
    self._summed = (*objective.summed, 'tokens')
    self._metrics: list[Mapping[str, jax.Array]] = []
    self.start = time.perf_counter()
    self.data_time = 0.0

  def add(self, metrics: Mapping[str, jax.Array]):
    self._metrics.append(metrics)

  def summarize(self, global_batch, num_devices, flops_per_example, peak):
    fetched = jax.device_get(self._metrics)
    steps = len(fetched)
    # Wall time over the window's steps: fetching waited for the last, so
    # this is throughput. The first window includes compilation.
    elapsed = time.perf_counter() - self.start
    sums = {
      k: float(sum(m[k] for m in fetched))
      for k in self._summed
      if k in fetched[-1]
    }
    last = fetched[-1]
    out = self._objective.summarize(sums, 'train')
    step_s = elapsed / steps
    examples_per_s = global_batch / step_s
    tflops = examples_per_s * flops_per_example / num_devices / 1e12
    out.update(
      {
        'train/learning_rate': float(last['learning_rate']),
        'train/grad_norm': float(last['grad_norm']),
        'train/param_norm': float(last['param_norm']),
        'train/skipped_steps': sum(int(not m['finite']) for m in fetched),
        'perf/step_time_s': step_s,
        'perf/data_wait_s': self.data_time / steps,
        'perf/examples_per_s': examples_per_s,
        'perf/tokens_per_s': sums.get('tokens', 0.0) / elapsed,
      }
    )
    if flops_per_example > 0:
      out['perf/tflops_per_device'] = tflops
    if flops_per_example > 0 and peak > 0:
      out['perf/mfu'] = tflops * 1e12 / peak
    return out


def _every(step: int, every: int, total: int) -> bool:
  """The one helper for every "each N steps" decision (and the last step)."""
  return step == total or (every > 0 and step % every == 0)


def make_global(batch: Batch, batch_sharding) -> dict[str, jax.Array]:
  """Host-local numpy batches -> global arrays sharded over the batch axis."""
  return {
    k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
    for k, v in batch.items()
  }


def get_masking_config(
  config: ml_collections.ConfigDict,
) -> examples.MaskingConfig:
  """How a run masks its examples (`config.data`); checked when built."""
  d = config.data
  return examples.MaskingConfig(
    masked_lm_prob=d.masked_lm_prob,
    max_predictions_per_seq=d.max_predictions_per_seq,
    mask_token_prob=d.mask_token_prob,
    random_token_prob=d.random_token_prob,
    keep_token_prob=d.keep_token_prob,
    whole_word_mask=d.whole_word_mask,
  )


def pipeline_config(
  config: ml_collections.ConfigDict,
  data: records.PreparedData,
  per_host_batch: int,
  masking: examples.MaskingConfig | None = None,
) -> pipeline.PipelineConfig:
  """The input pipeline of a run: `config.data` over the prepared files."""
  return pipeline.PipelineConfig(
    train_file_patterns=data.train_patterns,
    eval_file_patterns=data.eval_patterns,
    tokenizer_path=data.tokenizer_path,
    per_host_batch_size=per_host_batch,
    max_seq_length=config.max_seq_length,
    mlm=masking or get_masking_config(config),
    seed=config.seed,
    shuffle_window=config.data.shuffle_buffer,
    host_sharding=config.data.host_sharding,
    packing=config.data.packing,
    max_examples_per_row=config.data.max_examples_per_row,
  )


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir_path: str
) -> dict[str, float]:
  """Pretrains BERT as `config` (a recipe from `configs/`) says, in (and
  resuming from) a workdir.

  Returns the last logged training metrics, the last eval metrics, and
  `baseline/mlm_accuracy`: what always predicting the most frequent token
  scores on this data.
  """
  with workdir.claim(workdir_path) as path:
    return _train_and_evaluate(config, path)


def _train_and_evaluate(
  config: ml_collections.ConfigDict, workdir_path: str
) -> dict[str, float]:
  shape = compute_run_shape(config)
  if config.data.host_sharding not in pipeline.HOST_SHARDINGS:
    raise TrainingError(
      f'data.host_sharding {config.data.host_sharding!r} is not one of '
      f'{", ".join(pipeline.HOST_SHARDINGS)}'
    )
  tx, schedule = train_step.create_optimizer(config)
  masking = get_masking_config(config)
  # The model config is checked before the data is prepared (which can take
  # minutes), with a stand-in for the vocabulary size the data decides.
  get_model_config(config, vocab_size=1)
  is_writer = jax.process_index() == 0
  data = records.prepare_data(
    config.data,
    max_seq_length=config.max_seq_length,
    cache_dir=os.path.join(workdir_path, 'data'),
    is_writer=is_writer,
    barrier=barrier,
  )
  bert_config = get_model_config(config, data.vocab_size)
  module = model.BertForPreTraining(bert_config)
  use_nsp = bool(config.data.nsp)
  objective = train_step.Pretraining(module, use_nsp)
  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
  init_params = None
  if config.model.init_from:
    # The readers of other formats are needed only here.
    from bertjax import pretrained

    init_params = pretrained.load_params_for(
      config.model.init_from, bert_config
    )
  state, state_shardings = train_step.create_train_state(
    module, tx, shape.mesh, shape.rules, init_rng, init_params
  )
  data_config = pipeline_config(config, data, shape.per_host_batch, masking)
  train_iter = pipeline.create_train_iterator(
    data_config, jax.process_index(), jax.process_count()
  )
  # Created after every input is checked: the manager starts threads that
  # an early error would leave behind.
  tokenizer = data.tokenizer_path
  checkpointer = workdir.Checkpointer(
    workdir_path,
    keep=config.keep_checkpoints,
    meta=dict(
      config=json.loads(config.to_json_best_effort()),
      model=bert_config.to_dict(),
      tokenizer=workdir.keep_tokenizer(workdir_path, tokenizer),
    ),
  )
  try:
    batch_sharding = sharding.batch_sharding(shape.mesh)
    eval_fn = jax.jit(
      functools.partial(train_step.eval_step, objective=objective),
      in_shardings=(state_shardings.params, batch_sharding),
    )
    flops_per_example = train_step.get_train_flops_per_example(
      bert_config,
      config.max_seq_length,
      config.data.max_predictions_per_seq,
      use_nsp,
    )

    def evaluate(state, step) -> dict[str, float]:
      del step
      if not data.eval_patterns:
        return {}
      eval_iter = pipeline.create_eval_iterator(
        data_config, jax.process_index(), jax.process_count()
      )
      totals = None
      for i, batch in enumerate(eval_iter):
        if config.eval_steps and i >= config.eval_steps:
          break
        sums = jax.device_get(
          eval_fn(state.params, make_global(batch, batch_sharding))
        )
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
      return train_step.summarize(totals, 'eval') if totals else {}

    state, step, last_train, last_eval = fit(
      config,
      workdir_path,
      shape=shape,
      objective=objective,
      state=state,
      state_shardings=state_shardings,
      schedule=schedule,
      train_iter=train_iter,
      checkpointer=checkpointer,
      mismatch=pipeline.RecordError,
      evaluate=evaluate,
      flops_per_example=flops_per_example,
      dropout_rng=dropout_rng,
      description=f'Model {config.model.size}',
    )
  finally:
    checkpointer.close()
  logging.info(
    'Finished at step %d; params checksum %s',
    step,
    params_checksum(state.params),
  )
  if 'train/mlm_accuracy' in last_train:
    logging.info(
      'MLM accuracy %.4f (train, last %d steps)%s against %.4f for always '
      'predicting the most frequent token',
      last_train['train/mlm_accuracy'],
      config.log_every_steps,
      f', {last_eval["eval/mlm_accuracy"]:.4f} (eval)'
      if 'eval/mlm_accuracy' in last_eval
      else '',
      data.majority_token_accuracy,
    )
  if is_writer:
    workdir.plot_learning_curves(
      workdir_path, {'most frequent token': data.majority_token_accuracy}
    )
  return {
    **last_train,
    **last_eval,
    'baseline/mlm_accuracy': data.majority_token_accuracy,
  }


def fit(
  config: ml_collections.ConfigDict,
  workdir_path: str,
  *,
  shape: RunShape,
  objective: train_step.Objective,
  state: TrainState,
  state_shardings: TrainState,
  schedule: optax.Schedule,
  train_iter: Any,
  checkpointer: workdir.Checkpointer,
  mismatch: type[Exception],
  evaluate: Callable[[TrainState, int], dict[str, float]],
  flops_per_example: float,
  dropout_rng: jax.Array,
  description: str,
) -> tuple[TrainState, int, dict[str, float], dict[str, float]]:
  """The loop every run shares, pretraining and fine-tuning alike.

  Resumes `state` and `train_iter` from the newest checkpoint that restores
  (`mismatch`, raised by the iterator for a position on other data, becomes
  a `TrainingError`), then runs the jitted step up to `shape.total_steps`.
  It writes the objective's metrics, throughput and MFU every
  `config.log_every_steps`, and what `evaluate(state, step)` returns every
  `config.eval_every_steps`; it saves every `config.checkpoint_every_steps`,
  at the end and on SIGTERM (then raises `cli.Preempted`). A step is checked
  before it is saved, so every checkpoint is finite; under
  `config.nan_policy='stop'` a non-finite step ends the run, naming the last
  good checkpoint.

  Returns (state, the step reached, last train metrics, last eval metrics).
  """
  try:
    state, start_step = checkpointer.restore_latest(
      state, train_iter, mismatch=(mismatch,)
    )
  except mismatch as e:
    raise TrainingError(
      f'{e}; {workdir_path} holds a run on other data or settings: resume '
      'it with those, or start afresh in another workdir'
    ) from e
  if start_step:
    logging.info('Resumed from step %d in %s', start_step, workdir_path)
  batch_sharding = sharding.batch_sharding(shape.mesh)
  step_fn = jit_run_step(config, shape, objective, schedule, state_shardings)
  if jax.process_index() == 0:
    workdir.rewind_metrics(workdir_path, start_step)
  writer = workdir.create_metric_writer(workdir_path, jax.process_index() == 0)
  report_progress = periodic_actions.ReportProgress(
    num_train_steps=shape.total_steps,
    every_steps=config.log_every_steps or None,
    every_secs=None,
  )
  device_kind = jax.devices()[0].device_kind
  peak = train_step.get_peak_flops_per_device(
    device_kind, config.perf.peak_flops_per_device
  )
  logging.info(
    '%s (%.1fM params), mesh %s, global batch %d (%d per host, %d '
    'micro-batches), %d steps from step %d, %s x %d',
    description,
    sum(x.size for x in jax.tree.leaves(state.params)) / 1e6,
    dict(shape.mesh.shape),
    shape.global_batch,
    shape.per_host_batch,
    shape.micro_batches,
    shape.total_steps,
    start_step,
    device_kind,
    shape.num_devices,
  )
  step = start_step
  window = _Window(objective)
  last_train: dict[str, float] = {}
  last_eval: dict[str, float] = {}

  def check(step: int, metrics: Mapping[str, jax.Array]) -> None:
    """Stops on (or, under nan_policy=skip, logs) a non-finite step."""
    if jax.device_get(metrics['finite']):
      return
    values = jax.device_get(metrics)
    latest = checkpointer.latest_step()
    message = (
      f'non-finite step {step} (loss {values["loss"]:.4g}, gradient '
      f'norm {values["grad_norm"]:.4g}, updated params norm '
      f'{values["param_norm"]:.4g}); '
    ) + (
      f'the last good checkpoint is step {latest}'
      if latest is not None
      else 'no checkpoint was saved before it'
    )
    message += ' (--config.nan_policy=skip drops such updates)'
    if config.nan_policy == 'stop':
      raise TrainingError(message)
    logging.warning('Skipped the update of step %d: %s', step, message)

  def next_batch() -> dict[str, jax.Array]:
    start = time.perf_counter()
    batch = make_global(next(train_iter), batch_sharding)
    window.data_time += time.perf_counter() - start
    return batch

  # The loop never waits for the devices between steps: metrics stay on the
  # device until the next write, and while a step runs the host reads the
  # next batch and checks the step before (its finite flag, one scalar).
  # Logging, evaluation and saving wait for their step and check it first.
  # The next batch is read only after a step's save, so a checkpoint's data
  # position is the step's own.
  batch = None
  unchecked: tuple[int, Mapping[str, jax.Array]] | None = None
  try:
    with (
      workdir.Preemption() as preemption,
      jax.set_mesh(shape.mesh),
      nn.logical_axis_rules(shape.rules),
    ):
      while step < shape.total_steps:
        if batch is None:
          batch = next_batch()
        state, metrics = step_fn(state, batch, dropout_rng)
        step += 1
        window.add(metrics)
        report_progress(step)
        stop = preemption.stop_after(step)
        log = _every(step, config.log_every_steps, shape.total_steps)
        evaluate_now = _every(step, config.eval_every_steps, shape.total_steps)
        save = stop or _every(
          step, config.checkpoint_every_steps, shape.total_steps
        )
        waits = log or evaluate_now or save
        batch = None if waits else next_batch()
        if unchecked:
          check(*unchecked)
        unchecked = None if waits else (step, metrics)
        if not waits:
          continue
        check(step, metrics)
        if log:
          last_train = window.summarize(
            shape.global_batch, shape.num_devices, flops_per_example, peak
          )
          writer.write_scalars(step, last_train)
          window = _Window(objective)
        if evaluate_now:
          last_eval = evaluate(state, step)
          if last_eval:
            writer.write_scalars(step, last_eval)
        if save:
          start = time.perf_counter()
          checkpointer.save(step, state, train_iter)
          # Orbax copies the state to the host, then writes in the
          # background: the loop waits for the copy only.
          logging.info(
            'Saving step %d; the loop waited %.3f s for it.',
            step,
            time.perf_counter() - start,
          )
        if stop:
          logging.warning('Saved step %d after SIGTERM; exiting.', step)
          break
  finally:
    writer.close()
  if step < shape.total_steps:
    raise cli.Preempted(
      f'preempted at step {step} of {shape.total_steps} (SIGTERM); step '
      f'{step} is saved in {workdir_path}: the same command resumes'
    )
  return state, step, last_train, last_eval


def barrier(name: str) -> None:
  """Waits for every process (no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'bertjax:{name}')


def params_checksum(params: Any) -> str:
  """Sum and sum of squares of every parameter, as float64 on the host:
  logged by every process, it shows that all hold the same parameters."""
  leaves = [
    np.asarray(multihost_utils.process_allgather(x, tiled=True), np.float64)
    if not x.is_fully_addressable
    else np.asarray(x, np.float64)
    for x in jax.tree.leaves(params)
  ]
  total = sum(float(x.sum()) for x in leaves)
  squares = sum(float((x * x).sum()) for x in leaves)
  return f'sum={total:.10e} sumsq={squares:.10e}'
