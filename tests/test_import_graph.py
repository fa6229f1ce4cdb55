"""The layering of README "Architecture": no import points back (scripts/import_graph.py)."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "import_graph.py")


def _run(*args):
  return subprocess.run([sys.executable, SCRIPT, "--check", *args], capture_output=True,
                        text=True, timeout=120)


def test_no_import_points_back():
  out = _run()
  assert out.returncode == 0, out.stdout + out.stderr
  assert "0 back-pointing imports" in out.stdout


def _only_flagged(tmp_path, files, line):
  """Write `files` (path -> text, each package's __init__.py added) as a package under
  tmp_path: the check fails with exactly one back-pointing import, `line`."""
  for path in list(files):
    files.setdefault(str(pathlib.PurePosixPath(path).parent / "__init__.py"), "")
  for path, text in files.items():
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text(text)
  out = _run(f"--root={tmp_path}")
  assert out.returncode == 1
  assert f"BACK-POINTING: {line}" in out.stdout
  assert "1 back-pointing imports" in out.stdout


def test_a_back_pointing_import_is_flagged(tmp_path):
  """Training importing evaluation (even inside a function) fails the check."""
  _only_flagged(tmp_path, {"uwm_jax/__init__.py": "",
                           "uwm_jax/training/loop.py":
                               "def f():\n  from uwm_jax.evaluation import x\n",
                           "uwm_jax/evaluation/x.py": "from uwm_jax.training import loop\n"},
                "uwm_jax.training.loop (train) imports uwm_jax.evaluation.x (evaluate)")


def test_serving_importing_evaluation_is_flagged(tmp_path):
  """Serving and evaluation are siblings: the server loads checkpoints through the policies
  layer, never through the evaluator."""
  _only_flagged(tmp_path, {"uwm_jax/__init__.py": "",
                           "uwm_jax/serving/server.py": "from uwm_jax.evaluation import x\n",
                           "uwm_jax/evaluation/x.py": "from uwm_jax.policies import session\n",
                           "uwm_jax/policies/session.py": ""},
                "uwm_jax.serving.server (serve) imports uwm_jax.evaluation.x (evaluate)")


@pytest.mark.parametrize("outside, layer", [("benchmarks.data", "benchmarks"),
                                            ("experiments.cotrain", "experiments"),
                                            ("tests.helpers", "tests")])
def test_the_package_importing_from_outside_it_is_flagged(tmp_path, outside, layer):
  """uwm_jax is installed without benchmarks/, experiments/ and tests/: an import of any of
  them from the package (here a late one from the train CLI, the top of the package) fails."""
  _only_flagged(tmp_path, {"uwm_jax/__init__.py": "",
                           "uwm_jax/train.py": f"def main():\n  import {outside}\n"},
                f"uwm_jax.train (entry) imports {outside} ({layer})")


def test_benchmarks_importing_the_tests_is_flagged(tmp_path):
  """Imports go one way, tests -> benchmarks -> uwm_jax: the benchmarks' fixture writers and
  PyTorch reference are what the tests import, never the other way round."""
  _only_flagged(tmp_path, {"uwm_jax/__init__.py": "", "uwm_jax/batch.py": "",
                           "benchmarks/data.py": "from uwm_jax import batch\n"
                                                 "from tests import fixtures\n"},
                "benchmarks.data (benchmarks) imports tests.fixtures (tests)")
