"""One workdir, one writer: `<workdir>/lock.json` names the training run that owns a workdir.

  {"host": "node-3", "pid": 4242, "started": "2026-12-01T13:00:00Z", "heartbeat": 1796130000.0}

A trainer takes the lock before it builds anything (in a multi-process run only process 0 takes
it: the processes of one run share the workdir by design) and releases it when it ends; while
it runs, a thread rewrites `heartbeat` every `HEARTBEAT_INTERVAL_S`. A second trainer on the
same workdir stops at start with one line naming the holder. A lock is stale, and is replaced
with one info line, when
  - it was taken on this host and its PID no longer runs (a killed run; `kill -9` included), or
  - it was taken on another host and its heartbeat is older than `STALE_AFTER_S` (a PID on
    another host cannot be checked; a live holder refreshes the heartbeat well within it).
Creating the file is exclusive (`uwm_jax.runs.storage.create_exclusive`: O_EXCL on a filesystem,
the generation precondition `ifGenerationMatch=0` on gs://), so of two trainers starting at
once exactly one wins; a stale lock is deleted only at the version that was read
(`storage.delete(if_version=...)`), so two trainers replacing the same stale lock cannot both
delete and both create. The workdir is a filesystem path (local or shared, e.g. NFS) or a
gs:// URL.
"""

import datetime
import json
import logging
import os
import socket
import threading
import time
from typing import Optional, Tuple

from uwm_jax.runs import storage

log = logging.getLogger(__name__)

LOCK_FILENAME = "lock.json"
HEARTBEAT_INTERVAL_S = 60.0
STALE_AFTER_S = 5 * HEARTBEAT_INTERVAL_S


class WorkdirLockedError(RuntimeError):
  """Another live trainer holds the workdir."""


def _pid_running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's live process
    return True
  return True


def _read_versioned(path: str) -> Optional[Tuple[dict, storage.Version]]:
  """(holder, version) of the lock file, None when there is none."""
  found = storage.read_versioned(path)
  if found is None:
    return None
  data, version = found
  try:
    return json.loads(data), version
  except ValueError:
    return {}, version  # half-written by a killed holder: stale


def _read(path: str) -> Optional[dict]:
  found = _read_versioned(path)
  return None if found is None else found[0]


def stale_reason(holder: dict, *, host: str, now: float) -> Optional[str]:
  """Why the lock `holder` is stale (None when it must be respected)."""
  if not holder or "pid" not in holder:
    return "the lock file is unreadable"
  if holder.get("host") == host:
    if holder["pid"] == os.getpid():
      return "it was taken by this process"
    if not _pid_running(int(holder["pid"])):
      return f"PID {holder['pid']} is no longer running"
    return None
  age = now - float(holder.get("heartbeat", 0.0))
  if age > STALE_AFTER_S:
    return f"its heartbeat is {age:.0f} s old (another host; stale after {STALE_AFTER_S:.0f} s)"
  return None


def describe(holder: dict) -> str:
  return (f"PID {holder.get('pid')} on host {holder.get('host')} since "
          f"{holder.get('started')}")


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds the workdir for this process (see the module doc)."""

  def __init__(self, workdir: str, *, heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S):
    self.path = os.path.join(os.fspath(workdir), LOCK_FILENAME)
    self._interval = heartbeat_interval_s
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None
    self._record = None

  def _write(self, path: str, exclusive: bool) -> None:
    self._record["heartbeat"] = time.time()
    data = json.dumps(self._record).encode()
    if exclusive:
      storage.create_exclusive(path, data)
    else:
      storage.write_atomic(path, data)

  def acquire(self) -> "WorkdirLock":
    host = socket.gethostname()
    self._record = {"host": host, "pid": os.getpid(),
                    "started": datetime.datetime.now(datetime.timezone.utc).strftime(
                        "%Y-%m-%dT%H:%M:%SZ")}
    for _ in range(3):
      try:
        self._write(self.path, exclusive=True)
        break
      except FileExistsError:
        found = _read_versioned(self.path)
        if found is None:
          continue  # released meanwhile
        holder, version = found
        reason = stale_reason(holder, host=host, now=time.time())
        if reason is None:
          raise WorkdirLockedError(
              f"Workdir {os.path.dirname(self.path)} is in use by another training run "
              f"({describe(holder)}); stop it, use another --workdir, or delete {self.path} "
              "if that run is dead.") from None
        log.info("Replacing the stale workdir lock %s (%s; %s).", self.path, describe(holder),
                 reason)
        # Only the version found stale: a lock another trainer took meanwhile stays.
        storage.delete(self.path, if_version=version)
    else:
      raise WorkdirLockedError(f"Could not take the workdir lock {self.path}.")
    self._thread = threading.Thread(target=self._beat, name="workdir_lock", daemon=True)
    self._thread.start()
    return self

  def _beat(self):
    while not self._stop.wait(self._interval):
      holder = _read(self.path)
      if not holder or holder.get("pid") != os.getpid() or holder.get("host") != self._record[
          "host"]:
        log.warning("The workdir lock %s was taken over (%s).", self.path,
                    describe(holder or {}))
        return
      self._write(self.path, exclusive=False)

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    holder = _read(self.path)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == self._record["host"]:
      storage.delete(self.path)

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
