"""The huge-page malloc tunable: the re-execution keeps the command and PID, and large
allocations then fault in huge pages (far fewer page faults)."""

import os
import subprocess
import sys
import textwrap

import pytest

from uwm_jax.runs import host_allocator

# A child that re-executes itself with the tunable, then touches a 128 MiB malloc'd buffer from
# a thread (as XLA:CPU's worker threads do) and reports its page faults for it.
CHILD = textwrap.dedent("""
    import ctypes, os, resource, sys, threading
    from uwm_jax.runs import host_allocator
    print("before", os.getpid(), sys.argv[1:], flush=True)
    if sys.argv[1] == "reexec":
      host_allocator.reexec_with_huge_pages()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    faults = []
    def touch():
      n0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      for _ in range(3):
        p = libc.malloc(128 << 20)
        ctypes.memset(p, 1, 128 << 20)
        libc.free(p)
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - n0)
    t = threading.Thread(target=touch); t.start(); t.join()
    print("after", os.getpid(), os.environ.get("GLIBC_TUNABLES", "-"), faults[0], flush=True)
    """)


def _run(mode: str):
  env = {k: v for k, v in os.environ.items()
         if k not in (host_allocator.TUNABLES_ENV, host_allocator.REEXEC_MARK_ENV)}
  out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                       env=env, timeout=120, check=True).stdout.split("\n")
  before = [line.split() for line in out if line.startswith("before")]
  after = [line.split() for line in out if line.startswith("after")][0]
  return before, after


def test_tunables_keep_other_settings_and_replace_an_old_value():
  assert host_allocator.tunables_with_huge_pages("") == "glibc.malloc.hugetlb=1"
  assert (host_allocator.tunables_with_huge_pages("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0")
          == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")


@pytest.mark.skipif(not host_allocator._huge_pages_possible(),  # pylint: disable=protected-access
                    reason="needs Linux, glibc >= 2.35 and transparent huge pages")
def test_reexecution_keeps_command_and_pid_and_cuts_page_faults():
  before, after = _run("reexec")
  # The command ran twice (before and after exec) in one process, with the same arguments.
  assert len(before) == 2 and before[0] == before[1]
  assert after[1] == before[0][1]
  assert "glibc.malloc.hugetlb=1" in after[2]
  plain_before, plain_after = _run("plain")
  assert len(plain_before) == 1 and plain_after[2] == "-"
  huge_faults, plain_faults = int(after[-1]), int(plain_after[-1])
  # 3 x 128 MiB: ~98k faults of 4 KiB pages without the tunable, a few hundred with it.
  assert plain_faults > 50_000
  assert huge_faults < plain_faults / 10
