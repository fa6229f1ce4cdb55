"""Processes of this host, as the files they leave behind name them (a PID in a lock record, in
a partial shard's folder name)."""

import os


def pid_running(pid: int) -> bool:
  """Whether a process with this PID runs on this host (someone else's included). A PID taken
  on another host says nothing here: callers compare hosts first."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's live process
    return True
  return True
