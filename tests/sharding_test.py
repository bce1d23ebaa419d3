"""Tests of bertjax.sharding on 8 simulated CPU devices."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from bertjax import model, sharding

# What the default rules must give each logical axis on a (2, 2, 2) mesh,
# written out independently of sharding.default_logical_axis_rules.
EXPECTED_MESH_AXIS = {
  'vocab': 'tensor',
  'embed': 'fsdp',
  'mlp': 'tensor',
  'heads': 'tensor',
  'kv': None,
  'layers': None,
  'position': None,
  'token_type': None,
  'classes': None,
}


def _batch(batch=8, seq_len=16, vocab=256):
  rng = np.random.default_rng(0)
  ids = rng.integers(5, vocab, size=(batch, seq_len)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[::2, 10:] = 0
  return dict(
    input_ids=ids * mask,
    input_mask=mask,
    segment_ids=(np.arange(seq_len)[None] >= 6).astype(np.int32) * mask,
    masked_lm_positions=np.tile(np.arange(1, 5, dtype=np.int32), (batch, 1)),
  )


class MeshTest:
  def test_minus_one_fills_the_devices(self):
    mesh = sharding.create_mesh((2, -1, 2))
    assert dict(mesh.shape) == {'data': 2, 'fsdp': 2, 'tensor': 2}
    mesh = sharding.create_mesh((-1, 1, 1))
    assert dict(mesh.shape) == {'data': 8, 'fsdp': 1, 'tensor': 1}

  @pytest.mark.parametrize(
    'shape,message',
    [
      ((2, 2, 3), 'needs 12 devices'),
      ((3, -1, 1), 'not divisible'),
      ((-1, -1, 1), 'more than one -1'),
      ((8, 1), 'must have 3 entries'),
    ],
  )
  def test_bad_shapes_are_named(self, shape, message):
    with pytest.raises(ValueError, match=message):
      sharding.create_mesh(shape)

  def test_extra_rules_take_precedence(self):
    rules = sharding.default_logical_axis_rules([('embed', 'tensor')])
    assert rules[0] == ('embed', 'tensor')
    spec = nn.logical_to_mesh_axes(('vocab', 'embed'), rules)
    # The extra rule claims 'tensor' for embed first, so vocab (whose only
    # rule also wants 'tensor') is left replicated.
    assert spec == P(None, 'tensor')


@pytest.fixture(scope='module', params=[True, False], ids=['scan', 'loop'])
def setup(request):
  config = model.get_config('tiny', vocab_size=256, scan_layers=request.param)
  m = model.BertForPreTraining(config)
  batch = _batch()
  mesh = sharding.create_mesh((2, 2, 2))
  rules = sharding.default_logical_axis_rules()

  def init(key):
    return m.init(key, **batch)

  variables, shardings = sharding.create_sharded(
    init, mesh, rules, jax.random.key(0)
  )
  return m, batch, mesh, rules, variables, init


class ShardedModelTest:
  def test_every_parameter_gets_the_spec_of_its_logical_axes(self, setup):
    _, _, mesh, _, variables, init = setup
    boxed = jax.eval_shape(init, jax.random.key(0))
    names = jax.tree.leaves(
      boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )
    arrays = jax.tree.leaves(variables)
    assert len(names) == len(arrays) > 10
    for box, array in zip(names, arrays, strict=True):
      assert isinstance(box, nn.Partitioned)
      expected = [EXPECTED_MESH_AXIS[name] for name in box.names]
      while expected and expected[-1] is None:
        expected.pop()
      assert array.sharding.spec == P(*expected), box.names
      assert array.sharding.mesh.shape == mesh.shape
    # Most of the parameter bytes are sharded, not replicated.
    replicated = sum(x.nbytes for x in arrays if x.sharding.is_fully_replicated)
    assert replicated < 0.01 * sum(x.nbytes for x in arrays)

  def test_sharded_forward_equals_single_device(self, setup):
    m, batch, mesh, rules, variables, _ = setup

    def forward(v, b):
      return m.apply(v, **b)

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      global_batch = jax.device_put(batch, sharding.batch_sharding(mesh))
      sharded = jax.jit(forward)(variables, global_batch)
    assert sharded['sequence_output'].sharding.spec[0] == ('data', 'fsdp')
    device = jax.devices()[0]
    single = jax.jit(forward)(
      jax.device_put(jax.device_get(variables), device),
      jax.device_put(batch, device),
    )
    for key in single:
      np.testing.assert_allclose(
        np.asarray(sharded[key]), np.asarray(single[key]), atol=2e-5
      )

  def test_indivisible_dimension_is_replicated(self):
    # BERT's real vocabulary (30,522) does not split over 4 tensor shards.
    config = model.get_config('tiny', vocab_size=30522)
    m = model.BertForPreTraining(config)
    mesh = sharding.create_mesh((2, 1, 4))
    abstract = jax.eval_shape(
      lambda k: m.init(k, jnp.zeros((4, 8), jnp.int32)), jax.random.key(0)
    )
    shardings = sharding.get_shardings(
      abstract, mesh, sharding.default_logical_axis_rules()
    )
    table = shardings['params']['bert']['embeddings']['word_embeddings']
    assert table['embedding'].spec == P(None, 'fsdp')
    bias = shardings['params']['mlm_head']['output_bias']
    assert bias.spec == P()


_COMPILE_A_SHARDED_STEP = """
import flax.linen as nn, jax
from bertjax import model, sharding, train_step
import optax
module = model.BertForPreTraining(model.BertConfig(
  vocab_size=30522, hidden_size=128, num_hidden_layers=2,
  num_attention_heads=2, intermediate_size=512))
mesh = sharding.create_mesh((2, 2, 2))
rules = sharding.default_logical_axis_rules()
tx = optax.adamw(1e-4)
state = train_step.abstract_train_state(module, tx, mesh, rules)
on_batch = sharding.batch_sharding(mesh)
batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=on_batch)
         for k, v in train_step.get_batch_shapes(16, 128, 20).items()}
step = train_step.jit_train_step(train_step.Pretraining(module), lambda s: 0.0)
with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
  step.lower(state, batch, jax.random.key(0)).compile()
print('compiled')
"""


def test_the_sharded_step_never_gathers_a_whole_table():
  """On a (data 2, fsdp 2, tensor 2) mesh the embedding lookups compile
  without XLA's "involuntary full rematerialization" (it gathered the
  vocabulary-split word table whole and re-split the lookups, every step).
  XLA reports it only on stderr, so the step compiles in a subprocess."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS='cpu')
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
  # XLA warns at compile time only: no cache, and its warnings shown.
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  env['TF_CPP_MIN_LOG_LEVEL'] = '0'
  result = subprocess.run(
    [sys.executable, '-c', _COMPILE_A_SHARDED_STEP],
    capture_output=True,
    text=True,
    env=env,
    check=False,
  )
  assert result.stdout.strip() == 'compiled', result.stderr[-2000:]
  assert 'rematerialization' not in result.stderr, result.stderr[-2000:]
