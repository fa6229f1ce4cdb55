"""Test setup (must precede importing jax): 8 host CPU devices for the multi-device tests, XLA
compiles made for tests, and one persistent XLA compilation cache for the whole run.

Compiles: the tests compile far more than they run (compiling the tiny train step takes longer
than a hundred of its steps), so every test process and every jax process a test starts uses
`tests.helpers.xla_flags`: XLA's CPU backend at optimization level 0 and its older fusion
emitters, which compile ~5x faster than the defaults together. A test that runs many steps asks
for optimized code itself (tests.helpers.OPTIMIZED as its executable's compiler options).

The cache: many tests (and the entry points they start as subprocesses) compile the same
programs, the tiny config's train step and samplers above all; with the cache each distinct
program compiles once per run, shared by pytest-xdist's workers (the README's `-n 2`) and by
the subprocesses (they inherit the cache's environment variables). The cache is keyed on the
program, the compile options and XLA_FLAGS, so it changes no result. It lives in a fresh
temporary folder that the process which made it removes at exit; a size limit turns on JAX's
file lock, so two workers never read a half-written entry.

Rules that keep the suite fast (`python3 -m pytest -q -n 2 tests` within 10 minutes on 2 CPU
cores; `--durations=20` shows where the time goes):
- A compile costs seconds, a step of the tiny model milliseconds: build a model, state or
  jitted function once per module (a module-scoped fixture) and share it between the tests
  that need the same one; reuse the exact config of another test (same config, mesh and
  compiler options) where the size or setting proves nothing, so the cache serves its program.
- A subprocess that runs jax: start it with `tests.helpers.start_cli` or give it
  XLA_FLAGS=`tests.helpers.xla_flags(n)`, and keep the JAX_COMPILATION_CACHE_* variables.
- Anything still over ~20 s is marked `@pytest.mark.slow`.
- pytest-xdist sends whole files to a worker (`pytest_xdist_make_scheduler` below), so a
  module-scoped fixture is built once per run; the files go out in SLOW_FILES' order (slowest
  first, by `--durations`) so that both workers end together: a new file that takes half a
  minute or more goes into that list at its place.
"""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # xdist workers inherit the controller's
  _cache_dir = tempfile.mkdtemp(prefix="uwm-jax-tests-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

from tests.helpers import xla_flags  # pylint: disable=wrong-import-position

os.environ.setdefault("XLA_FLAGS", xla_flags(8))

# The files that take longest (`--durations`), slowest first: they start first, so that no long
# file starts late and runs alone at the end of a parallel run.
SLOW_FILES = (
    "test_launch_rehearsal.py",
    "test_train_processes.py",
    "test_runs_gcs.py",
    "test_training_core.py",
    "test_eval_evaluator.py",
    "test_train_sharding.py",
    "test_eval_tabletop.py",
    "test_data_droid.py",
    "test_sampling.py",
    "test_compile.py",
    "test_data_lerobot.py",
    "test_weights_uwm.py",
    "test_train_metrics.py",
    "test_train_checkpoint.py",
    "test_train_latent_cache.py",
    "test_train_distributed.py",
    "test_train_launch.py",
    "test_model_networks.py",
    "test_bench_data.py",
    "test_model_block_layout.py",
    "test_core_install.py",
)


def pytest_collection_modifyitems(config, items):
  """SLOW_FILES first (in that order), the other files after them in their usual order."""
  del config
  rank = {name: i for i, name in enumerate(SLOW_FILES)}
  items.sort(key=lambda item: rank.get(os.path.basename(item.nodeid.split("::")[0]), len(rank)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
  """pytest-xdist (`-n 2`) hands out whole files (`--dist loadfile`) unless --dist says
  otherwise: a module-scoped fixture (a trained state, a checkpoint, a compiled sampler) is then
  built once per run instead of once per worker. The files go out in collection order
  (SLOW_FILES first): xdist's default reorders them by their number of tests, which sent the
  slowest file (two tests) last and left one worker alone for its last ~100 s."""
  if any(arg.startswith("--dist") for arg in config.invocation_params.args):
    return None
  from xdist.scheduler import LoadFileScheduling  # pylint: disable=import-outside-toplevel
  if not any(arg.startswith("--loadscope-reorder") for arg in config.invocation_params.args):
    config.option.loadscopereorder = False
  return LoadFileScheduling(config, log)
