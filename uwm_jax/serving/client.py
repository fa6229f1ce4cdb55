"""Clients of the policy server (`uwm_jax.serving.server`), speaking the same protocol as
openpi-client's `WebsocketClientPolicy` (which robots can use unchanged).

  PolicyClient("127.0.0.1:8000").infer(obs) -> {"actions": (n, A), ...}
  RemotePolicy("127.0.0.1:8000", num_slots=10, seed=0)   the rollout loop's policy protocol
      (`uwm_jax.evaluation.rollout`): one connection per env slot; the first request of an
      episode carries reset + the episode's seed (`policies.session.episode_seed`, as
      `LocalPolicy` uses), observations between two queries are sent as `observe` requests,
      and every slot's request is sent before any answer is read so the server batches them.
"""

from typing import Optional, Sequence

import numpy as np

from uwm_jax.serving import protocol

# PolicyClient needs only numpy, msgpack and websockets (no JAX): RemotePolicy imports the
# session helper it shares with LocalPolicy when it is used.


class ServerError(RuntimeError):
  """The server answered with an error frame."""


def split_address(address: str):
  """"HOST:PORT" -> (host, port)."""
  host, sep, port = str(address).rpartition(":")
  if not sep or not host or not port.isdigit():
    raise ValueError(f"A policy server address is HOST:PORT, got {address!r}.")
  return host, int(port)


class PolicyClient:
  """One websocket connection; `metadata` is the server's first message."""

  def __init__(self, address: str, api_key: Optional[str] = None, timeout: float = 300.0):
    # pylint: disable=import-outside-toplevel
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect
    host, port = split_address(address)
    headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
    try:
      self._ws = connect(f"ws://{host}:{port}", compression=None, max_size=None,
                         additional_headers=headers, open_timeout=timeout, legacy=True)
    except InvalidStatus as e:
      raise ConnectionError(f"Policy server {address} refused the connection (HTTP "
                            f"{e.response.status_code}: wrong or missing --api_key?).") from None
    except OSError as e:
      raise ConnectionError(f"No policy server at {address} ({e.strerror or e}).") from None
    self.timeout = timeout
    self.metadata = protocol.unpack(self._ws.recv(timeout=timeout))

  def send(self, request: dict) -> None:
    self._ws.send(protocol.pack(request))

  def receive(self) -> dict:
    reply = self._ws.recv(timeout=self.timeout)
    if isinstance(reply, str):
      raise ServerError(reply)
    return protocol.unpack(reply)

  def infer(self, request: dict) -> dict:
    self.send(request)
    return self.receive()

  def close(self) -> None:
    self._ws.close()


class RemotePolicy:
  """The rollout loop's policy through a policy server (see the module docstring)."""

  def __init__(self, address: str, *, num_slots: int, seed: int = 0,
               api_key: Optional[str] = None):
    self.seed = int(seed)
    self.clients = []
    try:
      for _ in range(num_slots):
        self.clients.append(PolicyClient(address, api_key))
    except BaseException:
      self.close()
      raise
    self.metadata = self.clients[0].metadata

  def __call__(self, observations: Sequence[Sequence[dict]], context) -> np.ndarray:
    """`context`: the rollout loop's `RolloutContext`."""
    from uwm_jax.policies.session import episode_seed  # pylint: disable=import-outside-toplevel
    active = [b for b in range(len(observations)) if context.active[b]]
    for b in active:
      client, pending = self.clients[b], list(observations[b])
      first = {"reset": True, "seed": episode_seed(self.seed, context.episode_index[b])}
      start = context.step[b] == 0
      for i, obs in enumerate(pending):
        request = dict(obs, **(first if start and i == 0 else {}))
        if i < len(pending) - 1:
          client.infer(dict(request, mode="observe"))
        else:
          client.send(request)
    chunks = {b: np.asarray(self.clients[b].receive()["actions"], np.float32) for b in active}
    shape = next(iter(chunks.values())).shape
    return np.stack([chunks.get(b, np.zeros(shape, np.float32))
                     for b in range(len(observations))])

  def close(self) -> None:
    for client in self.clients:
      client.close()
    self.clients = []
