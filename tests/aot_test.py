"""Ahead-of-time compilation of the recipes for Cloud TPU slices, on the CPU.

The compile tests need libtpu, the TPU compiler, which the test extra
installs; they describe the slices with `jax.experimental.topologies` and
run the real TPU compiler on this host.
"""

import functools
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from bertjax import aot, model, sharding, train_step, trainer
from configs import bert_base, bert_large, bert_tiny

# Several test processes may compile at once; libtpu otherwise locks the
# machine. The slices' own host names are not looked up.
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')


@pytest.mark.parametrize(
  'name, topology, hosts, wrap',
  [
    # Cloud TPU's documented slice shapes: v4 and v5p name TensorCores (two
    # per chip) and are 3-D tori from 4x4x4 up; v5e and v6e name chips and
    # wrap a full 16-chip side.
    ('v4-8', 'v4:2x2x1', (2, 2, 1), (False,) * 3),
    ('v4-32', 'v4:2x2x4', (2, 2, 1), (False,) * 3),
    ('v4-128', 'v4:4x4x4', (2, 2, 1), (True,) * 3),
    ('v4-4096', 'v4:8x16x16', (2, 2, 1), (True,) * 3),
    ('v5p-8', 'v5:2x2x1', (2, 2, 1), (False,) * 3),
    ('v5p-64', 'v5:2x4x4', (2, 2, 1), (False,) * 3),
    ('v5p-128', 'v5:4x4x4', (2, 2, 1), (True,) * 3),
    ('v5p-1024', 'v5:8x8x8', (2, 2, 1), (True,) * 3),
    ('v5p-12288', 'v5:16x16x24', (2, 2, 1), (True,) * 3),
    ('v5litepod-1', 'v5e:1x1', (1, 1, 1), (False,) * 3),
    ('v5litepod-8', 'v5e:2x4', (2, 4, 1), (False,) * 3),
    ('v5litepod-16', 'v5e:4x4', (2, 2, 1), (False,) * 3),
    ('v5litepod-128', 'v5e:8x16', (2, 2, 1), (False, True, False)),
    ('v5e-256', 'v5e:16x16', (2, 2, 1), (True, True, False)),
    ('v6e-64', 'v6e:8x8', (2, 2, 1), (False,) * 3),
    ('v5p:4x4x12', 'v5:4x4x12', (2, 2, 1), (True,) * 3),
  ],
)
def test_cloud_names_map_to_topologies(name, topology, hosts, wrap):
  tpu = aot.parse_topology(name)
  assert tpu.topology_name == topology
  assert tpu.chips_per_host_bounds == hosts
  assert tpu.wrap == wrap


@pytest.mark.parametrize(
  'name, message',
  [
    ('v5p-100', 'v5p slices come in 8, 16, 32'),
    ('v5p-7', 'v5p slices come in'),
    ('v5litepod-2', 'v5e slices come in 1, 4, 8'),
    ('v7-8', "topology 'v7-8' is not one of v4-N"),
    ('v5e:4x4x4', 'v5e slices are 2-D'),
    ('v5p', 'is not one of'),
  ],
)
def test_unknown_topologies_are_named(name, message):
  with pytest.raises(aot.AotError, match=message):
    aot.parse_topology(name)


def test_collectives_are_counted_in_a_compiled_program():
  mesh = sharding.create_mesh((-1, 1, 1))
  spec = NamedSharding(mesh, PartitionSpec(sharding.DATA))
  x = jax.ShapeDtypeStruct((16, 4), np.float32, sharding=spec)
  compiled = jax.jit(lambda x: x - x.sum(0)).lower(x).compile()
  assert aot.count_collectives(compiled.as_text()) == {'all-reduce': 1}
  assert aot.count_collectives('') == {}


needs_libtpu = pytest.mark.skipif(
  not aot.has_tpu_compiler(), reason="libtpu: pip install -e '.[tpu]'"
)


@needs_libtpu
def test_multi_slice_meshes_put_only_data_across_slices():
  devices = aot.get_devices(aot.parse_topology('v5litepod-4'), num_slices=2)
  mesh = sharding.create_mesh((4, 2, 1), devices)
  # Each fsdp pair lies within one slice; data spans both.
  for row in mesh.devices[..., 0]:
    assert len({d.slice_index for d in row}) == 1
  assert {d.slice_index for d in mesh.devices[:, 0, 0]} == {0, 1}
  with pytest.raises(sharding.MeshError, match='multiple of 2'):
    sharding.create_mesh((1, 8, 1), devices)


def test_gpu_hosts_are_not_slices():
  class Device:  # A GPU of a multi-node job: each host has a slice index.
    platform, device_kind = 'gpu', 'NVIDIA H100'

    def __init__(self, i):
      self.id, self.slice_index, self.process_index = i, i // 4, i // 4

  devices = [Device(i) for i in range(8)]
  mesh = sharding.create_mesh((1, 8, 1), devices)
  assert mesh.devices.ravel().tolist() == devices  # FSDP spans the hosts.


@needs_libtpu
@pytest.mark.slow
@pytest.mark.parametrize(
  'recipe, topology',
  # One v5e and one v5p slice; benchmarks/aot_table.py compiles every
  # recipe for more (README.md's table).
  [('base', 'v5litepod-16'), ('large', 'v5p-32')],
)
def test_recipes_compile_and_fit_with_fsdp(recipe, topology):
  get_config = dict(base=bert_base, large=bert_large)[recipe].get_config
  config = get_config('phase=1')
  with config.unlocked():
    config.mesh.shape = (1, -1, 1)
  tpu = aot.parse_topology(topology)
  report = aot.compile_train_step(config, tpu)
  assert 0 < report.peak <= report.hbm
  assert report.mesh == {'data': 1, 'fsdp': tpu.chips, 'tensor': 1}
  # FSDP: weights are gathered for the forward pass and their gradients
  # reduced back onto the shards (as the compiler sees fit).
  assert report.collectives.get('all-gather', 0) > 0
  assert report.collectives.keys() & {'all-reduce', 'reduce-scatter'}
  # The compiled parameters are sharded as the logical-axis rules say:
  # every `embed` dimension over the fsdp axis, all else whole (tensor is
  # 1). Each chip's arguments are then about 1/chips of the params and
  # Adam's two moments.
  bert = trainer.get_model_config(config, 30_522)
  boxed = jax.eval_shape(
    functools.partial(model.init_params, bert), jax.random.key(0)
  )

  def check(names, param, compiled):
    wanted = tuple(
      size // tpu.chips if name == model.EMBED else size
      for name, size in zip(names, param.shape)
    )
    assert compiled.shard_shape(param.shape) == wanted, (names, compiled)

  jax.tree.map(
    check,
    nn.get_partition_spec(boxed),
    nn.unbox(boxed),
    report.param_shardings,
    is_leaf=lambda x: isinstance(x, PartitionSpec),
  )
  # TPU layouts pad a shard's small minor dimensions (64 wide here) up to
  # 128: up to twice the bytes. Replicated, they would be 16 times more.
  sharded = 3 * sum(4 * x.size for x in jax.tree.leaves(nn.unbox(boxed)))
  sharded /= tpu.chips
  assert sharded < report.arguments < 2 * sharded


@needs_libtpu
@pytest.mark.slow
def test_an_oversized_recipe_fails_in_one_line():
  # BERT-large replicated on every chip, 64 sequences of 512 per chip, no
  # rematerialisation: far more than a v5e chip's 16 GiB.
  args = [
    '--config=configs/bert_large.py:phase=2',
    '--topology=v5litepod-4',
    '--config.batch_size=256',
    '--config.micro_batches=1',
    '--config.model.remat_policy=none',
  ]
  result = subprocess.run(
    [sys.executable, '-m', 'bertjax.aot', *args],
    capture_output=True,
    text=True,
  )
  assert result.returncode == 2, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('bertjax.aot: error: configs/bert_large.py:phase=2')
  assert 'does not fit v5litepod-4: it needs' in last
  assert re.search(r'needs [\d.]+ GiB .*a v5e chip has [\d.]+ GiB of HBM', last)
  assert '--config.mesh.shape' in last and 'remat_policy' in last


@needs_libtpu
def test_splash_attention_lowers_for_a_tpu_slice():
  """In bfloat16 without attention dropout, `auto` takes Pallas splash
  attention on TPUs: its kernels compile with libtpu, inside the sharded
  step (batch over 4 chips)."""
  config = bert_tiny.get_config()
  with config.unlocked():
    config.model.dtype = 'bfloat16'
  assert config.model.attention_probs_dropout_prob == 0
  report = aot.compile_train_step(config, aot.parse_topology('v5litepod-4'))
  assert report.attention == 'splash'
  # Forward, and the backward's dq and dkv kernels, in each layer's scan.
  assert report.kernels >= 3


@needs_libtpu
def test_a_packed_recipe_compiles_for_a_tpu_slice():
  """With `data.packing`, the step is compiled for packed rows (example ids,
  per-example [CLS] positions and NSP labels) and splash takes them."""
  config = bert_tiny.get_config()
  with config.unlocked():
    config.model.dtype = 'bfloat16'
    config.data.packing = True
  report = aot.compile_train_step(config, aot.parse_topology('v5litepod-4'))
  assert report.attention == 'splash' and report.kernels >= 3


@needs_libtpu
def test_the_command_prints_the_report_of_a_small_recipe():
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'bertjax.aot',
      '--config=configs/bert_tiny.py',
      '--topology=v5p-16',
      '--num_slices=2',
    ],
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[0] == (
    'configs/bert_tiny.py on v5p-16 x 2 slices: 16 chips, 4 hosts, mesh '
    '(data 16, fsdp 1, tensor 1)'
  )
  assert 'fits: peak' in lines[1] and 'of 95.00 GiB HBM per chip' in lines[1]
  # float32: the XLA attention.
  assert lines[3].startswith('  attention: xla (0 Pallas kernel calls); ')
  assert 'collectives: ' in lines[3] and 'all-reduce' in lines[3]
  tiny = bert_tiny.get_config()
  flops = tiny.batch_size * train_step.get_train_flops_per_example(
    trainer.get_model_config(tiny, 30_522),
    tiny.max_seq_length,
    tiny.data.max_predictions_per_seq,
  )
  assert f'model FLOPs per step {flops:.3g}' in lines[4]
  assert 'at 50% MFU of 459 TFLOP/s per chip' in lines[5]


def test_bad_topologies_and_flags_are_one_line():
  for args, message in [
    (['--topology=v5p-100'], "topology 'v5p-100': v5p slices come in"),
    (['--topology=v5p-8', '--config.batch_sise=3'], 'bad flag'),
  ]:
    result = subprocess.run(
      [sys.executable, '-m', 'bertjax.aot', '--config=configs/bert_tiny.py']
      + args,
      capture_output=True,
      text=True,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('bertjax.aot: error: '), last
    assert message in last, last
