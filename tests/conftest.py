"""Test setup (must precede importing jax): 8 host CPU devices for the multi-device tests, XLA's
CPU backend at optimization level 0, and one persistent XLA compilation cache for the whole run.

Level 0 compiles 2-3x faster and runs ~2x slower; the tests compile far more than they run, so
it halves their time. A test that runs many steps asks for optimized code itself
(tests.helpers.OPTIMIZED as its executable's compiler options, e.g. the overfit test).

The cache: many tests (and the entry points they start as subprocesses) compile the same
programs, the tiny config's train step and samplers above all; with the cache each distinct
program compiles once per run, shared by pytest-xdist's workers (the README's `-n 2`). The
cache is keyed on the program and compile options, so it changes no result. It lives in a
fresh temporary folder that the process which made it removes at exit; a size limit turns on
JAX's file lock, so two workers never read a half-written entry.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # xdist workers inherit the controller's
  _cache_dir = tempfile.mkdtemp(prefix="uwm-jax-tests-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
