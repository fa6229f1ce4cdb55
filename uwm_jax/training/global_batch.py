"""Host-local numpy batches -> global `jax.Array`s sharded over a mesh."""

from typing import Callable, Mapping, Union

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from uwm_jax.training import mesh as mesh_lib


def host_batch_to_global(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh,
                         partition_spec: Union[PartitionSpec, Mapping[str, PartitionSpec]]
                         ) -> dict:
  """Assemble every host's local batch into global arrays with `partition_spec`.

  batch: dict of host-local arrays, each (B_local, ...); the global batch axis is B_local *
    process_count, laid out in process order (host p holds rows [p * B_local, (p+1) * B_local)
    of the global batch when the spec shards axis 0 over all devices in process order).
  partition_spec: one PartitionSpec for every key (e.g. `P(("data", "fsdp"))`, which names only
    the batch axis and so fits arrays of any rank), or a dict key -> PartitionSpec.
  Returns a dict of global jax.Arrays (jax.make_array_from_process_local_data).
  """
  out = {}
  for key, value in batch.items():
    spec = partition_spec[key] if isinstance(partition_spec, Mapping) else partition_spec
    out[key] = jax.make_array_from_process_local_data(NamedSharding(mesh, spec),
                                                      np.asarray(value))
  return out


def batch_placer(mesh: jax.sharding.Mesh) -> Callable[[Mapping[str, np.ndarray]], dict]:
  """fn(host batch) -> global arrays split over the mesh's batch axes (`mesh.batch_spec`): how
  the training loop and the offline evaluation put every batch on the devices."""
  return lambda batch: host_batch_to_global(batch, mesh, mesh_lib.batch_spec())
