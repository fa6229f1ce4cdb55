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
                             list of faults {"process": I, "when": "start"|"training",
                             "metrics": FILE}; a trainer whose FAKE_PROCESS_INDEX is I takes the
                             first fault for I and dies (exit status 1) at start, or once FILE
                             (its metrics.jsonl) has a row of a step above those it had at start
                             (it trained a step); a fault that fired is removed from the list
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


def _after_jax_import():
  if os.environ.get("FAKE_CLOUD_TPU_VM") == "1":
    _pretend_cloud_tpu_vm()
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

  def last_step():
    steps = [0]
    try:
      with open(fault["metrics"], encoding="utf-8") as f:
        for line in f:
          try:
            steps.append(int(json.loads(line).get("step", 0)))
          except ValueError:
            pass  # a line being written
    except FileNotFoundError:
      pass
    return max(steps)

  at_start = last_step()

  def watch():
    while last_step() <= at_start:
      time.sleep(0.1)
    fire("simulated hardware failure during training")

  threading.Thread(target=watch, daemon=True).start()


if os.environ.get("FAKE_CLOUD_TPU_VM") == "1" or os.environ.get("FAKE_LIBTPU_LOCKFILE"):
  sys.meta_path.insert(0, _AfterJaxImport())
if os.environ.get("FAKE_CRASH") and "uwm_jax.train" in getattr(sys, "orig_argv", []):
  _crash_injection(os.environ["FAKE_CRASH"])
