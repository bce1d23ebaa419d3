r"""Compile a pretraining recipe for a Cloud TPU slice before renting it.

  pip install -e '.[tpu]'   # libtpu: the TPU compiler; no TPU needed
  python -m bertjax.aot --config=configs/bert_large.py --topology=v5p-128 \
    [--num_slices=2] [--config.mesh.shape='(1,-1,1)' ...]

Compiles, from abstract inputs, the train step `python -m bertjax.train`
builds for the recipe (with `bertjax.trainer`'s own functions), for the
slice's devices as JAX describes them on any host, and reports the memory
per chip against its HBM, the collectives, the compile time, and the step
time, tokens/s and training time at 50% MFU of the chip's data-sheet peak.
A recipe that does not fit fails with one line naming the memory needed and
what to change.

Topologies are Cloud TPU accelerator types (`v4-8`, `v5litepod-16`,
`v5p-128`, `v6e-256`: v4 and v5p count TensorCores, two per chip; v5e and
v6e count chips), or `GENERATION:SHAPE` (`v5p:4x4x12`) for other shapes.
"""

import collections
import dataclasses
import importlib.util
import math
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from data_pipeline import cli

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'A recipe file in configs/, e.g. configs/bert_large.py.'
)
_TOPOLOGY = flags.DEFINE_string(
  'topology', None, 'Cloud TPU accelerator type, e.g. v5p-128, v5litepod-256.'
)
_NUM_SLICES = flags.DEFINE_integer(
  'num_slices', 1, 'Slices joined over the data-centre network (multi-slice).'
)
_VOCAB_SIZE = flags.DEFINE_integer(
  'vocab_size', 30_522, "The vocabulary's size (BERT's English: 30,522)."
)
flags.mark_flags_as_required(['config', 'topology'])

# The share of peak FLOP/s the projections assume: what well-tuned
# transformer training reaches on TPUs.
PROJECTED_MFU = 0.5

GIB = 2**30


class AotError(ValueError):
  """A topology that cannot be named or described, or a recipe that does not
  compile or fit on it."""


@dataclasses.dataclass(frozen=True)
class _Generation:
  jax_name: str  # The generation in JAX's topology names.
  chip_config: str  # 'megacore': one JAX device per chip of two cores.
  cores_per_chip: int  # In the Cloud TPU accelerator type's number.
  hbm_gib: float  # Per chip, from the data sheet.
  rank: int  # Dimensions of the chips' interconnect (2-D or 3-D torus).
  sizes: tuple[int, ...]  # Chip counts sold as named slices.


_GENERATIONS = {
  'v4': _Generation(
    'v4', 'megacore', 2, 32, 3, tuple(2**k for k in range(2, 12))
  ),
  'v5p': _Generation(
    'v5', 'megacore', 2, 95, 3, (*(2**k for k in range(2, 13)), 6144)
  ),
  'v5e': _Generation(
    'v5e', 'default', 1, 16, 2, (1, 4, 8, 16, 32, 64, 128, 256)
  ),
  'v6e': _Generation(
    'v6e', 'default', 1, 32, 2, (1, 4, 8, 16, 32, 64, 128, 256)
  ),
}
_ALIASES = {'v5litepod': 'v5e'}
# Slice shapes that doubling the smallest side does not give.
_IRREGULAR_SHAPES = {6144: (16, 16, 24)}


@dataclasses.dataclass(frozen=True)
class Slice:
  """One Cloud TPU slice as JAX's topology description wants it."""

  name: str  # As the user typed it.
  generation: str  # v4, v5p, v5e or v6e.
  shape: tuple[int, ...]  # Chips along each side of the interconnect.

  @property
  def hbm_gib(self) -> float:
    return _GENERATIONS[self.generation].hbm_gib

  @property
  def chips(self) -> int:
    return int(math.prod(self.shape))

  @property
  def topology_name(self) -> str:
    """JAX's name: `v5:4x4x4`, `v5e:16x16`, `v4:2x2x1`."""
    jax_name = _GENERATIONS[self.generation].jax_name
    return f'{jax_name}:{"x".join(map(str, self.shape))}'

  @property
  def chips_per_host_bounds(self) -> tuple[int, int, int]:
    # Four chips per host VM, as 2x2; single-host v5e/v6e slices of one
    # and eight chips are the exceptions.
    if self.chips == 1:
      return (1, 1, 1)
    if self.chips == 8 and len(self.shape) == 2:
      return (2, 4, 1)
    return (2, 2, 1)

  @property
  def wrap(self) -> tuple[bool, bool, bool]:
    """Which sides close into a torus: every side of a 3-D slice of at least
    4x4x4 chips; a side of a whole 16-chip row or column of a 2-D pod."""
    if len(self.shape) == 3:
      return (min(self.shape) >= 4,) * 3
    return (self.shape[0] == 16, self.shape[1] == 16, False)


def _shape_of(chips: int, rank: int) -> tuple[int, ...]:
  """The slice shape Cloud TPU gives a power-of-two chip count: double the
  smallest side, from 1x1 (2-D) or 2x2x1 (3-D)."""
  if chips in _IRREGULAR_SHAPES and rank == 3:
    return _IRREGULAR_SHAPES[chips]
  sides = [1, 1] if rank == 2 else [1, 2, 2]
  while math.prod(sides) < chips:
    sides[0] *= 2
    sides.sort()
  if rank == 3 and sides[0] == 1:
    return (2, 2, 1)
  return tuple(sides)


def parse_topology(name: str) -> Slice:
  """`v5p-128`, `v5litepod-16`, `v6e-256` or `v5p:4x4x12` -> a Slice;
  `AotError` for an unknown generation or a size its slices do not come in."""
  match = re.fullmatch(r'([a-z0-9]+)(?:-(\d+)|:(\d+(?:x\d+)+))', name.strip())
  generation = _ALIASES.get(match.group(1), match.group(1)) if match else None
  if generation not in _GENERATIONS:
    known = ', '.join(f'{g}-N' for g in (*_GENERATIONS, *_ALIASES))
    raise AotError(f'topology {name!r} is not one of {known} or GEN:AxBxC')
  spec = _GENERATIONS[generation]
  if match.group(3):
    shape = tuple(int(s) for s in match.group(3).split('x'))
    if len(shape) != spec.rank or 0 in shape:
      raise AotError(
        f'topology {name!r}: {generation} slices are {spec.rank}-D, '
        f'e.g. {generation}:{"x".join(["4"] * spec.rank)}'
      )
  else:
    count = int(match.group(2))
    chips, odd = divmod(count, spec.cores_per_chip)
    if odd or chips not in spec.sizes:
      sizes = ', '.join(str(s * spec.cores_per_chip) for s in spec.sizes)
      raise AotError(
        f'topology {name!r}: {generation} slices come in {sizes} '
        f'(other shapes: {generation}:AxB{"xC" * (spec.rank - 2)})'
      )
    shape = _shape_of(chips, spec.rank)
  return Slice(name, generation, shape)


def has_tpu_compiler() -> bool:
  """Whether libtpu, the TPU compiler (`.[tpu]`), is installed."""
  return importlib.util.find_spec('libtpu') is not None


def get_devices(tpu: Slice, num_slices: int = 1) -> list[Any]:
  """The slice's TPU devices, described (not attached) on this host; needs
  libtpu."""
  if not has_tpu_compiler():
    raise AotError(
      "the TPU compiler (libtpu) is not installed: pip install -e '.[tpu]'"
    )
  if num_slices < 1:
    raise AotError(f'num_slices must be >= 1, got {num_slices}')
  from jax.experimental import topologies

  description = topologies.get_topology_desc(
    platform='tpu',
    topology_name=tpu.topology_name,
    chip_config_name=_GENERATIONS[tpu.generation].chip_config,
    chips_per_host_bounds=tpu.chips_per_host_bounds,
    num_slices=num_slices,
    wrap=tpu.wrap,
  )
  return list(description.devices)


@dataclasses.dataclass(frozen=True)
class Report:
  """What the compiled train step of a recipe needs on a slice: memory per
  chip, in bytes, from the compiler's analysis; `peak` is what the step
  holds at once: arguments, outputs not aliased to them (the donated state
  is updated in place), temporaries and code."""

  topology: str
  num_slices: int
  chips: int
  hosts: int
  mesh: dict[str, int]
  hbm: int
  arguments: int
  outputs: int
  temporaries: int
  code: int
  collectives: dict[str, int]
  attention: str  # the implementation the step runs (model.attention)
  kernels: int  # Pallas (Mosaic) kernel calls in the compiled program
  compile_s: float
  flops_per_step: float
  peak_flops_per_chip: float
  global_batch: int
  seq_len: int
  num_train_steps: int
  # The params' shardings (NamedSharding) as the compiler settled them.
  param_shardings: Any = dataclasses.field(repr=False, compare=False)

  @property
  def peak(self) -> int:
    return self.arguments + self.outputs + self.temporaries + self.code

  @property
  def step_s(self) -> float:
    """Step time at PROJECTED_MFU of the chips' peak."""
    peak = self.chips * self.num_slices * self.peak_flops_per_chip
    return self.flops_per_step / (PROJECTED_MFU * peak)

  @property
  def tokens_per_s(self) -> float:
    return self.global_batch * self.seq_len / self.step_s

  @property
  def train_hours(self) -> float:
    return self.num_train_steps * self.step_s / 3600


# Collectives as they appear in compiled HLO, asynchronous ones once (their
# -start half).
_COLLECTIVE = re.compile(
  r'\s(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)'
  r'(?:-start)?\('
)


def count_collectives(hlo_text: str) -> dict[str, int]:
  """Collective ops of a compiled module, by kind."""
  return dict(
    sorted(collections.Counter(_COLLECTIVE.findall(hlo_text)).items())
  )


def _does_not_fit(
  what: str, tpu: Slice, needed: str, available: float | None = None
) -> AotError:
  hbm = f'{available or tpu.hbm_gib:g} GiB'
  return AotError(
    f'{what} does not fit {tpu.name}: it needs {needed} per chip, a '
    f'{tpu.generation} chip has {hbm} of HBM; shard the weights over more '
    "chips (--config.mesh.shape='(1,-1,1)' is FSDP over all), lower "
    '--config.batch_size or raise --config.micro_batches, or keep fewer '
    'activations (--config.model.remat_policy=full)'
  )


# The TPU compiler's words for a program too big for HBM: "... memory
# required for HLO temporaries (101.59G) exceeds available HBM (15.75G)."
_EXHAUSTED = re.compile(
  r'(?:for ([\w ]+?) )?\(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)'
)


def compile_train_step(
  config: ml_collections.ConfigDict,
  tpu: Slice,
  num_slices: int = 1,
  vocab_size: int = 30_522,
  what: str = 'the recipe',
) -> Report:
  """Compiles the train step `bertjax.train` would run for `config` on
  `num_slices` slices of `tpu`, from abstract inputs. Raises `AotError`
  without a TPU compiler or when the step does not fit the chips' HBM, and
  the trainer's errors for a config the slice cannot run."""
  import flax.linen as nn
  import jax

  from bertjax import model, sharding, train_step, trainer

  devices = get_devices(tpu, num_slices)
  shape = trainer.compute_run_shape(config, devices)
  bert_config = trainer.get_model_config(config, vocab_size)
  module = model.BertForPreTraining(bert_config)
  tx, schedule = train_step.create_optimizer(config)
  state = train_step.abstract_train_state(module, tx, shape.mesh, shape.rules)
  state_shardings = jax.tree.map(lambda x: x.sharding, state)
  batch_sharding = sharding.batch_sharding(shape.mesh)
  batch = {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
    for k, v in train_step.get_batch_shapes(
      shape.global_batch,
      config.max_seq_length,
      config.data.max_predictions_per_seq,
      config.data.max_examples_per_row if config.data.packing else 0,
    ).items()
  }
  use_nsp = bool(config.data.nsp)
  step = trainer.jit_run_step(
    config,
    shape,
    train_step.Pretraining(module, use_nsp),
    schedule,
    state_shardings,
  )
  # Abstract, and made outside the mesh: a concrete key would be computed
  # on the (absent) TPU devices.
  key = jax.eval_shape(lambda: jax.random.key(0))
  start = time.perf_counter()
  with jax.set_mesh(shape.mesh), nn.logical_axis_rules(shape.rules):
    attention = model.resolve_attention(
      bert_config, config.max_seq_length, deterministic=False
    )
    lowered = step.lower(state, batch, key)
    try:
      compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
      if 'RESOURCE_EXHAUSTED' not in str(e):
        raise
      found = _EXHAUSTED.search(str(e))
      needed, available = 'more than it has', None
      if found:
        part = f' for {found.group(1)} alone' if found.group(1) else ''
        needed = f'{float(found.group(2)):.2f} GiB{part}'
        available = float(found.group(3))
      raise _does_not_fit(what, tpu, needed, available) from None
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  hlo = compiled.as_text()
  report = Report(
    topology=tpu.name,
    num_slices=num_slices,
    chips=tpu.chips,
    hosts=len({d.process_index for d in devices}),
    mesh=dict(shape.mesh.shape),
    hbm=int(tpu.hbm_gib * GIB),
    arguments=memory.argument_size_in_bytes,
    outputs=memory.output_size_in_bytes - memory.alias_size_in_bytes,
    temporaries=memory.temp_size_in_bytes,
    code=memory.generated_code_size_in_bytes,
    collectives=count_collectives(hlo),
    attention=attention,
    kernels=hlo.count('custom_call_target="tpu_custom_call"'),
    compile_s=compile_s,
    flops_per_step=shape.global_batch
    * train_step.get_train_flops_per_example(
      bert_config,
      config.max_seq_length,
      config.data.max_predictions_per_seq,
      use_nsp,
    ),
    peak_flops_per_chip=train_step.get_peak_flops_per_device(
      devices[0].device_kind
    ),
    global_batch=shape.global_batch,
    seq_len=config.max_seq_length,
    num_train_steps=shape.total_steps,
    param_shardings=compiled.input_shardings[0][0].params,
  )
  if report.peak > report.hbm:
    raise _does_not_fit(what, tpu, f'{report.peak / GIB:.2f} GiB')
  return report


def format_duration(hours: float) -> str:
  """`hours` in the unit a reader wants: s, min, h or days."""
  if hours < 1 / 60:
    return f'{hours * 3600:.3g} s'
  if hours < 1:
    return f'{hours * 60:.3g} min'
  return f'{hours:.3g} h' if hours < 48 else f'{hours / 24:.3g} days'


def format_report(report: Report, what: str) -> str:
  """The report as the command prints it."""
  gib = lambda n: f'{n / GIB:.2f} GiB'  # noqa: E731
  slices = f' x {report.num_slices} slices' if report.num_slices > 1 else ''
  mesh = ', '.join(f'{k} {v}' for k, v in report.mesh.items())
  collectives = ', '.join(f'{k} {v}' for k, v in report.collectives.items())
  return '\n'.join(
    [
      f'{what} on {report.topology}{slices}: {report.chips * report.num_slices}'
      f' chips, {report.hosts} host{"s" * (report.hosts > 1)}, mesh ({mesh})',
      f'  compiled in {report.compile_s:.1f} s; fits: peak {gib(report.peak)}'
      f' of {gib(report.hbm)} HBM per chip ({report.peak / report.hbm:.0%})',
      f'  per chip: arguments {gib(report.arguments)}, outputs '
      f'{gib(report.outputs)} (not aliased), temporaries '
      f'{gib(report.temporaries)}, code {gib(report.code)}',
      f'  attention: {report.attention} ({report.kernels} Pallas kernel calls);'
      f' collectives: {collectives or "none"}',
      f'  model FLOPs per step {report.flops_per_step:.3g} (batch '
      f'{report.global_batch} x {report.seq_len} tokens)',
      f'  at {PROJECTED_MFU:.0%} MFU of {report.peak_flops_per_chip / 1e12:g}'
      f' TFLOP/s per chip: {report.step_s * 1e3:.3g} ms per step, '
      f'{report.tokens_per_s:,.0f} tokens/s, {report.num_train_steps:,} '
      f'steps in {format_duration(report.train_hours)}',
    ]
  )


def main(argv: Sequence[str]) -> None:
  del argv
  tpu = parse_topology(_TOPOLOGY.value)
  # libtpu looks for the TPU VM it runs on and logs three errors when it is
  # not one; what it would find is not used.
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', tpu.name)
  what = flags.FLAGS['config'].serialize().split('=', 1)[1]
  report = compile_train_step(
    _CONFIG.value, tpu, _NUM_SLICES.value, _VOCAB_SIZE.value, what
  )
  print(format_report(report, what))


if __name__ == '__main__':
  # Set before JAX is imported: compile on this host's CPU, and let several
  # compiles run at once (libtpu otherwise locks the whole machine).
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  # TensorFlow (the trainer's input pipeline, unused here) stays quiet.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  cli.run(main, flags_parser=cli.parse_config_flags)
