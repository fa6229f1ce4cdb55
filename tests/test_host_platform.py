"""Which platforms jax tries (uwm_jax.host_platform): only the CPU on a host without any
accelerator, so no libtpu probe lines; every platform, the TPU first, where a TPU VM's PCI
devices or device files are faked under a folder standing in for `/`."""

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO
from uwm_jax import host_platform


def _pci_device(root, slot, vendor, device):
  folder = root / "sys/bus/pci/devices" / slot
  folder.mkdir(parents=True)
  (folder / "vendor").write_text(vendor + "\n")
  (folder / "device").write_text(device + "\n")


def _device_file(root, path):
  (root / path).parent.mkdir(parents=True, exist_ok=True)
  (root / path).write_text("")


def _host(tmp_path, name, pci=(), files=()):
  root = tmp_path / name
  root.mkdir()
  for k, (vendor, device) in enumerate(pci):
    _pci_device(root, f"0000:00:{k:02x}.0", vendor, device)
  for path in files:
    _device_file(root, path)
  return str(root)


HOSTS = {  # name -> (PCI devices (vendor, device), device files, JAX_PLATFORMS set)
    "cpu only": ((("0x8086", "0x1237"),), (), "cpu"),
    # Google's virtual NIC and NVMe share the TPU's vendor id but are no TPU (every GCE VM).
    "GCE VM (gVNIC, NVMe)": ((("0x1ae0", "0x0042"), ("0x1ae0", "0x001f")), (), "cpu"),
    "vfio without a device group": ((), ("dev/vfio/vfio",), "cpu"),
    "TPU v5e by PCI id": ((("0x1ae0", "0x0063"),), (), None),
    "TPU v4 by /dev/accel0": ((), ("dev/accel0",), None),
    "TPU v6e by /dev/vfio/0": ((), ("dev/vfio/vfio", "dev/vfio/0"), None),
    "NVIDIA GPU": ((), ("dev/nvidia0", "dev/nvidiactl"), None),
    "AMD GPU": ((), ("dev/kfd",), None),
}


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_cpu_only_where_no_accelerator_is_seen(tmp_path, name):
  pci, files, want = HOSTS[name]
  root = _host(tmp_path, "root", pci, files)
  environ = {"PATH": "/usr/bin"}
  assert host_platform.configure(environ, root=root) == want
  assert environ.get("JAX_PLATFORMS") == want
  assert bool(host_platform.tpu_evidence(root)) == name.startswith("TPU")


@pytest.mark.parametrize("setting", [{"JAX_PLATFORMS": ""}, {"JAX_PLATFORMS": "tpu"},
                                     {"JAX_FORCE_TPU_INIT": "1"},
                                     {"PJRT_NAMES_AND_LIBRARY_PATHS": "x:/opt/x.so"}])
def test_the_users_choice_wins(tmp_path, setting):
  environ = dict(setting)
  assert host_platform.configure(environ, root=_host(tmp_path, "cpu")) is None
  assert environ == setting


PROBE = ("import logging, jax; logging.basicConfig(level=logging.INFO); "
         "print(jax.default_backend())")


def _run_jax(environ):
  """A fresh Python importing jax with `environ` (+ INFO logging): its backend and stderr."""
  out = subprocess.run([sys.executable, "-c", PROBE], env=environ, cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout.strip().splitlines()[-1], out.stderr


def test_jax_tries_the_tpu_only_on_a_tpu_vm(tmp_path):
  """jax itself, given what `configure` decides: on a faked TPU VM it initialises the TPU
  backend (here, without chips, that fails quietly and it falls back to the CPU); on a host
  without accelerators it never touches the TPU."""
  user = {k: v for k, v in os.environ.items() if k not in host_platform.USER_PLATFORM_SETTINGS}
  tpu_vm, cpu_host = dict(user), dict(user)
  host_platform.configure(tpu_vm, root=_host(tmp_path, "tpu", files=("dev/accel0",)))
  host_platform.configure(cpu_host, root=_host(tmp_path, "cpu"))
  assert "JAX_PLATFORMS" not in tpu_vm and cpu_host["JAX_PLATFORMS"] == "cpu"
  backend, err = _run_jax(tpu_vm)
  assert "backend 'tpu'" in err, err[-3000:]  # "Unable to initialize backend 'tpu': ..."
  backend, err = _run_jax(cpu_host)
  assert backend == "cpu"
  assert not any(text in err for text in ("backend 'tpu'", "TPU", "libtpu")), err[-3000:]


@pytest.mark.skipif(bool(host_platform.tpu_evidence() or host_platform.gpu_evidence()),
                    reason="this host has an accelerator device: jax keeps every platform")
def test_importing_the_package_pins_the_cpu_before_jax_is_imported():
  """Every entry point (`python -m uwm_jax.<module>`) imports the package first: on this host
  without accelerators that alone sets JAX_PLATFORMS=cpu, with jax not imported yet."""
  user = {k: v for k, v in os.environ.items() if k not in host_platform.USER_PLATFORM_SETTINGS}
  out = subprocess.run(
      [sys.executable, "-c", "import os, sys, uwm_jax; "
       "print(os.environ.get('JAX_PLATFORMS'), 'jax' in sys.modules)"],
      env=dict(user, PYTHONPATH=REPO), cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split() == ["cpu", "False"], out.stdout + out.stderr[-3000:]
