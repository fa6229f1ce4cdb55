"""Loaded at start-up by .venv-lerobot's python (scripts/install_lerobot_venv.sh copies it there).

The index's torchvision 0.28.0 is a CUDA build: beside the CPU torch its C++ ops are absent, and
importing `torchvision._meta_registrations` (fake kernels for those ops) fails with "operator
torchvision::nms does not exist". lerobot's dataset code uses torchvision's Python transforms
only, so an empty module stands in for that one.
"""

import sys
import types

_NAME = "torchvision._meta_registrations"
sys.modules.setdefault(_NAME, types.ModuleType(_NAME))
