"""The device mesh: axes ("data", "fsdp", "tensor") from `config.train.mesh_shape`.

The batch is split over ("data", "fsdp") (every device of those two axes sees different
samples); parameters are split over "fsdp" (and "tensor" for tensor-parallel layers) by
`uwm_jax.training.sharding`. The tensor axis replicates the batch.
"""

import logging
from typing import Sequence, Tuple

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

DATA, FSDP, TENSOR = "data", "fsdp", "tensor"
MESH_AXES = (DATA, FSDP, TENSOR)
BATCH_AXES = (DATA, FSDP)


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> Tuple[int, int, int]:
  """(data, fsdp, tensor) with at most one -1 (= the remaining devices) -> concrete sizes.

  Raises ValueError when the sizes do not multiply to the number of devices.
  """
  shape = tuple(int(s) for s in mesh_shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"train.mesh_shape {shape} must have {len(MESH_AXES)} entries {MESH_AXES}.")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"train.mesh_shape {shape}: sizes must be positive, with at most one -1.")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"train.mesh_shape {shape} does not divide the {num_devices} devices.")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if int(np.prod(shape)) != num_devices:
    raise ValueError(f"train.mesh_shape {shape} has {int(np.prod(shape))} devices; "
                     f"{num_devices} are available.")
  return shape


def make_mesh(mesh_shape: Sequence[int], devices=None) -> Mesh:
  """A ("data", "fsdp", "tensor") mesh over `devices` (default: all devices of all processes)
  with automatic (GSPMD) axis types, laid out for the physical topology where known."""
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_shape, len(devices))
  try:
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices).reshape(shape)
  mesh = Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))
  log.info("Mesh %s over %d devices (%d processes).", dict(mesh.shape), len(devices),
           jax.process_count())
  return mesh


def batch_spec() -> PartitionSpec:
  """Leading (batch) axis split over ("data", "fsdp"); other axes whole."""
  return PartitionSpec(BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, batch_spec())


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_shards(mesh: Mesh) -> int:
  """How many ways the batch is split: data * fsdp."""
  return mesh.shape[DATA] * mesh.shape[FSDP]
