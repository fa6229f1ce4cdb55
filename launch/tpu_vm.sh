#!/usr/bin/env bash
# Train UWM on a Cloud TPU VM slice: create it (directly or as a queued resource, waiting until
# it is ACTIVE), install the project on every worker, start `python -m uwm_jax.train` on all
# workers at once.
#
#   launch/tpu_vm.sh [--dry-run] create|wait|install|train|all|delete
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
#     default service account's scopes do not reach the bucket
#   BUCKET: a GCS bucket mounted with gcsfuse at MOUNT (/mnt/uwm) on every worker; checkpoints,
#     metrics and data live there (every worker reads the data and writes its shards of every
#     checkpoint: one filesystem seen by all). Without BUCKET, WORKDIR and DATA must be another
#     shared filesystem (e.g. Filestore) that you mount yourself.
#   CONFIG (configs/droid.py)  WORKDIR (MOUNT/runs/TPU_NAME)  TRAIN_ARGS (more flags)
#   DATA: the converted training data (docs/data.md), --config.data.sources.${SOURCE}.path;
#     SOURCE (droid) names the config's source.  INIT_FROM: --config.init_from (weight import)
# --dry-run (or DRY_RUN=1) prints every command instead of running it.
#
# Python: the TPU VM images ship Python 3.10; the pins (jax 0.10.2, numpy 2.4.6) need >= 3.11.
# Every worker installs uv (one static binary, from PyPI with the image's pip, else astral's
# installer) and lets it fetch a standalone CPython 3.11 into ~/venv: no apt (whose lock
# unattended-upgrades holds on a fresh VM), no PPA, the same interpreter on every image. Workers install only the training core,
# `.[tpu]` (jax[tpu] + libtpu, flax, optax, orbax, grain, array_record), pinned to
# requirements.txt's versions: no TensorFlow, torch or MuJoCo.
#
# Every worker runs the same command; jax.distributed.initialize() finds the other workers of
# the slice from the VM metadata. Rerunning `train` resumes from the latest checkpoint in
# WORKDIR; a spot/preemptible slice that gets SIGTERM saves a checkpoint first.
set -euo pipefail
source "$(dirname "$0")/common.sh"

if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
STAGE=${1:-}
[[ -n "${STAGE}" ]] || die "usage: $0 [--dry-run] create|wait|install|train|all|delete"

TPU_NAME=${TPU_NAME:-uwm-v4-32}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}
QUEUED=${QUEUED:-0}
SPOT=${SPOT:-0}
POLL_S=${POLL_S:-30}
WAIT_TIMEOUT_S=${WAIT_TIMEOUT_S:-21600}
MOUNT=${MOUNT:-/mnt/uwm}
CONFIG=${CONFIG:-configs/droid.py}
WORKDIR=${WORKDIR:-${MOUNT}/runs/${TPU_NAME}}
SOURCE=${SOURCE:-droid}
DATA=${DATA:-}
INIT_FROM=${INIT_FROM:-}
TRAIN_ARGS=${TRAIN_ARGS:-}
BUCKET=${BUCKET:-}
SCOPES=${SCOPES:-}
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

# Mount BUCKET at MOUNT (idempotent: also after a VM restart).
mount_command() {
  [[ -n "${BUCKET}" ]] || { echo "true"; return; }
  echo "sudo mkdir -p ${MOUNT} && sudo chown \$(id -u):\$(id -g) ${MOUNT} && (mountpoint -q ${MOUNT} || gcsfuse --implicit-dirs ${BUCKET} ${MOUNT}) && ls ${MOUNT} > /dev/null"
}

# gcsfuse from Google's apt repository (the TPU VM images do not have it).
gcsfuse_install_command() {
  [[ -n "${BUCKET}" ]] || { echo "true"; return; }
  local apt="sudo apt-get -o DPkg::Lock::Timeout=600 -q"
  echo "(command -v gcsfuse > /dev/null || { \
curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc > /dev/null \
&& echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list > /dev/null \
&& ${apt} update && ${apt} install -y gcsfuse; })"
}

install() {
  local tarball=/tmp/uwm_jax_src.tar.gz
  make_tarball "${tarball}"
  tpu tpu-vm scp "${tarball}" "${TPU_NAME}:~/uwm_jax_src.tar.gz" --worker=all
  on_all_workers "set -e; rm -rf ~/uwm_jax && tar xzf ~/uwm_jax_src.tar.gz -C ~ \
&& (python3 -m pip install -q --user uv==${UV_VERSION} \
|| curl -LsSf https://astral.sh/uv/${UV_VERSION}/install.sh | sh) \
&& ~/.local/bin/uv venv -q --python ${PYTHON_VERSION} --managed-python --clear ~/venv \
&& ~/.local/bin/uv pip install -q --python ~/venv/bin/python -c ~/uwm_jax/requirements.txt -e \"\$HOME/uwm_jax[tpu]\" \
&& $(gcsfuse_install_command) && $(mount_command) \
&& timeout 600 ~/venv/bin/python -m uwm_jax.check_install --platform=tpu"
}

train() {
  local args=("--config=${CONFIG}" "--workdir=${WORKDIR}")
  [[ -n "${DATA}" ]] && args+=("--config.data.sources.${SOURCE}.path=${DATA}")
  [[ -n "${INIT_FROM}" ]] && args+=("--config.init_from=${INIT_FROM}")
  on_all_workers "set -e; $(mount_command); cd ~/uwm_jax && setsid nohup ~/venv/bin/python -m uwm_jax.train \
$(quote_words "${args[@]}")${TRAIN_ARGS:+ ${TRAIN_ARGS}} > ~/train.log 2>&1 < /dev/null &"
  echo "Logs: gcloud compute tpus tpu-vm ssh ${TPU_NAME} --zone ${ZONE} --worker=0 --command 'tail -f ~/train.log'"
}

delete() {
  if [[ "${QUEUED}" == 1 ]]; then
    tpu queued-resources delete "${QR_NAME}" --force --quiet
  else
    tpu tpu-vm delete "${TPU_NAME}" --quiet
  fi
}

case "${STAGE}" in
  create) create ;;
  wait) wait_active ;;
  install) install ;;
  train) train ;;
  all) create; wait_active; install; train ;;
  delete) delete ;;
  *) die "unknown stage ${STAGE}: create|wait|install|train|all|delete" ;;
esac
