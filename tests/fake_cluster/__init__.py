"""Fake clouds whose machines are local processes, for rehearsing launch/tpu_vm.sh and
launch/slurm_gpu.sh end to end (tests/test_launch_rehearsal.py).

  bin/          the fake `gcloud` (gcloud.py) and `sbatch`/`srun`/`scontrol`/`scancel`
                (slurm.py), put first on PATH of the launch script
  machine/      sitecustomize.py, on PYTHONPATH of every process on a fake machine: its host
                name, jax's Cloud TPU VM detection, libtpu's lock file, fault injection
  machine_bin/  `sudo`, `gcsfuse`, `mountpoint`, `fusermount` of a fake TPU VM

`TpuCloud` sets up a slice of TPU VM workers (a home folder, a VM metadata server on
127.0.0.1 and an environment each); `SlurmCluster` a SLURM cluster with jobs run by a
controller process. Their processes run the real commands (pip, python -m uwm_jax.train with
CPU jax, joined through jax.distributed on 127.0.0.1).
"""

import http.server
import json
import os
import signal
import socket
import sys
import threading
import time

from tests.fake_cluster import slurm
from tests.fake_cluster.slurm import alive  # pylint: disable=unused-import (for tests)

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "bin")
MACHINE = os.path.join(HERE, "machine")
MACHINE_BIN = os.path.join(HERE, "machine_bin")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.1):
  """Poll `predicate` until it returns something true; AssertionError naming `what` after
  timeout_s."""
  deadline = time.time() + timeout_s
  while time.time() < deadline:
    value = predicate()
    if value:
      return value
    time.sleep(poll_s)
  raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def machine_env(home: str, devices: int, **extra) -> dict:
  """The environment a process on a fake machine starts with (not the test's: ssh and
  slurmd give a clean one): this machine's tools and Python, CPU jax with `devices` devices
  compiling at the tests' optimization level (tests/conftest.py), the tests' compilation cache
  settings, nothing proxy-related."""
  env = {"HOME": home, "PATH": f"{MACHINE_BIN}{os.pathsep}{os.environ['PATH']}",
         "LANG": "C.UTF-8", "PYTHONPATH": MACHINE, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
                      "--xla_backend_optimization_level=0"}
  for key in ("JAX_COMPILATION_CACHE_DIR", "JAX_COMPILATION_CACHE_MAX_SIZE",
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "USER", "LOGNAME", "TMPDIR"):
    if key in os.environ:
      env[key] = os.environ[key]
  env.update({k: str(v) for k, v in extra.items()})
  return env


def shared_compilation(root: str) -> dict:
  """The variables that make a fake cluster's processes share compiled executables
  (machine/sitecustomize.py, FAKE_SHARED_EXECUTABLES) through a compilation cache of the
  cluster's own, root/xla-cache: process 0 compiles each multi-process program once for all
  processes and runs, and the others wait for it. Never the tests' common cache: a process 0
  finding an entry that another cluster wrote meanwhile, while its process 1 had missed it,
  would leave process 1 waiting for a program nobody compiles."""
  return {"FAKE_SHARED_EXECUTABLES": 1,
          "JAX_COMPILATION_CACHE_DIR": os.path.join(root, "xla-cache")}


def _launch_env(**extra) -> dict:
  """The environment of a launch script run by a test (the user's machine): the fakes first
  on PATH."""
  env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
  env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
  env["FAKE_CLUSTER_PYTHON"] = sys.executable
  env.update({k: str(v) for k, v in extra.items()})
  return env


# ------------------------------------------------------------------------------- Cloud TPU VM
class _MetadataHandler(http.server.BaseHTTPRequestHandler):
  """The Cloud TPU VM metadata server of one worker (what jax's GCE TPU detection reads:
  agent-worker-number, worker-network-endpoints, tpu-env)."""
  attributes = {}

  def do_GET(self):  # pylint: disable=invalid-name
    key = self.path.rsplit("/", 1)[-1]
    if self.headers.get("Metadata-Flavor") != "Google" or key not in self.attributes:
      self.send_response(404)
      self.end_headers()
      return
    body = self.attributes[key].encode()
    self.send_response(200)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, *args):
    pass


def metadata_server(worker: int, workers: int = 2, accelerator_type: str = "v4-16"):
  """Worker `worker`'s metadata server on 127.0.0.1 (a thread; call .shutdown())."""
  attributes = {"agent-worker-number": str(worker),
                "worker-network-endpoints": ",".join(["127.0.0.1"] * workers),
                "tpu-env": f"ACCELERATOR_TYPE: '{accelerator_type}'\n"
                           f"TPU_PROCESS_BOUNDS: '1,1,{workers}'\n"}
  handler = type("Handler", (_MetadataHandler,), {"attributes": attributes})
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server


class TpuCloud:
  """A fake Google Cloud whose TPU VM slices have `workers` local workers, each with 1 CPU jax
  device, its own home (root/workers/W), host name tpu-w-W, metadata server and libtpu lock
  file (~/libtpu_lockfile: give the launch script TPU_LOCKFILE='~/libtpu_lockfile').

  Buckets for gcsfuse are folders under root/gcs. The workers' pip installs from what this
  machine has (no index): the image of the fake VMs is this machine. The workers share
  compiled executables (`shared_compilation`).
  """

  def __init__(self, root: str, workers: int = 2, queued_states=("ACCEPTED", "ACTIVE"),
               crash_file: str = "", environ=None):
    """crash_file: FAKE_CRASH of the workers (machine/sitecustomize.py: write it to make a
    worker's trainer die). environ: more variables of every worker's environment, the VMs'
    own configuration (e.g. STORAGE_EMULATOR_HOST: where the VMs reach Cloud Storage)."""
    self.root = root
    self.workers = workers
    self.homes = [os.path.join(root, "workers", str(w), "home") for w in range(workers)]
    self.gcs = os.path.join(root, "gcs")
    os.makedirs(self.gcs, exist_ok=True)
    self._servers = [metadata_server(w, workers) for w in range(workers)]
    port = free_port()
    self.machine_envs = []
    for w, home in enumerate(self.homes):
      machine_dir = os.path.dirname(home)
      os.makedirs(machine_dir, exist_ok=True)
      self.machine_envs.append(machine_env(
          home, devices=1, FAKE_HOSTNAME=f"tpu-w-{w}", FAKE_PROCESS_INDEX=w,
          FAKE_CLOUD_TPU_VM=1, GCE_METADATA_IP=f"127.0.0.1:{self._servers[w].server_address[1]}",
          JAX_COORDINATOR_PORT=port, FAKE_LIBTPU_LOCKFILE=os.path.join(home, "libtpu_lockfile"),
          FAKE_MACHINE_DIR=machine_dir, FAKE_GCS_DIR=self.gcs,
          PIP_NO_INDEX=1, PIP_NO_BUILD_ISOLATION=0, FAKE_CRASH=crash_file,
          **shared_compilation(root), **(environ or {})))
    with open(os.path.join(root, "config.json"), "w", encoding="utf-8") as f:
      json.dump({"workers": workers, "homes": self.homes, "machine_env": self.machine_envs,
                 "queued_states": list(queued_states)}, f)

  def launch_env(self, **settings) -> dict:
    return _launch_env(FAKE_CLOUD_DIR=self.root, **settings)

  def calls(self):
    with open(os.path.join(self.root, "calls.log"), encoding="utf-8") as f:
      return [json.loads(line) for line in f]

  def mounts(self, worker: int):
    """[(folder, bucket, options)] mounted on the worker."""
    try:
      with open(os.path.join(os.path.dirname(self.homes[worker]), "mounts"),
                encoding="utf-8") as f:
        return [tuple(line.split()) for line in f if line.strip()]
    except FileNotFoundError:
      return []

  def trainer_pid(self, worker: int):
    """The PID of the worker's running trainer (launch/tpu_worker.sh writes it), else None."""
    try:
      with open(os.path.join(self.homes[worker], "uwm_train.pid"), encoding="utf-8") as f:
        return int(f.read())
    except (FileNotFoundError, ValueError):
      return None

  def close(self):
    """Stop the metadata servers and any trainer still running on a worker."""
    for server in self._servers:
      server.shutdown()
    for w in range(self.workers):
      pid = self.trainer_pid(w)
      if pid and alive(pid):
        os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------- SLURM
class SlurmCluster:
  """A fake SLURM cluster (tests/fake_cluster/slurm.py) whose nodes have this machine's CPUs."""

  def __init__(self, root: str):
    self.root = root
    self.cpus_per_node = len(os.sched_getaffinity(0))
    os.makedirs(os.path.join(root, "jobs"), exist_ok=True)
    with open(os.path.join(root, "config.json"), "w", encoding="utf-8") as f:
      json.dump({"cpus_per_node": self.cpus_per_node, "machine_dir": MACHINE}, f)

  def launch_env(self, **settings) -> dict:
    """The submitting user's environment: the fakes on PATH, CPU jax with 1 device per task,
    the cluster's shared compilation (`shared_compilation`; tasks inherit it: sbatch and srun
    export everything)."""
    env = _launch_env(FAKE_SLURM_DIR=self.root, **settings)
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1 "
               "--xla_backend_optimization_level=0")
    env.update({k: str(v) for k, v in shared_compilation(self.root).items()})
    for key in list(env):
      if key.startswith(("SLURM_", "SRUN_", "SBATCH_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                         "JAX_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS", "TPU_", "MEGASCALE_")):
        del env[key]
    env.update({k: str(v) for k, v in settings.items()})
    return env

  def job_dir(self, job_id) -> str:
    return os.path.join(self.root, "jobs", str(job_id))

  def request(self, job_id, what: str):
    """time_limit, preempt, node_failure or kill (see tests/fake_cluster/slurm.py)."""
    slurm.request(job_id, what, self.root)

  def state(self, job_id) -> list:
    """["RUNNING", restart] / ["COMPLETED"|"FAILED", restart, status] / ["CANCELLED", restart]."""
    try:
      with open(os.path.join(self.job_dir(job_id), "state"), encoding="utf-8") as f:
        return f.read().split()
    except FileNotFoundError:
      return []

  def events(self, job_id) -> list:
    try:
      with open(os.path.join(self.job_dir(job_id), "events.log"), encoding="utf-8") as f:
        return [line.split(" ", 1)[1].strip() for line in f]
    except FileNotFoundError:
      return []

  def running_tasks(self, job_id) -> list:
    """PIDs of the job's live tasks."""
    return slurm.task_pids(job_id, self.root)

  def kill_all(self):
    """SIGKILL every job still running, without requeue (test teardown)."""
    for job_id in os.listdir(os.path.join(self.root, "jobs")):
      if self.state(job_id)[:1] == ["RUNNING"]:
        self.request(job_id, "kill")
