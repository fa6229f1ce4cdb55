"""Launch scripts: valid bash, and a dry run prints the commands it would run."""

import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("launch/common.sh", "launch/tpu_vm.sh", "launch/slurm_gpu.sh")


def _run(args, **env):
  return subprocess.run(["bash", *args], cwd=REPO, capture_output=True, text=True, check=True,
                        env=dict(os.environ, **env), timeout=60).stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
  subprocess.run(["bash", "-n", os.path.join(REPO, script)], check=True, timeout=60)


def test_tpu_dry_run_creates_installs_and_trains_on_every_worker():
  out = _run(["launch/tpu_vm.sh", "--dry-run", "all"], TPU_NAME="t1", ZONE="z1",
             ACCELERATOR_TYPE="v5p-64", CONFIG="configs/libero90.py", WORKDIR="/mnt/uwm/r1",
             TRAIN_ARGS="--config.seed=3")
  lines = [l for l in out.splitlines() if l.startswith("+ ")]
  assert lines[0].startswith("+ gcloud compute tpus tpu-vm create t1 --accelerator-type v5p-64")
  assert "--zone z1" in lines[0]
  assert any(l.startswith("+ git ") and " archive " in l for l in lines)
  install = [l for l in lines if "pip install" in l]
  assert install and "--worker=all" in install[0] and "jax[tpu]==0.10.2" in install[0]
  train = lines[-1]
  assert "--worker=all" in train and "python -m uwm_jax.train" in train
  assert "--config=configs/libero90.py --workdir=/mnt/uwm/r1 --config.seed=3" in train


def test_tpu_dry_run_queued_resource():
  out = _run(["launch/tpu_vm.sh", "--dry-run", "create"], QUEUED="1", SPOT="1", TPU_NAME="t2")
  assert "+ gcloud compute tpus queued-resources create t2-qr --node-id t2" in out
  assert "--spot" in out


def test_slurm_dry_run_prints_the_batch_script():
  out = _run(["launch/slurm_gpu.sh", "--dry-run"], NODES="4", GPUS_PER_NODE="4",
             WORKDIR="/shared/w", CONFIG="configs/droid_cotrain.py")
  assert "#SBATCH --nodes=4" in out and "#SBATCH --gpus-per-node=4" in out
  assert "#SBATCH --ntasks-per-node=1" in out
  assert "srun --kill-on-bad-exit=1 python -m uwm_jax.train --config=configs/droid_cotrain.py " \
         "--workdir=/shared/w" in out
  assert out.rstrip().splitlines()[-1].startswith("+ sbatch ")


def test_unknown_stage_fails():
  proc = subprocess.run(["bash", "launch/tpu_vm.sh", "--dry-run", "bogus"], cwd=REPO,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode != 0 and "unknown stage" in proc.stderr
