#!/usr/bin/env bash
# .venv-lerobot: the real `lerobot` package (0.4.4) whose writer and loader the LeRobot tests
# compare against (tests/test_data_lerobot.py). Lean: requirements-lerobot.txt pins every package
# and is installed with --no-deps (lerobot's own pins would pull a CUDA torch and heavy extras);
# torchcodec needs FFmpeg's shared libraries, taken from Debian (FFmpeg 5.1) when missing.
# Usage: bash scripts/install_lerobot_venv.sh [VENV]   (default .venv-lerobot)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-lerobot}"
if ! ldconfig -p | grep -q 'libavcodec\.so\.'; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libavdevice59 \
    libavfilter8 > /dev/null
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -r requirements-lerobot.txt
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp scripts/lerobot_env/sitecustomize.py "$SITE/"
"$VENV/bin/python" -c "
import torchcodec
from lerobot.datasets.lerobot_dataset import LeRobotDataset
print('LeRobot venv ready: lerobot 0.4.4, torchcodec', torchcodec.__version__)"
