#!/usr/bin/env bash
# Train UWM on a Cloud TPU VM slice: create it (directly or as a queued resource, waiting until
# it is ACTIVE), install the project on every worker, then run and supervise
# `python -m uwm_jax.train` on all workers at once.
#
#   launch/tpu_vm.sh [--dry-run] create|wait|install|train|stop|all|delete
#
#   all = create, wait (queued resources), install, train.
#
# Settings (environment variables):
#   TPU_NAME (uwm-v4-32)  ZONE (us-central2-b)  ACCELERATOR_TYPE (v4-32)  PROJECT (gcloud's)
#   RUNTIME_VERSION: the TPU VM image (default by generation: v4 tpu-ubuntu2204-base, v5e
#     v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)
#   QUEUED=1 request a queued resource (SPOT=1 spot capacity); `wait` polls its state every
#     POLL_S (30) s until ACTIVE, for at most WAIT_TIMEOUT_S (21600) s; FAILED or SUSPENDED ends it.
#   SCOPES: --scopes for the VMs (e.g. https://www.googleapis.com/auth/cloud-platform) when the
#     default service account's scopes do not reach the buckets
#   BUCKET: the bucket for runs: WORKDIR defaults to gs://BUCKET/runs/TPU_NAME (checkpoints,
#     metrics and TensorBoard events written to GCS directly, no mount)
#   WORKDIR: the run directory, gs://... or a filesystem every worker sees (e.g. Filestore)
#   DATA_BUCKET: a bucket mounted READ-ONLY with gcsfuse at DATA_MOUNT (/mnt/uwm-data) on every
#     worker, for the converted training data (its array_record readers need a file path)
#   CONFIG (configs/droid.py)  TRAIN_ARGS (more flags)
#   DATA: the converted training data (docs/data.md), --config.data.sources.${SOURCE}.path, e.g.
#     /mnt/uwm-data/droid_weird; SOURCE (droid) names the config's source.
#   INIT_FROM: --config.init_from (weight import)
#   PYTHON: a Python >= 3.11 already on the workers to build ~/venv from (default: uv fetches a
#     standalone CPython 3.11); VENV_ARGS: more arguments for creating ~/venv (e.g.
#     --system-site-packages to reuse packages an image has)
#   NUM_WORKERS: the slice's worker count (default: counted by `gcloud ... tpu-vm describe`)
#   LOG_DIR (tpu_logs/TPU_NAME): where `train` keeps one log per worker and run, on this machine
#   STOP_GRACE_S (180): how long a stopped trainer may take to save its checkpoint before SIGKILL
#   TPU_LOCKFILE (/tmp/libtpu_lockfile): the lock file libtpu leaves after a kill
#   CHECK_PLATFORM (tpu): the platform `install`'s last step requires of jax on every worker
#     (`python -m uwm_jax.check_install --platform=...`: the trainer imports and jax runs there)
# --dry-run (or DRY_RUN=1) prints every command instead of running it.
#
# Python: the TPU VM images ship Python 3.10; the pins (jax 0.10.2, numpy 2.4.6) need >= 3.11.
# Every worker installs uv (one static binary, from PyPI with the image's pip, else astral's
# installer) and lets it fetch a standalone CPython 3.11 into ~/venv: no apt (whose lock
# unattended-upgrades holds on a fresh VM), no PPA, the same interpreter on every image. Workers install only the training core,
# `.[tpu]` (jax[tpu] + libtpu, flax, optax, orbax, grain, array_record), pinned to
# requirements.txt's versions: no TensorFlow, torch or MuJoCo.
#
# `train` (what MaxText's multihost runner does, from this machine):
#   1. stops what an earlier run left on every worker (its trainer, anything holding the TPU,
#      the libtpu lock file: libtpu refuses to start while they remain);
#   2. starts the trainer on every worker through its own `gcloud ... ssh --worker=W` and keeps
#      each worker's output in LOG_DIR/<UTC time>/worker-W.log (worker 0's is also shown here;
#      every worker also keeps ~/uwm_train.log);
#   3. supervises them: when a worker fails, the others are stopped at once (they would wait
#      forever at the next collective) and the failed worker's log is printed; when a worker is
#      preempted (SIGTERM), all save a checkpoint at the same step and exit 143.
#   It exits 0 when training finished, 143 when the workers stopped after a checkpoint
#   (preemption, `stop` from another terminal), 130 after Ctrl-C (which stops them the same
#   way), else the failed worker's status. Every worker runs the same
#   command; jax.distributed.initialize() finds the other workers from the VM metadata.
#   Rerunning `train` resumes from the latest checkpoint in WORKDIR.
# The run lives as long as this supervisor: when it ends (Ctrl-C, a closed laptop, a dropped
# connection), each worker's ssh input closes and its trainer checkpoints and stops. For long
# runs, start `train` inside tmux or screen on a machine that stays up (Cloud Shell, a small VM).
# `stop` checkpoints and stops a run from anywhere.
set -euo pipefail
source "$(dirname "$0")/common.sh"

if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
STAGE=${1:-}
[[ -n "${STAGE}" ]] || die "usage: $0 [--dry-run] create|wait|install|train|stop|all|delete"

TPU_NAME=${TPU_NAME:-uwm-v4-32}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}
QUEUED=${QUEUED:-0}
SPOT=${SPOT:-0}
POLL_S=${POLL_S:-30}
WAIT_TIMEOUT_S=${WAIT_TIMEOUT_S:-21600}
CONFIG=${CONFIG:-configs/droid.py}
BUCKET=${BUCKET:-}
WORKDIR=${WORKDIR:-${BUCKET:+gs://${BUCKET}/runs/${TPU_NAME}}}
DATA_BUCKET=${DATA_BUCKET:-}
DATA_MOUNT=${DATA_MOUNT:-/mnt/uwm-data}
SOURCE=${SOURCE:-droid}
DATA=${DATA:-}
INIT_FROM=${INIT_FROM:-}
TRAIN_ARGS=${TRAIN_ARGS:-}
SCOPES=${SCOPES:-}
PYTHON=${PYTHON:-}
VENV_ARGS=${VENV_ARGS:-}
NUM_WORKERS=${NUM_WORKERS:-}
LOG_DIR=${LOG_DIR:-tpu_logs/${TPU_NAME}}
STOP_GRACE_S=${STOP_GRACE_S:-180}
TPU_LOCKFILE=${TPU_LOCKFILE:-/tmp/libtpu_lockfile}
CHECK_PLATFORM=${CHECK_PLATFORM:-tpu}
PYTHON_VERSION=3.11
UV_VERSION=0.13.9
QR_NAME=${TPU_NAME}-qr
PROJECT_FLAGS=()
[[ -n "${PROJECT:-}" ]] && PROJECT_FLAGS=(--project "${PROJECT}")

default_runtime() {
  case "$1" in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "no default RUNTIME_VERSION for ACCELERATOR_TYPE=$1: set RUNTIME_VERSION" ;;
  esac
}
RUNTIME_VERSION=${RUNTIME_VERSION:-$(default_runtime "${ACCELERATOR_TYPE}")}

tpu() { run gcloud compute tpus "$@" --zone "${ZONE}" ${PROJECT_FLAGS[@]+"${PROJECT_FLAGS[@]}"}; }
on_all_workers() { tpu tpu-vm ssh "${TPU_NAME}" --worker=all --command "$1"; }

create() {
  local extra=()
  [[ -n "${SCOPES}" ]] && extra+=(--scopes "${SCOPES}")
  if [[ "${QUEUED}" == 1 ]]; then
    [[ "${SPOT}" == 1 ]] && extra+=(--spot)
    tpu queued-resources create "${QR_NAME}" --node-id "${TPU_NAME}" \
      --accelerator-type "${ACCELERATOR_TYPE}" --runtime-version "${RUNTIME_VERSION}" \
      ${extra[@]+"${extra[@]}"}
  else
    [[ "${SPOT}" == 1 ]] && extra+=(--spot)
    tpu tpu-vm create "${TPU_NAME}" --accelerator-type "${ACCELERATOR_TYPE}" \
      --version "${RUNTIME_VERSION}" ${extra[@]+"${extra[@]}"}
  fi
}

# The queued resource's state (ACCEPTED, WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, FAILED,
# SUSPENDING, SUSPENDED, ...).
queued_state() {
  gcloud compute tpus queued-resources describe "${QR_NAME}" --zone "${ZONE}" \
    ${PROJECT_FLAGS[@]+"${PROJECT_FLAGS[@]}"} --format='value(state.state)'
}

wait_active() {
  [[ "${QUEUED}" == 1 ]] || return 0  # `tpu-vm create` returns when the VMs are ready
  echo "+ $(quote_words gcloud compute tpus queued-resources describe "${QR_NAME}" \
    --zone "${ZONE}" ${PROJECT_FLAGS[@]+"${PROJECT_FLAGS[@]}"} --format='value(state.state)')  # every ${POLL_S} s until ACTIVE"
  [[ "${DRY_RUN}" == 1 ]] && return 0
  local start=${SECONDS} state="" last=""
  while true; do
    state=$(queued_state) || die "cannot read the state of queued resource ${QR_NAME}"
    [[ "${state}" != "${last}" ]] && echo "queued resource ${QR_NAME}: ${state} ($((SECONDS - start)) s)"
    last=${state}
    case "${state}" in
      ACTIVE) return 0 ;;
      FAILED|SUSPENDING|SUSPENDED)
        die "queued resource ${QR_NAME} is ${state}: see 'gcloud compute tpus queued-resources describe ${QR_NAME} --zone ${ZONE}'; delete it with '$0 delete' (QUEUED=1) and create it again" ;;
    esac
    (( SECONDS - start < WAIT_TIMEOUT_S )) || \
      die "queued resource ${QR_NAME} not ACTIVE after ${WAIT_TIMEOUT_S} s (still ${state}); rerun '$0 wait' to keep waiting"
    sleep "${POLL_S}"
  done
}

# The settings launch/tpu_worker.sh reads, as `NAME=value` words before its command.
worker_env() {
  echo "DATA_BUCKET=$(quote "${DATA_BUCKET}") DATA_MOUNT=$(quote "${DATA_MOUNT}")" \
    "TPU_LOCKFILE=$(quote "${TPU_LOCKFILE}")"
}

# launch/tpu_worker.sh ARGS... as installed on the workers.
worker_script() {
  echo "$(worker_env) bash ~/uwm_jax/launch/tpu_worker.sh $(quote_words "$@")"
}

# gcsfuse from Google's apt repository (the TPU VM images do not have it).
gcsfuse_install_command() {
  [[ -n "${DATA_BUCKET}" ]] || { echo "true"; return; }
  local apt="sudo apt-get -o DPkg::Lock::Timeout=600 -q"
  echo "(command -v gcsfuse > /dev/null || { \
curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc > /dev/null \
&& echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list > /dev/null \
&& ${apt} update && ${apt} install -y gcsfuse; })"
}

# ~/venv with the training core: from PYTHON when set, else from uv's standalone CPython.
venv_command() {
  local req="-c ~/uwm_jax/requirements.txt -e \"\$HOME/uwm_jax[tpu]\""
  if [[ -n "${PYTHON}" ]]; then
    echo "$(quote "${PYTHON}") -m venv ${VENV_ARGS} --clear ~/venv \
&& ~/venv/bin/python -m pip install -q ${req}"
  else
    echo "(python3 -m pip install -q --user uv==${UV_VERSION} \
|| curl -LsSf https://astral.sh/uv/${UV_VERSION}/install.sh | sh) \
&& ~/.local/bin/uv venv -q --python ${PYTHON_VERSION} --managed-python ${VENV_ARGS} --clear ~/venv \
&& ~/.local/bin/uv pip install -q --python ~/venv/bin/python ${req}"
  fi
}

install() {
  local tarball
  tarball=$(mktemp -d)/uwm_jax_src.tar.gz
  make_tarball "${tarball}"
  tpu tpu-vm scp "${tarball}" "${TPU_NAME}:~/uwm_jax_src.tar.gz" --worker=all
  rm -rf "$(dirname "${tarball}")"
  on_all_workers "set -e; rm -rf ~/uwm_jax && tar xzf ~/uwm_jax_src.tar.gz -C ~ \
&& $(venv_command) \
&& $(gcsfuse_install_command) && $(worker_script mount) \
&& timeout 600 ~/venv/bin/python -m uwm_jax.check_install --platform=${CHECK_PLATFORM}"
}

# The slice's worker count: NUM_WORKERS, else one per network endpoint of the TPU VM.
num_workers() {
  if [[ -n "${NUM_WORKERS}" ]]; then
    echo "${NUM_WORKERS}"
  elif [[ "${DRY_RUN}" == 1 ]]; then
    echo 1
  else
    local endpoints
    endpoints=$(gcloud compute tpus tpu-vm describe "${TPU_NAME}" --zone "${ZONE}" \
      ${PROJECT_FLAGS[@]+"${PROJECT_FLAGS[@]}"} \
      --format='value[delimiter=" "](networkEndpoints.ipAddress)') \
      || die "cannot describe TPU VM ${TPU_NAME} (set NUM_WORKERS to skip this)"
    set -- ${endpoints}
    (( $# > 0 )) || die "TPU VM ${TPU_NAME} has no network endpoints (is it READY?)"
    echo $#
  fi
}

# Stop every worker's trainer (a checkpoint first, SIGKILL after GRACE_S) and free the TPU.
stop_workers() {
  on_all_workers "$(worker_script stop "$1")"
}

stop() {
  stop_workers "${STOP_GRACE_S}"
}

# Returns once PID has ended (a zombie has: only its parent has not reaped it yet).
supervisor_alive() {
  while [[ "$(ps -o stat= -p "$1")" == [^Z]* ]]; do
    sleep 2
  done
}

# start_worker W LOG COMMAND: worker W's trainer, run in the foreground through its own ssh
# (COMMAND: tpu_worker.sh train ...); its output goes to LOG and
# its exit status to LOG.status. The ssh's input stays open while this script runs: when it
# ends, however it ends, the worker's input closes and its trainer checkpoints and stops.
start_worker() {
  local worker=$1 log=$2 command=$3 supervisor=$$ status=0
  tpu tpu-vm ssh "${TPU_NAME}" --worker="${worker}" --command "${command}" \
    < <(supervisor_alive "${supervisor}" 2> /dev/null) > "${log}" 2>&1 || status=$?
  echo "${status}" > "${log}.status"
}

# The worker that failed first (exit status other than 0 and 143), else nothing.
first_failure() {
  local f
  for f in $(ls -tr "$1"/worker-*.log.status 2> /dev/null); do
    if [[ "$(cat "${f}")" != 0 && "$(cat "${f}")" != 143 ]]; then
      f=${f##*/worker-}
      echo "${f%.log.status}"
      return
    fi
  done
}

# How many workers have ended.
ended_workers() {
  local f n=0
  for f in "$1"/worker-*.log.status; do
    [[ -f "${f}" ]] && n=$((n + 1))
  done
  echo "${n}"
}

train() {
  local args=("--config=${CONFIG}" "--workdir=${WORKDIR}")
  [[ -n "${DATA}" ]] && args+=("--config.data.sources.${SOURCE}.path=${DATA}")
  [[ -n "${INIT_FROM}" ]] && args+=("--config.init_from=${INIT_FROM}")
  local command
  # TRAIN_ARGS is shell syntax (quotes allowed): the worker's shell splits it.
  command="$(worker_script train "${args[@]}")${TRAIN_ARGS:+ ${TRAIN_ARGS}}"
  local workers
  workers=$(num_workers)
  echo "Stopping what an earlier run left on the ${workers} workers (trainer, TPU holders," \
    "${TPU_LOCKFILE})"
  stop_workers "${STOP_GRACE_S}" || die "cannot reach every worker of ${TPU_NAME}"
  if [[ "${DRY_RUN}" == 1 ]]; then
    tpu tpu-vm ssh "${TPU_NAME}" --worker=0 --command "${command}"
    echo "# ... one such ssh per worker (--worker=0 ... NUM_WORKERS-1), supervised"
    return 0
  fi
  local dir w ended=0 status=0 failed="" preempted_at="" pids=()
  dir=${LOG_DIR}/$(date -u +%Y%m%d-%H%M%S)
  mkdir -p "${dir}"
  echo "Training on ${workers} workers; one log per worker in ${dir}/ (worker 0's follows)"
  for ((w = 0; w < workers; w++)); do
    : > "${dir}/worker-${w}.log"
    start_worker "${w}" "${dir}/worker-${w}.log" "${command}" &
    pids+=($!)
  done
  tail -n +1 -f "${dir}/worker-0.log" 2> /dev/null &
  local tail_pid=$!
  on_interrupt() {
    echo "Interrupted: stopping the workers (they checkpoint first)"
    stop_workers "${STOP_GRACE_S}"
    kill "${tail_pid}" 2> /dev/null
    exit 130
  }
  trap on_interrupt INT TERM
  while (( ended < workers )); do
    sleep 1
    ended=$(ended_workers "${dir}")
    if [[ -z "${failed}" ]]; then
      failed=$(first_failure "${dir}" "${workers}")
      if [[ -n "${failed}" ]]; then
        echo "Worker ${failed} failed (exit status $(cat "${dir}/worker-${failed}.log.status")):" \
          "stopping the other workers (they would wait forever at the next collective)"
        stop_workers 0 > "${dir}/stop.log" 2>&1 || cat "${dir}/stop.log"
      fi
    fi
    # A preempted worker: the others save the same step and exit 143 too; stop stragglers.
    if [[ -z "${failed}" ]] && (( ended > 0 && ended < workers )); then
      [[ -n "${preempted_at}" ]] || preempted_at=${SECONDS}
      if (( SECONDS - preempted_at > STOP_GRACE_S )); then
        echo "Workers still running ${STOP_GRACE_S} s after another one ended: stopping them"
        stop_workers "${STOP_GRACE_S}" > "${dir}/stop.log" 2>&1 || cat "${dir}/stop.log"
        preempted_at=${SECONDS}
      fi
    fi
  done
  wait "${pids[@]}"
  trap - INT TERM
  sleep 1  # the last lines of worker 0's log
  kill "${tail_pid}" 2> /dev/null
  for ((w = 0; w < workers; w++)); do
    echo "worker ${w}: exit status $(cat "${dir}/worker-${w}.log.status")"
  done
  if [[ -n "${failed}" ]]; then
    status=$(cat "${dir}/worker-${failed}.log.status")
    echo "Worker ${failed} failed with exit status ${status}; the end of its log" \
      "(${dir}/worker-${failed}.log):" >&2
    tail -n 40 "${dir}/worker-${failed}.log" >&2
    exit "${status}"
  fi
  for ((w = 0; w < workers; w++)); do
    if [[ "$(cat "${dir}/worker-${w}.log.status")" != 0 ]]; then
      echo "The workers stopped after saving a checkpoint (preempted or stopped):" \
        "rerun '$0 train' to resume."
      exit 143
    fi
  done
  echo "Training finished on all ${workers} workers (logs: ${dir}/)."
}

delete() {
  if [[ "${QUEUED}" == 1 ]]; then
    tpu queued-resources delete "${QR_NAME}" --force --quiet
  else
    tpu tpu-vm delete "${TPU_NAME}" --quiet
  fi
}

if [[ -z "${WORKDIR}" && ( "${STAGE}" == train || "${STAGE}" == all ) ]]; then
  [[ "${DRY_RUN}" == 1 ]] || die "set BUCKET (runs go to gs://BUCKET/runs/TPU_NAME) or WORKDIR"
  WORKDIR=gs://BUCKET/runs/${TPU_NAME}
fi

case "${STAGE}" in
  create) create ;;
  wait) wait_active ;;
  install) install ;;
  train) train ;;
  stop) stop ;;
  all) create; wait_active; install; train ;;
  delete) delete ;;
  *) die "unknown stage ${STAGE}: create|wait|install|train|stop|all|delete" ;;
esac
