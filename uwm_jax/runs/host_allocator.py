"""Back XLA:CPU's large per-step buffer with transparent huge pages (glibc's malloc tunable).

XLA:CPU allocates the temporaries of every execution as one buffer (a train step's: a hundred
MB or more) with posix_memalign on one of its worker threads and frees it when the step ends.
glibc serves an allocation that large with a fresh mmap and unmaps it on free, so every step
faults the whole buffer in again, one 4 KiB page at a time, in kernel time. With glibc's
`glibc.malloc.hugetlb=1` tunable (glibc >= 2.35) malloc asks for transparent huge pages on such
mappings, and the same buffer faults in 2 MiB at a time (what it saves on the demo's train step:
docs/results/cpu-page-faults.md).

Tunables are read when a process starts, so `reexec_with_huge_pages()` re-executes the
command (same PID, arguments and environment plus the tunable) unless it is already set; it
does nothing where glibc is older, transparent huge pages are off, or the platform is not Linux.
"""

import logging
import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
TUNABLES_ENV = "GLIBC_TUNABLES"
REEXEC_MARK_ENV = "UWM_JAX_REEXECUTED"  # set on the re-executed process: never twice
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
MIN_GLIBC = (2, 35)


def _glibc_version():
  lib, version = platform.libc_ver()
  if lib != "glibc" or not version:
    return None
  try:
    return tuple(int(p) for p in version.split(".")[:2])
  except ValueError:
    return None


def _huge_pages_possible() -> bool:
  if not sys.platform.startswith("linux"):
    return False
  version = _glibc_version()
  if version is None or version < MIN_GLIBC:
    return False
  try:
    with open(THP_SETTING) as f:
      return "[never]" not in f.read()
  except OSError:
    return False


def tunables_with_huge_pages(current: str) -> str:
  """GLIBC_TUNABLES with `glibc.malloc.hugetlb=1` added to (or replacing it in) `current`."""
  kept = [t for t in current.split(":") if t and not t.startswith(TUNABLE + "=")]
  return ":".join(kept + [f"{TUNABLE}=1"])


def huge_pages_on() -> bool:
  return f"{TUNABLE}=1" in os.environ.get(TUNABLES_ENV, "").split(":")


def reexec_with_huge_pages() -> None:
  """Re-execute this process with malloc on transparent huge pages, unless it already is or
  cannot be; returns only when no re-execution happens."""
  if huge_pages_on():
    logging.info("Host allocator: glibc malloc uses transparent huge pages (%s=%s).",
                 TUNABLES_ENV, os.environ[TUNABLES_ENV])
    return
  if os.environ.get(REEXEC_MARK_ENV) or not _huge_pages_possible():
    return
  env = dict(os.environ)
  env[TUNABLES_ENV] = tunables_with_huge_pages(env.get(TUNABLES_ENV, ""))
  env[REEXEC_MARK_ENV] = "1"
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + list(sys.orig_argv[1:]), env)
