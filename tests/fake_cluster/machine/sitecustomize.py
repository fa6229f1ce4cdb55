"""What makes a local process behave like one on a fake cluster machine (tests only).

The fake `gcloud` and `srun` (tests/fake_cluster) put this folder on PYTHONPATH of the
processes they start; Python imports this module at start-up. Everything is driven by
variables those fakes set:

  FAKE_HOSTNAME=NAME         socket.gethostname() returns NAME (each fake node has its own name)
  FAKE_CLOUD_TPU_VM=1        once jax is imported: jax believes it runs on a Cloud TPU VM (the
                             flag jax sets itself when it finds TPU chips on the PCI bus), so
                             its GCE TPU cluster detection reads the VM metadata server that
                             GCE_METADATA_IP names (served by the test on 127.0.0.1)
  FAKE_LIBTPU_LOCKFILE=PATH  libtpu's lock: importing jax fails ("TPU in use") while PATH
                             exists; else this process creates it, holds it open and removes it
                             at a clean exit (a kill -9 leaves it behind, as libtpu's does)
  FAKE_CRASH=PATH            fault injection for `python -m uwm_jax.train`: PATH holds a JSON
                             list of faults {"process": I, "when": "start"|"training"}; a
                             trainer whose FAKE_PROCESS_INDEX is I takes the first fault for I
                             and dies (exit status 1) at start, or once it has run its first
                             training step (when it logs "Train step compiled": the other
                             processes go on to the next step's collectives and wait there); a
                             fault that fired is removed from the list
  FAKE_SHARED_EXECUTABLES=1  the processes of a fake cluster share compiled executables the way
                             the hosts of a TPU slice can, to spare the rehearsals a compilation
                             per process and run: jax keys a multi-process CPU executable in its
                             persistent compilation cache by the process's own topology
                             fingerprint (TPU hosts share one topology, hence one key) and only
                             process 0 writes entries, so process 1 compiled every run. Here
                             the key hashes the device kinds (what jax does for a backend
                             without a topology fingerprint) and `jax_share_binary_between_hosts`
                             lets process 0 compile each program for all; changes no result
                             (the programs and compile options are the same on every process)
"""

import importlib.abc
import importlib.util
import json
import os
import sys
import threading
import time

_HOSTNAME = os.environ.get("FAKE_HOSTNAME")
if _HOSTNAME:
  import socket
  socket.gethostname = lambda: _HOSTNAME


def _pretend_cloud_tpu_vm():
  # pylint: disable-next=import-outside-toplevel
  from jax._src.clusters import cloud_tpu_cluster, cluster
  cluster.running_in_cloud_tpu_vm = True
  cloud_tpu_cluster.running_in_cloud_tpu_vm = True
  os.environ.pop("TPU_SKIP_MDS_QUERY", None)  # set by jax's import on a machine without TPUs


_lock_fd = None


def _take_libtpu_lock(path):
  global _lock_fd
  try:
    _lock_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
  except FileExistsError:
    raise RuntimeError(f"(fake libtpu) The TPU is already in use by another process: {path} "
                       "exists. Not attempting to load libtpu.so in this process.") from None
  os.write(_lock_fd, str(os.getpid()).encode())
  import atexit  # pylint: disable=import-outside-toplevel
  atexit.register(lambda: os.path.exists(path) and os.remove(path))


def _share_executables():
  # pylint: disable-next=import-outside-toplevel
  import jax
  from jax._src import cache_key  # pylint: disable=import-outside-toplevel
  cache_key._hash_accelerator_config = cache_key._hash_devices  # pylint: disable=protected-access
  jax.config.update("jax_share_binary_between_hosts", True)
  # A process that waits for a program process 0 never compiles fails within the tests' time.
  jax.config.update("jax_share_binary_between_hosts_timeout_ms", 600_000)


def _after_jax_import():
  if os.environ.get("FAKE_CLOUD_TPU_VM") == "1":
    _pretend_cloud_tpu_vm()
  if os.environ.get("FAKE_SHARED_EXECUTABLES") == "1":
    _share_executables()
  if os.environ.get("FAKE_LIBTPU_LOCKFILE"):
    _take_libtpu_lock(os.environ["FAKE_LIBTPU_LOCKFILE"])


class _AfterJaxImport(importlib.abc.MetaPathFinder):
  """Runs `_after_jax_import` right after `import jax` completes."""

  def find_spec(self, name, path, target=None):
    if name != "jax":
      return None
    sys.meta_path.remove(self)
    spec = importlib.util.find_spec(name)
    exec_module = spec.loader.exec_module

    def exec_then_patch(module):
      exec_module(module)
      _after_jax_import()

    spec.loader.exec_module = exec_then_patch
    return spec


def _die(why):
  print(f"(fake fault) {why}: this process dies now", file=sys.stderr, flush=True)
  os._exit(1)  # pylint: disable=protected-access


def _faults(path):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return []


def _crash_injection(path):
  process = int(os.environ.get("FAKE_PROCESS_INDEX", "-1"))
  mine = [f for f in _faults(path) if f["process"] == process]
  if not mine:
    return
  fault = mine[0]

  def fire(why):
    faults = _faults(path)
    if fault not in faults:
      return  # used up meanwhile
    faults.remove(fault)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(faults, f)
    os.replace(tmp, path)
    _die(why)

  if fault["when"] == "start":
    fire("simulated hardware failure at start-up")
    return

  # pylint: disable-next=import-outside-toplevel
  import logging

  class DieAfterFirstStep(logging.Handler):

    def emit(self, record):
      if record.getMessage().startswith("Train step compiled"):
        fire("simulated hardware failure during training")

  logging.getLogger().addHandler(DieAfterFirstStep())


if any(os.environ.get(v) for v in ("FAKE_CLOUD_TPU_VM", "FAKE_LIBTPU_LOCKFILE",
                                    "FAKE_SHARED_EXECUTABLES")):
  sys.meta_path.insert(0, _AfterJaxImport())
if os.environ.get("FAKE_CRASH") and "uwm_jax.train" in getattr(sys, "orig_argv", []):
  _crash_injection(os.environ["FAKE_CRASH"])
