"""Optimizers and learning-rate schedules for BERT pretraining (optax).

Owns: the schedule (linear warmup, then linear or polynomial decay), AdamW
and LAMB with weight decay masked off LayerNorm parameters and biases (as in
google-research/bert `optimization.py`), and global-norm clipping.
"""

import dataclasses

import jax
import optax

# Parameter names that never get weight decay: BERT excludes LayerNorm and
# every bias ("LayerNorm", "layer_norm", "bias" in the original's regex).
_NO_DECAY_NAMES = ('bias', 'scale', 'output_bias')


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """What `create_optimizer` needs; mirrors `config.optim`."""

  # adamw | lamb.
  name: str = 'adamw'
  # Peak learning rate, reached at the end of warmup.
  learning_rate: float = 1e-4
  # Linear warmup from 0 over this many steps.
  warmup_steps: int = 10_000
  # Total steps; the schedule decays to end_learning_rate here.
  total_steps: int = 1_000_000
  # Learning rate at total_steps.
  end_learning_rate: float = 0.0
  # Decay power after warmup: 1.0 is linear (BERT), LAMB used 1.0 too.
  decay_power: float = 1.0
  b1: float = 0.9
  b2: float = 0.999
  # BERT's AdamWeightDecayOptimizer uses 1e-6.
  eps: float = 1e-6
  weight_decay: float = 0.01
  # Clip gradients to this global norm (0 disables).
  grad_clip_norm: float = 1.0

  def __post_init__(self):
    if self.name not in ('adamw', 'lamb'):
      raise ValueError(f'optim.name {self.name!r} is not one of adamw, lamb')
    if self.learning_rate <= 0:
      raise ValueError(
        f'optim.learning_rate must be > 0, got {self.learning_rate}'
      )
    if self.warmup_steps < 0 or self.total_steps < 1:
      raise ValueError(
        f'optim.warmup_steps ({self.warmup_steps}) must be >= 0 and '
        f'total steps ({self.total_steps}) >= 1'
      )


def create_schedule(config: OptimizerConfig) -> optax.Schedule:
  """Linear warmup to `learning_rate`, then polynomial decay to the end."""
  warmup = min(config.warmup_steps, config.total_steps)
  decay = optax.polynomial_schedule(
    init_value=config.learning_rate,
    end_value=config.end_learning_rate,
    power=config.decay_power,
    transition_steps=max(config.total_steps - warmup, 1),
  )
  if warmup == 0:
    return decay
  ramp = optax.linear_schedule(0.0, config.learning_rate, warmup)
  return optax.join_schedules([ramp, decay], [warmup])


def decay_mask(params):
  """True for parameters that get weight decay (kernels and embeddings)."""

  def decays(path, _):
    names = [getattr(k, 'key', getattr(k, 'name', '')) for k in path]
    names = [n for n in names if n and n != 'value']
    return not (names and names[-1] in _NO_DECAY_NAMES)

  return jax.tree_util.tree_map_with_path(decays, params)


def create_optimizer(
  config: OptimizerConfig,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax transformation and its schedule (for logging).

  Returns:
    (clip -> adamw | lamb, schedule).
  """
  schedule = create_schedule(config)
  if config.name == 'adamw':
    opt = optax.adamw(
      schedule,
      b1=config.b1,
      b2=config.b2,
      eps=config.eps,
      weight_decay=config.weight_decay,
      mask=decay_mask,
    )
  else:
    # optax.lamb applies the trust ratio to every parameter; the LAMB paper's
    # BERT recipe (and the TF Model Garden LAMB) exclude LayerNorm and biases
    # from layer adaptation as well as from weight decay.
    opt = optax.chain(
      optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps),
      optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
      optax.masked(optax.scale_by_trust_ratio(), decay_mask),
      optax.scale_by_learning_rate(schedule),
    )
  if config.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)
  return opt, schedule
