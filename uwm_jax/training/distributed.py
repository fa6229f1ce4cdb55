"""Multi-process (multi-host) start-up through `jax.distributed`.

Every process of a job calls `initialize_distributed` before anything touches a device. Who the
other processes are comes, in this order, from

1. the explicit flags `--coordinator_address`, `--num_processes`, `--process_id`;
2. the environment `JAX_COORDINATOR_ADDRESS` + `JAX_NUM_PROCESSES` + `JAX_PROCESS_ID`;
3. jax's own cluster detection (`jax.distributed.initialize()` without arguments): Cloud TPU VMs
   (the slice's workers from the VM metadata; multislice from `MEGASCALE_*`), GKE TPU pods,
   SLURM (`SLURM_NTASKS`, `SLURM_PROCID`, the first node of `SLURM_STEP_NODELIST`), Open MPI.

When none of them describes a job, the process trains alone (nothing to set up).

Which devices a process drives: all of its host's devices, except that jax's SLURM detection
gives each task only the GPU numbered `SLURM_LOCALID` (one task per GPU). `JAX_LOCAL_DEVICE_IDS`
(comma-separated, read by jax) overrides that; launch/slurm_gpu.sh runs one task per node and
sets it to every GPU of the node (docs/launch.md, "SLURM").

The start-up line also names the CPUs the process may run on (its input pipeline's share):
since Slurm 22.05 `srun` does not inherit sbatch's `--cpus-per-task`, so a task started without
it gets one CPU; a warning says so when a SLURM task has fewer CPUs than its job holds for it.

A joined job also handles preemption: jax's preemption service catches SIGTERM and the
training loop saves a checkpoint at a step every process agrees on, then stops.

Work that one process does for all (generating the embedded task's dataset) runs through
`on_process_zero`: the other processes wait for it and fail with its error.
"""

import logging
import os
import re
from typing import Any, Callable, Mapping, Optional, Sequence

import jax

log = logging.getLogger(__name__)

# What jax 0.10.2 raises from `jax.distributed.initialize()` when no cluster is detected.
_NOTHING_DETECTED = "coordinator_address should be defined"
# How long the other processes wait for process 0's work. A process that dies ends the wait
# sooner (jax's heartbeats); this bounds a process 0 that hangs. Generating the embedded demo's
# 600 episodes takes minutes; a day leaves room for far larger datasets on slow hosts.
ON_PROCESS_ZERO_TIMEOUT_S = 24 * 3600
_DONE = "done"
_calls = 0  # on_process_zero calls so far: every process makes them in the same order


def explicit_arguments(coordinator_address: str = "", num_processes: int = 0,
                       process_id: int = -1, environ: Optional[Mapping[str, str]] = None):
  """(coordinator_address, num_processes, process_id, source) from the flags, else from the
  JAX_* environment; (None, None, None, None) when neither names a job (jax then detects it).

  Raises ValueError when only some of the three are given.
  """
  env = os.environ if environ is None else environ
  if coordinator_address or num_processes > 0 or process_id >= 0:
    given = (coordinator_address, num_processes, process_id)
    source = "flags"
  elif env.get("JAX_NUM_PROCESSES") or env.get("JAX_PROCESS_ID"):
    given = (env.get("JAX_COORDINATOR_ADDRESS", ""), int(env.get("JAX_NUM_PROCESSES") or 0),
             int(env.get("JAX_PROCESS_ID") or -1))
    source = "JAX_* environment"
  else:
    return None, None, None, None
  address, count, index = given
  if not (address and count > 0 and 0 <= index < count):
    raise ValueError(
        f"A multi-process job from the {source} needs a coordinator address, a process count "
        f"and a process id below it (--coordinator_address, --num_processes, --process_id or "
        f"JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); got {address!r}, "
        f"{count}, {index}.")
  return address, count, index, source


def unused_gpus_warning(local_device_count: int,
                        environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
  """A warning when a SLURM job with one task per node drives fewer GPUs than the node has
  (jax's SLURM detection gives a task one GPU unless JAX_LOCAL_DEVICE_IDS names more)."""
  env = os.environ if environ is None else environ
  try:
    gpus = int(env.get("SLURM_GPUS_ON_NODE", "0") or 0)
    tasks = int(env.get("SLURM_NTASKS", "0") or 0)
    nodes = int(env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_NNODES", "0")) or 0)
  except ValueError:
    return None
  if gpus > local_device_count and tasks and tasks == nodes:
    ids = ",".join(str(i) for i in range(gpus))
    return (f"This SLURM task drives {local_device_count} of the {gpus} GPUs of its node: run "
            f"one task per GPU (--ntasks-per-node={gpus}) or set JAX_LOCAL_DEVICE_IDS={ids} "
            "(launch/slurm_gpu.sh does).")
  return None


def available_cpus() -> int:
  """The CPUs this process may run on (its affinity: what a scheduler's cgroup leaves it)."""
  return len(os.sched_getaffinity(0))


def too_few_cpus_warning(cpus: int, environ: Optional[Mapping[str, str]] = None
                         ) -> Optional[str]:
  """A warning when a SLURM task may run on fewer CPUs than its job holds on its node per task
  (`SLURM_JOB_CPUS_PER_NODE`, e.g. "64(x2)"): an srun without --cpus-per-task."""
  env = os.environ if environ is None else environ
  match = re.match(r"\d+", env.get("SLURM_JOB_CPUS_PER_NODE", ""))
  try:
    tasks = int(env.get("SLURM_NTASKS", "0") or 0)
    nodes = int(env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_NNODES", "0")) or 0)
  except ValueError:
    return None
  if not match or not tasks or not nodes:
    return None
  per_task = int(match.group()) // max(1, tasks // nodes)
  if cpus >= per_task:
    return None
  return (f"This SLURM task may run on {cpus} of the {per_task} CPUs its job holds for it, so "
          f"its input pipeline gets {cpus}: pass srun --cpus-per-task={per_task} (since Slurm "
          "22.05 srun does not inherit sbatch's --cpus-per-task; launch/slurm_gpu.sh passes it).")


def _coordinator_address() -> str:
  """host:port of the coordinator jax connected to (jax keeps it in its private state)."""
  from jax._src import distributed as jax_distributed  # pylint: disable=import-outside-toplevel
  return str(getattr(jax_distributed.global_state, "coordinator_address", "?"))


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1,
                           local_device_ids: Optional[Sequence[int]] = None) -> bool:
  """Join the multi-process job if there is one; True when jax.distributed started.

  Logs one line either way: process index and count, local and global device counts, CPUs.
  """
  address, count, index, source = explicit_arguments(coordinator_address, num_processes,
                                                     process_id)
  try:
    jax.distributed.initialize(address, count, index, local_device_ids=local_device_ids)
  except ValueError as e:
    if source is not None or _NOTHING_DETECTED not in str(e):
      raise
    joined = False
  else:
    joined = True
  kind = jax.devices()[0].device_kind
  cpus = available_cpus()
  if joined:
    log.info("jax.distributed (%s): process %d of %d, %d local / %d global devices (%s), "
             "%d CPUs, coordinator %s.", source or "detected by jax", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count(), kind, cpus,
             _coordinator_address())
    warning = unused_gpus_warning(jax.local_device_count())
    if warning:
      log.warning(warning)
  else:
    log.info("Single process (no multi-process job detected): %d devices (%s), %d CPUs.",
             jax.device_count(), kind, cpus)
  warning = too_few_cpus_warning(cpus)
  if warning:
    log.warning(warning)
  return joined


def _client():
  """jax's coordination-service client (jax keeps it in its private state)."""
  from jax._src import distributed as jax_distributed  # pylint: disable=import-outside-toplevel
  client = jax_distributed.global_state.client
  if client is None:
    raise RuntimeError(f"{jax.process_count()} processes but no jax.distributed client: start "
                       "the job through initialize_distributed.")
  return client


def on_process_zero(what: str, fn: Callable[[], Any],
                    timeout_s: float = ON_PROCESS_ZERO_TIMEOUT_S) -> Any:
  """`fn()` on process 0 while every other process waits for it to end (at most timeout_s).

  Returns fn's result on process 0 and None on the others. When fn raises, process 0 raises
  its error and every other process a RuntimeError with the same message, so the whole job
  stops with one reason instead of the others running on without what fn makes. The wait goes
  through jax's coordination service (a key process 0 sets), not through a device collective
  (on CPU, gloo gives up on a peer that has not joined within 30 s): the timeout is ours. Every process must call it,
  in the same order as its other calls; `what` names the work in messages ("generating ...").
  """
  global _calls
  _calls += 1
  if jax.process_count() == 1:
    return fn()
  key = f"uwm_jax/on_process_zero/{_calls}"
  client = _client()
  if jax.process_index() == 0:
    try:
      result = fn()
    except Exception as e:
      client.key_value_set(key, f"{type(e).__name__}: {e}")
      raise
    client.key_value_set(key, _DONE)
    return result
  log.info("Waiting for process 0: %s.", what)
  try:
    outcome = client.blocking_key_value_get(key, int(timeout_s * 1000))
  except jax.errors.JaxRuntimeError as e:  # the timeout (DEADLINE_EXCEEDED) or a lost service
    raise RuntimeError(f"Process 0 did not finish {what} (waited at most {timeout_s:.0f} s): "
                       f"{e}") from None
  if outcome != _DONE:
    raise RuntimeError(f"Process 0 failed {what}: {outcome}")
  return None
