#!/usr/bin/env bash
# Train UWM on SLURM GPU nodes: every GPU of every node, resubmitted until training is done.
#
#   WORKDIR=/shared/runs/droid DATA=/shared/data/uwm/droid_weird \
#   INIT_FROM=/shared/ckpt/uwm_init_droid/checkpoints NODES=2 launch/slurm_gpu.sh [--dry-run]
#
# One task per node, driving all of the node's GPUs: `jax.distributed.initialize()` (called by
# `python -m uwm_jax.train`) reads the SLURM variables (coordinator = first node, process index
# = SLURM_PROCID) but, left alone, gives each task only the GPU numbered SLURM_LOCALID (jax's
# one-task-per-GPU convention), so the batch script exports JAX_LOCAL_DEVICE_IDS=0,...,N-1.
# One process per node rather than one per GPU: one data loader per node instead of eight
# competing for its CPUs and memory, the same layout as a TPU host, and no clash with sites that
# bind one GPU per task (--gpus-per-task/--gpu-bind hide the other GPUs from a task, while jax's
# default expects to see GPU number SLURM_LOCALID).
#
# CPUs: the task of a node feeds all of its GPUs, so it gets all the CPUs the job holds on the
# node (#SBATCH --cpus-per-task=CPUS_PER_NODE): srun is given --cpus-per-task=$SLURM_CPUS_PER_TASK
# explicitly, because since Slurm 22.05 srun no longer inherits sbatch's --cpus-per-task (a task
# would get one CPU). srun also gets --export=ALL, so the tasks see the venv and JAX_* variables
# even where a site submits jobs with --export=NONE.
#
# Resuming: the job is submitted with --requeue (a preempted job or a failed node puts it back
# in the queue). SIGNAL_BEFORE seconds before the time limit the batch shell gets SIGUSR1, sends
# SIGTERM to the training processes and requeues the job when they have stopped. On SIGTERM
# (from this script or from SLURM's preemption) the trainer saves a checkpoint at a step every
# process agrees on, waits for it and exits with 143; the requeued job runs the same command,
# which resumes from the latest complete checkpoint in WORKDIR. A run that reached num_steps
# exits 0 and is not requeued. A crash (any other exit status: a failed GPU, a lost node, a
# NaN, ...) is requeued too, at most MAX_RESTARTS times per job: the crashes are counted in
# WORKDIR/slurm-<job id>.crashes (one line each), which survives requeues. The workdir lock
# records the job id and SLURM_RESTART_COUNT, so the requeued job takes over the lock its own
# killed run left (on another node too) instead of refusing to start.
#
# Settings (environment variables):
#   WORKDIR        run directory on a filesystem every node sees (required unless --dry-run)
#   DATA           the converted training data (docs/data.md), passed as
#                  --config.data.sources.${SOURCE}.path; SOURCE (droid) names the config's source
#   INIT_FROM      checkpoints of the weight import (frozen VAE / ResNet), --config.init_from
#   CONFIG (configs/droid.py)  TRAIN_ARGS (more flags, e.g. --config.batch_size=288)
#   NODES (2)  GPUS_PER_NODE (8)  CPUS_PER_NODE (64)  PARTITION (gpu)  TIME (48:00:00)
#   JOB_NAME (uwm)  SIGNAL_BEFORE (600)  ACCOUNT, QOS (site-specific, optional)
#   MAX_RESTARTS (3): how many times a crashed job is requeued
#   TASK_WAIT_S (120): once one task has ended, how long the others may take to end too
#   VENV (${HOME}/venv-uwm): a virtualenv on the shared filesystem with `pip install -e '.[cuda]'`
#   BATCH_FILE (WORKDIR/uwm.sbatch): where the generated batch script is written
# --dry-run (or DRY_RUN=1) prints the batch script and the sbatch command instead of submitting.
set -euo pipefail
source "$(dirname "$0")/common.sh"

if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
[[ $# == 0 ]] || die "usage: [SETTINGS=...] $0 [--dry-run]  (settings: see the script's header)"

NODES=${NODES:-2}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_NODE=${CPUS_PER_NODE:-64}
PARTITION=${PARTITION:-gpu}
TIME=${TIME:-48:00:00}
JOB_NAME=${JOB_NAME:-uwm}
SIGNAL_BEFORE=${SIGNAL_BEFORE:-600}
MAX_RESTARTS=${MAX_RESTARTS:-3}
TASK_WAIT_S=${TASK_WAIT_S:-120}
CONFIG=${CONFIG:-configs/droid.py}
SOURCE=${SOURCE:-droid}
WORKDIR=${WORKDIR:-}
DATA=${DATA:-}
INIT_FROM=${INIT_FROM:-}
TRAIN_ARGS=${TRAIN_ARGS:-}
VENV=${VENV:-${HOME}/venv-uwm}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

if [[ -z "${WORKDIR}" ]]; then
  [[ "${DRY_RUN}" == 1 ]] || die "set WORKDIR to a path on a filesystem every node sees"
  WORKDIR=/shared/uwm/runs/${JOB_NAME}
fi
BATCH_FILE=${BATCH_FILE:-${WORKDIR}/${JOB_NAME}.sbatch}

# The training command every task runs (one shell-quoted line).
train_cmd=(python -m uwm_jax.train "--config=${CONFIG}" "--workdir=${WORKDIR}")
[[ -n "${DATA}" ]] && train_cmd+=("--config.data.sources.${SOURCE}.path=${DATA}")
[[ -n "${INIT_FROM}" ]] && train_cmd+=("--config.init_from=${INIT_FROM}")
TRAIN_LINE="$(quote_words "${train_cmd[@]}")${TRAIN_ARGS:+ ${TRAIN_ARGS}}"

optional_sbatch=""
[[ -n "${ACCOUNT:-}" ]] && optional_sbatch+="#SBATCH --account=${ACCOUNT}"$'\n'
[[ -n "${QOS:-}" ]] && optional_sbatch+="#SBATCH --qos=${QOS}"$'\n'

SCRIPT=$(cat <<SBATCH
#!/usr/bin/env bash
#SBATCH --job-name=${JOB_NAME}
#SBATCH --partition=${PARTITION}
${optional_sbatch}#SBATCH --nodes=${NODES}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=${GPUS_PER_NODE}
#SBATCH --cpus-per-task=${CPUS_PER_NODE}
#SBATCH --time=${TIME}
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@${SIGNAL_BEFORE}
#SBATCH --output=${WORKDIR}/slurm-%j.out
set -uo pipefail
source $(quote "${VENV}/bin/activate")
cd $(quote "${ROOT}")
# One process per node drives every GPU of its node (jax's SLURM default is GPU SLURM_LOCALID).
export JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((GPUS_PER_NODE - 1)))
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
echo "job \${SLURM_JOB_ID} (restart \${SLURM_RESTART_COUNT:-0}) on \${SLURM_JOB_NODELIST}"

# Near the time limit: stop the trainers (they checkpoint on SIGTERM), then requeue.
requeue=0
on_time_limit() {
  echo "time limit in ${SIGNAL_BEFORE} s: checkpointing and requeueing"
  requeue=1
  # Signals the job's steps (the training tasks), not this batch shell.
  scancel --signal=TERM "\${SLURM_JOB_ID}" || kill -TERM "\${srun_pid}"
}
trap on_time_limit USR1
# SLURM preemption (--requeue) sends SIGTERM to the tasks and to this shell: keep waiting while
# the trainers save; SLURM requeues the job itself.
preempted=0
trap 'preempted=1; echo "SIGTERM: waiting for the trainers to checkpoint"' TERM

# srun does not inherit sbatch's --cpus-per-task (Slurm >= 22.05): without it the task that
# feeds all GPUs of its node would run on one CPU. --wait: once a task has ended, the others get
# TASK_WAIT_S s to end too (to finish a checkpoint, or stuck at a collective after a crash),
# then are killed (--kill-on-bad-exit would kill them at once, also mid-checkpoint on a 143).
srun --wait=${TASK_WAIT_S} --cpus-per-task="\${SLURM_CPUS_PER_TASK:-\${SLURM_CPUS_ON_NODE}}" \\
  --export=ALL ${TRAIN_LINE} &
srun_pid=\$!
# \`wait\` returns early when the trap runs: wait again until srun has ended.
while true; do
  wait "\${srun_pid}"
  status=\$?
  kill -0 "\${srun_pid}" 2>/dev/null || break
done
echo "training exited with status \${status}"
if [[ "\${requeue}" == 1 ]]; then
  scontrol requeue "\${SLURM_JOB_ID}"
elif [[ "\${status}" != 0 && "\${status}" != 143 && "\${preempted}" == 0 ]]; then
  # A crash: requeued at most MAX_RESTARTS times (counted in a file that survives requeues).
  crashes_file=$(quote "${WORKDIR}")/slurm-\${SLURM_JOB_ID}.crashes
  echo "restart \${SLURM_RESTART_COUNT:-0} exit status \${status} \$(date -u +%FT%TZ)" \\
    >> "\${crashes_file}"
  crashes=\$(wc -l < "\${crashes_file}")
  if (( crashes <= ${MAX_RESTARTS} )); then
    echo "crash \${crashes} of at most ${MAX_RESTARTS} requeued (MAX_RESTARTS):" \\
      "the job resumes from its latest checkpoint"
    scontrol requeue "\${SLURM_JOB_ID}"
  else
    echo "not requeued: \${crashes} crashes, more than MAX_RESTARTS=${MAX_RESTARTS}" \\
      "(\${crashes_file}); see the errors above"
  fi
fi
exit "\${status}"
SBATCH
)

if [[ "${DRY_RUN}" == 1 ]]; then
  echo "# ${BATCH_FILE}"
  echo "${SCRIPT}"
else
  [[ -d "${VENV}" ]] || die "VENV=${VENV} does not exist: python3.11 -m venv ${VENV} && ${VENV}/bin/pip install -e '${ROOT}[cuda]'"
  mkdir -p "${WORKDIR}"
  printf '%s\n' "${SCRIPT}" > "${BATCH_FILE}"
fi
run sbatch "${BATCH_FILE}"
