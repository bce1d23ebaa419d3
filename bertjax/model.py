"""The BERT encoder and its pretraining heads, as Flax modules.

This module owns the network only: `BertConfig` (BERT's own field names, a
frozen dataclass), the named size presets, and the modules `BertModel`
(embeddings, post-LN Transformer encoder, pooler) and `BertForPreTraining`
(plus the masked-LM head, tied to the word embeddings, and the next-sentence
head). It imports nothing from training, data or checkpointing and never sees
a mesh: parameters carry logical axis names (`sharding.py` maps them onto mesh
axes) and activations are constrained by logical names at block boundaries,
which is a no-op unless the caller installs axis rules.

Semantics follow google-research/bert `modeling.py` (and transformers'
`BertForPreTraining`, which follows it): exact-erf GELU, LayerNorm after each
residual, an additive padding mask, the MLM head evaluated only at
`masked_lm_positions`.

Mixed precision: with `dtype='bfloat16'`, matmul inputs are bfloat16 and every
matmul accumulates in float32 (`preferred_element_type`); softmax, LayerNorm
statistics and the MLM/NSP logits are float32. Parameters stay `param_dtype`.
"""

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Logical axis names of parameters and activations. `sharding.py` owns the
# rules that map them to mesh axes.
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
  # Save matmul outputs, recompute the cheap elementwise ops.
  'dots': jax.checkpoint_policies.checkpoint_dots,
  # Save matmul outputs without batch dims (i.e. not attention scores).
  'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

_DTYPES = ('float32', 'bfloat16', 'float16')


class ConfigError(ValueError):
  """A BERT configuration that cannot describe a working model."""


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Hyper-parameters of a BERT encoder (google-research/bert's names)."""

  # Size of the token vocabulary (rows of the word-embedding table).
  vocab_size: int = 30522
  # Width of every token representation.
  hidden_size: int = 768
  # Number of Transformer encoder layers.
  num_hidden_layers: int = 12
  # Attention heads per layer; must divide hidden_size.
  num_attention_heads: int = 12
  # Width of the feed-forward layer inside each encoder layer.
  intermediate_size: int = 3072
  # Feed-forward non-linearity: gelu (exact) | gelu_new | relu | silu.
  hidden_act: str = 'gelu'
  # Dropout after embeddings, attention output and feed-forward output.
  hidden_dropout_prob: float = 0.1
  # Dropout on the attention probabilities.
  attention_probs_dropout_prob: float = 0.1
  # Longest sequence the position embeddings support.
  max_position_embeddings: int = 512
  # Number of segment (token type) ids: 2 for sentence A / B.
  type_vocab_size: int = 2
  # Standard deviation of the truncated-normal weight initialiser.
  initializer_range: float = 0.02
  # Epsilon of every LayerNorm.
  layer_norm_eps: float = 1e-12
  # Compute dtype of activations and matmul inputs: float32 | bfloat16.
  dtype: str = 'float32'
  # Storage dtype of parameters.
  param_dtype: str = 'float32'
  # Stack encoder layers with nn.scan (params get a leading `layers` axis)
  # so compile time does not grow with depth.
  scan_layers: bool = True
  # Rematerialisation of each encoder layer: none | full | dots |
  # dots_no_batch.
  remat_policy: str = 'none'

  def __post_init__(self):
    for name in (
      'vocab_size',
      'hidden_size',
      'num_hidden_layers',
      'num_attention_heads',
      'intermediate_size',
      'max_position_embeddings',
      'type_vocab_size',
    ):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f'{name} must be a positive integer, got {value!r}')
    if self.hidden_size % self.num_attention_heads:
      raise ConfigError(
        f'hidden_size ({self.hidden_size}) is not divisible by '
        f'num_attention_heads ({self.num_attention_heads})'
      )
    for name in ('hidden_dropout_prob', 'attention_probs_dropout_prob'):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ConfigError(
          f'{name} must be in [0, 1), got {getattr(self, name)}'
        )
    if self.hidden_act not in _ACTIVATIONS:
      raise ConfigError(
        f'hidden_act {self.hidden_act!r} is not one of {sorted(_ACTIVATIONS)}'
      )
    for name in ('dtype', 'param_dtype'):
      if getattr(self, name) not in _DTYPES:
        raise ConfigError(
          f'{name} {getattr(self, name)!r} is not one of {list(_DTYPES)}'
        )
    if self.remat_policy not in _REMAT_POLICIES:
      raise ConfigError(
        f'remat_policy {self.remat_policy!r} is not one of '
        f'{sorted(_REMAT_POLICIES)}'
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
  # Google's 24 BERT miniatures (Turc et al. 2019): 64-wide heads and a 4x
  # feed-forward, like BERT-base.
  return dict(
    num_hidden_layers=layers,
    hidden_size=hidden,
    num_attention_heads=hidden // 64,
    intermediate_size=4 * hidden,
  )


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
  large=dict(
    num_hidden_layers=24,
    hidden_size=1024,
    num_attention_heads=16,
    intermediate_size=4096,
  ),
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


class Dense(nn.Module):
  """A dense layer over the trailing `in_dims` axes with logical axis names.

  bfloat16 matmuls accumulate in float32 (`preferred_element_type`): on
  these CPUs that runs ~350 GFLOP/s against ~160 for bf16-in-bf16-out, and
  it is what TPU/GPU matrix units do natively. The bias is added in float32
  before the cast back to the compute dtype.

  Attributes:
    config: supplies dtypes and the initializer range.
    features: output width, or widths for a multi-axis output.
    axes: logical names of the kernel's dimensions, inputs then outputs; the
      bias takes the output names.
    in_dims: how many trailing input axes are contracted.
  """

  config: BertConfig
  features: int | tuple[int, ...]
  axes: tuple[str, ...]
  in_dims: int = 1

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
    contract = tuple(range(x.ndim - self.in_dims, x.ndim))
    y = jax.lax.dot_general(
      x.astype(dtype),
      kernel.astype(dtype),
      ((contract, tuple(range(self.in_dims))), ((), ())),
      preferred_element_type=jnp.float32,
    )
    return (y + bias.astype(jnp.float32)).astype(dtype)


def _dense(config: BertConfig, features, axes, name, in_dims: int = 1) -> Dense:
  return Dense(config, features, axes, in_dims, name=name)


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
    self, input_ids: jax.Array, segment_ids: jax.Array, deterministic: bool
  ) -> jax.Array:
    """Embeds tokens.

    Args:
      input_ids: int `[batch, seq_len]`.
      segment_ids: int `[batch, seq_len]`, 0 for sentence A, 1 for B.
      deterministic: disables dropout.

    Returns:
      `[batch, seq_len, hidden_size]` in the compute dtype.
    """
    seq_len = input_ids.shape[-1]
    positions = jnp.arange(seq_len)[None, :]
    x = (
      self.word_embeddings(input_ids)
      + self.position_embeddings(positions)
      + self.token_type_embeddings(segment_ids)
    )
    x = self.layer_norm(x)
    x = self.dropout(x, deterministic=deterministic)
    return _constrain(
      x, (ACTIVATION_BATCH, ACTIVATION_LENGTH, ACTIVATION_EMBED)
    )

  def attend(self, x: jax.Array) -> jax.Array:
    """Scores hidden states against every word embedding (the tied decoder).

    Args:
      x: `[..., hidden_size]`.

    Returns:
      float32 `[..., vocab_size]`.
    """
    table = self.word_embeddings.embedding.astype(x.dtype)
    return jnp.einsum(
      '...h,vh->...v', x, table, preferred_element_type=jnp.float32
    )


class BertSelfAttention(nn.Module):
  """Multi-head bidirectional self-attention with an additive padding mask."""

  config: BertConfig

  @nn.compact
  def __call__(
    self, x: jax.Array, attention_bias: jax.Array, deterministic: bool
  ) -> jax.Array:
    """Attends.

    Args:
      x: `[batch, seq_len, hidden_size]`.
      attention_bias: float32 `[batch, 1, 1, seq_len]`, 0 at real tokens and
        a large negative number at padding.
      deterministic: disables dropout.

    Returns:
      `[batch, seq_len, hidden_size]`, before the residual.
    """
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
    scores = jnp.einsum(
      'bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32
    )
    scores = scores / math.sqrt(c.head_dim) + attention_bias
    probs = jax.nn.softmax(scores, axis=-1)
    probs = nn.Dropout(rate=c.attention_probs_dropout_prob)(
      probs, deterministic=deterministic
    )
    context = jnp.einsum(
      'bhqk,bkhd->bqhd',
      probs.astype(v.dtype),
      v,
      preferred_element_type=jnp.float32,
    ).astype(v.dtype)
    context = _constrain(context, (*heads_axes, ACTIVATION_KV))
    return _dense(
      c, c.hidden_size, (HEADS, KV, EMBED), name='output', in_dims=2
    )(context)


class BertLayer(nn.Module):
  """One post-LN encoder layer: attention, add & norm, FFN, add & norm."""

  config: BertConfig

  @nn.compact
  def __call__(
    self, x: jax.Array, attention_bias: jax.Array, deterministic: bool
  ) -> tuple[jax.Array, None]:
    """Applies the layer.

    Args:
      x: `[batch, seq_len, hidden_size]`.
      attention_bias: float32 `[batch, 1, 1, seq_len]`.
      deterministic: disables dropout.

    Returns:
      (`[batch, seq_len, hidden_size]`, None): the (carry, output) pair that
      `nn.scan` expects.
    """
    c = self.config
    dropout = nn.Dropout(rate=c.hidden_dropout_prob)
    attn = BertSelfAttention(c, name='attention')(
      x, attention_bias, deterministic
    )
    x = _layer_norm(c, name='attention_layer_norm')(
      x + dropout(attn, deterministic=deterministic)
    )
    h = _dense(c, c.intermediate_size, (EMBED, MLP), name='intermediate')(x)
    h = _ACTIVATIONS[c.hidden_act](h)
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
    self, x: jax.Array, attention_bias: jax.Array, deterministic: bool
  ) -> jax.Array:
    c = self.config
    layer_cls = BertLayer
    policy = _REMAT_POLICIES[c.remat_policy]
    if c.remat_policy != 'none':
      # `deterministic` (argument 3, counting self) is a Python bool.
      layer_cls = nn.remat(
        layer_cls,
        policy=policy,
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
      x, _ = stack(c, name='layers')(x, attention_bias, deterministic)
    else:
      for i in range(c.num_hidden_layers):
        x, _ = layer_cls(c, name=f'layer_{i}')(x, attention_bias, deterministic)
    return x


def create_attention_bias(input_mask: jax.Array) -> jax.Array:
  """Turns a `[batch, seq_len]` 0/1 padding mask into an additive bias.

  Returns:
    float32 `[batch, 1, 1, seq_len]`: 0 where input_mask is 1, the most
    negative float32 where it is 0 (as transformers does).
  """
  neg = jnp.finfo(jnp.float32).min
  bias = jnp.where(input_mask.astype(bool), 0.0, neg).astype(jnp.float32)
  return bias[:, None, None, :]


class BertModel(nn.Module):
  """The BERT encoder: embeddings, Transformer layers, pooler."""

  config: BertConfig

  def setup(self):
    c = self.config
    self.embeddings = BertEmbeddings(c)
    self.encoder = BertEncoder(c)
    self.pooler = _dense(c, c.hidden_size, (EMBED, MLP), name=None)

  def __call__(
    self,
    input_ids: jax.Array,
    input_mask: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    deterministic: bool = True,
  ) -> tuple[jax.Array, jax.Array]:
    """Encodes a batch.

    Args:
      input_ids: int `[batch, seq_len]`.
      input_mask: 0/1 `[batch, seq_len]`, 1 at real tokens (default all 1).
      segment_ids: int `[batch, seq_len]` (default all 0).
      deterministic: disables dropout (needs a 'dropout' rng when False).

    Returns:
      sequence_output `[batch, seq_len, hidden_size]` and pooled_output
      `[batch, hidden_size]` (dense + tanh of the `[CLS]` state), both in the
      compute dtype.
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
    x = self.embeddings(input_ids, segment_ids, deterministic)
    x = self.encoder(x, create_attention_bias(input_mask), deterministic)
    pooled = jnp.tanh(self.pooler(x[:, 0]))
    return x, pooled

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
    """Scores the vocabulary at the masked positions only.

    Args:
      sequence_output: `[batch, seq_len, hidden_size]`.
      masked_lm_positions: int `[batch, max_predictions]`.
      attend: the word-embedding decoder, `[..., hidden] -> [..., vocab]`.

    Returns:
      float32 logits `[batch, max_predictions, vocab_size]`.
    """
    c = self.config
    x = jnp.take_along_axis(
      sequence_output, masked_lm_positions[..., None].astype(jnp.int32), axis=1
    )
    x = _dense(c, c.hidden_size, (EMBED, MLP), name='transform')(x)
    x = _ACTIVATIONS[c.hidden_act](x)
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
  ) -> dict[str, jax.Array]:
    """Runs the encoder and both heads.

    Args:
      input_ids: int `[batch, seq_len]`.
      input_mask: 0/1 `[batch, seq_len]` (default all 1).
      segment_ids: int `[batch, seq_len]` (default all 0).
      masked_lm_positions: int `[batch, max_predictions]`; None scores every
        position (slow with a large vocabulary: only for inspection).
      deterministic: disables dropout.

    Returns:
      dict with `sequence_output` `[batch, seq_len, hidden]`, `pooled_output`
      `[batch, hidden]`, float32 `mlm_logits` `[batch, max_predictions,
      vocab]` and float32 `nsp_logits` `[batch, 2]` (0 = IsNext).
    """
    sequence_output, pooled_output = self.bert(
      input_ids, input_mask, segment_ids, deterministic
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
