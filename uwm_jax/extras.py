"""Optional dependencies: what the core install leaves out, and which extra brings each one.

The core install (`pip install -c requirements.txt -e .`, setup.cfg's install_requires) trains,
checkpoints and resumes: `python -m uwm_jax.train` on synthetic or converted (array_record) data.
Everything else is an extra of setup.cfg, and code that needs one of these modules imports it
where it is used (a function-level import), never at the top of a module that the trainer loads
(tests/test_core_install.py holds both). When one is missing, a command ends in one line that
names the extra (`cli_errors`):

  error: No module named 'imageio' (an optional dependency: pip install -c requirements.txt
  -e '.[data]'; the eval extra also has it)
"""

from typing import Optional

# Import name -> the extras of setup.cfg that install it; the first is the one suggested.
EXTRAS = {
    "h5py": ("data", "eval"),  # LIBERO demo files: conversion (data), tracking demos (eval)
    "imageio": ("data", "eval"),  # video clips as training data (data), rollout videos (eval)
    "imageio_ffmpeg": ("data", "eval"),
    "mujoco": ("eval",),
    "av": ("data",),  # LeRobot videos (convert_lerobot)
    "pyarrow": ("data",),  # LeRobot parquet files (convert_lerobot)
    "tensorflow": ("data",),
    "tensorflow_datasets": ("data",),
    "torch": ("weights",),
    "safetensors": ("weights",),
    "websockets": ("serve",),
    "diffusers": ("test",),
}
# Optional modules that no extra installs: how to get them.
OTHER_INSTALLS = {
    "libero": "bash scripts/install_libero.sh",
    "robosuite": "bash scripts/install_libero.sh",
    "wandb": "pip install wandb",
}
OPTIONAL_MODULES = tuple(sorted(set(EXTRAS) | set(OTHER_INSTALLS)))


def install_command(extra: str) -> str:
  return f"pip install -c requirements.txt -e '.[{extra}]'"


def install_hint(module_name: str) -> Optional[str]:
  """How to install the optional module `module_name` (e.g. "imageio.v2"); None when it is not
  one of `OPTIONAL_MODULES`."""
  top = (module_name or "").split(".")[0]
  if top in OTHER_INSTALLS:
    return OTHER_INSTALLS[top]
  if top not in EXTRAS:
    return None
  first, *others = EXTRAS[top]
  also = f"; the {', '.join(others)} extra also has it" if others else ""
  return install_command(first) + also


def missing_module_message(error: ModuleNotFoundError) -> Optional[str]:
  """`No module named 'x' (an optional dependency: <install hint>)` for an optional module;
  None for any other module (a broken install of the core, a typo)."""
  hint = install_hint(error.name)
  if hint is None:
    return None
  return f"No module named {error.name!r} (an optional dependency: {hint})"
