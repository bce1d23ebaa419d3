"""The pretraining loop: optimizer, state, steps, and `train_and_evaluate`.

Owns: deriving run quantities from the config (once), the optimizer and its
schedule, creating the sharded train state, the pure `train_step` and
`eval_step`, the model FLOPs behind `perf/mfu`, and the loop that feeds
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
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import periodic_actions
from flax.training import train_state
from jax.experimental import multihost_utils

from bertjax import model, sharding, workdir
from data_pipeline import cli, examples, pipeline, records

TrainState = train_state.TrainState
Batch = Mapping[str, Any]


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
  process's; `bertjax.aot` passes a TPU slice's), checks the batch against
  it and splits it per host and micro-batch.

  Raises:
    sharding.MeshError: a mesh the devices cannot form.
    TrainingError: a batch that the data-parallel size, the host count or
      the micro-batch count does not divide.
  """
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


# ---------------------------------------------------------------------------
# Optimizer.

# Parameter names that never get weight decay: BERT excludes LayerNorm and
# every bias ("LayerNorm", "layer_norm", "bias" in the original's regex).
_NO_DECAY_NAMES = ('bias', 'scale', 'output_bias')


def decay_mask(params: Any) -> Any:
  """True for parameters that get weight decay (kernels and embeddings)."""

  def decays(path, _):
    names = [getattr(k, 'key', getattr(k, 'name', '')) for k in path]
    names = [n for n in names if n and n != 'value']
    return not (names and names[-1] in _NO_DECAY_NAMES)

  return jax.tree_util.tree_map_with_path(decays, params)


def create_optimizer(
  config: ml_collections.ConfigDict,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer of `config.optim`, and its schedule (for logging).

  Linear warmup to `learning_rate`, then polynomial decay to
  `end_learning_rate` over `decay_steps` (default: the run's steps); AdamW
  or LAMB with weight decay masked off LayerNorm parameters and biases (as
  in google-research/bert `optimization.py`); global-norm clipping first.

  Raises:
    TrainingError: an unknown optimizer or a bad schedule.
  """
  o = config.optim
  total = int(o.decay_steps or config.num_train_steps)
  if o.name not in ('adamw', 'lamb'):
    raise TrainingError(f'optim.name {o.name!r} is not one of adamw, lamb')
  if o.learning_rate <= 0 or o.warmup_steps < 0 or total < 1:
    raise TrainingError(
      f'optim.learning_rate ({o.learning_rate}) must be > 0, warmup_steps '
      f'({o.warmup_steps}) >= 0 and decay steps ({total}) >= 1'
    )
  warmup = min(int(o.warmup_steps), total)
  schedule = optax.polynomial_schedule(
    init_value=o.learning_rate,
    end_value=o.end_learning_rate,
    power=o.decay_power,
    transition_steps=max(total - warmup, 1),
  )
  if warmup:
    ramp = optax.linear_schedule(0.0, o.learning_rate, warmup)
    schedule = optax.join_schedules([ramp, schedule], [warmup])
  adam = dict(b1=o.b1, b2=o.b2, eps=o.eps)
  if o.name == 'adamw':
    tx = optax.adamw(
      schedule, **adam, weight_decay=o.weight_decay, mask=decay_mask
    )
  else:
    # optax.lamb applies the trust ratio to every parameter; the LAMB paper's
    # BERT recipe (and the TF Model Garden LAMB) exclude LayerNorm and biases
    # from layer adaptation as well as from weight decay.
    tx = optax.chain(
      optax.scale_by_adam(**adam),
      optax.add_decayed_weights(o.weight_decay, mask=decay_mask),
      optax.masked(optax.scale_by_trust_ratio(), decay_mask),
      optax.scale_by_learning_rate(schedule),
    )
  if o.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), tx)
  return tx, schedule


# ---------------------------------------------------------------------------
# State and steps.


def get_batch_shapes(
  batch_size: int, seq_len: int, num_predictions: int
) -> dict[str, jax.ShapeDtypeStruct]:
  """Abstract global batch: what the train step is compiled for."""
  sequence = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32)
  predictions = jax.ShapeDtypeStruct((batch_size, num_predictions), jnp.int32)
  return dict(
    input_ids=sequence,
    input_mask=sequence,
    segment_ids=sequence,
    masked_lm_positions=predictions,
    masked_lm_ids=predictions,
    masked_lm_weights=jax.ShapeDtypeStruct(predictions.shape, jnp.float32),
    next_sentence_labels=jax.ShapeDtypeStruct((batch_size,), jnp.int32),
  )


def _init_state_fn(module: nn.Module, tx):
  """`key -> TrainState` of freshly initialised (boxed) params."""
  create = functools.partial(TrainState.create, apply_fn=module.apply, tx=tx)
  head = model.head_of(module)
  return lambda key: create(params=model.init_params(module.config, key, head))


def abstract_train_state(
  module: nn.Module,
  tx: optax.GradientTransformation,
  mesh: jax.sharding.Mesh,
  rules: sharding.Rules,
) -> TrainState:
  """The train state as sharded `ShapeDtypeStruct`s, with no memory touched.

  What `jax.jit(train_step).lower(...)` needs to compile the step ahead of
  time for a mesh (for instance a TPU topology described on a CPU host).
  """
  abstract = jax.eval_shape(_init_state_fn(module, tx), jax.random.key(0))
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    nn.unbox(abstract),
    sharding.get_shardings(abstract, mesh, rules),
  )


def create_train_state(
  module: nn.Module,
  tx: optax.GradientTransformation,
  mesh: jax.sharding.Mesh,
  rules: sharding.Rules,
  rng: jax.Array,
  init_params: Any = None,
) -> tuple[TrainState, Any]:
  """A train state born sharded over the mesh, and its NamedSharding tree.

  `init_params`, optional pretrained (unboxed) params of the model's shapes,
  replace the fresh ones initialised from `rng`.
  """
  init = _init_state_fn(module, tx)
  if init_params is None:
    return sharding.create_sharded(init, mesh, rules, rng)
  shardings = sharding.get_shardings(jax.eval_shape(init, rng), mesh, rules)
  # Every process holds the whole params; each device takes its shard, which
  # also works when the mesh spans processes.
  params = jax.tree.map(
    lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: x[i]),
    jax.device_get(init_params),
    shardings.params,
  )
  create = functools.partial(TrainState.create, apply_fn=module.apply, tx=tx)
  with jax.set_mesh(mesh):
    state = jax.jit(lambda p: create(params=p), out_shardings=shardings)(params)
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
    float32 scalars: mlm_loss_sum, mlm_weight, mlm_correct, and with NSP
    nsp_loss_sum, nsp_correct, nsp_count.
  """
  labels = batch['next_sentence_labels']
  example = batch.get('example_mask')
  if example is None:
    example = jnp.ones(labels.shape)
  example = example.astype(jnp.float32)
  weights = batch['masked_lm_weights'].astype(jnp.float32) * example[:, None]
  xent = optax.softmax_cross_entropy_with_integer_labels
  mlm_logits, mlm_ids = logits['mlm_logits'], batch['masked_lm_ids']
  mlm_hit = jnp.argmax(mlm_logits, -1) == mlm_ids
  sums = dict(
    mlm_loss_sum=jnp.sum(xent(mlm_logits, mlm_ids) * weights),
    mlm_weight=jnp.sum(weights),
    mlm_correct=jnp.sum(mlm_hit * weights),
  )
  if use_nsp:
    nsp_logits = logits['nsp_logits']
    sums.update(
      nsp_loss_sum=jnp.sum(xent(nsp_logits, labels) * example),
      nsp_correct=jnp.sum((jnp.argmax(nsp_logits, -1) == labels) * example),
      nsp_count=jnp.sum(example),
    )
  return sums


class Objective(Protocol):
  """What a run trains and measures; `train_step` and `fit` take any.

  `sums` are additive over examples (sums and counts), so micro-batches and
  eval batches add up; `loss` divides a (micro-)batch's sums by the whole
  batch's denominators, so accumulated micro-batch gradients are the whole
  batch's gradient.
  """

  module: nn.Module
  summed: tuple[str, ...]  # keys of `sums` that the loop adds up

  def sums(
    self, params: Any, batch: Batch, rng: jax.Array | None, deterministic: bool
  ) -> dict[str, jax.Array]:
    """float32 scalar sums and counts of one (micro-)batch."""

  def loss(self, sums: Mapping[str, jax.Array], batch: Batch) -> jax.Array:
    """The scalar loss of `sums`; `batch` is the whole global batch."""

  def summarize(self, sums: Mapping[str, float], prefix: str) -> dict:
    """Host-side metrics (`<prefix>/loss`, ...) of added-up sums."""


@dataclasses.dataclass(frozen=True)
class Pretraining:
  """BERT's objective: masked-LM cross-entropy, plus NSP's when `use_nsp`."""

  module: model.BertForPreTraining
  use_nsp: bool = True
  summed = (
    'mlm_loss_sum',
    'mlm_weight',
    'mlm_correct',
    'nsp_loss_sum',
    'nsp_correct',
    'nsp_count',
  )

  def sums(self, params, batch, rng, deterministic):
    outputs = self.module.apply(
      {'params': params},
      batch['input_ids'],
      batch['input_mask'],
      batch['segment_ids'],
      batch['masked_lm_positions'],
      deterministic=deterministic,
      rngs=None if deterministic else {'dropout': rng},
    )
    return compute_loss_sums(outputs, batch, self.use_nsp)

  def loss(self, sums, batch):
    mlm_weight = jnp.maximum(jnp.sum(batch['masked_lm_weights']), 1e-8)
    loss = sums['mlm_loss_sum'] / mlm_weight
    if self.use_nsp:
      loss += sums['nsp_loss_sum'] / float(batch['input_ids'].shape[0])
    return loss

  def summarize(self, sums, prefix):
    return summarize(sums, prefix)


def train_step(
  state: TrainState,
  batch: Batch,
  rng: jax.Array,
  *,
  objective: Objective,
  schedule: optax.Schedule,
  micro_batches: int,
  nan_policy: str,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a global batch.

  Args:
    state: the train state.
    batch: global arrays `[global_batch, ...]` (for pretraining, see
      `get_batch_shapes`); `input_mask` counts the tokens.
    rng: base key; the step is folded in so every step drops out afresh and
      a resumed run repeats the same randomness.
    objective, schedule: bound with functools.partial, not traced; the
      schedule gives the learning-rate metric.
    micro_batches: sequential micro-batches (gradient accumulation).
    nan_policy: 'stop' applies the update regardless (the host stops
      before saving it); 'skip' keeps the old state when the step is not
      finite: its loss, gradients or updated params.

  Returns:
    (new state, metric sums and scalars).
  """
  step_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params, micro, key):
    sums = objective.sums(params, micro, key, deterministic=False)
    return objective.loss(sums, batch), sums

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if micro_batches == 1:
    (loss, sums), grads = grad_fn(state.params, batch, step_rng)
  else:
    micro = jax.tree.map(
      lambda x: x.reshape(micro_batches, -1, *x.shape[1:]), batch
    )
    keys = jax.random.split(step_rng, micro_batches)

    def accumulate(carry, xs):
      (loss, sums), grads = grad_fn(state.params, *xs)
      return jax.tree.map(jnp.add, carry, (grads, loss, sums)), None

    first = jax.tree.map(lambda x: x[0], micro)
    (loss, sums), grads = jax.tree.map(
      lambda s: jnp.zeros(s.shape, s.dtype),
      jax.eval_shape(grad_fn, state.params, first, step_rng),
    )
    (grads, loss, sums), _ = jax.lax.scan(
      accumulate, (grads, loss, sums), (micro, keys)
    )
  new_state = state.apply_gradients(grads=grads)
  grad_norm = optax.tree.norm(grads)
  param_norm = optax.tree.norm(new_state.params)
  # A finite loss does not make a good step: its update can still blow the
  # params up (the loss shows it only a step later), and a checkpoint of
  # those would be named the last good one. The norms are float32 sums of
  # squares, so params past about 1e19 count as diverged too.
  finite = (
    jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
  )
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
    grad_norm=grad_norm,
    param_norm=param_norm,  # Of the update, kept or (skip) not.
    learning_rate=schedule(state.step),
    tokens=jnp.sum(batch['input_mask']).astype(jnp.float32),
  )
  return new_state, metrics


def jit_train_step(
  objective: Objective,
  schedule: optax.Schedule,
  *,
  micro_batches: int = 1,
  nan_policy: str = 'stop',
  state_shardings: Any = None,
  batch_shardings: Any = None,
):
  """`train_step` jitted once, the state donated: `(state, batch, rng) ->
  (state, metrics)`. With shardings (the trainer's), inputs and the new
  state are pinned to them; without, they follow the arguments."""
  step = functools.partial(
    train_step,
    objective=objective,
    schedule=schedule,
    micro_batches=micro_batches,
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


def jit_run_step(
  config: ml_collections.ConfigDict,
  shape: RunShape,
  objective: Objective,
  schedule: optax.Schedule,
  state_shardings: Any,
):
  """The jitted train step a run of `config` takes on `shape`'s mesh: the
  one `fit` runs and `bertjax.aot` compiles for a TPU slice."""
  return jit_train_step(
    objective,
    schedule,
    micro_batches=shape.micro_batches,
    nan_policy=config.nan_policy,
    state_shardings=state_shardings,
    batch_shardings=sharding.batch_sharding(shape.mesh),
  )


def eval_step(
  params: Any, batch: Batch, *, objective: Objective
) -> dict[str, jax.Array]:
  """Loss and accuracy sums of an eval batch (padding rows masked out)."""
  return objective.sums(params, batch, None, deterministic=True)


def summarize(sums: Mapping[str, float], prefix: str) -> dict[str, float]:
  """Normalises metric sums on the host (`train/mlm_loss`, ...)."""
  mlm_weight = max(float(sums['mlm_weight']), 1e-8)
  out = {
    f'{prefix}/mlm_loss': sums['mlm_loss_sum'] / mlm_weight,
    f'{prefix}/mlm_accuracy': sums['mlm_correct'] / mlm_weight,
  }
  loss = out[f'{prefix}/mlm_loss']
  if 'nsp_count' in sums:
    nsp_count = max(float(sums['nsp_count']), 1e-8)
    out[f'{prefix}/nsp_loss'] = sums['nsp_loss_sum'] / nsp_count
    out[f'{prefix}/nsp_accuracy'] = sums['nsp_correct'] / nsp_count
    loss += out[f'{prefix}/nsp_loss']
  out[f'{prefix}/loss'] = loss
  return {k: float(v) for k, v in out.items()}


# ---------------------------------------------------------------------------
# Model FLOPs utilisation.

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets. Keys are
# matched as substrings of `jax.Device.device_kind` (lower-cased), longest
# first.
PEAK_FLOPS_PER_DEVICE = {
  'tpu v2': 45e12,
  'tpu v3': 123e12,
  'tpu v4': 275e12,
  'tpu v5 lite': 197e12,
  'tpu v5e': 197e12,
  'tpu v5p': 459e12,
  'tpu v5': 459e12,
  'tpu v6 lite': 918e12,
  'tpu v6e': 918e12,
  'tpu7x': 2307e12,
  'h100': 989e12,
  'h200': 989e12,
  'h800': 989e12,
  'b200': 2250e12,
  'a100': 312e12,
  'a10g': 125e12,
  'l4': 121e12,
  'v100': 125e12,
  't4': 65e12,
}


def get_peak_flops_per_device(device_kind: str, override: float = 0.0) -> float:
  """Peak FLOP/s of one device: `override` if > 0, else the data sheet's,
  else 0 (unknown: MFU is then not reported)."""
  if override > 0:
    return float(override)
  kind = device_kind.lower()
  keys = sorted(PEAK_FLOPS_PER_DEVICE, key=len, reverse=True)
  return next((PEAK_FLOPS_PER_DEVICE[k] for k in keys if k in kind), 0.0)


def get_train_flops_per_example(
  config: model.BertConfig, seq_len: int, num_masked: int, nsp: bool = True
) -> float:
  """Matmul FLOPs of one training example, forward and backward.

  Matmuls only, 2 per multiply-add, as MFU conventionally counts: the
  bidirectional attention in full (no causal halving) and the MLM decoder
  only at the masked positions, as the model computes it. Training is 3x
  the forward pass.

  `seq_len` includes padding (it is computed); `num_masked` is
  max_predictions_per_seq.
  """
  h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
  per_token_layer = (
    2 * 4 * h * h  # query, key, value and output projections
    + 2 * 2 * h * i  # feed-forward in and out
    + 2 * 2 * seq_len * h  # scores QK^T and the weighted sum of V
  )
  encoder = config.num_hidden_layers * seq_len * per_token_layer
  pooler = 2 * h * h
  mlm = num_masked * (2 * h * h + 2 * h * v)
  nsp_head = 2 * h * 2 if nsp else 0
  return 3.0 * (encoder + pooler + mlm + nsp_head)


class _Window:
  """Metric sums and timings since the last metric write."""

  def __init__(self, objective: Objective):
    self._objective = objective
    self._summed = (*objective.summed, 'tokens')
    self.sums: dict[str, float] = {}
    self.steps = 0
    self.skipped = 0  # Non-finite steps (dropped under nan_policy=skip).
    self.step_time = self.data_time = 0.0
    self.last: dict[str, float] = {}

  def add(self, metrics: Mapping[str, Any], step_s: float, data_s: float):
    for key in self._summed:
      if key in metrics:
        self.sums[key] = self.sums.get(key, 0.0) + float(metrics[key])
    self.last = {k: float(v) for k, v in metrics.items()}
    self.steps += 1
    self.skipped += int(not metrics['finite'])
    # The first step of a run includes compilation; it still counts, but
    # later windows show the steady state.
    self.step_time += step_s
    self.data_time += data_s

  def summarize(self, global_batch, num_devices, flops_per_example, peak):
    out = self._objective.summarize(self.sums, 'train')
    step_s = self.step_time / self.steps
    examples_per_s = global_batch / step_s
    tflops = examples_per_s * flops_per_example / num_devices / 1e12
    out.update(
      {
        'train/learning_rate': self.last['learning_rate'],
        'train/grad_norm': self.last['grad_norm'],
        'train/param_norm': self.last['param_norm'],
        'train/skipped_steps': self.skipped,
        'perf/step_time_s': step_s,
        'perf/data_wait_s': self.data_time / self.steps,
        'perf/examples_per_s': examples_per_s,
        'perf/tokens_per_s': self.sums.get('tokens', 0.0) / self.step_time,
      }
    )
    if flops_per_example > 0:
      out['perf/tflops_per_device'] = tflops
    if flops_per_example > 0 and peak > 0:
      out['perf/mfu'] = tflops * 1e12 / peak
    return out


# ---------------------------------------------------------------------------
# The loop.


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
  )


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir_path: str
) -> dict[str, float]:
  """Pretrains BERT as `config` says, in (and resuming from) a workdir.

  Args:
    config: a recipe from `configs/` (see `configs/common.py`).
    workdir_path: checkpoints, metrics, curves (`bertjax.workdir`).

  Returns:
    The last logged training metrics, the last eval metrics, and
    `baseline/mlm_accuracy`: what always predicting the most frequent token
    scores on this data.

  Raises:
    workdir.WorkdirError: the workdir is not writable or in use.
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
  tx, schedule = create_optimizer(config)
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
  objective = Pretraining(module, use_nsp)
  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
  init_params = None
  if config.model.init_from:
    # The readers of other formats are needed only here.
    from bertjax import pretrained

    init_params = pretrained.load_params_for(
      config.model.init_from, bert_config
    )
  state, state_shardings = create_train_state(
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
      functools.partial(eval_step, objective=objective),
      in_shardings=(state_shardings.params, batch_sharding),
    )
    flops_per_example = get_train_flops_per_example(
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
      return summarize(totals, 'eval') if totals else {}

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
  objective: Objective,
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
  (`mismatch`, raised by the iterator for a position on other data, is a
  `TrainingError`), then feeds `train_iter`'s host batches to the jitted
  train step up to `shape.total_steps`; writes the objective's metrics,
  throughput and MFU every `config.log_every_steps`; calls
  `evaluate(state, step)` every `config.eval_every_steps` and writes what
  it returns; saves every `config.checkpoint_every_steps`, at the end and
  on SIGTERM (then raises `cli.Preempted`);
  and stops on a non-finite step (loss, gradients or updated params;
  `config.nan_policy='stop'`) naming the last good checkpoint: the step
  is checked before it is saved, so every checkpoint is finite.

  Returns:
    (state, the step reached, the last train metrics, the last eval
    metrics).
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
  peak = get_peak_flops_per_device(
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
  try:
    with (
      workdir.Preemption() as preemption,
      jax.set_mesh(shape.mesh),
      nn.logical_axis_rules(shape.rules),
    ):
      while step < shape.total_steps:
        t0 = time.perf_counter()
        batch = make_global(next(train_iter), batch_sharding)
        t1 = time.perf_counter()
        state, metrics = step_fn(state, batch, dropout_rng)
        step += 1
        # Fetching this step's metrics waits for it; on accelerators the
        # next batch is already being prepared by tf.data's prefetch.
        metrics = jax.device_get(metrics)
        window.add(metrics, time.perf_counter() - t0, t1 - t0)
        report_progress(step)
        if not metrics['finite']:
          latest = checkpointer.latest_step()
          message = (
            f'non-finite step {step} (loss {metrics["loss"]:.4g}, gradient '
            f'norm {metrics["grad_norm"]:.4g}, updated params norm '
            f'{metrics["param_norm"]:.4g}); '
          ) + (
            f'the last good checkpoint is step {latest}'
            if latest is not None
            else 'no checkpoint was saved before it'
          )
          message += ' (--config.nan_policy=skip drops such updates)'
          if config.nan_policy == 'stop':
            raise TrainingError(message)
          logging.warning('Skipped the update of step %d: %s', step, message)
        if _every(step, config.log_every_steps, shape.total_steps):
          last_train = window.summarize(
            shape.global_batch, shape.num_devices, flops_per_example, peak
          )
          writer.write_scalars(step, last_train)
          window = _Window(objective)
        if _every(step, config.eval_every_steps, shape.total_steps):
          last_eval = evaluate(state, step)
          if last_eval:
            writer.write_scalars(step, last_eval)
        stop = preemption.stop_after(step)
        if stop or _every(
          step, config.checkpoint_every_steps, shape.total_steps
        ):
          checkpointer.save(step, state, train_iter)
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
