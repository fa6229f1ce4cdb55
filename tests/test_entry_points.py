"""Every entry point (a module of uwm_jax, benchmarks/ or experiments/ that runs as a program)
answers --help with its worked example and its flags, and exits 0: one subprocess each, nothing
else is run."""

import pathlib
import re

import pytest

from tests.helpers import REPO, finish_cli, start_cli


# The packages whose programs run as `python -m PACKAGE.MODULE` from the repository root.
PACKAGES = ("uwm_jax", "benchmarks", "experiments")


def entry_points():
  """Modules with a module-level `__main__` block: found, so that a new entry point is covered too."""
  root = pathlib.Path(REPO)
  return sorted(".".join(p.relative_to(root).with_suffix("").parts)
                for package in PACKAGES for p in (root / package).rglob("*.py")
                if re.search(r'^if __name__ == "__main__":', p.read_text(), re.M))


def test_the_known_entry_points_are_found():
  assert {"uwm_jax.train", "uwm_jax.evaluate", "uwm_jax.summarize", "uwm_jax.import_weights",
          "uwm_jax.data.convert_rlds", "uwm_jax.data.convert_libero", "uwm_jax.compile",
          "benchmarks.data", "benchmarks.train_step", "benchmarks.serve",
          "experiments.cotrain", "experiments.pretrain_finetune"} <= set(entry_points())


@pytest.fixture(scope="module")
def help_processes():
  """Every entry point's `--help`, started at once (each is a process of its own)."""
  procs = {module: start_cli(module, "--help") for module in entry_points()}
  yield procs
  for proc in procs.values():
    if proc.poll() is None:
      proc.kill()


@pytest.mark.parametrize("module", entry_points())
def test_help_shows_an_example_and_exits_0(module, help_processes):
  out = finish_cli(help_processes[module], timeout=300)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  assert f"python -m {module} " in out.stdout  # the worked example
  assert "\n  --" in out.stdout  # the entry point's own flags are listed
