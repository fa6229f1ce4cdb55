"""A PolicyServer in a background thread of this process: `with ServerThread(server) as port:`.

The server's event loop runs in its own thread until the `with` block ends, so a Python
program (a test, a benchmark, a notebook or a simulator harness) can serve a checkpoint and be
its client at once; `python -m uwm_jax.serve` runs the loop in the main thread instead.
"""

import asyncio
import threading
from typing import Optional

from uwm_jax.serving.server import PolicyServer


class ServerThread:
  """See the module docstring."""

  def __init__(self, server: PolicyServer, timeout: float = 60.0):
    self.server, self.timeout = server, timeout
    self.port = None
    self._ready = threading.Event()
    self._loop = asyncio.new_event_loop()
    self._stop: Optional[asyncio.Event] = None
    self._error: Optional[BaseException] = None
    self._thread = threading.Thread(target=self._run, daemon=True, name="policy-server")

  def _run(self) -> None:
    asyncio.set_event_loop(self._loop)

    def ready(host, port):
      self.port = port
      self._ready.set()

    async def main():
      self._stop = asyncio.Event()
      await self.server.serve(ready, self._stop)

    try:
      self._loop.run_until_complete(main())
    except BaseException as e:  # pylint: disable=broad-except
      self._error = e
      self._ready.set()

  def __enter__(self) -> int:
    self._thread.start()
    if not self._ready.wait(self.timeout) or self._error is not None:
      raise RuntimeError(f"Policy server did not start: {self._error!r}")
    return self.port

  def __exit__(self, *exc) -> None:
    if self._stop is not None:
      self._loop.call_soon_threadsafe(self._stop.set)
    self._thread.join(self.timeout)
