"""Which platforms jax tries on this host: only the CPU where the host has no accelerator.

Left alone, jax initialises every backend it knows on first use, the TPU one included, and
with libtpu installed (requirements-tpu.txt) that probe on a host without TPU chips prints
about six lines of libtpu's own C++ logging to stderr ("Failed to find host bounds ...",
"unexpected worker hostname ...", "=== Source Location Trace ===", "Unable to initialize
backend 'tpu'") before falling back to the CPU. `configure` (run by `uwm_jax/__init__.py`,
so before any entry point imports jax) sets `JAX_PLATFORMS=cpu` where jax could only end up
on the CPU anyway, so nothing is probed and nothing changes but the noise:

  * a user's own `JAX_PLATFORMS` (even empty: jax's automatic choice) always wins, as does a
    plugin named in `PJRT_NAMES_AND_LIBRARY_PATHS`;
  * a host showing TPU chips keeps every platform: the PCI devices jax itself counts as TPU
    chips (`jax/_src/hardware_utils.py`: vendor 0x1ae0 with a TPU device id), the device files
    libtpu opens (`/dev/accel*` on TPU v2-v4, `/dev/vfio/<N>` on v5e and later), or jax's own
    override `JAX_FORCE_TPU_INIT`; jax then finds and uses the TPU as usual;
  * a host with a GPU device file (`/dev/nvidia*`, `/dev/dxg`, `/dev/kfd`, `/dev/dri`) keeps
    every platform too, so the GPU backend (and jax's warning when its plugin is missing) is
    never hidden; there `JAX_PLATFORMS=cuda,cpu` skips the TPU probe by hand.

`root` is the filesystem root the device files are looked up under (tests fake a TPU VM with a
folder of such files).
"""

import glob
import os
from typing import List, MutableMapping, Optional

# jax/_src/hardware_utils.py: Google's PCI vendor id and the device ids it counts as TPU chips.
GOOGLE_PCI_VENDOR_ID = "0x1ae0"
TPU_PCI_DEVICE_IDS = frozenset({"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f",
                                "0x0076"})
# The device files libtpu opens: /dev/accel<N> (TPU v2-v4), /dev/vfio/<N> (v5e and later).
TPU_DEVICE_GLOBS = ("dev/accel[0-9]*", "dev/vfio/[0-9]*")
# NVIDIA (jax's own list: hardware_utils._NVIDIA_GPU_DEVICES), AMD (KFD) and other GPUs (DRM).
GPU_DEVICE_GLOBS = ("dev/nvidia[0-9]*", "dev/nvidiactl", "dev/dxg", "dev/kfd", "dev/dri")
# Settings that mean "the user chose the platforms": left as they are.
USER_PLATFORM_SETTINGS = ("JAX_PLATFORMS", "PJRT_NAMES_AND_LIBRARY_PATHS")
FORCE_TPU_SETTING = "JAX_FORCE_TPU_INIT"  # jax: initialise the TPU even without chips seen


def _read(path: str) -> str:
  try:
    with open(path) as f:
      return f.read().strip()
  except OSError:
    return ""


def _glob(root: str, patterns) -> List[str]:
  return sorted(p for pattern in patterns for p in glob.glob(os.path.join(root, pattern)))


def tpu_pci_devices(root: str = "/") -> List[str]:
  """The PCI device folders (under root/sys/bus/pci/devices) that jax counts as TPU chips."""
  out = []
  for vendor in glob.glob(os.path.join(root, "sys/bus/pci/devices/*/vendor")):
    folder = os.path.dirname(vendor)
    if (_read(vendor) == GOOGLE_PCI_VENDOR_ID
        and _read(os.path.join(folder, "device")) in TPU_PCI_DEVICE_IDS):
      out.append(folder)
  return sorted(out)


def tpu_evidence(root: str = "/") -> List[str]:
  """What shows TPU chips on this host: TPU PCI devices and TPU device files ([] = none)."""
  return tpu_pci_devices(root) + _glob(root, TPU_DEVICE_GLOBS)


def gpu_evidence(root: str = "/") -> List[str]:
  """The GPU device files of this host ([] = none)."""
  return _glob(root, GPU_DEVICE_GLOBS)


def jax_platforms_for_host(environ: MutableMapping[str, str], root: str = "/"
                           ) -> Optional[str]:
  """The JAX_PLATFORMS value to set: "cpu" where jax could only use the CPU, None where the
  user chose already or the host may have an accelerator (jax then tries every backend)."""
  if any(name in environ for name in USER_PLATFORM_SETTINGS + (FORCE_TPU_SETTING,)):
    return None
  if tpu_evidence(root) or gpu_evidence(root):
    return None
  return "cpu"


def configure(environ: Optional[MutableMapping[str, str]] = None, root: str = "/"
              ) -> Optional[str]:
  """Set `JAX_PLATFORMS` in `environ` (default os.environ) as `jax_platforms_for_host` says;
  returns the value set (None: left alone). Must run before jax is imported (jax reads the
  variable once, at import)."""
  environ = os.environ if environ is None else environ
  value = jax_platforms_for_host(environ, root)
  if value is not None:
    environ["JAX_PLATFORMS"] = value
  return value
