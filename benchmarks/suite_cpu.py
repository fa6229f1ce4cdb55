r"""Where the test suite's CPU time goes: CPU seconds and wall seconds per test and per file.

  UWM_SUITE_CPU_DIR=/tmp/suite_cpu python3 -m pytest -q -n 2 -p benchmarks.suite_cpu tests
  python -m benchmarks.suite_cpu --dir=/tmp/suite_cpu --top=30

As a pytest plugin (`-p benchmarks.suite_cpu`, with UWM_SUITE_CPU_DIR set) it writes one JSON
line per test (setup, call and teardown together) to DIR/<worker pid>.jsonl: the CPU seconds of
the pytest process and of the processes it started and waited for (getrusage: a subprocess's
CPU counts once it has been waited for, so an emulator started by a module fixture counts in
the test that stops it) and the wall seconds. As a program it prints the totals, the files and
the tests by CPU seconds, and each worker's total wall seconds (a worker that ends long before
the other is a scheduling problem, not a slow test).

The suite is CPU-bound on two cores (docs/results/test-suite-time.md): a test's CPU seconds,
not its wall seconds beside another worker's, are what it costs the run.
"""

import collections
import glob
import json
import os
import resource
import time

from absl import flags
import pytest

ENV_DIR = "UWM_SUITE_CPU_DIR"

_DIR = flags.DEFINE_string("dir", None, f"The folder the plugin wrote ({ENV_DIR}).")
_TOP = flags.DEFINE_integer("top", 25, "How many files and tests to list.")


def _cpu_seconds() -> float:
  """CPU seconds of this process and of its waited-for children."""
  own = resource.getrusage(resource.RUSAGE_SELF)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


_records = None


def _record_file():
  global _records
  if _records is None:
    os.makedirs(os.environ[ENV_DIR], exist_ok=True)
    _records = open(os.path.join(os.environ[ENV_DIR], f"{os.getpid()}.jsonl"), "a",
                    encoding="utf-8")
  return _records


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  """Times one test (the plugin's only hook); records nothing without UWM_SUITE_CPU_DIR."""
  del nextitem
  if not os.environ.get(ENV_DIR):
    yield
    return
  cpu, wall = _cpu_seconds(), time.time()
  yield
  out = _record_file()
  out.write(json.dumps({"test": item.nodeid, "cpu_s": _cpu_seconds() - cpu,
                        "wall_s": time.time() - wall}) + "\n")
  out.flush()


def read_records(folder: str):
  """{worker file: [record, ...]} of what the plugin wrote in `folder`."""
  paths = sorted(glob.glob(os.path.join(folder, "*.jsonl")))
  if not paths:
    raise FileNotFoundError(f"No timings in {folder}: run pytest with -p benchmarks.suite_cpu and "
                            f"{ENV_DIR}={folder}")
  out = {}
  for path in paths:
    with open(path, encoding="utf-8") as f:
      out[os.path.basename(path)] = [json.loads(line) for line in f if line.strip()]
  return out


def summary_lines(workers, top: int):
  """The printed summary of read_records' result."""
  records = [r for rows in workers.values() for r in rows]
  per_file = collections.defaultdict(lambda: [0.0, 0.0])
  for r in records:
    totals = per_file[r["test"].split("::")[0]]
    totals[0] += r["cpu_s"]
    totals[1] += r["wall_s"]
  lines = [f"{len(records)} tests: {sum(r['cpu_s'] for r in records):.0f} CPU s, "
           f"{sum(r['wall_s'] for r in records):.0f} wall s (summed over workers)"]
  lines += [f"worker {name}: {len(rows)} tests, {sum(r['wall_s'] for r in rows):.0f} wall s"
            for name, rows in workers.items()]
  lines.append(f"{'CPU s':>7} {'wall s':>7}  file")
  lines += [f"{cpu:7.1f} {wall:7.1f}  {name}" for name, (cpu, wall) in
            sorted(per_file.items(), key=lambda item: -item[1][0])[:top]]
  lines.append(f"{'CPU s':>7} {'wall s':>7}  test")
  lines += [f"{r['cpu_s']:7.1f} {r['wall_s']:7.1f}  {r['test']}" for r in
            sorted(records, key=lambda r: -r["cpu_s"])[:top]]
  return lines


def main(argv):
  del argv
  if not _DIR.value:
    raise ValueError("give --dir=DIR, the folder UWM_SUITE_CPU_DIR named for the pytest run")
  for line in summary_lines(read_records(_DIR.value), _TOP.value):
    print(line)


if __name__ == "__main__":
  from uwm_jax import cli_config  # pylint: disable=import-outside-toplevel
  cli_config.run(main)
