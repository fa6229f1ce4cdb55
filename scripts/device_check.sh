#!/usr/bin/env bash
# GPU check in one run (~5-8 min on one H200): install the pinned jax for CUDA into a venv,
# measure the bf16 matmul peak, the DROID train step (bf16; XLA and cuDNN attention; next-obs
# latents encoded by the VAE or from a latent cache) and the batch-1 policy latency, then print
# one table.
#
#   scripts/device_check.sh
#
# Settings (environment variables):
#   VENV (/tmp/uwm-device-venv)  JAX_CUDA (cuda12: the jax extra, cuda12 or cuda13)
#   WHEELS: a folder of wheels for an offline install (pip --no-index --find-links)
#   SKIP_INSTALL=1: measure with the current python3 as it is (a machine without network whose
#     python3 has a GPU jax; install missing pure-Python packages such as ml-collections first,
#     e.g. pip install --no-index --no-deps --target /tmp/site WHEELS/*.whl and PYTHONPATH=/tmp/site)
#   CONFIG (configs/droid.py)  COMPUTE_DTYPE (bfloat16)  BATCH (32) samples per train step
#   STEPS (10) timed steps  POLICY_CALLS (20)  MATMUL_N (8192): the peak's square matmul size
#   BUDGET_S (480): every step's timeout is cut to what is left of this budget
#   TIMEOUT_SCALE (1): multiplies every step's own timeout (slow machines)
#   ALLOW_CPU=1: run without a GPU, a smoke test of this script:
#     SKIP_INSTALL=1 ALLOW_CPU=1 CONFIG=configs/tiny.py COMPUTE_DTYPE=float32 BATCH=4 STEPS=2 \
#       MATMUL_N=256 TIMEOUT_SCALE=4 BUDGET_S=3000 scripts/device_check.sh
# When the pinned jax cannot be installed (no network) and python3 already has a jax that sees a
# GPU, the check runs with that jax; the table's header names the jax it ran with.
# A step that fails or runs out of time is listed under the table; the others still run.
# Output: stdout; with OUT set, also $OUT/device_check.log (everything), device_check.txt (the
# table) and device_check.jsonl (one JSON object per measurement).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "${ROOT}"
VENV=${VENV:-/tmp/uwm-device-venv}
JAX_CUDA=${JAX_CUDA:-cuda12}
JAX_VERSION=0.10.2
CONFIG=${CONFIG:-configs/droid.py}
COMPUTE_DTYPE=${COMPUTE_DTYPE:-bfloat16}
BATCH=${BATCH:-32}
STEPS=${STEPS:-10}
POLICY_CALLS=${POLICY_CALLS:-20}
MATMUL_N=${MATMUL_N:-8192}
BUDGET_S=${BUDGET_S:-480}
TIMEOUT_SCALE=${TIMEOUT_SCALE:-1}
RESULTS=$(mktemp -d)
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "${OUT}"
  exec > >(tee "${OUT}/device_check.log") 2>&1
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="${ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
export VENV JAX_CUDA JAX_VERSION CONFIG COMPUTE_DTYPE BATCH STEPS POLICY_CALLS MATMUL_N RESULTS WHEELS=${WHEELS:-}
START=${SECONDS}
STEP_PID=
trap '[[ -n "${STEP_PID}" ]] && kill -TERM "${STEP_PID}" 2> /dev/null; rm -rf "${RESULTS}"' EXIT
trap 'exit 143' TERM INT

# step NAME MAX_S CMD...: run CMD with a timeout of MAX_S (or what is left of the budget);
# a failure or timeout is reported and recorded, and the check goes on.
step() {
  local name=$1 max_s=$(($2 * TIMEOUT_SCALE)) left=$((BUDGET_S - (SECONDS - START)))
  shift 2
  (( left < max_s )) && max_s=${left}
  if (( max_s < 10 )); then
    echo "== ${name}: skipped (budget of ${BUDGET_S} s spent)"
    echo "${name}: skipped (budget)" >> "${RESULTS}/failures"
    return 0
  fi
  echo "== ${name} (timeout ${max_s} s)"
  local t0=${SECONDS} status=0
  # The commands are this script's functions: run them in a bash that has them (export -f).
  # `timeout` runs them in its own process group; the EXIT trap ends it if this script stops.
  timeout --kill-after=10 "${max_s}" bash -o pipefail -c '"$@"' _ "$@" &
  STEP_PID=$!
  wait "${STEP_PID}" || status=$?
  STEP_PID=
  echo "== ${name}: exit ${status} after $((SECONDS - t0)) s"
  if (( status != 0 )); then
    echo "${name}: $([[ ${status} == 124 ]] && echo "timed out after ${max_s} s" || echo "exit ${status}")" \
      >> "${RESULTS}/failures"
  fi
  return 0
}

echo "== GPU"
timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# ------------------------------------------------------------------------------------ install
PY=python3
install() {
  python3 -m venv --system-site-packages "${VENV}"
  local pip=("${VENV}/bin/pip" install -q --retries 1 --timeout 20 -c requirements.txt)
  [[ -n "${WHEELS}" ]] && pip+=(--no-index --find-links "${WHEELS}")
  "${pip[@]}" "jax[${JAX_CUDA}]==${JAX_VERSION}" -e .
}
export -f install
gpu_jax() {  # PYTHON: its jax sees a GPU
  timeout 120 "$1" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null
}
[[ "${ALLOW_CPU:-0}" == 1 ]] && gpu_jax() { true; }
if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  echo "== install jax[${JAX_CUDA}]==${JAX_VERSION} and the project into ${VENV}"
  if timeout 300 bash -c install && gpu_jax "${VENV}/bin/python"; then
    PY=${VENV}/bin/python
  elif gpu_jax python3; then
    echo "warning: could not install jax[${JAX_CUDA}]==${JAX_VERSION} (offline?); measuring with" \
      "python3's jax instead"
  else
    echo "error: no jax that sees a GPU (install failed and python3's jax has no GPU)" >&2
    exit 1
  fi
fi
JAX_INFO=$("${PY}" -c "import jax, jaxlib, sys; d = jax.devices()[0]; \
print(f'jax {jax.__version__}, jaxlib {jaxlib.__version__}, Python {sys.version.split()[0]}, \
{jax.device_count()} x {d.device_kind}')")
echo "== ${JAX_INFO}"

# ------------------------------------------------------------------------------- measurements
peak() {
  "${PY}" - "${RESULTS}/peak" "${MATMUL_N}" <<'EOF'
import sys, time
import jax, jax.numpy as jnp
n, reps = int(sys.argv[2]), 20
a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
mm = jax.jit(lambda a, b: a @ b)
for _ in range(3):
  mm(a, b).block_until_ready()
t0 = time.perf_counter()
for _ in range(reps):
  out = mm(a, b)
out.block_until_ready()
tflops = 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12
print(f"bf16 {n}x{n}x{n} matmul: {tflops:.0f} TFLOP/s")
open(sys.argv[1], "w").write(f"{tflops:.1f}")
EOF
}
export PY
export -f peak
step "bf16 matmul peak" 120 peak
PEAK=$(cat "${RESULTS}/peak" 2>/dev/null || echo 0)

train_bench() {  # ATTENTION(xla|cudnn) LATENT_CACHE(on|off)
  "${PY}" -m benchmarks.train_step --config="${CONFIG}" \
    --config.batch_size="${BATCH}" --config.model.compute_dtype="${COMPUTE_DTYPE}" \
    --config.model.attention_impl="$1" --config.train.peak_tflops_per_device="${PEAK}" \
    --steps="${STEPS}" --warmup=2 --latent_cache="$2" | tee "${RESULTS}/train_$1_$2.txt"
}
export PEAK
export -f train_bench
# Most telling first (the budget may cut the last): the recommended DROID setup (latent cache)
# with each attention, the policy, then the step that also encodes next frames with the VAE.
step "train step, XLA attention, latent cache" 180 train_bench xla on
step "train step, cuDNN attention, latent cache" 150 train_bench cudnn on

policy() {
  "${PY}" - "${RESULTS}/policy.json" "${POLICY_CALLS}" "${CONFIG}" <<'EOF'
import json, os, runpy, sys, time
import jax, numpy as np
from uwm_jax import batch as B_, sampling
from benchmarks.train_step import random_batch
from uwm_jax.model.uwm import UnifiedWorldModel
config = runpy.run_path(sys.argv[3])["get_config"]()
config.model.compute_dtype = os.environ["COMPUTE_DTYPE"]
config.batch_size = 1
model = UnifiedWorldModel(config.model)
params, frozen = model.init(jax.random.key(0))
sample = sampling.make_sampler(model, config.diffusion, sampling.POLICY)
host = random_batch(config, np.random.default_rng(0))
batch = {k: jax.device_put(host[k]) for k in (B_.OBS, B_.LOW_DIM) if k in host}
rng = jax.random.key(1)
t0 = time.perf_counter()
jax.block_until_ready(sample(params, frozen, batch, rng))
compile_s = time.perf_counter() - t0
times = []
for i in range(int(sys.argv[2])):
  t0 = time.perf_counter()
  out = sample(params, frozen, batch, jax.random.fold_in(rng, i))
  np.asarray(out["action"])  # to the host, as a policy server does
  times.append(time.perf_counter() - t0)
r = {"policy_ms_median": 1e3 * float(np.median(times)), "policy_ms_p90":
     1e3 * float(np.percentile(times, 90)), "compile_s": compile_s,
     "ddim_steps": int(config.diffusion.num_inference_steps)}
print(json.dumps(r))
open(sys.argv[1], "w").write(json.dumps(r))
EOF
}
export -f policy
step "batch-1 policy latency" 120 policy
step "train step, XLA attention, VAE encoding" 180 train_bench xla off

# ----------------------------------------------------------------------------------- the table
"${PY}" - "${RESULTS}" "${JAX_INFO}" "${PEAK}" "${BATCH}" "${CONFIG}" "${COMPUTE_DTYPE}" \
    <<'EOF' | tee "${RESULTS}/table.txt"
import json, os, sys
results, info, peak, batch, config, dtype = sys.argv[1:7]
peak = float(peak)
rows = []
for attention, cache in (("xla", "off"), ("xla", "on"), ("cudnn", "on")):
  path = os.path.join(results, f"train_{attention}_{cache}.txt")
  if os.path.exists(path):
    for line in open(path):
      if line.startswith("{"):
        r = json.loads(line)
        r["attention"] = attention
        rows.append(r)
print(f"UWM device check: {info}; measured bf16 matmul peak {peak:.0f} TFLOP/s")
print(f"{config}, {dtype} compute, batch {batch} per step")
print(f"{'attention':<10}{'latent cache':<14}{'samples/s':>10}{'step ms':>10}"
      f"{'TFLOP/s':>9}{'MFU*':>7}{'peak GiB':>10}")
for r in rows:
  mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "n/a"
  mem = r.get("memory", {}).get("peak_bytes_estimate")
  mem = f"{mem / 2**30:.1f}" if mem else "n/a"
  print(f"{r['attention']:<10}{'on' if r['latent_cache'] else 'off':<14}"
        f"{r['samples_per_s']:>10.1f}{r['step_time_ms']:>10.1f}"
        f"{r['tflops_per_s_per_device']:>9.1f}{mfu:>7}{mem:>10}")
print("* MFU: analytic FLOPs (uwm_jax/training/flops.py) over the measured matmul peak")
policy = os.path.join(results, "policy.json")
if os.path.exists(policy):
  p = json.load(open(policy))
  print(f"batch-1 policy ({p['ddim_steps']} DDIM steps, XLA attention): "
        f"{p['policy_ms_median']:.1f} ms per call (median; p90 {p['policy_ms_p90']:.1f} ms), "
        f"compile {p['compile_s']:.0f} s")
if os.path.exists(os.path.join(results, "failures")):
  print("failed or skipped: " + "; ".join(open(os.path.join(results, "failures")).read().split("\n")[:-1]))
with open(os.path.join(results, "all.jsonl"), "w") as f:
  for r in rows:
    f.write(json.dumps(r) + "\n")
  if os.path.exists(policy):
    f.write(json.dumps({"policy": json.load(open(policy))}) + "\n")
EOF
echo "== total $((SECONDS - START)) s"
if [[ -n "${OUT:-}" ]]; then
  cp "${RESULTS}/table.txt" "${OUT}/device_check.txt"
  cp "${RESULTS}/all.jsonl" "${OUT}/device_check.jsonl"
fi
