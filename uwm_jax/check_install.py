"""Check an install: import everything `python -m uwm_jax.train` imports, then list the devices.

  python -m uwm_jax.check_install                  # on any host, e.g. after `pip install -e .`
  python -m uwm_jax.check_install --platform=tpu   # a TPU VM: jax must run on its TPUs

Prints one line, e.g.
  uwm_jax 0.1.0: the trainer imports (31 modules); jax 0.10.2 on tpu: 4 devices (TPU v5p),
  4 local, process 0 of 1
A missing dependency ends in one `error:` line naming the extra that installs it (or the
module, for the core), a platform other than --platform in an `error:` line; exit status 2.
The launch scripts run it on every worker after installing, so a broken install stops there
instead of in each worker's training log. It starts no multi-process job (every process of a
pod lists what its own jax sees).
"""

import ast
import importlib
import importlib.metadata
import importlib.util
from typing import List

from absl import flags

from uwm_jax import cli_config

TRAINER = "uwm_jax.train"

_PLATFORM = flags.DEFINE_enum("platform", None, ["cpu", "gpu", "tpu"],
                              "The platform jax must run on (jax.default_backend()); "
                              "default: any.")


def trainer_imports() -> List[str]:
  """The modules `python -m uwm_jax.train` imports, read from its source (its module-level
  imports and those inside `main`, which run after jax.distributed starts), in order; for
  `from package import name` the submodule when `name` is one, e.g. uwm_jax.training.loop."""
  path = importlib.util.find_spec(TRAINER).origin
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=path)
  modules = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      modules.extend(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        modules.append(sub if _is_module(sub) else node.module)
  return [TRAINER] + list(dict.fromkeys(m for m in modules if m != TRAINER))


def _is_module(name: str) -> bool:
  """Whether `name` is a module (its package is imported to find out; False when that package
  or the name is missing: importing it then says which)."""
  try:
    return importlib.util.find_spec(name) is not None
  except ModuleNotFoundError:
    return False


def import_trainer() -> List[str]:
  """Import `trainer_imports()` (what training needs, before any data or device is touched);
  a missing dependency raises ModuleNotFoundError. Returns the module names."""
  modules = trainer_imports()
  for name in modules:
    importlib.import_module(name)
  return modules


def device_summary() -> str:
  """`jax 0.10.2 on cpu: 8 devices (cpu), 8 local, process 0 of 1`."""
  import jax  # pylint: disable=import-outside-toplevel  # after the trainer's imports
  kinds = sorted({d.device_kind for d in jax.devices()})
  return (f"jax {jax.__version__} on {jax.default_backend()}: {jax.device_count()} devices "
          f"({', '.join(kinds)}), {jax.local_device_count()} local, process "
          f"{jax.process_index()} of {jax.process_count()}")


def check_platform(platform: str) -> None:
  """Raise RuntimeError unless jax runs on `platform` (jax falls back to the CPU, with only a
  warning, when the accelerator's plugin is missing or the chips are busy)."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.default_backend() != platform:
    raise RuntimeError(f"jax runs on {jax.default_backend()}, not {platform}: the accelerator's "
                       f"jax plugin is missing (pip install -c requirements.txt -e "
                       f"'.[{'cuda' if platform == 'gpu' else platform}]') or its devices are "
                       f"unavailable (held by another process?); see jax's warning above.")


def main(argv):
  del argv
  modules = import_trainer()
  try:
    version = importlib.metadata.version("uwm_jax")
  except importlib.metadata.PackageNotFoundError:
    version = "(not installed: a source tree on the path)"
  if _PLATFORM.value:
    check_platform(_PLATFORM.value)
  print(f"uwm_jax {version}: the trainer imports ({len(modules)} modules); {device_summary()}")


if __name__ == "__main__":
  cli_config.run(main)
