"""Rehearsals of the production path: launch/tpu_vm.sh and launch/slurm_gpu.sh run for real
against fake clouds whose machines are local processes (tests/fake_cluster).

TPU: the fake `gcloud` creates a 2-worker slice (a queued resource), copies the project to each
worker's home (the COMMITTED tree, as `install` packs it: commit a change to uwm_jax before this
test can see it) and runs `ssh --worker=...` commands as local processes; `install` builds each
worker's ~/venv with pip from this machine's packages (PYTHON=this interpreter,
--system-site-packages, no index: reinstalling jax per test would take minutes) and mounts the
data bucket read-only (fake gcsfuse); `train` runs `python -m uwm_jax.train` on CPU jax, the
two workers joined by jax's own Cloud TPU detection (the VM metadata on 127.0.0.1), and writes
the run to `gs://BUCKET/runs/TPU_NAME` on a GCS emulator (fake-gcs-server on 127.0.0.1).
SLURM: the fake `sbatch` runs the batch script under a controller, `srun` runs its tasks with
the variables jax's SLURM detection reads, as SLURM does (see tests/fake_cluster/slurm.py).

Every run trains configs/tiny.py, made smaller still (TINIEST: the rehearsals test the launch
path, not the model), for a few steps. The fake clusters' processes share compiled executables
(tests/fake_cluster: process 0 compiles each program once for all processes and runs), so only
the first run of each rehearsal compiles.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests import fake_cluster
from tests import gcs_emulator
from tests.fake_cluster import wait_for
from uwm_jax.runs import checksums, metrics_writer, storage, workdir_lock
from uwm_jax.runs import checkpoint as ckpt
from uwm_jax.training import resume

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_TIMEOUT_S = 600  # install + start-up + compiling the tiny step on a loaded 2-core machine
TPU_NUM_STEPS = 12
# configs/tiny.py with one narrow block, a narrow ResNet, no augmentation, a batch of 2 (one
# window per process): its step compiles in about half the time of the tiny config's and runs
# faster; the launch path is the same.
TINIEST = ("--config.model.depth=1 --config.model.embed_dim=32 "
           "--config.model.timestep_embed_dim=16 --config.model.num_heads=2 "
           "--config.model.num_registers=1 --config.model.resnet_width=4 "
           "--config.model.image_feature_dim=16 --config.model.random_crop=False "
           "--config.model.brightness=0 --config.model.contrast=0 --config.model.saturation=0 "
           "--config.model.hue=0 --config.batch_size=2")
# Quietly: a row per step, no evaluation, checkpoints only when asked.
QUIET = ("--config.train.log_every=1 --config.train.eval_every=0 "
         "--config.train.eval_at_end=False --config.train.tensorboard=False "
         "--config.train.progress_bar=False --config.train.save_every=1000")
COMMIT_FILENAME = "commit_success.txt"  # Orbax's commit marker of a step on gs://


def _steps(workdir):
  """Steps logged in metrics.jsonl (a resumed run logs some twice)."""
  if not storage.exists(os.path.join(workdir, metrics_writer.METRICS_FILENAME)):
    return []
  return [r["step"] for r in metrics_writer.read_metrics(workdir)]


def _checkpoints(workdir):
  """The committed checkpoint steps."""
  return ckpt.finished_steps(ckpt.checkpoint_dir(workdir))


def _preempted_step(log):
  steps = re.findall(r"Preempted: stopped after saving the checkpoint of step (\d+)", log)
  assert steps, log[-3000:]
  return int(steps[-1])


def _read(path):
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.read()


# ------------------------------------------------------------------------------- Cloud TPU VM
RUNS_BUCKET = "uwm-runs"
TPU_NAME = "uwm-test"


class _Launch:
  """`launch/tpu_vm.sh STAGE` run by the test as a user runs it, its output in a file."""

  def __init__(self, tmp_path, stage, env):
    self.out_path = tmp_path / f"launch-{stage}-{time.time():.0f}.out"
    with open(self.out_path, "w", encoding="utf-8") as out:
      self.proc = subprocess.Popen(["bash", "launch/tpu_vm.sh", stage], cwd=REPO, env=env,
                                   stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT)

  def output(self):
    return _read(self.out_path)

  def wait(self, timeout_s=START_TIMEOUT_S):
    try:
      self.proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      raise AssertionError(f"launch/tpu_vm.sh did not end:\n{self.output()[-4000:]}") from None
    return self.proc.returncode


@pytest.fixture
def runs_bucket():
  """A GCS emulator holding RUNS_BUCKET (the bucket for runs); this process reads it too."""
  if gcs_emulator.missing_reason():
    pytest.skip(gcs_emulator.missing_reason())
  with gcs_emulator.serving(buckets=(RUNS_BUCKET,)) as emulator:
    yield emulator


@pytest.fixture
def tpu_cloud(tmp_path, runs_bucket):
  """A slice of 2 workers whose VMs reach Cloud Storage at the emulator: STORAGE_EMULATOR_HOST
  is part of each VM's own environment, standing in for its service account's access to GCS
  (`gcloud ... ssh` forwards nothing from the user's machine, and launch/tpu_vm.sh passes the
  workers only its own settings)."""
  cloud = fake_cluster.TpuCloud(str(tmp_path / "cloud"), workers=2,
                                crash_file=str(tmp_path / "crash.json"),
                                environ=runs_bucket.environ())
  os.makedirs(os.path.join(cloud.gcs, "uwm-data", "droid"))
  with open(os.path.join(cloud.gcs, "uwm-data", "droid", "README"), "w") as f:
    f.write("converted data\n")
  yield cloud
  cloud.close()


def _tpu_env(cloud, tmp_path, num_steps, **extra):
  return cloud.launch_env(
      TPU_NAME=TPU_NAME, ZONE="us-central2-b", ACCELERATOR_TYPE="v4-16", QUEUED=1, POLL_S=0,
      CONFIG="configs/tiny.py", BUCKET=RUNS_BUCKET,
      TRAIN_ARGS=f"--config.num_steps={num_steps} {TINIEST} {QUIET}",
      PYTHON=sys.executable, VENV_ARGS="--system-site-packages --without-pip",
      DATA_BUCKET="uwm-data", DATA_MOUNT="~/data", TPU_LOCKFILE="~/libtpu_lockfile",
      LOG_DIR=str(tmp_path / "logs"), STOP_GRACE_S=60, CHECK_PLATFORM="cpu", **extra)


def _trainer_logs(tmp_path):
  """The newest `train`'s worker logs (LOG_DIR/<time>/worker-W.log)."""
  runs = sorted((tmp_path / "logs").iterdir())
  return sorted(runs[-1].glob("worker-*.log"))


def _assert_committed(workdir, step):
  """Checkpoint `step` on the bucket: committed by Orbax, its checksums written."""
  folder = f"{ckpt.checkpoint_dir(workdir)}/{step}"
  for name in (COMMIT_FILENAME, checksums.MANIFEST_FILENAME):
    assert storage.exists(f"{folder}/{name}"), (name, storage.listdir(folder))


def test_tpu_slice_installs_trains_to_a_bucket_is_preempted_stops_on_a_crash_and_resumes(
    tpu_cloud, tmp_path):
  """One run of TPU_NUM_STEPS steps to gs://RUNS_BUCKET/runs/TPU_NAME (BUCKET=) through three
  `train`s: preempted, crashed, finished. The step compiles in the first only."""
  cloud = tpu_cloud
  workdir = f"gs://{RUNS_BUCKET}/runs/{TPU_NAME}"
  lock = f"{workdir}/{workdir_lock.LOCK_FILENAME}"
  env = _tpu_env(cloud, tmp_path, TPU_NUM_STEPS)
  worker0_log = os.path.join(cloud.homes[0], "uwm_train.log")  # the trainer's own log

  # 1. `all`: a queued resource, install on both workers, train. SIGTERM to worker 1's trainer
  #    once the first step has run (a maintenance event): both save a checkpoint at the same
  #    step and exit 143.
  launch = _Launch(tmp_path, "all", env)
  wait_for(lambda: (os.path.exists(worker0_log) and "Train step compiled" in _read(worker0_log))
           or launch.proc.poll() is not None, START_TIMEOUT_S, "the first training step")
  assert launch.proc.poll() is None, launch.output()[-4000:]
  trainers = [cloud.trainer_pid(w) for w in range(2)]
  assert all(fake_cluster.alive(pid) for pid in trainers), trainers
  os.kill(trainers[1], signal.SIGTERM)
  assert launch.wait() == 143, launch.output()[-4000:]
  out = launch.output()
  assert "queued resource uwm-test-qr: ACTIVE" in out
  assert f"--workdir={workdir}" in out  # BUCKET=: gs://BUCKET/runs/TPU_NAME
  assert "rerun 'launch/tpu_vm.sh train' to resume" in out
  assert "worker 0: exit status 143" in out and "worker 1: exit status 143" in out
  logs = _trainer_logs(tmp_path)
  assert [p.name for p in logs] == ["worker-0.log", "worker-1.log"]
  saved = {_preempted_step(_read(p)) for p in logs}
  assert len(saved) == 1, saved  # one step, agreed by both workers
  preempted_at = saved.pop()
  assert preempted_at < TPU_NUM_STEPS
  assert "jax.distributed (detected by jax): process 1 of 2" in _read(logs[1])
  assert not any(fake_cluster.alive(pid) for pid in trainers)
  # On the bucket: that step's checkpoint, committed; the metrics up to it; the lock released.
  assert _checkpoints(workdir)[-1] == preempted_at
  _assert_committed(workdir, preempted_at)
  assert sorted(set(_steps(workdir))) == list(range(1, preempted_at + 1))
  assert not storage.exists(lock)
  # The data bucket is mounted read-only once per worker, by install (train found it mounted).
  for w in range(2):
    home = cloud.homes[w]
    assert cloud.mounts(w) == [(os.path.join(home, "data"), "uwm-data", "ro")]
    assert _read(os.path.join(home, "data", "droid", "README")) == "converted data\n"
  # Workers run the project installed from the committed tree into their own ~/venv.
  where = subprocess.run([os.path.join(cloud.homes[0], "venv", "bin", "python"), "-c",
                          "import uwm_jax; print(uwm_jax.__file__)"], env=cloud.machine_envs[0],
                         cwd="/", capture_output=True, text=True, check=True).stdout
  assert where.startswith(os.path.join(cloud.homes[0], "uwm_jax", "uwm_jax"))

  # 2. `train` again: both workers resume from the bucket (process 0 uploads the dataset
  #    statistics, the others wait for them) and run a step; then worker 1 dies (a hardware
  #    fault). Worker 0 is stopped at once instead of waiting at the next step's collective;
  #    `train` fails with worker 1's status and prints the end of its log.
  with open(tmp_path / "crash.json", "w") as f:
    json.dump([{"process": 1, "when": "training"}], f)
  crash = _Launch(tmp_path, "train", env)
  assert crash.wait() == 1, crash.output()[-4000:]
  out = crash.output()
  assert f"Training {TPU_NUM_STEPS} steps from step {preempted_at};" in out  # resumed
  assert "Worker 1 failed (exit status 1): stopping the other workers" in out
  # Worker 0 ended by the supervisor's signal (SIGTERM, else SIGKILL), not left to jax's own
  # heartbeat timeout, which aborts it (status 134) only a minute or more later.
  assert re.search(r"^worker 0: exit status (137|143)$", out, re.M), out[-4000:]
  assert "(fake fault) simulated hardware failure during training" in out  # its log, printed
  assert cloud.trainer_pid(0) is None
  assert json.loads(_read(tmp_path / "crash.json")) == []  # the fault fired
  logs = _trainer_logs(tmp_path)
  # Worker 1 died after its first step (tests/fake_cluster/machine), past the statistics.
  assert f"Resumed from {workdir}/checkpoints at step {preempted_at}." in _read(logs[1])
  stats = json.loads(storage.read_text(f"{workdir}/{resume.STATS_FILENAME}"))
  assert stats, stats

  # 3. What an unclean end leaves (a kill -9, a lost connection): the libtpu lock file on
  #    worker 1, a process holding the TPU on worker 0. `train` stops the process, removes the
  #    lock files, resumes from the bucket and finishes.
  with open(os.path.join(cloud.homes[1], "libtpu_lockfile"), "w") as f:
    f.write("12345")
  leftover = subprocess.Popen(
      [os.path.join(cloud.homes[0], "venv", "bin", "python"), "-c",
       "import jax, time; print('holding the TPU', flush=True); time.sleep(600)"],
      env=cloud.machine_envs[0], stdout=subprocess.PIPE, text=True, start_new_session=True)
  try:
    assert leftover.stdout.readline() == "holding the TPU\n"
    rerun = _Launch(tmp_path, "train", env)
    assert rerun.wait() == 0, rerun.output()[-4000:]
    assert leftover.poll() is not None  # stopped by the rerun
  finally:
    if leftover.poll() is None:
      leftover.kill()
    leftover.wait()
  out = rerun.output()
  assert "removing " in out and "libtpu_lockfile" in out
  assert "Training finished on all 2 workers" in out
  assert f"Training {TPU_NUM_STEPS} steps from step {preempted_at};" in out
  # On the bucket: every step's metrics once or more, the last checkpoint, the lock released.
  assert sorted(set(_steps(workdir))) == list(range(1, TPU_NUM_STEPS + 1))
  assert _checkpoints(workdir)[-1] == TPU_NUM_STEPS
  _assert_committed(workdir, TPU_NUM_STEPS)
  assert not storage.exists(lock)


# --------------------------------------------------------------------------------------- SLURM
@pytest.fixture
def slurm_cluster(tmp_path):
  cluster = fake_cluster.SlurmCluster(str(tmp_path / "slurm"))
  yield cluster
  cluster.kill_all()


def _slurm_submit(cluster, tmp_path, workdir, **extra):
  """Submit launch/slurm_gpu.sh's job (2 nodes, a task each); returns the job id."""
  venv = tmp_path / "venv"
  if not venv.exists():  # the user's venv (VENV): this machine's packages
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True, timeout=120)
  # TASK_WAIT_S: the tasks of a preempted job end within a second of each other (they save one
  # checkpoint together); a task left at a collective by a crashed one is killed 8 s later.
  settings = dict(WORKDIR=workdir, VENV=str(venv), NODES=2, GPUS_PER_NODE=1,
                  CPUS_PER_NODE=cluster.cpus_per_node, CONFIG="configs/tiny.py",
                  TRAIN_ARGS=f"--config.num_steps=1000 {TINIEST} {QUIET}", JOB_NAME="uwm-test",
                  SIGNAL_BEFORE=60, MAX_RESTARTS=1, TASK_WAIT_S=8)
  settings.update(extra)
  out = subprocess.run(["bash", "launch/slurm_gpu.sh"], cwd=REPO, capture_output=True, text=True,
                       env=cluster.launch_env(**settings), timeout=120, check=True).stdout
  return re.search(r"Submitted batch job (\d+)", out).group(1)


def _lock(workdir):
  try:
    return json.loads(_read(os.path.join(workdir, "lock.json")))
  except (FileNotFoundError, ValueError):
    return {}


def test_slurm_job_requeues_resume_take_over_the_lock_and_bound_crashes(slurm_cluster, tmp_path):
  """One job through four runs (SLURM_RESTART_COUNT 0-3); the step compiles in run 0 only."""
  cluster = slurm_cluster
  workdir = str(tmp_path / "run")
  # FAKE_CRASH: the crash injection file, read by the tasks (tests/fake_cluster/machine).
  job = _slurm_submit(cluster, tmp_path, workdir, FAKE_CRASH=str(tmp_path / "crash.json"))
  out_path = os.path.join(workdir, f"slurm-{job}.out")

  def output():
    return _read(out_path) if os.path.exists(out_path) else ""

  def restarted(n):
    return f"start restart={n} nodes=node-{2 * n},node-{2 * n + 1}" in cluster.events(job)

  def ended():
    return cluster.state(job)[:1] in (["COMPLETED"], ["FAILED"], ["CANCELLED"])

  # 1. Each node's task may use every CPU the job holds on it (srun --cpus-per-task).
  wait_for(lambda: len(_steps(workdir)) >= 2 or ended(), START_TIMEOUT_S,
           "the first training steps")
  assert not ended(), output()[-4000:]
  for process in range(2):
    assert re.search(rf"process {process} of 2, 1 local / 2 global devices \(cpu\), "
                     rf"{cluster.cpus_per_node} CPUs", output()), output()[-4000:]
  assert "CPUs its job holds for it" not in output()

  # 2. The time limit approaches (--signal=B:USR1@60): both tasks checkpoint at one step, exit
  #    143, the job requeues itself and resumes from that checkpoint on other nodes.
  cluster.request(job, "time_limit")
  wait_for(lambda: restarted(1) or ended(), 300, "the requeue before the time limit")
  saved = set(int(s) for s in re.findall(
      r"Preempted: stopped after saving the checkpoint of step (\d+)", output()))
  assert len(saved) == 1, output()[-4000:]
  limit_step = saved.pop()
  assert _checkpoints(workdir)[-1] == limit_step
  assert "time limit in 60 s: checkpointing and requeueing" in output()
  wait_for(lambda: output().count(f"Training 1000 steps from step {limit_step};") == 2
           or ended(), START_TIMEOUT_S, "the requeued job to resume")
  assert _lock(workdir).get("slurm_restart_count") == 1 and _lock(workdir)["host"] == "node-2"

  # 3. A node fails (every process killed at once; the lock stays, its heartbeat fresh): SLURM
  #    requeues the job onto other nodes, and it takes over its own lock. Then task 1 crashes
  #    after a step in this run and at start-up in the next: the first crash is requeued
  #    (MAX_RESTARTS=1), the second is not.
  with open(tmp_path / "crash.json", "w") as f:
    json.dump([{"process": 1, "when": "training"}, {"process": 1, "when": "start"}], f)
  cluster.request(job, "node_failure")
  wait_for(lambda: restarted(2) or ended(), 120, "the requeue after the node failure")
  wait_for(ended, 2 * START_TIMEOUT_S, "the job to end")
  out = output()
  assert re.search(r"Replacing the stale workdir lock .* on host node-2 .*it was taken by "
                   rf"restart 1 of this SLURM job {job} \(this is restart 2\)", out), out[-4000:]
  assert out.count(f"Training 1000 steps from step {limit_step};") == 4  # restarts 1, 2
  assert "(fake fault) simulated hardware failure during training" in out
  assert "crash 1 of at most 1 requeued (MAX_RESTARTS)" in out
  assert restarted(3) and "(fake fault) simulated hardware failure at start-up" in out
  assert "not requeued: 2 crashes, more than MAX_RESTARTS=1" in out
  assert cluster.state(job)[:2] == ["FAILED", "3"], (cluster.state(job), out[-4000:])
  assert not cluster.running_tasks(job)
