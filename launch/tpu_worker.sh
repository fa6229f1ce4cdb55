#!/usr/bin/env bash
# What launch/tpu_vm.sh runs ON each worker of a TPU VM slice (installed with the project in
# ~/uwm_jax; every worker runs the same command at once, through `gcloud ... ssh`):
#
#   tpu_worker.sh mount            mount DATA_BUCKET read-only at DATA_MOUNT (idempotent)
#   tpu_worker.sh stop GRACE_S     stop this worker's trainer: SIGTERM (it saves a checkpoint at a
#                                  step all workers agree on and exits 143), SIGKILL after
#                                  GRACE_S s; also every other process holding the TPU or
#                                  TPU_LOCKFILE; then remove TPU_LOCKFILE
#   tpu_worker.sh train FLAGS...   run `python -m uwm_jax.train FLAGS...` in the foreground: its
#                                  output goes to ~/uwm_train.log and to this command's output;
#                                  its exit status is this command's. When this command's input
#                                  ends (the ssh connection closed: the supervisor on the user's
#                                  machine stopped or lost the connection), the trainer gets
#                                  SIGTERM: it checkpoints and stops, and `train` resumes it.
#
# Settings (environment variables): DATA_BUCKET, DATA_MOUNT (/mnt/uwm-data),
# TPU_LOCKFILE (/tmp/libtpu_lockfile: libtpu refuses to start while it remains); a leading ~ in
# a path is the worker's home.
#
# Why the cleanup: libtpu refuses to start while another process holds the chips or its lock
# file remains (after a kill -9), and a trainer left from an earlier run would hold the workdir;
# MaxText's multihost runner does the same before every start.
set -uo pipefail

DATA_BUCKET=${DATA_BUCKET:-}
DATA_MOUNT=${DATA_MOUNT:-/mnt/uwm-data}
DATA_MOUNT=${DATA_MOUNT/#\~/${HOME}}
TPU_LOCKFILE=${TPU_LOCKFILE:-/tmp/libtpu_lockfile}
TPU_LOCKFILE=${TPU_LOCKFILE/#\~/${HOME}}
PID_FILE=${HOME}/uwm_train.pid
LOG_FILE=${HOME}/uwm_train.log
VENV=${HOME}/venv
HOST=$(hostname)

# gcsfuse -o ro: the data is only read; checkpoints and metrics go to gs:// directly (--workdir).
# A rerun finds the bucket mounted and leaves it (root may not even stat another user's FUSE
# mount, so `mkdir -p` on it fails); a mount whose gcsfuse died is unmounted and mounted again.
mount_data() {
  [[ -n "${DATA_BUCKET}" ]] || return 0
  if mountpoint -q "${DATA_MOUNT}" && ls "${DATA_MOUNT}" > /dev/null 2>&1; then
    echo "${HOST}: gs://${DATA_BUCKET} already mounted at ${DATA_MOUNT}"
    return 0
  fi
  fusermount -u "${DATA_MOUNT}" 2> /dev/null || true
  sudo mkdir -p "${DATA_MOUNT}" && sudo chown "$(id -u):$(id -g)" "${DATA_MOUNT}" \
    && gcsfuse -o ro --implicit-dirs "${DATA_BUCKET}" "${DATA_MOUNT}" \
    && ls "${DATA_MOUNT}" > /dev/null \
    || { echo "error: ${HOST}: cannot mount gs://${DATA_BUCKET} at ${DATA_MOUNT}" >&2; return 2; }
  echo "${HOST}: gs://${DATA_BUCKET} mounted read-only at ${DATA_MOUNT}"
}

# The PIDs to stop: the trainer this script started last (if it still is one) and whatever
# holds the TPU devices or the libtpu lock file.
holders() {
  local pid files=()
  if [[ -f "${PID_FILE}" ]]; then
    pid=$(cat "${PID_FILE}")
    if [[ "${pid}" =~ ^[0-9]+$ ]] && ps -o args= -p "${pid}" 2> /dev/null | grep -q uwm_jax.train
    then
      echo "${pid}"
    fi
  fi
  for f in "${TPU_LOCKFILE}" /dev/accel* /dev/vfio/*; do
    [[ -e "${f}" ]] && files+=("${f}")
  done
  if (( ${#files[@]} )); then
    sudo lsof -t "${files[@]}" 2> /dev/null || true
  fi
}

# The PIDs of those that still run (a zombie has ended: only its parent has not reaped it).
alive() {
  local pid state
  for pid in "$@"; do
    state=$(ps -o stat= -p "${pid}" 2> /dev/null) && [[ "${state}" != Z* ]] && echo "${pid}"
  done
}

# Milliseconds on a clock finer than bash's SECONDS, which counts whole seconds since the shell
# started: a deadline of SECONDS + 2 can pass 1.1 s later. EPOCHREALTIME is bash >= 5.0's.
now_ms() {
  local t=${EPOCHREALTIME:-${SECONDS}.000000}
  t=${t//[.,]/}
  echo $(( 10#${t} / 1000 ))
}

stop() {
  local grace=${1:-0} pids left deadline
  pids=$(holders | sort -u | grep -vx "$$" | tr '\n' ' ')
  if [[ -n "${pids// /}" ]]; then
    echo "${HOST}: stopping PIDs ${pids}(SIGTERM: a trainer checkpoints first;" \
      "SIGKILL after ${grace} s)"
    kill -TERM ${pids} 2> /dev/null
    deadline=$(( $(now_ms) + grace * 1000 ))
    while left=$(alive ${pids}); [[ -n "${left}" ]] && (( $(now_ms) < deadline )); do
      sleep 0.5
    done
    if [[ -n "${left}" ]]; then
      echo "${HOST}: PIDs $(echo ${left}) still running: SIGKILL"
      kill -KILL ${left} 2> /dev/null
      deadline=$(( $(now_ms) + 10000 ))
      while [[ -n "$(alive ${left})" ]] && (( $(now_ms) < deadline )); do sleep 0.2; done
    fi
  fi
  if [[ -e "${TPU_LOCKFILE}" ]]; then
    echo "${HOST}: removing ${TPU_LOCKFILE}"
    sudo rm -f "${TPU_LOCKFILE}"
  fi
  rm -f "${PID_FILE}"
}

train() {
  mount_data || exit 2
  cd "${HOME}/uwm_jax" || exit 2
  exec 3<&0  # this command's input: the ssh channel
  : > "${LOG_FILE}"  # before `tail` follows it
  # Its own session: a hang-up of a terminal ssh allocated does not kill it without a checkpoint.
  setsid "${VENV}/bin/python" -m uwm_jax.train "$@" < /dev/null >> "${LOG_FILE}" 2>&1 &
  local pid=$!
  echo "${pid}" > "${PID_FILE}"
  tail -n +1 -f --pid="${pid}" "${LOG_FILE}" &
  local tail_pid=$!
  # Input ended: the supervisor is gone (stopped, killed, or the connection dropped).
  # (Its output goes to the log: a process holding the channel's output keeps ssh open.)
  ( while read -r -u 3 _; do :; done
    echo "${HOST}: the connection to the supervisor closed: stopping the trainer (SIGTERM)"
    kill -TERM "${pid}" ) >> "${LOG_FILE}" 2>&1 &
  local watcher=$!
  wait "${pid}"
  local status=$?
  kill "${watcher}" 2> /dev/null
  wait "${tail_pid}" 2> /dev/null
  rm -f "${PID_FILE}"
  echo "${HOST}: trainer exited with status ${status}"
  exit "${status}"
}

case "${1:-}" in
  mount) mount_data ;;
  stop) stop "${2:-0}" ;;
  train) shift; train "$@" ;;
  *) echo "usage: $0 mount|stop GRACE_S|train FLAGS..." >&2; exit 2 ;;
esac
