"""The BERT encoder and its output layers, as Flax modules.

Owns the network only: `BertConfig`, the size presets, the encoder
`BertModel` and the output layers a `Head` names (`BertForPreTraining`, with
the MLM head tied to the word embeddings, and the fine-tuning heads), laid
out as transformers' classes of the same names so that weights map one to
one. It imports nothing from training, data or checkpointing and never sees
a mesh: parameters and activations carry logical axis names, which
`sharding.py` maps onto mesh axes (the activation constraints are no-ops
unless the caller installs axis rules, so the modules run without one).

Semantics follow google-research/bert `modeling.py`: exact-erf GELU, post-LN,
an additive padding mask, MLM logits only at `masked_lm_positions`. With
`dtype='bfloat16'`, matmuls (and their gradients, see `matmul`) take bfloat16
inputs and accumulate in float32; softmax, LayerNorm statistics and logits
are float32; parameters and their gradients stay `param_dtype`.
"""

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

# Logical axis names of parameters and activations.
VOCAB = 'vocab'
EMBED = 'embed'
MLP = 'mlp'
HEADS = 'heads'
KV = 'kv'
LAYERS = 'layers'
POSITION = 'position'
TOKEN_TYPE = 'token_type'
CLASSES = 'classes'
ACTIVATION_BATCH = 'activation_batch'
ACTIVATION_LENGTH = 'activation_length'
ACTIVATION_EMBED = 'activation_embed'
ACTIVATION_MLP = 'activation_mlp'
ACTIVATION_HEADS = 'activation_heads'
ACTIVATION_KV = 'activation_kv'

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  # BERT's `gelu` is the exact erf form; the tanh approximation has its own
  # names in transformers' config files.
  'gelu': functools.partial(jax.nn.gelu, approximate=False),
  'gelu_new': functools.partial(jax.nn.gelu, approximate=True),
  'gelu_pytorch_tanh': functools.partial(jax.nn.gelu, approximate=True),
  'relu': jax.nn.relu,
  'silu': jax.nn.silu,
  'swish': jax.nn.silu,
}

_REMAT_POLICIES: dict[str, Any] = {
  # No rematerialisation: keep every activation (fastest, most memory).
  'none': None,
  # Save nothing, recompute the whole layer in the backward pass.
  'full': jax.checkpoint_policies.nothing_saveable,
  # Save matmul outputs, recompute elementwise ops. `matmul`'s products are
  # saved by name: the dot policies do not see inside its custom VJP.
  'dots': jax.checkpoint_policies.save_from_both_policies(
    jax.checkpoint_policies.checkpoint_dots,
    jax.checkpoint_policies.save_only_these_names('matmul'),
  ),
  # Save matmul outputs without batch dims (i.e. not attention scores).
  'dots_no_batch': jax.checkpoint_policies.save_from_both_policies(
    jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    jax.checkpoint_policies.save_only_these_names('matmul'),
  ),
}

_DTYPES = ('float32', 'bfloat16', 'float16')

# How attention is computed; all give the same result (see `attention`).
ATTENTION_IMPLEMENTATIONS = ('auto', 'xla', 'cudnn', 'splash')


class ConfigError(ValueError):
  """A BERT configuration that cannot describe a working model."""


class WeightsError(ValueError):
  """Weights that cannot be a model's params: unreadable, incomplete, or
  shaped for another config."""


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Hyper-parameters of a BERT encoder (google-research/bert's names)."""

  vocab_size: int = 30522  # rows of the word-embedding table
  hidden_size: int = 768  # width of every token representation
  num_hidden_layers: int = 12
  num_attention_heads: int = 12  # must divide hidden_size
  intermediate_size: int = 3072  # feed-forward width
  hidden_act: str = 'gelu'  # gelu (exact) | gelu_new | relu | silu
  # Dropout after embeddings, attention output and feed-forward output.
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512  # longest sequence
  type_vocab_size: int = 2  # segment ids: sentence A / B
  initializer_range: float = 0.02  # stddev of the truncated normal
  layer_norm_eps: float = 1e-12
  dtype: str = 'float32'  # activations and matmul inputs
  param_dtype: str = 'float32'  # parameter storage
  # nn.scan over the layers (params get a leading `layers` axis), so compile
  # time does not grow with depth.
  scan_layers: bool = True
  remat_policy: str = 'none'  # per layer: none | full | dots | dots_no_batch
  attention: str = 'auto'  # auto | xla | cudnn | splash: see `attention`

  # Fields that fix the parameters' shapes: a checkpoint's config decides
  # them, a run cannot override them.
  SHAPE_FIELDS: ClassVar[tuple[str, ...]] = (
    'vocab_size',
    'hidden_size',
    'num_hidden_layers',
    'num_attention_heads',
    'intermediate_size',
    'max_position_embeddings',
    'type_vocab_size',
  )
  # How bertjax runs or stores a model, not what it computes; no other BERT
  # config file has them (HF's own `dtype` is its tensors' storage dtype).
  BERTJAX_FIELDS: ClassVar[tuple[str, ...]] = (
    'dtype',
    'param_dtype',
    'scan_layers',
    'remat_policy',
    'attention',
  )
  # Fields a run sets for itself when it starts from a checkpoint: how it
  # runs, trains and initialises what the checkpoint lacks.
  RUN_TIME_FIELDS: ClassVar[tuple[str, ...]] = (
    *BERTJAX_FIELDS,
    'hidden_dropout_prob',
    'attention_probs_dropout_prob',
    'initializer_range',
  )

  def __post_init__(self):
    for name in self.SHAPE_FIELDS:
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f'{name} must be a positive integer, got {value!r}')
    if self.hidden_size % self.num_attention_heads:
      raise ConfigError(
        f'hidden_size ({self.hidden_size}) is not divisible by '
        f'num_attention_heads ({self.num_attention_heads})'
      )
    for name, low, high in (
      ('hidden_dropout_prob', 0.0, 1.0),
      ('attention_probs_dropout_prob', 0.0, 1.0),
      ('initializer_range', 0.0, math.inf),
      ('layer_norm_eps', 0.0, math.inf),
    ):
      value = getattr(self, name)
      numeric = isinstance(value, int | float) and not isinstance(value, bool)
      if not numeric or not low <= value < high:
        raise ConfigError(f'{name} must be in [{low}, {high}), got {value!r}')
    for name, allowed in (
      ('hidden_act', sorted(_ACTIVATIONS)),
      ('dtype', list(_DTYPES)),
      ('param_dtype', list(_DTYPES)),
      ('remat_policy', sorted(_REMAT_POLICIES)),
      ('attention', list(ATTENTION_IMPLEMENTATIONS)),
    ):
      value = getattr(self, name)
      if value not in allowed:
        raise ConfigError(f'{name} {value!r} is not one of {allowed}')

  @classmethod
  def shared_fields(cls) -> tuple[str, ...]:
    """Fields of transformers' and Google's config files, same names."""
    return tuple(
      f.name
      for f in dataclasses.fields(cls)
      if f.name not in cls.BERTJAX_FIELDS
    )

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> 'BertConfig':
    """Builds a config, failing on any field BERT does not have."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ConfigError(
        f'unknown BertConfig field(s) {", ".join(unknown)}; '
        f'known fields: {", ".join(sorted(known))}'
      )
    return cls(**values)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def replace(self, **changes: Any) -> 'BertConfig':
    """A copy with `changes`, validated like `from_dict`."""
    return self.from_dict({**self.to_dict(), **changes})


def _miniature(layers: int, hidden: int) -> dict[str, int]:
  # 64-wide heads and a 4x feed-forward, like BERT-base and BERT-large.
  return dict(
    num_hidden_layers=layers,
    hidden_size=hidden,
    num_attention_heads=hidden // 64,
    intermediate_size=4 * hidden,
  )


# Google's 24 BERT miniatures (Turc et al. 2019) and the usual names.
PRESETS: dict[str, dict[str, int]] = {
  f'L-{layers}_H-{hidden}': _miniature(layers, hidden)
  for layers in (2, 4, 6, 8, 10, 12)
  for hidden in (128, 256, 512, 768)
}
PRESETS.update(
  tiny=PRESETS['L-2_H-128'],
  mini=PRESETS['L-4_H-256'],
  small=PRESETS['L-4_H-512'],
  medium=PRESETS['L-8_H-512'],
  base=PRESETS['L-12_H-768'],
  large=_miniature(24, 1024),
)


def get_config(size: str, **overrides: Any) -> BertConfig:
  """A preset (`tiny`, `base`, `L-4_H-256`, ...) with field overrides."""
  if size not in PRESETS:
    raise ConfigError(
      f'unknown model size {size!r}; presets: {", ".join(PRESETS)}'
    )
  return BertConfig.from_dict({**PRESETS[size], **overrides})


def _constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
  return nn.with_logical_constraint(x, axes)


def matmul(spec: str, a: jax.Array, b: jax.Array, dtype) -> jax.Array:
  """`jnp.einsum(spec, a, b)` of inputs cast to `dtype`, accumulated and
  returned in float32; its gradients cast the cotangent to `dtype` too.

  Autodiff of `einsum(..., preferred_element_type=float32)` would multiply the
  float32 cotangent by a bfloat16 operand, which XLA computes as a float32
  matmul: two thirds of a training step's matmuls would not run in bfloat16.
  (Asking for a bfloat16 product instead makes XLA:CPU compute every matmul
  in float32.) Each index of `spec` must appear in the output or in the
  other operand. The product is named 'matmul' for the remat policies.
  """
  return checkpoint_name(_matmul(spec, a, b, dtype), 'matmul')


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _matmul(spec: str, a: jax.Array, b: jax.Array, dtype) -> jax.Array:
  return jnp.einsum(
    spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32
  )


def _matmul_fwd(spec, a, b, dtype):
  return _matmul(spec, a, b, dtype), (a, b)


def _matmul_bwd(spec, dtype, residuals, g):
  a, b = residuals
  inputs, out = spec.split('->')
  sa, sb = inputs.split(',')
  g = g.astype(dtype)
  # The gradient of the weights (b) stays float32 when b is stored so.
  da = jnp.einsum(
    f'{out},{sb}->{sa}', g, b.astype(dtype), preferred_element_type=jnp.float32
  )
  db = jnp.einsum(
    f'{sa},{out}->{sb}', a.astype(dtype), g, preferred_element_type=jnp.float32
  )
  return da.astype(a.dtype), db.astype(b.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


class Dense(nn.Module):
  """A dense layer over the trailing `in_dims` axes with logical axis names;
  bias and activation apply to the float32 sum, before the cast to the
  compute dtype (in float32, GELU is both exact and faster on CPU)."""

  config: BertConfig  # dtypes and the initializer range
  features: int | tuple[int, ...]  # a width, or widths of a multi-axis output
  # Logical names of the kernel's dimensions, inputs then outputs; the bias
  # takes the output names.
  axes: tuple[str, ...]
  in_dims: int = 1
  activate: bool = False  # apply `config.hidden_act`

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """`[..., *in_shape]` -> `[..., *features]` in the compute dtype."""
    c = self.config
    features = (
      (self.features,) if isinstance(self.features, int) else self.features
    )
    in_shape = x.shape[x.ndim - self.in_dims :]
    kernel = self.param(
      'kernel',
      nn.with_logical_partitioning(
        nn.initializers.truncated_normal(c.initializer_range), self.axes
      ),
      (*in_shape, *features),
      jnp.dtype(c.param_dtype),
    )
    bias = self.param(
      'bias',
      nn.with_logical_partitioning(
        nn.initializers.zeros, self.axes[-len(features) :]
      ),
      features,
      jnp.dtype(c.param_dtype),
    )
    dtype = jnp.dtype(c.dtype)
    letters = 'abcdefghijklmnopqrstuvwxyz'[: x.ndim + len(features)]
    kept, contracted = (
      letters[: x.ndim - self.in_dims],
      letters[x.ndim - self.in_dims : x.ndim],
    )
    made = letters[x.ndim :]
    y = matmul(
      f'{kept}{contracted},{contracted}{made}->{kept}{made}', x, kernel, dtype
    )
    y = y + bias.astype(jnp.float32)
    if self.activate:
      y = _ACTIVATIONS[c.hidden_act](y)
    return y.astype(dtype)


def _dense(
  config: BertConfig, features, axes, name, in_dims: int = 1, activate=False
) -> Dense:
  return Dense(config, features, axes, in_dims, activate, name=name)


def _layer_norm(config: BertConfig, name) -> nn.LayerNorm:
  # Flax computes LayerNorm statistics in at least float32.
  return nn.LayerNorm(
    epsilon=config.layer_norm_eps,
    dtype=jnp.dtype(config.dtype),
    param_dtype=jnp.dtype(config.param_dtype),
    scale_init=nn.with_logical_partitioning(nn.initializers.ones, (EMBED,)),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (EMBED,)),
    name=name,
  )


def _lookup(embed: nn.Embed, ids: jax.Array, row_axis: str | None):
  """`embed`'s rows at `ids` `[batch, seq_len]`, `[batch, seq_len,
  features]`, from its table split on `row_axis` only: each shard gathers
  the ids it holds and an all-reduce adds them up. Left alone, XLA splits
  the result on the features, as the table is, and must then gather it
  whole on every step ("involuntary full rematerialization")."""
  table = _constrain(embed.embedding, (row_axis, None))
  rows = jnp.take(table, ids, axis=0).astype(embed.dtype)
  return _constrain(
    rows, (ACTIVATION_BATCH, ACTIVATION_LENGTH, ACTIVATION_EMBED)
  )


class BertEmbeddings(nn.Module):
  """Word + position + segment embeddings, LayerNorm, dropout."""

  config: BertConfig

  def setup(self):
    c = self.config
    init = nn.initializers.truncated_normal(c.initializer_range)

    def embed(num, axis):
      return nn.Embed(
        num_embeddings=num,
        features=c.hidden_size,
        dtype=jnp.dtype(c.dtype),
        param_dtype=jnp.dtype(c.param_dtype),
        embedding_init=nn.with_logical_partitioning(init, (axis, EMBED)),
      )

    self.word_embeddings = embed(c.vocab_size, VOCAB)
    self.position_embeddings = embed(c.max_position_embeddings, POSITION)
    self.token_type_embeddings = embed(c.type_vocab_size, TOKEN_TYPE)
    self.layer_norm = _layer_norm(c, name=None)
    self.dropout = nn.Dropout(rate=c.hidden_dropout_prob)

  def __call__(
    self,
    input_ids: jax.Array,
    segment_ids: jax.Array,
    deterministic: bool,
    positions: jax.Array | None = None,
  ) -> jax.Array:
    """int `[batch, seq_len]` token and segment ids (and position ids,
    default 0, 1, ...) -> `[batch, seq_len, hidden_size]` in the compute
    dtype."""
    if positions is None:
      positions = jnp.broadcast_to(
        jnp.arange(input_ids.shape[-1]), input_ids.shape
      )
    x = (
      _lookup(self.word_embeddings, input_ids, VOCAB)
      + _lookup(self.position_embeddings, positions, None)
      + _lookup(self.token_type_embeddings, segment_ids, None)
    )
    x = self.dropout(self.layer_norm(x), deterministic=deterministic)
    return _constrain(
      x, (ACTIVATION_BATCH, ACTIVATION_LENGTH, ACTIVATION_EMBED)
    )

  def attend(self, x: jax.Array) -> jax.Array:
    """The tied decoder: `[..., hidden_size]` -> float32 `[..., vocab_size]`
    scores against every word embedding."""
    kept = 'abcdefg'[: x.ndim - 1]
    return matmul(
      f'{kept}h,vh->{kept}v', x, self.word_embeddings.embedding, x.dtype
    )


def attention_platform() -> str:
  """The platform attention runs on: the set mesh's devices' (a TPU
  topology compiled ahead of time on a CPU host counts as TPU), else JAX's
  default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.abstract_device is not None:
    return mesh.abstract_device.platform
  return jax.default_backend()


def resolve_attention(
  config: BertConfig, seq_len: int, deterministic: bool
) -> str:
  """The implementation `config.attention` means here: xla, cudnn or splash.

  The fused kernels have no dropout on attention probabilities, so `auto`
  picks them only without it, and in 16-bit compute: cuDNN on GPUs, splash
  on TPUs when `seq_len` is a multiple of 128. Asking for a fused one where
  it cannot run raises `ConfigError`.
  """
  dropout = config.attention_probs_dropout_prob > 0 and not deterministic
  if config.attention == 'auto':
    platform = attention_platform()
    if dropout or config.dtype == 'float32':
      return 'xla'
    cudnn_head = config.head_dim % 8 == 0 and config.head_dim <= 128
    if platform == 'gpu' and cudnn_head:
      return 'cudnn'
    if platform == 'tpu' and seq_len % 128 == 0:
      return 'splash'
    return 'xla'
  if config.attention != 'xla' and dropout:
    raise ConfigError(
      f'attention={config.attention!r} has no dropout on attention '
      f'probabilities, and attention_probs_dropout_prob is '
      f'{config.attention_probs_dropout_prob}: set it to 0 or use '
      "attention='xla'"
    )
  if config.attention == 'splash' and seq_len % 128:
    raise ConfigError(
      f"attention='splash' needs a sequence length that is a multiple of "
      f'128, got {seq_len}'
    )
  return config.attention


def attention_mask(segments: jax.Array, packed: bool) -> jax.Array:
  """Which keys each query sees, from `segments` int `[batch, seq_len]`.

  Unpacked, `segments` is the 0/1 input mask and every query sees every real
  key (`[batch, 1, 1, seq_len]`). Packed, it holds each token's example
  (1, 2, ...; 0 at padding) and a query sees the real keys of its own
  example only (`[batch, 1, seq_len, seq_len]`); padding queries see every
  real key, as unpacked, so no row is empty.
  """
  keys = segments[:, None, None, :]
  real = keys > 0
  if not packed:
    return real
  queries = segments[:, None, :, None]
  return real & ((queries == keys) | (queries == 0))


def _splash_attention(q, k, v, segments):
  """Pallas splash attention (TPU; interpreted elsewhere, for tests) on
  `[batch, seq_len, heads, head_dim]` inputs, q already scaled."""
  # Imported here: the TPU kernels load Pallas' Mosaic backend.
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # noqa: PLC0415
    splash_attention_kernel as splash,
  )
  from jax.experimental.pallas.ops.tpu.splash_attention import (
    splash_attention_mask as splash_mask,
  )

  interpret = attention_platform() != 'tpu'

  def local(q, k, v, segments):
    _, seq_len, heads, _ = q.shape
    block = math.gcd(seq_len, 512)
    kernel = splash.make_splash_mha(
      splash_mask.MultiHeadMask([splash_mask.FullMask((seq_len,) * 2)] * heads),
      # One block size for every tile of the forward and backward kernels.
      block_sizes=splash.BlockSizes(
        **dict.fromkeys(
          (
            'block_q',
            'block_kv',
            'block_kv_compute',
            'block_q_dkv',
            'block_kv_dkv',
            'block_kv_dkv_compute',
            'block_q_dq',
            'block_kv_dq',
          ),
          block,
        )
      ),
      head_shards=1,
      q_seq_shards=1,
      interpret=interpret,
    )

    def one(q, k, v, ids):
      return kernel(q, k, v, segment_ids=splash.SegmentIds(ids, ids))

    heads_first = (0, 2, 1, 3)
    out = jax.vmap(one)(
      *(x.transpose(heads_first) for x in (q, k, v)), segments
    )
    return out.transpose(heads_first)

  if jax.sharding.get_abstract_mesh().empty:
    return local(q, k, v, segments)
  # A Pallas kernel has no partitioning rule: run it on each device's shard
  # of the batch and heads, as the logical-axis rules lay them out.
  spec = nn.logical_to_mesh_axes(
    (ACTIVATION_BATCH, ACTIVATION_LENGTH, ACTIVATION_HEADS, ACTIVATION_KV)
  )
  if spec[1] is not None or spec[3] is not None:
    raise ConfigError(
      "attention='splash' needs the sequence and head_dim axes unsharded, "
      f'the axis rules give {spec}'
    )
  return jax.shard_map(
    local,
    in_specs=(spec, spec, spec, jax.P(spec[0], None)),
    out_specs=spec,
    check_vma=False,
  )(q, k, v, segments)


def attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  segments: jax.Array,
  *,
  packed: bool,
  implementation: str,
  dropout: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
  """Scaled dot-product attention, bidirectional, one of three ways.

  `xla` is the reference (einsums and a float32 softmax, the only one that
  applies `dropout` to the probabilities); `cudnn` is cuDNN flash attention
  (NVIDIA GPUs); `splash` is Pallas' splash attention (TPUs). They agree
  within bf16 rounding.

  q, k, v: `[batch, seq_len, heads, head_dim]` in the compute dtype;
  `segments`: int `[batch, seq_len]`, see `attention_mask`. Returns the
  context `[batch, seq_len, heads, head_dim]` in q's dtype.
  """
  if implementation == 'splash':
    q = (q / math.sqrt(q.shape[-1])).astype(k.dtype)
    return _splash_attention(q, k, v, segments)
  if implementation == 'cudnn':
    if packed:
      where = dict(mask=attention_mask(segments, True))
    else:
      # Padding is at the end of a row, so lengths say it all and cuDNN
      # takes its padding-mask fast path.
      lengths = jnp.sum(segments > 0, axis=-1, dtype=jnp.int32)
      where = dict(key_value_seq_lengths=lengths)
    return jax.nn.dot_product_attention(
      q, k, v, implementation='cudnn', **where
    )
  # Plain einsums, not `matmul`: one of their gradient products contracts
  # the query axis of the probabilities, for which XLA:CPU has no bfloat16
  # kernel (UNIMPLEMENTED); autodiff makes those float32.
  scores = jnp.einsum(
    'bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32
  )
  neg = jnp.finfo(jnp.float32).min
  scores = jnp.where(
    attention_mask(segments, packed), scores / math.sqrt(q.shape[-1]), neg
  )
  probs = jax.nn.softmax(scores, axis=-1)
  if dropout is not None:
    probs = dropout(probs)
  return jnp.einsum(
    'bhqk,bkhd->bqhd',
    probs.astype(v.dtype),
    v,
    preferred_element_type=jnp.float32,
  ).astype(v.dtype)


class BertSelfAttention(nn.Module):
  """Multi-head bidirectional self-attention (see `attention`)."""

  config: BertConfig
  packed: bool = False  # rows hold several examples

  @nn.compact
  def __call__(
    self, x: jax.Array, segments: jax.Array, deterministic: bool
  ) -> jax.Array:
    """`[batch, seq_len, hidden_size]` -> the same shape, before the
    residual; `segments` as in `attention_mask`."""
    c = self.config
    qkv_shape = (c.num_attention_heads, c.head_dim)
    qkv_axes = (EMBED, HEADS, KV)
    heads_axes = (ACTIVATION_BATCH, ACTIVATION_LENGTH, ACTIVATION_HEADS)
    q, k, v = (
      _constrain(
        _dense(c, qkv_shape, qkv_axes, name=name)(x),
        (*heads_axes, ACTIVATION_KV),
      )
      for name in ('query', 'key', 'value')
    )
    dropout = nn.Dropout(rate=c.attention_probs_dropout_prob)
    context = attention(
      q,
      k,
      v,
      segments,
      packed=self.packed,
      implementation=resolve_attention(c, x.shape[1], deterministic),
      dropout=functools.partial(dropout, deterministic=deterministic),
    )
    context = _constrain(context, (*heads_axes, ACTIVATION_KV))
    return _dense(
      c, c.hidden_size, (HEADS, KV, EMBED), name='output', in_dims=2
    )(context)


class BertLayer(nn.Module):
  """One post-LN encoder layer: attention, add & norm, FFN, add & norm."""

  config: BertConfig
  packed: bool = False  # rows hold several examples

  @nn.compact
  def __call__(
    self, x: jax.Array, segments: jax.Array, deterministic: bool
  ) -> tuple[jax.Array, None]:
    """`[batch, seq_len, hidden_size]` -> (the same shape, None), as
    `nn.scan` expects; `segments` as in `attention_mask`."""
    c = self.config
    dropout = nn.Dropout(rate=c.hidden_dropout_prob)
    attn = BertSelfAttention(c, self.packed, name='attention')(
      x, segments, deterministic
    )
    x = _layer_norm(c, name='attention_layer_norm')(
      x + dropout(attn, deterministic=deterministic)
    )
    h = _dense(
      c, c.intermediate_size, (EMBED, MLP), 'intermediate', activate=True
    )(x)
    h = _constrain(h, (ACTIVATION_BATCH, ACTIVATION_LENGTH, ACTIVATION_MLP))
    h = _dense(c, c.hidden_size, (MLP, EMBED), name='output')(h)
    x = _layer_norm(c, name='output_layer_norm')(
      x + dropout(h, deterministic=deterministic)
    )
    x = _constrain(x, (ACTIVATION_BATCH, ACTIVATION_LENGTH, ACTIVATION_EMBED))
    return x, None


class BertEncoder(nn.Module):
  """`num_hidden_layers` BertLayers, scanned and/or rematerialised."""

  config: BertConfig

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    segments: jax.Array,
    deterministic: bool,
    packed: bool = False,
  ) -> jax.Array:
    """`[batch, seq_len, hidden_size]` -> the same shape; `segments` and
    `packed` as in `attention_mask`."""
    c = self.config
    layer_cls = BertLayer
    if c.remat_policy != 'none':
      # `deterministic` (argument 3, counting self) is a Python bool.
      layer_cls = nn.remat(
        layer_cls,
        policy=_REMAT_POLICIES[c.remat_policy],
        prevent_cse=not c.scan_layers,
        static_argnums=(3,),
      )
    if c.scan_layers:
      stack = nn.scan(
        layer_cls,
        variable_axes={'params': 0},
        split_rngs={'params': True, 'dropout': True},
        in_axes=(nn.broadcast, nn.broadcast),
        length=c.num_hidden_layers,
        metadata_params={nn.PARTITION_NAME: LAYERS},
      )
      x, _ = stack(c, packed, name='layers')(x, segments, deterministic)
    else:
      for i in range(c.num_hidden_layers):
        layer = layer_cls(c, packed, name=f'layer_{i}')
        x, _ = layer(x, segments, deterministic)
    return x


def packed_positions(example_ids: jax.Array) -> jax.Array:
  """int32 `[batch, seq_len]` position ids that restart at each example of
  a packed row; `example_ids` as in `BertModel`, examples contiguous."""
  index = jnp.arange(example_ids.shape[-1], dtype=jnp.int32)
  starts = jnp.concatenate(
    [
      jnp.ones_like(example_ids[:, :1], dtype=bool),
      example_ids[:, 1:] != example_ids[:, :-1],
    ],
    axis=-1,
  )
  first = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
  return index - first


class BertModel(nn.Module):
  """The BERT encoder: embeddings, Transformer layers, pooler."""

  config: BertConfig
  # The tanh pooler over [CLS]; heads that read every token have none (as in
  # transformers' token classification and QA models).
  add_pooling_layer: bool = True

  def setup(self):
    c = self.config
    self.embeddings = BertEmbeddings(c)
    self.encoder = BertEncoder(c)
    if self.add_pooling_layer:
      self.pooler = _dense(c, c.hidden_size, (EMBED, MLP), name=None)

  def __call__(
    self,
    input_ids: jax.Array,
    input_mask: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    deterministic: bool = True,
    example_ids: jax.Array | None = None,
    cls_positions: jax.Array | None = None,
  ) -> tuple[jax.Array, jax.Array]:
    """Encodes a batch.

    `input_ids`, `input_mask` (1 at real tokens; default all 1) and
    `segment_ids` (default all 0) are int `[batch, seq_len]`;
    `deterministic=False` needs a 'dropout' rng. Packed rows also give
    `example_ids` int `[batch, seq_len]`, each token's example (1, 2, ...;
    0 at padding), so attention stays within an example and positions
    restart at each, and `cls_positions` int `[batch, examples]`, each
    example's `[CLS]`, which the pooler reads.

    Returns sequence_output `[batch, seq_len, hidden_size]` and the tanh
    pooled_output `[batch, hidden_size]` (`[batch, examples, hidden_size]`
    with `cls_positions`; None without a pooler), in the compute dtype.
    """
    seq_len = input_ids.shape[-1]
    if seq_len > self.config.max_position_embeddings:
      raise ConfigError(
        f'input length {seq_len} exceeds max_position_embeddings '
        f'({self.config.max_position_embeddings})'
      )
    if input_mask is None:
      input_mask = jnp.ones_like(input_ids)
    if segment_ids is None:
      segment_ids = jnp.zeros_like(input_ids)
    if example_ids is None:
      x = self.embeddings(input_ids, segment_ids, deterministic)
      x = self.encoder(x, input_mask, deterministic)
    else:
      positions = packed_positions(example_ids)
      x = self.embeddings(input_ids, segment_ids, deterministic, positions)
      x = self.encoder(x, example_ids, deterministic, packed=True)
    if not self.add_pooling_layer:
      return x, None
    if cls_positions is None:
      cls = x[:, 0]
    else:
      cls = jnp.take_along_axis(x, cls_positions[..., None], axis=1)
    return x, jnp.tanh(self.pooler(cls))

  def attend(self, x: jax.Array) -> jax.Array:
    """The tied MLM decoder: float32 `[..., vocab_size]` scores of x."""
    return self.embeddings.attend(x)


class MaskedLmHead(nn.Module):
  """Dense + activation + LayerNorm, then the tied decoder plus a bias."""

  config: BertConfig

  @nn.compact
  def __call__(
    self,
    sequence_output: jax.Array,
    masked_lm_positions: jax.Array,
    attend: Callable[[jax.Array], jax.Array],
  ) -> jax.Array:
    """float32 logits `[batch, max_predictions, vocab_size]` at the masked
    positions only, from `sequence_output` `[batch, seq_len, hidden_size]`,
    int `masked_lm_positions` `[batch, max_predictions]` and the tied decoder
    `attend` (`BertModel.attend`)."""
    c = self.config
    x = jnp.take_along_axis(
      sequence_output, masked_lm_positions[..., None].astype(jnp.int32), axis=1
    )
    x = _dense(c, c.hidden_size, (EMBED, MLP), 'transform', activate=True)(x)
    x = _layer_norm(c, name='layer_norm')(x)
    bias = self.param(
      'output_bias',
      nn.with_logical_partitioning(nn.initializers.zeros, (VOCAB,)),
      (c.vocab_size,),
      jnp.dtype(c.param_dtype),
    )
    return attend(x) + bias.astype(jnp.float32)


class BertForPreTraining(nn.Module):
  """BERT with the masked-LM and next-sentence-prediction heads."""

  config: BertConfig

  def setup(self):
    c = self.config
    self.bert = BertModel(c)
    self.mlm_head = MaskedLmHead(c)
    self.nsp_head = _dense(c, 2, (EMBED, CLASSES), name=None)

  def __call__(
    self,
    input_ids: jax.Array,
    input_mask: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    masked_lm_positions: jax.Array | None = None,
    deterministic: bool = True,
    example_ids: jax.Array | None = None,
    cls_positions: jax.Array | None = None,
  ) -> dict[str, jax.Array]:
    """Runs the encoder (inputs as `BertModel`) and both heads.

    `masked_lm_positions` is int `[batch, max_predictions]`; None scores
    every position (slow with a large vocabulary: only for inspection).
    Returns `sequence_output` `[batch, seq_len, hidden]`, `pooled_output`
    `[batch, hidden]`, float32 `mlm_logits` `[batch, max_predictions,
    vocab]` and float32 `nsp_logits` `[batch, 2]` (0 = IsNext); with
    `cls_positions`, pooled and NSP outputs have an `examples` axis second.
    """
    sequence_output, pooled_output = self.bert(
      input_ids,
      input_mask,
      segment_ids,
      deterministic,
      example_ids=example_ids,
      cls_positions=cls_positions,
    )
    if masked_lm_positions is None:
      masked_lm_positions = jnp.broadcast_to(
        jnp.arange(input_ids.shape[-1]), input_ids.shape
      )
    mlm_logits = self.mlm_head(
      sequence_output, masked_lm_positions, self.bert.attend
    )
    nsp_logits = self.nsp_head(pooled_output).astype(jnp.float32)
    return dict(
      sequence_output=sequence_output,
      pooled_output=pooled_output,
      mlm_logits=mlm_logits,
      nsp_logits=nsp_logits,
    )


class _FineTuned(nn.Module):
  """The encoder and one task's output layer (`outputs`), laid out as
  transformers' class of the same name (`bert`, then the head's params)."""

  config: BertConfig
  num_labels: int
  # Only sentence-level heads read the pooled `[CLS]`; the others have no
  # pooler, as in transformers.
  uses_pooler: ClassVar[bool] = False

  @nn.compact
  def __call__(
    self,
    input_ids: jax.Array,
    input_mask: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    deterministic: bool = True,
  ) -> dict[str, jax.Array]:
    """Inputs as `BertModel`; returns the head's float32 logits."""
    sequence, pooled = BertModel(
      self.config, add_pooling_layer=self.uses_pooler, name='bert'
    )(input_ids, input_mask, segment_ids, deterministic)
    return self.outputs(sequence, pooled, deterministic)

  def outputs(self, sequence, pooled, deterministic) -> dict[str, jax.Array]:
    raise NotImplementedError

  def _classify(self, x: jax.Array, deterministic: bool) -> jax.Array:
    """Dropout -> dense to `num_labels`, in float32."""
    c = self.config
    x = nn.Dropout(c.hidden_dropout_prob)(x, deterministic)
    dense = _dense(c, self.num_labels, (EMBED, CLASSES), name='classifier')
    return dense(x).astype(jnp.float32)


class BertForSequenceClassification(_FineTuned):
  """Pooled `[CLS]` -> dropout -> dense: `logits` `[batch, num_labels]`, a
  label per text (or text pair); with `num_labels=1`, a regression score."""

  uses_pooler: ClassVar[bool] = True

  def outputs(self, sequence, pooled, deterministic):
    return dict(logits=self._classify(pooled, deterministic))


class BertForTokenClassification(_FineTuned):
  """Every token's final state -> dropout -> dense: `logits` `[batch,
  seq_len, num_labels]`, a label per token."""

  def outputs(self, sequence, pooled, deterministic):
    return dict(logits=self._classify(sequence, deterministic))


class BertForQuestionAnswering(_FineTuned):
  """Every token's final state -> dense to 2: `start_logits` and
  `end_logits`, each `[batch, seq_len]`, the answer's boundary scores."""

  num_labels: int = 2  # start and end; a Head's field, fixed here

  def outputs(self, sequence, pooled, deterministic):
    del pooled, deterministic  # No dropout here, as in transformers.
    logits = _dense(self.config, 2, (EMBED, CLASSES), name='qa_outputs')
    logits = logits(sequence).astype(jnp.float32)
    return dict(start_logits=logits[..., 0], end_logits=logits[..., 1])


@dataclasses.dataclass(frozen=True)
class Head:
  """The output layer on the encoder, and its width."""

  kind: str = 'pretraining'  # a key of HEAD_MODULES
  # Classes (1: a regression score); pretraining and QA ignore it.
  num_labels: int = 2

  def __post_init__(self):
    if self.kind not in HEAD_MODULES:
      raise ConfigError(
        f'head {self.kind!r} is not one of {", ".join(HEAD_MODULES)}'
      )
    if not isinstance(self.num_labels, int) or self.num_labels < 1:
      raise ConfigError(f'num_labels must be >= 1, got {self.num_labels!r}')

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


HEAD_MODULES: dict[str, type[nn.Module]] = {
  'pretraining': BertForPreTraining,
  'sequence_classification': BertForSequenceClassification,
  'token_classification': BertForTokenClassification,
  'question_answering': BertForQuestionAnswering,
}
PRETRAINING = Head()


def head_of(module: nn.Module) -> Head:
  """The `Head` that `create_model` makes `module` for."""
  for kind, cls in HEAD_MODULES.items():
    if isinstance(module, cls):
      return Head(kind, getattr(module, 'num_labels', 2))
  raise ConfigError(f'{type(module).__name__} is not a BERT model with a head')


def create_model(config: BertConfig, head: Head = PRETRAINING) -> nn.Module:
  """The module of `head` on an encoder of `config`."""
  if head.kind == 'pretraining':
    return BertForPreTraining(config)
  if head.kind == 'question_answering':
    return BertForQuestionAnswering(config)
  return HEAD_MODULES[head.kind](config, head.num_labels)


def init_params(
  config: BertConfig, rng: jax.Array, head: Head = PRETRAINING
) -> dict[str, Any]:
  """Freshly initialised `params` of `create_model(config, head)`, every
  leaf boxed in `nn.Partitioned` with its logical axis names (`nn.unbox`
  drops them). The one place parameters are born: train states, the shapes
  checkpoints are checked against and missing heads all come from here, so
  they agree by construction."""
  ids = jnp.zeros((1, 1), jnp.int32)
  module = create_model(config, head)
  if head.kind == 'pretraining':
    return module.init(rng, ids, masked_lm_positions=ids)['params']
  return module.init(rng, ids)['params']


def flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """`'/'`-joined path -> shape of every leaf with a `.shape`."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(nn.unbox(tree))
  return {
    '/'.join(str(getattr(k, 'key', k)) for k in path): tuple(leaf.shape)
    for path, leaf in leaves
  }


def param_shapes(
  config: BertConfig, head: Head = PRETRAINING
) -> dict[str, tuple[int, ...]]:
  """The shape of every parameter of `config` and `head`, computing none."""
  # Bound, not passed: eval_shape would take the config (it has a `dtype`)
  # for an array.
  init = functools.partial(init_params, config, head=head)
  return flat_shapes(jax.eval_shape(init, jax.random.key(0)))


def check_shapes(
  given: Mapping[str, Any],
  expected: Mapping[str, Any],
  source: str,
  kind: str = 'parameter',
) -> None:
  """Checks `given` name -> shape (a tuple or anything with `.shape`)
  against `expected`; raises `WeightsError` naming the first missing,
  misshapen or unexpected entry (`source` and `kind` say what `given` came
  from and holds)."""

  def shape(x):
    return tuple(getattr(x, 'shape', x))

  for name, want in expected.items():
    if name not in given:
      raise WeightsError(f'{source}: no {kind} {name}')
    if shape(given[name]) != shape(want):
      raise WeightsError(
        f'{source}: {kind} {name} has shape {list(shape(given[name]))}, '
        f'expected {list(shape(want))} from the model config'
      )
  extra = sorted(set(given) - set(expected))
  if extra:
    raise WeightsError(
      f'{source}: unexpected {kind}(s) {", ".join(extra)} for the model config'
    )


def check_params(
  params: Any, config: BertConfig, source: str, head: Head = PRETRAINING
) -> None:
  """Checks a params tree (arrays or shape metadata) against `config`."""
  check_shapes(flat_shapes(params), param_shapes(config, head), source)
