"""The BERT encoder and its output layers, as Flax modules.

This module owns the network only: `BertConfig` (BERT's own field names, a
frozen dataclass), the named size presets, the encoder `BertModel`
(embeddings, post-LN Transformer encoder, pooler) and the output layers on
it, named by a `Head`: `BertForPreTraining` (the masked-LM head, tied to the
word embeddings, and the next-sentence head) and the fine-tuning heads
`BertForSequenceClassification` (also regression),
`BertForTokenClassification` and `BertForQuestionAnswering`, laid out as
transformers' classes of those names so that weights map one to one. It
imports nothing from training, data or checkpointing and never sees a mesh:
parameters carry logical axis names (`sharding.py` maps them onto mesh axes)
and activations are constrained by logical names at block boundaries, which
is a no-op unless the caller installs axis rules.

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
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

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
  # Save matmul outputs, recompute the cheap elementwise ops.
  'dots': jax.checkpoint_policies.checkpoint_dots,
  # Save matmul outputs without batch dims (i.e. not attention scores).
  'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

_DTYPES = ('float32', 'bfloat16', 'float16')


class ConfigError(ValueError):
  """A BERT configuration that cannot describe a working model."""


class WeightsError(ValueError):
  """Weights that cannot be the params of a model: unreadable, incomplete,
  or shaped for another config."""


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
  # Fields that say how bertjax runs or stores a model, not what it computes
  # from given weights; no other BERT config file has them (HF's own `dtype`
  # is the storage dtype of its tensors).
  BERTJAX_FIELDS: ClassVar[tuple[str, ...]] = (
    'dtype',
    'param_dtype',
    'scan_layers',
    'remat_policy',
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


class Dense(nn.Module):
  """A dense layer over the trailing `in_dims` axes with logical axis names.

  Accumulates in float32 (faster on CPU than a bfloat16 result, and native
  to TPU/GPU matrix units) and adds the bias before casting back.
  """

  config: BertConfig  # dtypes and the initializer range
  features: int | tuple[int, ...]  # a width, or widths of a multi-axis output
  # Logical names of the kernel's dimensions, inputs then outputs; the bias
  # takes the output names.
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
    """int `[batch, seq_len]` token and segment ids -> `[batch, seq_len,
    hidden_size]` in the compute dtype."""
    positions = jnp.arange(input_ids.shape[-1])[None, :]
    x = (
      self.word_embeddings(input_ids)
      + self.position_embeddings(positions)
      + self.token_type_embeddings(segment_ids)
    )
    x = self.dropout(self.layer_norm(x), deterministic=deterministic)
    return _constrain(
      x, (ACTIVATION_BATCH, ACTIVATION_LENGTH, ACTIVATION_EMBED)
    )

  def attend(self, x: jax.Array) -> jax.Array:
    """The tied decoder: `[..., hidden_size]` -> float32 `[..., vocab_size]`
    scores against every word embedding."""
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
    """`[batch, seq_len, hidden_size]` -> the same shape, before the residual.

    `attention_bias` is `create_attention_bias`'s `[batch, 1, 1, seq_len]`.
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
    """`[batch, seq_len, hidden_size]` -> (the same shape, None), the
    (carry, output) pair that `nn.scan` expects."""
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
  ) -> tuple[jax.Array, jax.Array]:
    """Encodes a batch.

    Args:
      input_ids: int `[batch, seq_len]`.
      input_mask: 0/1 `[batch, seq_len]`, 1 at real tokens (default all 1).
      segment_ids: int `[batch, seq_len]` (default all 0).
      deterministic: disables dropout (needs a 'dropout' rng when False).

    Returns:
      sequence_output `[batch, seq_len, hidden_size]` and pooled_output
      `[batch, hidden_size]` (dense + tanh of the `[CLS]` state; None
      without a pooler), both in the compute dtype.
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
    if not self.add_pooling_layer:
      return x, None
    return x, jnp.tanh(self.pooler(x[:, 0]))

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
      attend: the tied decoder (`BertModel.attend`).

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
      input_ids, input_mask, segment_ids, deterministic: as `BertModel`.
      masked_lm_positions: int `[batch, max_predictions]`; None scores every
        position (slow with a large vocabulary: only for inspection).

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
  `end_logits`, each `[batch, seq_len]`, the answer's start and end
  scores."""

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
  """Freshly initialised parameters of `create_model(config, head)`.

  The one place parameters are born: a training state, the shapes a
  checkpoint is checked against and the heads a checkpoint lacks all come
  from here, so they agree by construction.

  Returns:
    The `params` collection, every leaf boxed in `nn.Partitioned` with its
    logical axis names (`nn.unbox` drops them).
  """
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
  """The shape of every parameter `config` (and `head`) implies, with no
  compute."""
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
  against the shapes a config implies; `source` and `kind` name what `given`
  came from and holds, for the message.

  Raises:
    WeightsError: naming the first missing, misshapen or unexpected entry.
  """

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
