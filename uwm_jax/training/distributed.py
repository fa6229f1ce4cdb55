"""Multi-process (multi-host) start-up through `jax.distributed`.

Launched as several processes, every process calls `initialize_distributed` before touching
devices. Explicit flags (coordinator address, process count, process id) win; otherwise
Cloud TPU pods (several TPU workers) and SLURM jobs with several tasks are detected and
`jax.distributed.initialize()` discovers the rest; a single process does nothing.
"""

import logging
import os
from typing import Optional

import jax

log = logging.getLogger(__name__)


def detect_cluster(environ=None) -> Optional[str]:
  """"tpu" / "slurm" / "env" when the environment describes a multi-process job, else None."""
  env = os.environ if environ is None else environ
  hostnames = env.get("TPU_WORKER_HOSTNAMES", "")
  if len([h for h in hostnames.split(",") if h]) > 1:
    return "tpu"
  if int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1 and "SLURM_JOB_ID" in env:
    return "slurm"
  if env.get("JAX_COORDINATOR_ADDRESS") and int(env.get("JAX_NUM_PROCESSES", "1")) > 1:
    return "env"
  return None


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1, local_device_ids=None) -> bool:
  """Join the multi-process job if there is one. Returns True when jax.distributed started."""
  if coordinator_address or num_processes > 1:
    if not (coordinator_address and num_processes > 0 and process_id >= 0):
      raise ValueError("Multi-process flags need all of --coordinator_address, --num_processes "
                       f"and --process_id (got {coordinator_address!r}, {num_processes}, "
                       f"{process_id}).")
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               local_device_ids=local_device_ids)
    kind = "flags"
  else:
    kind = detect_cluster()
    if kind is None:
      return False
    if kind == "env":
      jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"],
                                 int(os.environ["JAX_NUM_PROCESSES"]),
                                 int(os.environ["JAX_PROCESS_ID"]))
    else:
      jax.distributed.initialize()
  log.info("jax.distributed (%s): process %d of %d, %d local / %d global devices.", kind,
           jax.process_index(), jax.process_count(), jax.local_device_count(),
           jax.device_count())
  return True
