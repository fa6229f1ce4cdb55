#!/usr/bin/env bash
# Train UWM on several GPU nodes with SLURM: one process per node using all its GPUs;
# jax.distributed.initialize() reads the SLURM environment (coordinator = first node).
#
#   launch/slurm_gpu.sh [--dry-run]
#
# Settings (environment variables):
#   NODES (2)  GPUS_PER_NODE (8)  PARTITION (gpu)  TIME (48:00:00)  JOB_NAME (uwm)
#   CONFIG (configs/droid.py)  WORKDIR (shared filesystem path, required unless --dry-run)
#   TRAIN_ARGS (extra flags)  VENV (path of a virtualenv with requirements.txt and
#   "jax[cuda12]==0.10.2" installed on the shared filesystem)
# --dry-run (or DRY_RUN=1) prints the batch script and the sbatch command instead of submitting.
# Resubmitting the same command resumes from the latest checkpoint in WORKDIR.
set -euo pipefail
source "$(dirname "$0")/common.sh"

if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi

NODES=${NODES:-2}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
PARTITION=${PARTITION:-gpu}
TIME=${TIME:-48:00:00}
JOB_NAME=${JOB_NAME:-uwm}
CONFIG=${CONFIG:-configs/droid.py}
WORKDIR=${WORKDIR:-}
TRAIN_ARGS=${TRAIN_ARGS:-}
VENV=${VENV:-${HOME}/venv-uwm}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

if [[ -z "${WORKDIR}" ]]; then
  [[ "${DRY_RUN}" == 1 ]] || die "set WORKDIR to a path on a filesystem every node sees"
  WORKDIR=/shared/uwm/runs/${JOB_NAME}
fi

SCRIPT=$(cat <<SBATCH
#!/usr/bin/env bash
#SBATCH --job-name=${JOB_NAME}
#SBATCH --partition=${PARTITION}
#SBATCH --nodes=${NODES}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=${GPUS_PER_NODE}
#SBATCH --cpus-per-task=32
#SBATCH --time=${TIME}
#SBATCH --output=${WORKDIR}/slurm-%j.out
set -euo pipefail
source ${VENV}/bin/activate
cd ${ROOT}
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
srun --kill-on-bad-exit=1 python -m uwm_jax.train --config=${CONFIG} --workdir=${WORKDIR} ${TRAIN_ARGS}
SBATCH
)

BATCH_FILE=${BATCH_FILE:-/tmp/uwm_${JOB_NAME}.sbatch}
if [[ "${DRY_RUN}" == 1 ]]; then
  echo "# ${BATCH_FILE}"
  echo "${SCRIPT}"
else
  mkdir -p "${WORKDIR}"
  printf '%s\n' "${SCRIPT}" > "${BATCH_FILE}"
fi
run sbatch "${BATCH_FILE}"
