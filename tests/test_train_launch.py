"""Launch scripts: valid bash; a dry run prints the commands that matter; the queued-resource
wait and the SLURM batch script's checkpoint-and-requeue run against local stand-ins of
gcloud / srun / scancel / scontrol."""

import os
import signal
import subprocess
import time

import pytest

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
             ACCELERATOR_TYPE="v5p-64", CONFIG="configs/libero90.py", WORKDIR="/mnt/uwm/r1",
             TRAIN_ARGS="--config.seed=3", BUCKET="b1", DATA="/mnt/uwm/data/l90",
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
  # gcsfuse installed from Google's repository, the bucket mounted before training.
  assert "install -y gcsfuse" in install[0] and "gcsfuse --implicit-dirs b1 /mnt/uwm" in install[0]
  train = lines[-1]
  assert "--worker=all" in train and "gcsfuse --implicit-dirs b1 /mnt/uwm" in train
  assert ("~/venv/bin/python -m uwm_jax.train --config=configs/libero90.py --workdir=/mnt/uwm/r1 "
          "--config.data.sources.libero_90.path=/mnt/uwm/data/l90 --config.seed=3") in train
  assert train.index("gcsfuse") < train.index("uwm_jax.train")
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
  assert "uv pip install" in lines[4] and "uwm_jax.train" in lines[5]


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
  assert "srun --kill-on-bad-exit=1 python -m uwm_jax.train --config=configs/droid_cotrain.py " \
         "--workdir=/shared/w --config.data.sources.droid.path=/shared/d/droid " \
         "--config.init_from=/shared/init/checkpoints --config.seed=3 &" in out
  assert out.rstrip().splitlines()[-1] == "+ sbatch /shared/w/uwm.sbatch"


def _slurm_batch_script(tmp_path, trainer_body, **env):
  """The generated batch script, with srun/scancel/scontrol replaced by local stand-ins: srun
  runs `trainer_body` (bash) in the background as the training step would."""
  out = _run(["launch/slurm_gpu.sh", "--dry-run"], WORKDIR=str(tmp_path / "w"),
             VENV=str(tmp_path / "venv"), **env)
  script = out.split("\n", 1)[1].rsplit("\n+ sbatch", 1)[0]
  (tmp_path / "venv" / "bin").mkdir(parents=True)
  (tmp_path / "venv" / "bin" / "activate").write_text("")
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  stubs = {
      "srun": f"#!/usr/bin/env bash\necho \"$*\" > {tmp_path}/srun_args\n{trainer_body}\n",
      "scancel": f"#!/usr/bin/env bash\necho \"scancel $*\" >> {tmp_path}/calls\n"
                 f"kill -TERM $(cat {tmp_path}/trainer_pid)\n",
      "scontrol": f"#!/usr/bin/env bash\necho \"scontrol $*\" >> {tmp_path}/calls\n",
  }
  for name, body in stubs.items():
    (bin_dir / name).write_text(body)
    (bin_dir / name).chmod(0o755)
  (tmp_path / "job.sh").write_text(script)
  return [str(tmp_path / "job.sh")], dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
                                         SLURM_JOB_ID="77", SLURM_JOB_NODELIST="n[1-2]")


# A stand-in trainer: on SIGTERM it "checkpoints" and exits 143, as uwm_jax.train does.
# The pid file is written after the trap is set, so a test that waits for it cannot signal early.
TRAINER = ("trap 'echo saved > {d}/checkpoint; exit 143' TERM; echo $$ > {d}/trainer_pid; "
           "for i in $(seq 1 300); do sleep 0.1; done; exit 0")


def test_slurm_batch_script_checkpoints_and_requeues_before_the_time_limit(tmp_path):
  cmd, env = _slurm_batch_script(tmp_path, TRAINER.format(d=tmp_path), GPUS_PER_NODE="2")
  job = subprocess.Popen(["bash", *cmd], cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 20
  while not (tmp_path / "trainer_pid").exists() and time.time() < deadline:
    time.sleep(0.05)
  job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@600 sends to the batch shell
  out = job.communicate(timeout=60)[0]
  assert job.returncode == 143, out
  assert (tmp_path / "checkpoint").read_text() == "saved\n"
  calls = (tmp_path / "calls").read_text().splitlines()
  assert calls == ["scancel --signal=TERM 77", "scontrol requeue 77"]
  assert "python -m uwm_jax.train" in (tmp_path / "srun_args").read_text()


def test_slurm_batch_script_finished_run_is_not_requeued(tmp_path):
  cmd, env = _slurm_batch_script(tmp_path, "exit 0")
  job = subprocess.run(["bash", *cmd], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=60)
  assert job.returncode == 0, job.stdout + job.stderr
  assert not (tmp_path / "calls").exists()


def test_unknown_stage_fails():
  proc = subprocess.run(["bash", "launch/tpu_vm.sh", "--dry-run", "bogus"], cwd=REPO,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode != 0 and "unknown stage" in proc.stderr
