"""benchmarks/suite_cpu.py: the pytest plugin records each test's CPU seconds, those of the
processes it waited for included, and the summary orders files and tests by them."""

import os
import subprocess
import sys

import pytest

from benchmarks import suite_cpu
from tests.helpers import REPO

BUSY = """
import subprocess, sys, time

def _spin(seconds):
  end = time.process_time() + seconds
  while time.process_time() < end:
    pass

def test_busy_child():
  subprocess.run([sys.executable, "-c", "import time\\nend = time.process_time() + 0.6\\n"
                  "while time.process_time() < end: pass"], check=True)

def test_busy_self():
  _spin(0.3)

def test_sleeps():
  time.sleep(0.3)
"""


def test_plugin_records_cpu_of_the_test_and_its_children(tmp_path):
  (tmp_path / "test_busy.py").write_text(BUSY)
  out = tmp_path / "cpu"
  env = dict(os.environ, PYTHONPATH=REPO, **{suite_cpu.ENV_DIR: str(out)})
  done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "benchmarks.suite_cpu",
                         "-p", "no:cacheprovider", "test_busy.py"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stdout + done.stderr
  workers = suite_cpu.read_records(str(out))
  assert len(workers) == 1
  by_test = {r["test"].split("::")[1]: r for r in next(iter(workers.values()))}
  assert by_test["test_busy_child"]["cpu_s"] >= 0.6  # the child's CPU counts
  assert by_test["test_busy_self"]["cpu_s"] >= 0.3
  assert by_test["test_sleeps"]["cpu_s"] < 0.2 <= by_test["test_sleeps"]["wall_s"]
  lines = suite_cpu.summary_lines(workers, top=2)
  assert lines[0].startswith("3 tests: ")
  tests = lines[lines.index(f"{'CPU s':>7} {'wall s':>7}  test") + 1:]
  assert [line.split()[-1] for line in tests] == ["test_busy.py::test_busy_child",
                                                  "test_busy.py::test_busy_self"]


def test_summary_without_records_names_the_plugin(tmp_path):
  with pytest.raises(FileNotFoundError, match="-p benchmarks.suite_cpu"):
    suite_cpu.read_records(str(tmp_path))
