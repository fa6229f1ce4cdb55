"""Multi-process start-up (uwm_jax.training.distributed) under simulated clusters.

Two local CPU processes join through jax.distributed on 127.0.0.1 with the environment a real
SLURM job or Cloud TPU slice gives them (tests/distributed_probe.py reports what jax made of
it): process index/count, device counts and the CUDA devices each process would drive. A Cloud
TPU VM is simulated with a VM metadata server on 127.0.0.1. The preemption test sends SIGTERM to
a real `python -m uwm_jax.train` run joined through jax.distributed.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests import fake_cluster
from tests.helpers import xla_flags
from uwm_jax.training import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(REPO, "tests", "distributed_probe.py")
TIMEOUT_S = 120


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _clean_env(num_cpu_devices=2, **extra):
  """This process's environment without cluster or proxy variables (the compilation cache's
  kept: tests/conftest.py), with the tests' XLA flags, plus `extra`."""
  env = {k: v for k, v in os.environ.items()
         if (not k.startswith(("SLURM_", "JAX_", "TPU_", "MEGASCALE_", "OMPI_"))
             or k.startswith(("JAX_COMPILATION_CACHE_", "JAX_PERSISTENT_CACHE_")))
         and "proxy" not in k.lower()}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO, XLA_FLAGS=xla_flags(num_cpu_devices))
  env.update({k: str(v) for k, v in extra.items()})
  return env


def _run_probes(envs):
  """Start one probe per environment at once; their JSON reports in order."""
  procs = [subprocess.Popen([sys.executable, PROBE], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for env in envs]
  reports = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=TIMEOUT_S)
      assert p.returncode == 0, err[-3000:]
      reports.append((json.loads(out.strip().splitlines()[-1]), err))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return reports


# ------------------------------------------------------------------------------ pure functions
def test_explicit_arguments_flags_then_environment_then_jax_detection():
  assert distributed.explicit_arguments("h:1", 2, 1, environ={}) == ("h:1", 2, 1, "flags")
  env = {"JAX_COORDINATOR_ADDRESS": "h:2", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
  assert distributed.explicit_arguments(environ=env) == ("h:2", 4, 3, "JAX_* environment")
  assert distributed.explicit_arguments("h:1", 2, 0, environ=env)[3] == "flags"
  # Nothing explicit (a SLURM job, a TPU slice, one process): jax detects the rest.
  assert distributed.explicit_arguments(environ={"SLURM_NTASKS": "2"}) == (None,) * 4
  with pytest.raises(ValueError, match="needs a coordinator address"):
    distributed.explicit_arguments("h:1", 2, -1, environ={})
  with pytest.raises(ValueError, match="needs a coordinator address"):
    distributed.explicit_arguments(environ={"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2",
                                            "JAX_COORDINATOR_ADDRESS": "h:1"})


def test_unused_gpus_warning_for_one_task_per_node():
  one_per_node = {"SLURM_GPUS_ON_NODE": "8", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_NODES": "2"}
  warning = distributed.unused_gpus_warning(1, one_per_node)
  assert "1 of the 8 GPUs" in warning and "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in warning
  assert distributed.unused_gpus_warning(8, one_per_node) is None
  one_per_gpu = dict(one_per_node, SLURM_NTASKS="16")
  assert distributed.unused_gpus_warning(1, one_per_gpu) is None
  assert distributed.unused_gpus_warning(1, {}) is None


def test_too_few_cpus_warning_for_an_srun_without_cpus_per_task():
  one_per_node = {"SLURM_JOB_CPUS_PER_NODE": "64(x2)", "SLURM_NTASKS": "2",
                  "SLURM_STEP_NUM_NODES": "2"}
  warning = distributed.too_few_cpus_warning(1, one_per_node)
  assert "1 of the 64 CPUs" in warning and "--cpus-per-task=64" in warning
  assert distributed.too_few_cpus_warning(64, one_per_node) is None
  one_per_gpu = dict(one_per_node, SLURM_NTASKS="16")  # 8 per node: 8 CPUs each
  assert distributed.too_few_cpus_warning(8, one_per_gpu) is None
  assert "1 of the 8 CPUs" in distributed.too_few_cpus_warning(1, one_per_gpu)
  assert distributed.too_few_cpus_warning(1, {}) is None


# ---------------------------------------------------------------------------- simulated jobs
def test_single_process_without_any_cluster_environment():
  (report, err), = _run_probes([_clean_env()])
  assert report["joined"] is False and report["process_count"] == 1
  assert report["device_count"] == 2 and report["cuda_visible_devices"] == "all"
  assert "Single process" in err


def _slurm_env(procid, localid, ntasks, nodes, port, **extra):
  return _clean_env(SLURM_JOB_ID=4242, SLURM_STEP_NODELIST="127.0.0.1", SLURM_NTASKS=ntasks,
                    SLURM_PROCID=procid, SLURM_LOCALID=localid, SLURM_STEP_NUM_NODES=nodes,
                    JAX_COORDINATOR_PORT=port, **extra)


def test_slurm_one_task_per_gpu_gives_each_task_its_gpu():
  """--ntasks-per-node=2 on one node: jax's SLURM detection, task i drives GPU i."""
  port = _free_port()
  reports = _run_probes([_slurm_env(i, i, 2, 1, port, SLURM_GPUS_ON_NODE=2) for i in range(2)])
  for i, (r, err) in enumerate(reports):
    assert r["joined"] and r["process_index"] == i and r["process_count"] == 2
    assert r["local_device_count"] == 2 and r["device_count"] == 4
    assert r["cuda_visible_devices"] == str(i)
    assert r["coordinator"] == f"127.0.0.1:{port}"
    assert f"process {i} of 2" in err and "GPUs of its node" not in err


def test_slurm_one_task_per_node_drives_every_gpu():
  """launch/slurm_gpu.sh: one task per node (SLURM_LOCALID 0 on each of two nodes) with
  JAX_LOCAL_DEVICE_IDS naming every GPU of the node."""
  port = _free_port()
  ids = "0,1,2,3,4,5,6,7"
  reports = _run_probes([_slurm_env(i, 0, 2, 2, port, JAX_LOCAL_DEVICE_IDS=ids,
                                    SLURM_GPUS_ON_NODE=8) for i in range(2)])
  for i, (r, _) in enumerate(reports):
    assert r["joined"] and r["process_index"] == i and r["process_count"] == 2
    assert r["cuda_visible_devices"] == ids
  # Without it, jax's default would leave 7 of 8 GPUs idle: the start-up log says so.
  port = _free_port()
  reports = _run_probes([_slurm_env(i, 0, 2, 2, port, SLURM_GPUS_ON_NODE=8) for i in range(2)])
  for r, err in reports:
    assert r["cuda_visible_devices"] == "0"
    assert "GPUs of its node" in err


def test_cloud_tpu_slice_detected_by_jax():
  """Two workers of a TPU VM slice: no flag, no variable of ours; jax's detection reads the
  VM metadata, and never restricts the devices on TPU."""
  servers = [fake_cluster.metadata_server(i) for i in range(2)]
  try:
    port = _free_port()
    envs = [_clean_env(PRETEND_CLOUD_TPU_VM=1, JAX_COORDINATOR_PORT=port,
                       GCE_METADATA_IP=f"127.0.0.1:{s.server_address[1]}") for s in servers]
    reports = _run_probes(envs)
  finally:
    for s in servers:
      s.shutdown()
  for i, (r, err) in enumerate(reports):
    assert r["joined"] and r["process_index"] == i and r["process_count"] == 2
    assert r["local_device_count"] == 2 and r["device_count"] == 4
    assert r["cuda_visible_devices"] == "all"
    assert r["coordinator"] == f"127.0.0.1:{port}"
    assert f"jax.distributed (detected by jax): process {i} of 2" in err


# ---------------------------------------------------------------------------------- preemption
def test_sigterm_saves_a_checkpoint_and_stops(tmp_path):
  """A run joined through jax.distributed (here one process, as on a one-node SLURM job) that
  gets SIGTERM saves a checkpoint at the next step, waits for it and exits with 143. The tiny
  config on 8 devices: the train step tests/test_train_processes.py's runs compile too."""
  workdir = str(tmp_path / "run")
  address = f"127.0.0.1:{_free_port()}"
  flags = {"num_steps": 1000, "train.log_every": 1, "train.save_every": 1000,
           "train.eval_every": 0, "train.eval_at_end": False, "train.tensorboard": False,
           "train.progress_bar": False}
  cmd = [sys.executable, "-m", "uwm_jax.train", f"--config={REPO}/configs/tiny.py",
         f"--workdir={workdir}", *[f"--config.{k}={v}" for k, v in flags.items()],
         f"--coordinator_address={address}", "--num_processes=1", "--process_id=0"]
  env = _clean_env(num_cpu_devices=8)
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  metrics = os.path.join(workdir, "metrics.jsonl")
  try:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      if os.path.exists(metrics) and open(metrics).read().strip():
        break
      time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=TIMEOUT_S)[0]
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 143, output[-3000:]
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert "Preempted: stopped after saving the checkpoint of step" in output
  preempted_at = int(output.split("checkpoint of step ")[1].split(";")[0])
  assert steps[-1] == preempted_at and 1 < preempted_at < 1000
