"""Tests of bertjax.model: configs, presets, shapes, masking, precision."""

import contextlib
import io

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertjax import model

VOCAB = 97


def _batch(batch=3, seq_len=12, num_masked=4, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, VOCAB, size=(batch, seq_len)).astype(np.int32)
  lengths = np.array([seq_len, seq_len - 3, 5])[:batch]
  mask = (np.arange(seq_len)[None] < lengths[:, None]).astype(np.int32)
  ids = ids * mask
  segments = ((np.arange(seq_len)[None] >= 4) & (mask == 1)).astype(np.int32)
  positions = np.stack(
    [rng.choice(length, num_masked, replace=False) for length in lengths]
  ).astype(np.int32)
  return dict(
    input_ids=ids,
    input_mask=mask,
    segment_ids=segments,
    masked_lm_positions=positions,
  )


def _init(config, batch):
  m = model.BertForPreTraining(config)
  variables = m.init(jax.random.key(0), **batch)
  return m, nn.unbox(variables)


class BertConfigTest:
  def test_presets_cover_the_miniature_grid_and_aliases(self):
    for layers in (2, 4, 6, 8, 10, 12):
      for hidden in (128, 256, 512, 768):
        c = model.get_config(f'L-{layers}_H-{hidden}')
        assert c.num_hidden_layers == layers
        assert c.hidden_size == hidden
        assert c.num_attention_heads == hidden // 64
        assert c.intermediate_size == 4 * hidden
    assert model.get_config('tiny') == model.get_config('L-2_H-128')
    assert model.get_config('mini') == model.get_config('L-4_H-256')
    assert model.get_config('small') == model.get_config('L-4_H-512')
    assert model.get_config('medium') == model.get_config('L-8_H-512')
    base = model.get_config('base')
    assert (base.num_hidden_layers, base.hidden_size) == (12, 768)
    assert (base.num_attention_heads, base.intermediate_size) == (12, 3072)
    large = model.get_config('large')
    assert (large.num_hidden_layers, large.hidden_size) == (24, 1024)
    assert (large.num_attention_heads, large.intermediate_size) == (16, 4096)

  def test_unknown_field_is_named(self):
    with pytest.raises(model.ConfigError, match='hiden_size'):
      model.BertConfig.from_dict({'hiden_size': 4})

  def test_heads_must_divide_hidden(self):
    with pytest.raises(model.ConfigError, match='not divisible'):
      model.BertConfig(hidden_size=100, num_attention_heads=3)

  @pytest.mark.parametrize(
    'field,value',
    [
      ('hidden_act', 'tanh'),
      ('dtype', 'int8'),
      ('remat_policy', 'sometimes'),
      ('num_hidden_layers', 0),
      ('hidden_dropout_prob', 1.5),
    ],
  )
  def test_bad_values_are_rejected(self, field, value):
    with pytest.raises(model.ConfigError, match=field):
      model.get_config('tiny', **{field: value})

  def test_unknown_preset(self):
    with pytest.raises(model.ConfigError, match='huge'):
      model.get_config('huge')

  def test_dict_round_trip(self):
    c = model.get_config('mini', dtype='bfloat16')
    assert model.BertConfig.from_dict(c.to_dict()) == c


class BertForPreTrainingTest:
  def test_output_shapes_and_dtypes(self):
    config = model.get_config('tiny', vocab_size=VOCAB)
    batch = _batch()
    m, variables = _init(config, batch)
    out = m.apply(variables, **batch)
    assert out['sequence_output'].shape == (3, 12, 128)
    assert out['pooled_output'].shape == (3, 128)
    assert out['mlm_logits'].shape == (3, 4, VOCAB)
    assert out['nsp_logits'].shape == (3, 2)
    assert out['mlm_logits'].dtype == jnp.float32

  def test_mlm_head_at_positions_equals_gathered_full_logits(self):
    config = model.get_config('tiny', vocab_size=VOCAB)
    batch = _batch()
    m, variables = _init(config, batch)
    gathered = m.apply(variables, **batch)['mlm_logits']
    full = m.apply(variables, **{**batch, 'masked_lm_positions': None})[
      'mlm_logits'
    ]
    expected = np.take_along_axis(
      np.asarray(full), batch['masked_lm_positions'][..., None], axis=1
    )
    np.testing.assert_allclose(gathered, expected, atol=1e-5)

  def test_padding_does_not_change_real_tokens(self):
    config = model.get_config('tiny', vocab_size=VOCAB)
    batch = _batch(batch=2)
    m, variables = _init(config, batch)
    out = m.apply(variables, **batch)
    padded = {
      k: np.pad(v, ((0, 0), (0, 6))) if k != 'masked_lm_positions' else v
      for k, v in batch.items()
    }
    out_padded = m.apply(variables, **padded)
    real = batch['input_mask'].astype(bool)
    np.testing.assert_allclose(
      np.asarray(out['sequence_output'])[real],
      np.asarray(out_padded['sequence_output'])[:, :12][real],
      atol=1e-5,
    )
    np.testing.assert_allclose(
      out['nsp_logits'], out_padded['nsp_logits'], atol=1e-5
    )

  def test_scan_and_unrolled_layers_compute_the_same_function(self):
    batch = _batch()
    scanned = model.get_config('tiny', vocab_size=VOCAB, scan_layers=True)
    m_scan, v_scan = _init(scanned, batch)
    unrolled = scanned.replace(scan_layers=False)
    m_loop = model.BertForPreTraining(unrolled)
    params = jax.tree.map(lambda x: x, v_scan['params'])
    stacked = params['bert']['encoder'].pop('layers')
    for i in range(unrolled.num_hidden_layers):
      params['bert']['encoder'][f'layer_{i}'] = jax.tree.map(
        lambda x, i=i: x[i], stacked
      )
    out_scan = m_scan.apply(v_scan, **batch)
    out_loop = m_loop.apply({'params': params}, **batch)
    for key in out_scan:
      np.testing.assert_allclose(out_scan[key], out_loop[key], atol=1e-5)

  @pytest.mark.parametrize('policy', ['full', 'dots', 'dots_no_batch'])
  def test_remat_keeps_gradients(self, policy):
    batch = _batch()
    config = model.get_config('tiny', vocab_size=VOCAB)
    m, variables = _init(config, batch)
    m_remat = model.BertForPreTraining(config.replace(remat_policy=policy))

    def loss(module, params):
      out = module.apply(
        {'params': params},
        **batch,
        deterministic=False,
        rngs={'dropout': jax.random.key(1)},
      )
      return out['mlm_logits'].mean() + out['nsp_logits'].mean()

    # Jitted: op-by-op gradients of a scanned model are slow on CPU.
    g = jax.jit(jax.grad(lambda p: loss(m, p)))(variables['params'])
    g_remat = jax.jit(jax.grad(lambda p: loss(m_remat, p)))(variables['params'])
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g, g_remat
    )
    # The dot policies keep the dense layers' products (made inside
    # `model.matmul`'s custom VJP, where they are saved by name); unscanned,
    # each layer's residuals are listed with their origin.
    unscanned = model.BertForPreTraining(
      config.replace(remat_policy=policy, scan_layers=False)
    )
    params = nn.unbox(unscanned.init(jax.random.key(0), **batch))['params']
    saved = io.StringIO()
    with contextlib.redirect_stdout(saved):
      jax.ad_checkpoint.print_saved_residuals(
        lambda p: loss(unscanned, p), params
      )
    named = "named 'matmul'" in saved.getvalue()
    assert named == (policy != 'full'), saved.getvalue()

  def test_dropout_is_seeded_and_off_when_deterministic(self):
    config = model.get_config('tiny', vocab_size=VOCAB)
    batch = _batch()
    m, variables = _init(config, batch)

    @jax.jit
    def run(seed):
      return m.apply(
        variables,
        **batch,
        deterministic=False,
        rngs={'dropout': jax.random.key(seed)},
      )['sequence_output']

    np.testing.assert_array_equal(run(1), run(1))
    assert np.abs(np.asarray(run(1)) - np.asarray(run(2))).max() > 1e-3
    a = m.apply(variables, **batch)['sequence_output']
    b = m.apply(variables, **batch)['sequence_output']
    np.testing.assert_array_equal(a, b)

  def test_input_longer_than_max_positions_is_an_error(self):
    config = model.get_config(
      'tiny', vocab_size=VOCAB, max_position_embeddings=8
    )
    batch = _batch(seq_len=12)
    with pytest.raises(model.ConfigError, match='max_position_embeddings'):
      _init(config, batch)

  def test_bfloat16_accumulates_in_float32(self):
    batch = _batch()
    config = model.get_config('tiny', vocab_size=VOCAB)
    m, variables = _init(config, batch)
    m16 = model.BertForPreTraining(config.replace(dtype='bfloat16'))
    out32 = m.apply(variables, **batch)
    out16 = m16.apply(variables, **batch)
    assert out16['sequence_output'].dtype == jnp.bfloat16
    assert out16['mlm_logits'].dtype == jnp.float32
    assert out16['nsp_logits'].dtype == jnp.float32
    # Parameters stay float32 whatever the compute dtype.
    params16 = nn.unbox(m16.init(jax.random.key(0), **batch))
    assert {x.dtype for x in jax.tree.leaves(params16)} == {
      jnp.dtype('float32')
    }
    np.testing.assert_allclose(
      out16['mlm_logits'], out32['mlm_logits'], atol=0.1, rtol=0.05
    )
    # Every matmul with bfloat16 operands produces float32 (accumulates in
    # float32) before any cast.
    jaxpr = jax.make_jaxpr(lambda v: m16.apply(v, **batch))(variables)
    dots = [
      eqn
      for eqn in _all_eqns(jaxpr.jaxpr)
      if eqn.primitive.name == 'dot_general'
    ]
    assert dots
    for eqn in dots:
      in_dtypes = {v.aval.dtype for v in eqn.invars}
      if jnp.bfloat16 in in_dtypes:
        assert eqn.outvars[0].aval.dtype == jnp.float32, eqn

  def test_bfloat16_gradients_multiply_in_bfloat16(self):
    batch = _batch()
    config = model.get_config('tiny', vocab_size=VOCAB)
    m, variables = _init(config, batch)
    m16 = model.BertForPreTraining(config.replace(dtype='bfloat16'))

    def loss(module, params):
      out = module.apply({'params': params}, **batch)
      return out['mlm_logits'].mean() + out['nsp_logits'].mean()

    grad = jax.grad(lambda p: loss(m16, p))
    jaxpr = jax.make_jaxpr(grad)(variables['params'])
    dots = [
      eqn
      for eqn in _all_eqns(jaxpr.jaxpr)
      if eqn.primitive.name == 'dot_general'
    ]
    # Forward and backward products of the dense layers and the decoder
    # (no batch dims; attention's have them) take bfloat16 operands only,
    # and give float32.
    dense = [e for e in dots if not e.params['dimension_numbers'][1][0]]
    assert len(dense) >= 3 * 6, len(dense)  # 6+ per layer: fwd and 2 grads
    for eqn in dense:
      assert {v.aval.dtype for v in eqn.invars} == {jnp.dtype('bfloat16')}, eqn
      assert eqn.outvars[0].aval.dtype == jnp.float32, eqn
    g16 = jax.jit(grad)(variables['params'])
    g32 = jax.jit(jax.grad(lambda p: loss(m, p)))(variables['params'])
    largest = max(np.abs(np.asarray(b)).max() for b in jax.tree.leaves(g32))
    for (path, a), b in zip(
      jax.tree_util.tree_leaves_with_path(g16), jax.tree.leaves(g32)
    ):
      assert a.dtype == jnp.float32, path
      np.testing.assert_allclose(
        a, b, rtol=0.05, atol=0.02 * largest, err_msg=str(path)
      )


def _all_eqns(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        inner = getattr(sub, 'jaxpr', None)
        if inner is not None:
          yield from _all_eqns(getattr(inner, 'jaxpr', inner))
