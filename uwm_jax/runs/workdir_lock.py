"""One workdir, one writer: `<workdir>/lock.json` names the training run that owns a workdir.

  {"host": "node-3", "pid": 4242, "started": "2026-12-01T13:00:00Z", "heartbeat": 1796130000.0,
   "slurm_job_id": "81723", "slurm_restart_count": 2}

A trainer takes the lock before it builds anything (in a multi-process run only process 0 takes
it: the processes of one run share the workdir by design) and releases it when it ends; while
it runs, a thread rewrites `heartbeat` every `HEARTBEAT_INTERVAL_S`.

Who may replace a lock that is there (the policy; a live holder is never replaced):
  - it is unreadable (half-written by a killed holder);
  - it was taken on this host and its PID no longer runs (a killed run, `kill -9` included);
  - it was taken by an earlier run of the same SLURM job (`SLURM_JOB_ID` equal,
    `SLURM_RESTART_COUNT` lower): SLURM ends every process of a job's allocation before it
    requeues the job, so that holder is dead even though it ran on another node and its
    heartbeat is fresh (a requeue after a node failure or `kill -9`: taken over at once);
  - it was taken on another host and its heartbeat is older than `STALE_AFTER_S` (a PID on
    another host cannot be checked).
Otherwise, when the holder is on another host, the trainer WAITS (one log line saying so)
instead of failing at once: a live holder rewrites its heartbeat within `HEARTBEAT_INTERVAL_S`,
and the moment it does, the wait ends with `WorkdirLockedError`; a dead one stops beating and
is replaced once its heartbeat is `STALE_AFTER_S` old. The wait is bounded by `STALE_AFTER_S`.
A holder on this host whose PID runs is refused at once.

If a holder finds, at a heartbeat, that its lock was replaced (its heartbeat stalled for
`STALE_AFTER_S`, e.g. a frozen filesystem, and another run took the workdir over), it logs an
`error:` line and ends its process at once (exit status 2) rather than keep writing beside the
new owner: at most one live trainer writes a workdir, up to one heartbeat interval.

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
from typing import Callable, Optional, Tuple

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


def slurm_job(environ=None) -> dict:
  """The SLURM job this process belongs to, as lock record fields ({} outside SLURM)."""
  env = os.environ if environ is None else environ
  if not env.get("SLURM_JOB_ID"):
    return {}
  return {"slurm_job_id": str(env["SLURM_JOB_ID"]),
          "slurm_restart_count": int(env.get("SLURM_RESTART_COUNT") or 0)}


def _earlier_run_of_this_job(holder: dict, job: dict) -> Optional[str]:
  if not job or str(holder.get("slurm_job_id", "")) != job["slurm_job_id"]:
    return None
  try:
    theirs = int(holder.get("slurm_restart_count", 0))
  except (TypeError, ValueError):
    return None
  if theirs >= job["slurm_restart_count"]:
    return None  # the same run (another step of it) or a later one: respected
  return (f"it was taken by restart {theirs} of this SLURM job {job['slurm_job_id']} (this is "
          f"restart {job['slurm_restart_count']}), and SLURM ends a job before requeueing it")


def stale_reason(holder: dict, *, host: str, now: float, job: Optional[dict] = None,
                 stale_after_s: float = STALE_AFTER_S) -> Optional[str]:
  """Why the lock `holder` may be replaced (None when it must be respected; see the module
  doc). `job`: this process's `slurm_job()`."""
  if not holder or "pid" not in holder:
    return "the lock file is unreadable"
  if holder.get("host") == host:
    if holder["pid"] == os.getpid():
      return "it was taken by this process"
    if not _pid_running(int(holder["pid"])):
      return f"PID {holder['pid']} is no longer running"
    return None
  reason = _earlier_run_of_this_job(holder, job or {})
  if reason:
    return reason
  age = now - float(holder.get("heartbeat", 0.0))
  if age > stale_after_s:
    return f"its heartbeat is {age:.0f} s old (another host; stale after {stale_after_s:.0f} s)"
  return None


def describe(holder: dict) -> str:
  return (f"PID {holder.get('pid')} on host {holder.get('host')} since "
          f"{holder.get('started')}")


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds the workdir for this process (see the module doc)."""

  def __init__(self, workdir: str, *, heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
               stale_after_s: float = STALE_AFTER_S,
               on_taken_over: Optional[Callable[[dict], None]] = None):
    """on_taken_over(new_holder): what a holder does when it finds its lock replaced (default:
    log an error and end the process at once, see the module doc)."""
    self.path = os.path.join(os.fspath(workdir), LOCK_FILENAME)
    self._interval = heartbeat_interval_s
    self._stale_after = stale_after_s
    self._poll_s = min(5.0, heartbeat_interval_s / 4)
    self._on_taken_over = on_taken_over or self._stop_this_process
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
    """Take the lock: at once, after replacing a stale one, or after waiting out a silent
    holder on another host (at most `stale_after_s`); WorkdirLockedError for a live holder."""
    host = socket.gethostname()
    job = slurm_job()
    self._record = {"host": host, "pid": os.getpid(),
                    "started": datetime.datetime.now(datetime.timezone.utc).strftime(
                        "%Y-%m-%dT%H:%M:%SZ"), **job}
    watched = None  # (holder, when first seen) while waiting on a holder on another host
    give_up = time.monotonic() + self._stale_after + 4 * self._poll_s
    while True:
      try:
        self._write(self.path, exclusive=True)
        break
      except FileExistsError:
        pass
      found = _read_versioned(self.path)
      if found is None:
        continue  # released meanwhile
      holder, version = found
      reason = stale_reason(holder, host=host, now=time.time(), job=job,
                            stale_after_s=self._stale_after)
      if reason is not None:
        log.info("Replacing the stale workdir lock %s (%s; %s).", self.path, describe(holder),
                 reason)
        # Only the version found stale: a lock another trainer took meanwhile stays.
        storage.delete(self.path, if_version=version)
        continue
      watched = self._watch(holder, host, watched, give_up)
      time.sleep(self._poll_s)
    self._thread = threading.Thread(target=self._beat, name="workdir_lock", daemon=True)
    self._thread.start()
    return self

  def _locked_error(self, holder: dict, why: str) -> WorkdirLockedError:
    return WorkdirLockedError(
        f"Workdir {os.path.dirname(self.path)} is in use by another training run "
        f"({describe(holder)}; {why}); stop it, use another --workdir, or delete {self.path} "
        "if that run is dead.")

  def _watch(self, holder: dict, host: str, watched, give_up: float):
    """One look at a holder that is not stale (yet): raise when it is alive, else return what
    the next look compares with."""
    if holder.get("host") == host:
      raise self._locked_error(holder, "its PID runs on this host")
    if watched is None:
      age = time.time() - float(holder.get("heartbeat", 0.0))
      log.info("The workdir lock %s is held by %s on another host, its heartbeat %.0f s old: "
               "waiting up to %.0f s; a live run refreshes it within %.0f s (this run then "
               "stops with an error), a dead one is replaced once it is %.0f s old.",
               self.path, describe(holder), age, max(0.0, self._stale_after - age),
               self._interval, self._stale_after)
      return holder, time.monotonic()
    first, _ = watched
    same_holder = all(holder.get(k) == first.get(k) for k in ("host", "pid", "started"))
    if not same_holder or holder.get("heartbeat") != first.get("heartbeat"):
      raise self._locked_error(holder, "it refreshed its heartbeat while this run waited")
    if time.monotonic() > give_up:
      raise self._locked_error(holder, f"waited {self._stale_after:.0f} s")
    return watched

  def _stop_this_process(self, holder: dict) -> None:
    log.error("error: the workdir lock %s was taken over by %s (this run's heartbeat stalled "
              "for over %.0f s): stopping this trainer now, so that two runs never write one "
              "workdir.", self.path, describe(holder), self._stale_after)
    logging.shutdown()
    os._exit(2)  # pylint: disable=protected-access

  def _beat(self):
    while not self._stop.wait(self._interval):
      holder = _read(self.path)
      if not holder or holder.get("pid") != os.getpid() or holder.get("host") != self._record[
          "host"]:
        self._on_taken_over(holder or {})
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
