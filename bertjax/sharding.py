"""Device meshes and the mapping of logical axes onto them.

Owns the mesh axis names (`data`, `fsdp`, `tensor`), the default
logical-axis rules, mesh creation, and the shardings derived from the
logical axis names `bertjax.model` puts on every parameter: shardings are
never written by hand. Rules are `(logical_name, mesh_axes)` pairs; flax
uses the first rule whose mesh axes are still free for an array, so extra
rules passed first override the defaults.
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bertjax import model

DATA = 'data'
FSDP = 'fsdp'
TENSOR = 'tensor'
MESH_AXES = (DATA, FSDP, TENSOR)


class MeshError(ValueError):
  """A mesh shape that does not fit the devices there are."""


Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


def default_logical_axis_rules(extra: Sequence[Sequence[Any]] = ()) -> Rules:
  """`extra` rules, then the defaults: data + FSDP + Megatron-style tensor
  parallel. Batch is split over `data` and `fsdp`; weights over `fsdp` on
  their `embed` dimension (gathered per layer by XLA) and over `tensor` on
  heads, feed-forward and vocabulary. Activations between blocks stay
  replicated over `tensor` (BERT's residual stream is small).
  """
  defaults = (
    (model.ACTIVATION_BATCH, (DATA, FSDP)),
    (model.ACTIVATION_LENGTH, None),
    (model.ACTIVATION_EMBED, None),
    (model.ACTIVATION_MLP, TENSOR),
    (model.ACTIVATION_HEADS, TENSOR),
    (model.ACTIVATION_KV, None),
    (model.VOCAB, TENSOR),
    (model.EMBED, FSDP),
    (model.MLP, TENSOR),
    (model.HEADS, TENSOR),
    (model.KV, None),
    (model.LAYERS, None),
    (model.POSITION, None),
    (model.TOKEN_TYPE, None),
    (model.CLASSES, None),
  )
  return tuple(tuple(rule) for rule in extra) + defaults


def resolve_mesh_shape(
  shape: Sequence[int], num_devices: int
) -> tuple[int, ...]:
  """Fills the single `-1` in a `(data, fsdp, tensor)` shape, checked
  against `num_devices` (`MeshError`)."""
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(MESH_AXES):
    raise MeshError(
      f'mesh shape {shape} must have {len(MESH_AXES)} entries {MESH_AXES}'
    )
  if shape.count(-1) > 1:
    raise MeshError(f'mesh shape {shape} has more than one -1')
  if any(s == 0 or s < -1 for s in shape):
    raise MeshError(f'mesh shape {shape} has an entry that is not >= 1')
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if num_devices % known:
      raise MeshError(
        f'mesh shape {shape} cannot fill {num_devices} devices: '
        f'{num_devices} is not divisible by {known}'
      )
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  elif known != num_devices:
    raise MeshError(
      f'mesh shape {dict(zip(MESH_AXES, shape))} needs {known} devices, '
      f'but there are {num_devices}'
    )
  return shape


def create_mesh(
  shape: Sequence[int] = (-1, 1, 1), devices: Sequence[Any] | None = None
) -> Mesh:
  """A `(data, fsdp, tensor)` mesh (one size may be -1: the rest) over
  `devices`, by default every process's.

  Over several TPU slices (their `slice_index` differs), `data` spans the
  slices and the other axes stay within each: slices talk over the
  data-centre network, far slower than the chips' interconnect, and data
  parallelism needs only one gradient all-reduce a step there.
  """
  devices = jax.devices() if devices is None else list(devices)
  shape = resolve_mesh_shape(shape, len(devices))
  # Auto axes keep GSPMD propagation with sharding constraints (the model
  # constrains activations by logical names).
  axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if devices[0].platform != 'tpu':
    # In device order, as jax.make_mesh would lay them out, without its
    # refusal of devices with several slice indices (GPU hosts may carry
    # one each; only TPU slices need the hybrid layout below).
    grid = mesh_utils.create_device_mesh(shape, devices)
    return Mesh(grid, MESH_AXES, axis_types=axis_types)
  slices = len({getattr(d, 'slice_index', 0) for d in devices})
  if slices == 1:
    return jax.make_mesh(
      shape, MESH_AXES, axis_types=axis_types, devices=devices
    )
  if shape[0] % slices:
    raise MeshError(
      f'mesh shape {dict(zip(MESH_AXES, shape))} over {slices} slices: the '
      f'data axis must be a multiple of {slices} (it spans the slices)'
    )
  per_slice = (shape[0] // slices, *shape[1:])
  grid = mesh_utils.create_hybrid_device_mesh(
    per_slice, (slices, 1, 1), devices
  )
  return Mesh(grid, MESH_AXES, axis_types=axis_types)


def _fit_spec(spec: PartitionSpec, shape, mesh: Mesh) -> PartitionSpec:
  """Drops mesh axes from dimensions they do not divide evenly: jit cannot
  produce such arrays (e.g. BERT's 30,522-word vocabulary over 4 tensor
  shards), so the dimension is replicated over that axis instead."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = axes if isinstance(axes, tuple) else () if axes is None else (axes,)
    kept, size = [], 1
    for name in names:
      if dim % (size * mesh.shape[name]) == 0:
        kept.append(name)
        size *= mesh.shape[name]
      else:
        logging.log_first_n(
          logging.INFO,
          'dimension of size %d is not divisible over mesh axis %r; '
          'replicating it over that axis',
          10,
          dim,
          name,
        )
    fitted.append(
      None if not kept else kept[0] if len(kept) == 1 else tuple(kept)
    )
  while fitted and fitted[-1] is None:
    fitted.pop()
  return PartitionSpec(*fitted)


def get_shardings(abstract_boxed: Any, mesh: Mesh, rules: Rules) -> Any:
  """`NamedSharding`s, shaped like `nn.unbox(abstract_boxed)`, for the
  output of `jax.eval_shape` of a function returning flax variables with
  `nn.Partitioned` boxes (unboxed leaves are replicated)."""
  mesh_specs = nn.logical_to_mesh(nn.get_partition_spec(abstract_boxed), rules)
  return jax.tree.map(
    lambda spec, x: NamedSharding(mesh, _fit_spec(spec, x.shape, mesh)),
    mesh_specs,
    nn.unbox(abstract_boxed),
    is_leaf=lambda x: isinstance(x, PartitionSpec),
  )


def create_sharded(
  init_fn: Callable[..., Any], mesh: Mesh, rules: Rules, *args: Any
) -> tuple[Any, Any]:
  """Runs `init_fn(*args)`, which returns flax variables boxed with logical
  axis names, so that its outputs are born sharded: returns the unboxed
  variables placed on the mesh and their NamedSharding tree."""
  abstract = jax.eval_shape(init_fn, *args)
  shardings = get_shardings(abstract, mesh, rules)
  # No logical-axis rules here: flax's DenseGeneral initialises its kernel
  # flat and would apply the 3-D constraint to a 2-D array. out_shardings
  # alone places every output.
  with jax.set_mesh(mesh):
    variables = jax.jit(
      lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings
    )(*args)
  return variables, shardings


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over `data` and `fsdp`."""
  return NamedSharding(mesh, PartitionSpec((DATA, FSDP)))
