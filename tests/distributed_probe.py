"""One process of a simulated cluster job (run by tests/test_train_distributed.py).

Calls `uwm_jax.training.distributed.initialize_distributed()` exactly as `python -m
uwm_jax.train` does, with whatever cluster environment the test set, and prints one JSON line:
what jax made of it (process index/count, device counts, the CUDA devices the process would
drive, the coordinator).

PRETEND_CLOUD_TPU_VM=1 makes jax's cluster detection believe it runs on a Cloud TPU VM (the
flag jax sets at import when it finds TPU chips), so its GCE TPU detection reads the VM
metadata server that the test serves on 127.0.0.1 (GCE_METADATA_IP).
"""

import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
from jax._src import distributed as jax_distributed  # pylint: disable=wrong-import-position
from jax._src import xla_bridge  # pylint: disable=wrong-import-position


def pretend_cloud_tpu_vm() -> None:
  from jax._src.clusters import cloud_tpu_cluster, cluster  # pylint: disable=import-outside-toplevel
  cluster.running_in_cloud_tpu_vm = True
  cloud_tpu_cluster.running_in_cloud_tpu_vm = True
  os.environ.pop("TPU_SKIP_MDS_QUERY", None)  # set by jax's import on a machine without TPUs


def main() -> None:
  logging.basicConfig(level=logging.INFO, stream=sys.stderr)
  if os.environ.get("PRETEND_CLOUD_TPU_VM") == "1":
    pretend_cloud_tpu_vm()
  from uwm_jax.training import distributed  # pylint: disable=import-outside-toplevel
  joined = distributed.initialize_distributed()
  print(json.dumps({
      "joined": joined,
      "process_index": jax.process_index(),
      "process_count": jax.process_count(),
      "local_device_count": jax.local_device_count(),
      "device_count": jax.device_count(),
      "cuda_visible_devices": xla_bridge.CUDA_VISIBLE_DEVICES.value,  # "all" unless restricted
      "coordinator": jax_distributed.global_state.coordinator_address,
  }), flush=True)
  if joined:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main()
