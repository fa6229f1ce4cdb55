#!/usr/bin/env bash
# Train UWM on a Cloud TPU VM slice: create it (directly or as a queued resource), install the
# project on every worker, start `python -m uwm_jax.train` on all workers at once.
#
#   launch/tpu_vm.sh [--dry-run] create|install|train|all|delete
#
# Settings (environment variables):
#   TPU_NAME (uwm-v4-32)  ZONE (us-central2-b)  ACCELERATOR_TYPE (v4-32)
#   RUNTIME_VERSION (tpu-ubuntu2204-base)  PROJECT (gcloud default)
#   QUEUED=1 to request a queued resource (SPOT=1 for spot capacity)
#   CONFIG (configs/droid.py)  WORKDIR (/mnt/uwm/runs/$TPU_NAME)  TRAIN_ARGS (extra flags)
#   BUCKET: a GCS bucket mounted with gcsfuse at /mnt/uwm on every worker (workdir and data
#           must be one filesystem seen by all workers; `python -m uwm_jax.train` writes
#           checkpoints from every host)
# --dry-run (or DRY_RUN=1) prints every command instead of running it.
#
# Every worker runs the same command; jax.distributed.initialize() finds the other workers of
# the slice itself. Rerunning `train` resumes from the latest checkpoint in WORKDIR.
set -euo pipefail
source "$(dirname "$0")/common.sh"

if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
STAGE=${1:-}
[[ -n "${STAGE}" ]] || die "usage: $0 [--dry-run] create|install|train|all|delete"

TPU_NAME=${TPU_NAME:-uwm-v4-32}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
QUEUED=${QUEUED:-0}
SPOT=${SPOT:-0}
CONFIG=${CONFIG:-configs/droid.py}
WORKDIR=${WORKDIR:-/mnt/uwm/runs/${TPU_NAME}}
TRAIN_ARGS=${TRAIN_ARGS:-}
BUCKET=${BUCKET:-}
JAX_VERSION=0.10.2
PROJECT_FLAGS=()
[[ -n "${PROJECT:-}" ]] && PROJECT_FLAGS=(--project "${PROJECT}")

tpu() { run gcloud compute tpus "$@" --zone "${ZONE}" "${PROJECT_FLAGS[@]}"; }
on_all_workers() { tpu tpu-vm ssh "${TPU_NAME}" --worker=all --command "$1"; }

create() {
  if [[ "${QUEUED}" == 1 ]]; then
    local spot=()
    [[ "${SPOT}" == 1 ]] && spot=(--spot)
    tpu queued-resources create "${TPU_NAME}-qr" --node-id "${TPU_NAME}" \
      --accelerator-type "${ACCELERATOR_TYPE}" --runtime-version "${RUNTIME_VERSION}" "${spot[@]}"
    echo "Queued; wait for ACTIVE: gcloud compute tpus queued-resources describe ${TPU_NAME}-qr --zone ${ZONE}"
  else
    tpu tpu-vm create "${TPU_NAME}" --accelerator-type "${ACCELERATOR_TYPE}" \
      --version "${RUNTIME_VERSION}"
  fi
}

install() {
  local tarball=/tmp/uwm_jax_src.tar.gz
  make_tarball "${tarball}"
  tpu tpu-vm scp "${tarball}" "${TPU_NAME}:~/uwm_jax_src.tar.gz" --worker=all
  local mount="true"
  if [[ -n "${BUCKET}" ]]; then
    mount="sudo mkdir -p /mnt/uwm && sudo chown \$USER /mnt/uwm && (mountpoint -q /mnt/uwm || gcsfuse --implicit-dirs ${BUCKET} /mnt/uwm)"
  fi
  on_all_workers "set -e; rm -rf ~/uwm_jax && tar xzf ~/uwm_jax_src.tar.gz -C ~ \
&& python3 -m venv ~/venv && ~/venv/bin/pip install -q -r ~/uwm_jax/requirements.txt \
'jax[tpu]==${JAX_VERSION}' && ${mount}"
}

train() {
  on_all_workers "cd ~/uwm_jax && nohup ~/venv/bin/python -m uwm_jax.train \
--config=${CONFIG} --workdir=${WORKDIR} ${TRAIN_ARGS} > ~/train.log 2>&1 &"
  echo "Logs: gcloud compute tpus tpu-vm ssh ${TPU_NAME} --zone ${ZONE} --worker=0 --command 'tail -f ~/train.log'"
}

delete() {
  if [[ "${QUEUED}" == 1 ]]; then
    tpu queued-resources delete "${TPU_NAME}-qr" --force --quiet
  else
    tpu tpu-vm delete "${TPU_NAME}" --quiet
  fi
}

case "${STAGE}" in
  create) create ;;
  install) install ;;
  train) train ;;
  all) create; install; train ;;
  delete) delete ;;
  *) die "unknown stage ${STAGE}: create|install|train|all|delete" ;;
esac
