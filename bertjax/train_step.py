"""The training step: optimizer, train state, objective, loss, and FLOPs.

What a step computes, with nothing of the run around it. It imports neither
TensorFlow nor the config library, so the step runs (and is benchmarked,
`benchmarks/train_step.py`) on a bare image with only JAX, Flax and optax.

Loss: weighted-mean MLM cross-entropy over `masked_lm_weights` plus mean NSP
cross-entropy. Each micro-batch's sums are divided by the whole batch's
denominators, so accumulated gradients are the whole batch's.
"""

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from bertjax import model, sharding

TrainState = train_state.TrainState
Batch = Mapping[str, Any]


class OptimizerError(ValueError):
  """An optimizer or learning-rate schedule a run cannot use."""


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
  config: Any,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer of `config.optim`, and its schedule (for logging).

  Linear warmup to `learning_rate`, then polynomial decay to
  `end_learning_rate` over `decay_steps` (default: the run's steps); AdamW
  or LAMB with weight decay masked off LayerNorm parameters and biases (as
  in google-research/bert `optimization.py`); global-norm clipping first.
  """
  o = config.optim
  total = int(o.decay_steps or config.num_train_steps)
  if o.name not in ('adamw', 'lamb'):
    raise OptimizerError(f'optim.name {o.name!r} is not one of adamw, lamb')
  if o.learning_rate <= 0 or o.warmup_steps < 0 or total < 1:
    raise OptimizerError(
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


def get_batch_shapes(
  batch_size: int, seq_len: int, num_predictions: int, examples_per_row=0
) -> dict[str, jax.ShapeDtypeStruct]:
  """Abstract global batch: what the train step is compiled for; with
  `examples_per_row` > 0, of packed rows (`data_pipeline.pipeline`)."""
  sequence = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32)
  predictions = jax.ShapeDtypeStruct((batch_size, num_predictions), jnp.int32)
  shapes = dict(
    input_ids=sequence,
    input_mask=sequence,
    segment_ids=sequence,
    masked_lm_positions=predictions,
    masked_lm_ids=predictions,
    masked_lm_weights=jax.ShapeDtypeStruct(predictions.shape, jnp.float32),
    next_sentence_labels=jax.ShapeDtypeStruct((batch_size,), jnp.int32),
  )
  if examples_per_row:
    per_example = jax.ShapeDtypeStruct(
      (batch_size, examples_per_row), jnp.int32
    )
    shapes.update(
      example_ids=sequence,
      cls_positions=per_example,
      next_sentence_labels=per_example,
      next_sentence_weights=per_example.update(dtype=jnp.float32),
    )
  return shapes


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
  """The train state as sharded `ShapeDtypeStruct`s, with no memory touched:
  what `jax.jit(train_step).lower(...)` needs to compile the step ahead of
  time for a mesh (a TPU topology described on a CPU host, say)."""
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
  """A train state born sharded over the mesh, and its NamedSharding tree;
  `init_params` (unboxed, of the model's shapes) replace the fresh params
  initialised from `rng`."""
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

  `logits`: `mlm_logits` float32 `[b, p, vocab]`, `nsp_logits` `[b, 2]`
  (packed rows: `[b, n, 2]`). `batch`: `masked_lm_ids` and
  `masked_lm_weights` `[b, p]`, `next_sentence_labels` `[b]` (packed:
  `[b, n]`, with `next_sentence_weights` `[b, n]`, 1 at real examples) and
  optionally `example_mask` `[b]`, the rows that count. Returns float32
  scalars `mlm_loss_sum`, `mlm_weight`, `mlm_correct` and, with `use_nsp`,
  `nsp_loss_sum`, `nsp_correct`, `nsp_count`.
  """
  labels = batch['next_sentence_labels']
  example = batch.get('example_mask')
  if example is None:
    example = jnp.ones(labels.shape[:1])
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
    if 'next_sentence_weights' in batch:
      example = example[:, None] * batch['next_sentence_weights']
    sums.update(
      nsp_loss_sum=jnp.sum(xent(nsp_logits, labels) * example),
      nsp_correct=jnp.sum((jnp.argmax(nsp_logits, -1) == labels) * example),
      nsp_count=jnp.sum(example),
    )
  return sums


class Objective(Protocol):
  """What a run trains and measures; `train_step` and `fit` take any.

  `sums` are additive over examples, so micro-batches and eval batches add
  up; `loss` divides them by the whole batch's denominators.
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
      # Packed rows (several examples each) carry these.
      example_ids=batch.get('example_ids'),
      cls_positions=batch.get('cls_positions'),
      rngs=None if deterministic else {'dropout': rng},
    )
    return compute_loss_sums(outputs, batch, self.use_nsp)

  def loss(self, sums, batch):
    mlm_weight = jnp.maximum(jnp.sum(batch['masked_lm_weights']), 1e-8)
    loss = sums['mlm_loss_sum'] / mlm_weight
    if self.use_nsp:
      if 'next_sentence_weights' in batch:
        examples = jnp.maximum(jnp.sum(batch['next_sentence_weights']), 1)
      else:
        examples = float(batch['input_ids'].shape[0])
      loss += sums['nsp_loss_sum'] / examples
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
  """One optimizer step on a global batch `[global_batch, ...]` (for
  pretraining, see `get_batch_shapes`): (new state, metric sums and scalars).

  The step is folded into `rng`, so a resumed run repeats the same
  randomness. `objective` and `schedule` are bound with functools.partial,
  not traced; `micro_batches` run in sequence (gradient accumulation).
  `nan_policy` 'stop' applies the update regardless (the host stops before
  saving it); 'skip' keeps the old state when the loss, gradients or updated
  params are not finite.
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


# Dense bf16 peak FLOP/s per device (data sheets); keys are matched, longest
# first, as substrings of the lower-cased `jax.Device.device_kind`.
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
  """Matmul FLOPs of one training example, forward and backward (3x the
  forward), 2 per multiply-add as MFU counts them: attention in full (no
  causal halving), the MLM decoder only at the `num_masked` positions.
  `seq_len` includes padding, which is computed too."""
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
