"""Launch scripts: valid bash; a dry run prints the commands that matter; the queued-resource
wait runs against a stand-in gcloud; the SLURM batch script's CPUs, environment,
checkpoint-and-requeue and crash requeues run on the fake SLURM of tests/fake_cluster with a
stand-in trainer (tests/test_launch_rehearsal.py runs the real trainer the same way)."""

import os
import signal
import subprocess
import time

import pytest

from tests import fake_cluster
from tests.fake_cluster import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("launch/common.sh", "launch/tpu_vm.sh", "launch/slurm_gpu.sh")


def _run(args, **env):
  return subprocess.run(["bash", *args], cwd=REPO, capture_output=True, text=True, check=True,
                        env=dict(os.environ, **env), timeout=60).stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
  subprocess.run(["bash", "-n", os.path.join(REPO, script)], check=True, timeout=60)


def _commands(out):
  return [l for l in out.splitlines() if l.startswith("+ ")]


def test_tpu_dry_run_creates_installs_and_trains_on_every_worker():
  out = _run(["launch/tpu_vm.sh", "--dry-run", "all"], TPU_NAME="t1", ZONE="z1",
             ACCELERATOR_TYPE="v5p-64", CONFIG="configs/libero90.py", BUCKET="b1",
             TRAIN_ARGS="--config.seed=3", DATA_BUCKET="d1", DATA="/mnt/uwm-data/l90",
             SOURCE="libero_90")
  lines = _commands(out)
  assert lines[0].startswith("+ gcloud compute tpus tpu-vm create t1 --accelerator-type v5p-64")
  assert "--version v2-alpha-tpuv5" in lines[0] and "--zone z1" in lines[0]
  assert any(l.startswith("+ git ") and " archive " in l for l in lines)
  install = [l for l in lines if "uv pip install" in l]
  assert len(install) == 1 and "--worker=all" in install[0]
  # A uv-managed Python 3.11 (the images have 3.10), only the training core + TPU jax, pinned.
  assert "uv venv -q --python 3.11 --managed-python" in install[0]
  assert "-c ~/uwm_jax/requirements.txt -e \"$HOME/uwm_jax[tpu]\"" in install[0]
  assert "-r ~/uwm_jax/requirements.txt" not in install[0]
  # gcsfuse from Google's repository; the data bucket mounted (read-only) by the worker script.
  assert "install -y gcsfuse" in install[0]
  assert "DATA_BUCKET=d1 DATA_MOUNT=/mnt/uwm-data" in install[0]
  assert "bash ~/uwm_jax/launch/tpu_worker.sh mount" in install[0]
  # train: first stop what an earlier run left, then one supervised ssh per worker.
  stop, train = lines[-2:]
  assert "--worker=all" in stop and "tpu_worker.sh stop 180" in stop
  assert "--worker=0" in train
  assert ("tpu_worker.sh train --config=configs/libero90.py --workdir=gs://b1/runs/t1 "
          "--config.data.sources.libero_90.path=/mnt/uwm-data/l90 --config.seed=3") in train
  assert not any("queued-resources" in l for l in lines)


def test_tpu_dry_run_queued_resource_waits_until_active():
  out = _run(["launch/tpu_vm.sh", "--dry-run", "all"], QUEUED="1", SPOT="1", TPU_NAME="t2",
             ACCELERATOR_TYPE="v4-16")
  lines = _commands(out)
  assert lines[0].startswith("+ gcloud compute tpus queued-resources create t2-qr --node-id t2")
  assert "--spot" in lines[0] and "--runtime-version tpu-ubuntu2204-base" in lines[0]
  # The state is polled before anything is installed.
  assert lines[1].startswith("+ gcloud compute tpus queued-resources describe t2-qr")
  assert "value(state.state)" in lines[1] and "until ACTIVE" in lines[1]
  assert "uv pip install" in lines[4] and "tpu_worker.sh stop" in lines[5]
  assert "tpu_worker.sh train" in lines[6]


def _fake_gcloud(tmp_path, states):
  """A `gcloud` on PATH that answers `queued-resources describe` with the next of `states`."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (tmp_path / "states").write_text("\n".join(states) + "\n")
  script = bin_dir / "gcloud"
  script.write_text(f"""#!/usr/bin/env bash
echo "$*" >> {tmp_path}/calls
if [[ "$*" == *"queued-resources describe"* ]]; then
  head -1 {tmp_path}/states; sed -i 1d {tmp_path}/states
fi
""")
  script.chmod(0o755)
  return dict(PATH=f"{bin_dir}:{os.environ['PATH']}", QUEUED="1", POLL_S="0", TPU_NAME="t3")


@pytest.mark.parametrize("final", ["ACTIVE", "FAILED", "SUSPENDED"])
def test_tpu_wait_polls_until_active_or_fails(tmp_path, final):
  env = _fake_gcloud(tmp_path, ["ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING", final])
  proc = subprocess.run(["bash", "launch/tpu_vm.sh", "wait"], cwd=REPO, capture_output=True,
                        text=True, env=dict(os.environ, **env), timeout=60)
  assert (tmp_path / "calls").read_text().count("queued-resources describe t3-qr") == 4
  assert "t3-qr: PROVISIONING" in proc.stdout
  if final == "ACTIVE":
    assert proc.returncode == 0, proc.stderr
  else:
    assert proc.returncode != 0 and f"is {final}" in proc.stderr


def test_tpu_wait_gives_up_after_the_timeout(tmp_path):
  env = _fake_gcloud(tmp_path, ["WAITING_FOR_RESOURCES"] * 5)
  proc = subprocess.run(["bash", "launch/tpu_vm.sh", "wait"], cwd=REPO, capture_output=True,
                        text=True, env=dict(os.environ, WAIT_TIMEOUT_S="0", **env), timeout=60)
  assert proc.returncode != 0 and "not ACTIVE after 0 s" in proc.stderr


def test_slurm_dry_run_prints_the_batch_script():
  out = _run(["launch/slurm_gpu.sh", "--dry-run"], NODES="4", GPUS_PER_NODE="4",
             WORKDIR="/shared/w", CONFIG="configs/droid_cotrain.py", DATA="/shared/d/droid",
             INIT_FROM="/shared/init/checkpoints", TRAIN_ARGS="--config.seed=3")
  assert "#SBATCH --nodes=4" in out and "#SBATCH --gpus-per-node=4" in out
  # One task per node driving all of its GPUs (jax's SLURM default would give it GPU 0 only).
  assert "#SBATCH --ntasks-per-node=1" in out
  assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3\n" in out
  # Resubmission: requeue on preemption, a signal before the time limit, output appended.
  assert "#SBATCH --requeue" in out and "#SBATCH --signal=B:USR1@600" in out
  assert "trap on_time_limit USR1" in out and 'scontrol requeue "${SLURM_JOB_ID}"' in out
  assert "srun --wait=120 --cpus-per-task=\"${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE}}\" " \
         "\\\n  --export=ALL python -m uwm_jax.train --config=configs/droid_cotrain.py " \
         "--workdir=/shared/w --config.data.sources.droid.path=/shared/d/droid " \
         "--config.init_from=/shared/init/checkpoints --config.seed=3 &" in out
  assert out.rstrip().splitlines()[-1] == "+ sbatch /shared/w/uwm.sbatch"


# A stand-in for `python -m uwm_jax.train` in the job's venv (VENV/bin/python), run by the fake
# SLURM (tests/fake_cluster/slurm.py) as the tasks of a job: it records what each task saw and
# acts out PLAN's line for the job's restart count: "exit N", or "run" (train until SIGTERM,
# then exit 143 as the trainer does after its checkpoint).
STAND_IN = """#!/usr/bin/env bash
here=$(dirname "$0")
echo "task ${SLURM_PROCID} restart ${SLURM_RESTART_COUNT:-0} cpus $(nproc)" \
  "devices ${JAX_LOCAL_DEVICE_IDS:-none} args $*" >> "${here}/../tasks.log"
action=$(sed -n "$(( ${SLURM_RESTART_COUNT:-0} + 1 ))p" "${here}/../plan")
if [[ "${action}" == run ]]; then
  trap 'echo "task ${SLURM_PROCID} saved" >> "${here}/../tasks.log"; exit 143' TERM
  echo running > "${here}/../running.${SLURM_PROCID}"
  for i in $(seq 1 600); do sleep 0.1; done
  exit 0
fi
exit ${action#exit }
"""


def _submit_stand_in(tmp_path, plan, **settings):
  """Submit launch/slurm_gpu.sh's job, 2 nodes, to a fake SLURM cluster whose tasks run the
  stand-in trainer; returns (cluster, job id, workdir)."""
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  (venv / "bin" / "activate").write_text(f'export PATH="{venv}/bin:$PATH"\n')
  (venv / "bin" / "python").write_text(STAND_IN)
  (venv / "bin" / "python").chmod(0o755)
  (venv / "plan").write_text("\n".join(plan) + "\n")
  cluster = fake_cluster.SlurmCluster(str(tmp_path / "slurm"))
  workdir = str(tmp_path / "run")
  env = cluster.launch_env(WORKDIR=workdir, VENV=str(venv), NODES=2, GPUS_PER_NODE=2,
                           CPUS_PER_NODE=cluster.cpus_per_node, **settings)
  out = subprocess.run(["bash", "launch/slurm_gpu.sh"], cwd=REPO, capture_output=True, text=True,
                       env=env, timeout=60, check=True).stdout
  return cluster, out.split("Submitted batch job ")[1].split()[0], workdir


def _job_end(cluster, job, timeout_s=120):
  try:
    return wait_for(lambda: cluster.state(job)[:1] in (["COMPLETED"], ["FAILED"]) and
                    cluster.state(job), timeout_s, f"job {job} to end")
  finally:
    cluster.kill_all()


def _tasks(tmp_path):
  return (tmp_path / "venv" / "tasks.log").read_text().splitlines()


def test_slurm_tasks_get_the_jobs_cpus_and_environment(tmp_path):
  """srun --cpus-per-task: each node's task may use every CPU the job holds on the node (since
  Slurm 22.05 srun does not inherit sbatch's, and a task gets one); srun --export=ALL: the
  tasks see the venv and JAX_LOCAL_DEVICE_IDS also when jobs are submitted with
  --export=NONE. A finished run is not requeued."""
  cluster, job, workdir = _submit_stand_in(tmp_path, ["exit 0"], SBATCH_EXPORT="NONE")
  assert _job_end(cluster, job) == ["COMPLETED", "0", "0"]
  cpus = cluster.cpus_per_node
  assert sorted(_tasks(tmp_path)) == [
      f"task {i} restart 0 cpus {cpus} devices 0,1 args -m uwm_jax.train "
      f"--config=configs/droid.py --workdir={workdir}" for i in range(2)]
  assert not any("requeue" in e for e in cluster.events(job))


def test_slurm_checkpoints_and_requeues_before_the_time_limit(tmp_path):
  """--signal=B:USR1@SIGNAL_BEFORE: the batch shell stops the tasks (SIGTERM: they checkpoint,
  exit 143) and requeues the job, which runs again with SLURM_RESTART_COUNT=1."""
  cluster, job, workdir = _submit_stand_in(tmp_path, ["run", "exit 0"])
  wait_for(lambda: all((tmp_path / "venv" / f"running.{i}").exists() for i in range(2)), 60,
           "both tasks running")
  cluster.request(job, "time_limit")
  assert _job_end(cluster, job) == ["COMPLETED", "1", "0"]
  tasks = _tasks(tmp_path)
  assert sum(" restart 0 " in l for l in tasks) == 2 and sum(" restart 1 " in l for l in tasks) == 2
  assert {l for l in tasks if "saved" in l} == {"task 0 saved", "task 1 saved"}
  out = open(os.path.join(workdir, f"slurm-{job}.out")).read()
  assert "time limit in 600 s: checkpointing and requeueing" in out
  assert "training exited with status 143" in out


def test_slurm_preemption_is_requeued_by_slurm_and_not_counted_as_a_crash(tmp_path):
  cluster, job, workdir = _submit_stand_in(tmp_path, ["run", "exit 0"], MAX_RESTARTS=0)
  wait_for(lambda: all((tmp_path / "venv" / f"running.{i}").exists() for i in range(2)), 60,
           "both tasks running")
  cluster.request(job, "preempt")  # SIGTERM to the batch shell and, through srun, the tasks
  assert _job_end(cluster, job) == ["COMPLETED", "1", "0"]
  assert {l for l in _tasks(tmp_path) if "saved" in l} == {"task 0 saved", "task 1 saved"}
  out = open(os.path.join(workdir, f"slurm-{job}.out")).read()
  assert "SIGTERM: waiting for the trainers to checkpoint" in out
  assert not os.path.exists(os.path.join(workdir, f"slurm-{job}.crashes"))


def test_slurm_a_crash_is_requeued_at_most_max_restarts_times(tmp_path):
  cluster, job, workdir = _submit_stand_in(tmp_path, ["exit 1"] * 5, MAX_RESTARTS=2)
  assert _job_end(cluster, job) == ["FAILED", "2", "1"]  # restarts 1 and 2, then no more
  assert sum("task 0 " in l for l in _tasks(tmp_path)) == 3
  crashes = open(os.path.join(workdir, f"slurm-{job}.crashes")).read().splitlines()
  assert [l.split()[:5] for l in crashes] == [["restart", str(r), "exit", "status", "1"]
                                              for r in range(3)]
  out = open(os.path.join(workdir, f"slurm-{job}.out")).read()
  assert "crash 2 of at most 2 requeued (MAX_RESTARTS)" in out
  assert "not requeued: 3 crashes, more than MAX_RESTARTS=2" in out


def test_unknown_stage_fails():
  proc = subprocess.run(["bash", "launch/tpu_vm.sh", "--dry-run", "bogus"], cwd=REPO,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode != 0 and "unknown stage" in proc.stderr


# ------------------------------------------------------------------------- TPU worker script
def _fake_tpu_machine(tmp_path, worker=0):
  """A fake TPU VM worker (tests/fake_cluster): its home, with the project's worker script
  installed as `install` does, and its environment."""
  home = tmp_path / f"w{worker}" / "home"
  (home / "uwm_jax" / "launch").mkdir(parents=True)
  (home / "uwm_jax" / "launch" / "tpu_worker.sh").write_text(
      open(os.path.join(REPO, "launch", "tpu_worker.sh")).read())
  (tmp_path / "gcs" / "data-bucket" / "droid").mkdir(parents=True, exist_ok=True)
  (tmp_path / "gcs" / "data-bucket" / "droid" / "shard-0").write_text("data")
  env = fake_cluster.machine_env(str(home), devices=1, FAKE_MACHINE_DIR=str(home.parent),
                                 FAKE_GCS_DIR=str(tmp_path / "gcs"), FAKE_PROCESS_INDEX=worker,
                                 DATA_BUCKET="data-bucket", DATA_MOUNT="~/data",
                                 TPU_LOCKFILE="~/libtpu_lockfile")
  return home, env


def _worker(home, env, *args):
  return subprocess.run(["bash", str(home / "uwm_jax" / "launch" / "tpu_worker.sh"), *args],
                        cwd=str(home), env=env, capture_output=True, text=True, timeout=60)


def test_tpu_data_mount_is_read_only_and_idempotent(tmp_path):
  """`install` mounts the data bucket and every `train` mounts it again: a bucket already
  mounted is left alone (root may not even stat a user's FUSE mount: `sudo mkdir -p` on it
  fails), one whose gcsfuse died is mounted again."""
  home, env = _fake_tpu_machine(tmp_path)
  for _ in range(2):
    done = _worker(home, env, "mount")
    assert done.returncode == 0, done.stdout + done.stderr
  assert "already mounted" in done.stdout
  mounts = (home.parent / "mounts").read_text().split("\n")
  assert mounts[0] == f"{home}/data data-bucket ro" and mounts[1:] == [""]
  assert (home / "data" / "droid" / "shard-0").read_text() == "data"
  # gcsfuse died: the mount point no longer answers (the fake: it is not listed); remounted.
  (home.parent / "mounts").write_text("")
  done = _worker(home, env, "mount")
  assert done.returncode == 0 and "mounted read-only" in done.stdout, done.stderr
  assert (home.parent / "mounts").read_text() == f"{home}/data data-bucket ro\n"


def test_tpu_stop_frees_the_tpu_of_what_an_earlier_run_left(tmp_path):
  """A process still holding libtpu's lock file is stopped (SIGTERM, then SIGKILL after the
  grace period when it ignores it), and the lock file is removed."""
  home, env = _fake_tpu_machine(tmp_path)
  lock = home / "libtpu_lockfile"
  holder = subprocess.Popen(["bash", "-c", f"trap '' TERM; exec 3>{lock}; echo held; "
                                           "while :; do sleep 0.1; done"],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
  try:
    assert holder.stdout.readline() == "held\n"
    t0 = time.time()
    done = _worker(home, env, "stop", "2")
    assert done.returncode == 0, done.stderr
    assert holder.wait(timeout=10) == -9  # ignored SIGTERM: killed after 2 s
    assert time.time() - t0 >= 2
  finally:
    if holder.poll() is None:
      holder.kill()
  assert f"stopping PIDs {holder.pid}" in done.stdout and "SIGKILL" in done.stdout
  assert not lock.exists()


# A stand-in trainer for a fake TPU VM worker (~/venv/bin/python): it acts out ~/plan, "exit N"
# after a second, "run" (until SIGTERM, then exit 143 as the trainer does after its
# checkpoint) or "hang" (a process waiting at a collective for a peer that died: deaf to
# SIGTERM).
TPU_STAND_IN = """#!/usr/bin/env bash
echo "worker ${FAKE_PROCESS_INDEX} trains: $*"
case "$(cat ~/plan)" in
  exit*) sleep 1; echo "worker ${FAKE_PROCESS_INDEX}: error: a bad thing"; exit $(cut -d' ' -f2 ~/plan) ;;
  run) trap 'echo "worker ${FAKE_PROCESS_INDEX}: checkpoint saved"; exit 143' TERM ;;
  hang) trap '' TERM ;;
esac
while :; do sleep 0.1; done
"""


def _tpu_slice_of_stand_ins(tmp_path, plans):
  """A fake TPU slice (tests/fake_cluster) whose workers run the stand-in trainer."""
  cloud = fake_cluster.TpuCloud(str(tmp_path / "cloud"), workers=len(plans))
  env = cloud.launch_env(TPU_NAME="t5", WORKDIR="/w", STOP_GRACE_S=2,
                         LOG_DIR=str(tmp_path / "logs"), TPU_LOCKFILE="~/libtpu_lockfile")
  subprocess.run(["bash", "launch/tpu_vm.sh", "create"], cwd=REPO, env=env, check=True,
                 capture_output=True, timeout=60)
  for home, plan in zip(cloud.homes, plans):
    os.makedirs(os.path.join(home, "uwm_jax", "launch"))
    with open(os.path.join(home, "uwm_jax", "launch", "tpu_worker.sh"), "w") as f:
      f.write(open(os.path.join(REPO, "launch", "tpu_worker.sh")).read())
    os.makedirs(os.path.join(home, "venv", "bin"))
    with open(os.path.join(home, "venv", "bin", "python"), "w") as f:
      f.write(TPU_STAND_IN)
    os.chmod(os.path.join(home, "venv", "bin", "python"), 0o755)
    with open(os.path.join(home, "plan"), "w") as f:
      f.write(plan)
  return cloud, env



def test_tpu_train_stops_every_worker_when_one_fails(tmp_path):
  cloud, env = _tpu_slice_of_stand_ins(tmp_path, ["hang", "exit 3", "hang"])
  try:
    done = subprocess.run(["bash", "launch/tpu_vm.sh", "train"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Worker 1 failed (exit status 3): stopping the other workers" in done.stdout
    assert "worker 1: error: a bad thing" in done.stderr  # the end of its log
    assert "worker 0 trains: -m uwm_jax.train --config=configs/droid.py --workdir=/w" \
        in done.stdout  # worker 0's log, followed
    logs = sorted(p.name for p in (tmp_path / "logs").glob("*/worker-*.log"))
    assert logs == [f"worker-{w}.log" for w in range(3)]
    assert all(cloud.trainer_pid(w) is None for w in range(3))  # all stopped
  finally:
    cloud.close()


def test_tpu_train_preempted_worker_ends_the_run_with_a_checkpoint(tmp_path):
  """SIGTERM to one worker (here the others do not follow by themselves, as jax's preemption
  sync would make them): after STOP_GRACE_S the supervisor stops them with SIGTERM too, and
  `train` exits 143 (rerun to resume)."""
  cloud, env = _tpu_slice_of_stand_ins(tmp_path, ["run", "run"])
  try:
    launch = subprocess.Popen(["bash", "launch/tpu_vm.sh", "train"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids = wait_for(lambda: all(fake_cluster.alive(cloud.trainer_pid(w)) for w in range(2)) and
                    [cloud.trainer_pid(w) for w in range(2)], 60, "both trainers")
    os.kill(pids[1], signal.SIGTERM)
    out = launch.communicate(timeout=60)[0]
    assert launch.returncode == 143, out
    assert "worker 0: exit status 143" in out and "worker 1: exit status 143" in out
    assert "rerun 'launch/tpu_vm.sh train' to resume" in out
  finally:
    if launch.poll() is None:
      launch.kill()
    cloud.close()
