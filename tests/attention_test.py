"""Tests of the attention implementations and of packed rows.

The reference is the `xla` implementation (itself checked against
transformers in hf_test and heads_test). Splash attention runs in Pallas'
interpret mode here; cuDNN's kernel needs an NVIDIA GPU, so on a CPU its
call is checked with JAX's XLA implementation of the same function taking
the same arguments.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertjax import aot, model, sharding, train_step

VOCAB = 97


def _qkv(batch=2, seq_len=128, heads=2, head_dim=64, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(
    jnp.asarray(rng.normal(size=(batch, seq_len, heads, head_dim)), jnp.float32)
    for _ in range(3)
  )


def _segments(seq_len=128):
  """Row 0 packs three examples and padding; row 1 is one padded example."""
  packed = np.zeros((2, seq_len), np.int32)
  packed[0, :40], packed[0, 40:90], packed[0, 90:120] = 1, 2, 3
  packed[1, :100] = 1
  return jnp.asarray(packed)


@pytest.fixture
def xla_for_cudnn(monkeypatch):
  """`jax.nn.dot_product_attention` with `implementation='cudnn'` run by
  JAX's XLA implementation, recording the implementations asked for."""
  asked = []
  real = jax.nn.dot_product_attention

  def fake(*args, implementation=None, **kwargs):
    asked.append(implementation)
    return real(*args, implementation='xla', **kwargs)

  monkeypatch.setattr(jax.nn, 'dot_product_attention', fake)
  return asked


@pytest.mark.parametrize('packed', [False, True])
def test_implementations_agree_with_the_reference(packed, xla_for_cudnn):
  q, k, v = _qkv()
  segments = _segments() if packed else (_segments() > 0).astype(jnp.int32)
  attend = functools.partial(model.attention, segments=segments, packed=packed)
  reference = attend(q, k, v, implementation='xla')
  # Only real queries are compared: padding queries' outputs are unused, and
  # the implementations mask them differently.
  real = np.asarray(segments) > 0
  for implementation in ('cudnn', 'splash'):
    out = attend(q, k, v, implementation=implementation)
    np.testing.assert_allclose(
      np.asarray(out)[real], np.asarray(reference)[real], atol=2e-5
    )
  assert xla_for_cudnn == ['cudnn']


def test_packed_attention_stays_within_each_example():
  q, k, v = _qkv()
  segments = _segments()
  out = model.attention(q, k, v, segments, packed=True, implementation='xla')
  # The second example alone, at the start of a row of its own.
  alone = model.attention(
    q[:1, 40:90],
    k[:1, 40:90],
    v[:1, 40:90],
    jnp.ones((1, 50), jnp.int32),
    packed=False,
    implementation='xla',
  )
  np.testing.assert_allclose(out[0, 40:90], alone[0], atol=1e-5)


def test_splash_gradients_equal_the_reference_in_bfloat16():
  q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(seq_len=128))
  segments = _segments()

  def loss(implementation, q, k, v):
    out = model.attention(
      q, k, v, segments, packed=True, implementation=implementation
    )
    real = (segments > 0)[..., None, None]
    return jnp.sum(jnp.where(real, out.astype(jnp.float32), 0.0) ** 2)

  grads = {
    impl: jax.grad(functools.partial(loss, impl), argnums=(0, 1, 2))(q, k, v)
    for impl in ('xla', 'splash')
  }
  for got, want in zip(grads['splash'], grads['xla'], strict=True):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    # bf16 rounding, relative to the gradients' scale.
    assert np.abs(got - want).max() <= 0.02 * np.abs(want).max()


def test_packed_positions_restart_at_each_example():
  ids = jnp.asarray([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(
    model.packed_positions(ids),
    [[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7]],
  )


def _example(rng, length, num_masked):
  ids = rng.integers(5, VOCAB, size=length).astype(np.int32)
  segments = (np.arange(length) >= length // 2).astype(np.int32)
  positions = np.sort(rng.choice(np.arange(1, length), num_masked, False))
  return ids, segments, positions.astype(np.int32)


def test_a_packed_row_gives_each_example_its_unpacked_outputs_and_gradients():
  """Three examples in one row equal the same three in rows of their own:
  MLM logits, NSP logits (through each example's own [CLS]), and the
  pretraining loss and its gradient (float32, 1e-5)."""
  config = model.get_config(
    'tiny', vocab_size=VOCAB, hidden_dropout_prob=0.0, scan_layers=False
  )
  rng = np.random.default_rng(0)
  lengths, seq_len, num_masked = (11, 7, 9), 32, 3
  examples = [_example(rng, n, num_masked) for n in lengths]
  mlm_ids = rng.integers(5, VOCAB, size=(3, num_masked)).astype(np.int32)
  nsp_labels = np.array([0, 1, 0], np.int32)
  unpacked = dict(
    input_ids=np.zeros((3, seq_len), np.int32),
    input_mask=np.zeros((3, seq_len), np.int32),
    segment_ids=np.zeros((3, seq_len), np.int32),
    masked_lm_positions=np.stack([p for _, _, p in examples]),
    masked_lm_ids=mlm_ids,
    masked_lm_weights=np.ones((3, num_masked), np.float32),
    next_sentence_labels=nsp_labels,
  )
  # One row, room for a fourth example that is not there.
  packed = dict(
    input_ids=np.zeros((1, seq_len), np.int32),
    input_mask=np.zeros((1, seq_len), np.int32),
    segment_ids=np.zeros((1, seq_len), np.int32),
    example_ids=np.zeros((1, seq_len), np.int32),
    masked_lm_positions=np.zeros((1, 3 * num_masked), np.int32),
    masked_lm_ids=mlm_ids.reshape(1, -1),
    masked_lm_weights=np.ones((1, 3 * num_masked), np.float32),
    cls_positions=np.zeros((1, 4), np.int32),
    next_sentence_labels=np.append(nsp_labels, 0)[None],
    next_sentence_weights=np.array([[1, 1, 1, 0]], np.float32),
  )
  start = 0
  for i, ((ids, segments, positions), n) in enumerate(
    zip(examples, lengths, strict=True)
  ):
    unpacked['input_ids'][i, :n] = ids
    unpacked['input_mask'][i, :n] = 1
    unpacked['segment_ids'][i, :n] = segments
    row = slice(start, start + n)
    packed['input_ids'][0, row] = ids
    packed['input_mask'][0, row] = 1
    packed['segment_ids'][0, row] = segments
    packed['example_ids'][0, row] = i + 1
    packed['masked_lm_positions'][0, i * num_masked : (i + 1) * num_masked] = (
      positions + start
    )
    packed['cls_positions'][0, i] = start
    start += n
  module = model.BertForPreTraining(config)
  objective = train_step.Pretraining(module)
  params = nn.unbox(model.init_params(config, jax.random.key(0)))

  @jax.jit
  def loss_and_grad(params, batch):
    def loss(params):
      sums = objective.sums(params, batch, None, deterministic=True)
      return objective.loss(sums, batch), sums

    return jax.value_and_grad(loss, has_aux=True)(params)

  @jax.jit
  def logits(params, batch):
    fields = ('example_ids', 'cls_positions', 'masked_lm_positions')
    out = module.apply(
      {'params': params},
      batch['input_ids'],
      batch['input_mask'],
      batch['segment_ids'],
      **{k: batch[k] for k in fields if k in batch},
    )
    return out['mlm_logits'].reshape(-1, VOCAB), out['nsp_logits']

  close = functools.partial(np.testing.assert_allclose, atol=1e-5, rtol=1e-5)
  (want_loss, want_sums), want_grads = loss_and_grad(params, unpacked)
  (got_loss, got_sums), got_grads = loss_and_grad(params, packed)
  close(got_loss, want_loss)
  jax.tree.map(close, got_sums, want_sums)
  jax.tree.map(close, got_grads, want_grads)
  want_mlm, want_nsp = logits(params, unpacked)
  got_mlm, got_nsp = logits(params, packed)
  close(got_mlm, want_mlm)
  close(got_nsp[0, :3], want_nsp)


def _tiny_bf16(**overrides):
  return model.get_config(
    'tiny',
    vocab_size=VOCAB,
    dtype='bfloat16',
    attention_probs_dropout_prob=0.0,
    **overrides,
  )


def test_auto_picks_by_platform_dtype_and_dropout():
  fused_ok = _tiny_bf16()
  assert model.resolve_attention(fused_ok, 128, deterministic=False) == 'xla'
  assert jax.default_backend() == 'cpu'
  float32 = model.get_config('tiny', attention_probs_dropout_prob=0.0)
  dropout = model.get_config('tiny', dtype='bfloat16')
  try:
    devices = aot.get_devices(aot.parse_topology('v5litepod-4'))
  except aot.AotError as e:
    pytest.skip(str(e))
  mesh = jax.sharding.Mesh(np.array(devices), ('data',))
  with jax.set_mesh(mesh):
    assert model.resolve_attention(fused_ok, 128, False) == 'splash'
    assert model.resolve_attention(fused_ok, 100, False) == 'xla'
    assert model.resolve_attention(float32, 128, False) == 'xla'
    assert model.resolve_attention(dropout, 128, False) == 'xla'
    assert model.resolve_attention(dropout, 128, True) == 'splash'


@pytest.mark.parametrize('implementation', ['cudnn', 'splash'])
def test_fused_attention_with_dropout_in_training_is_refused(implementation):
  config = model.get_config('tiny', attention=implementation)
  with pytest.raises(model.ConfigError, match='no dropout on attention'):
    model.resolve_attention(config, 128, deterministic=False)
  assert model.resolve_attention(config, 128, True) == implementation


def test_splash_needs_whole_blocks():
  config = _tiny_bf16(attention='splash')
  with pytest.raises(model.ConfigError, match='multiple of 128'):
    model.resolve_attention(config, 100, deterministic=True)


def test_unknown_implementation_is_named():
  with pytest.raises(model.ConfigError, match="attention 'flash'"):
    model.get_config('tiny', attention='flash')


def test_splash_in_a_sharded_model_equals_the_reference():
  """On a (data 2, fsdp 2, tensor 2) mesh, splash runs per shard of batch
  and heads (shard_map) and the encoder's output equals xla's."""
  config = model.get_config('tiny', vocab_size=128, num_attention_heads=2)
  mesh = sharding.create_mesh((2, 2, 2), jax.devices()[:8])
  rules = sharding.default_logical_axis_rules()
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(5, 128, size=(4, 128)), jnp.int32)
  mask = jnp.asarray(np.arange(128)[None] < np.array([[128], [90], [128], [3]]))
  outputs = {}
  for implementation in ('xla', 'splash'):
    module = model.BertModel(config.replace(attention=implementation))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      params = module.init(jax.random.key(0), ids, mask)
      out, _ = jax.jit(module.apply)(params, ids, mask.astype(jnp.int32))
    outputs[implementation] = np.asarray(out)
  real = np.asarray(mask)
  np.testing.assert_allclose(
    outputs['splash'][real], outputs['xla'][real], atol=2e-5
  )
