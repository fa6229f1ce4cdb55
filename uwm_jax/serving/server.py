"""The policy and world-model server: openpi's websocket protocol over a UWM checkpoint.

One asyncio event loop (the `websockets` package) serves every connection; one batcher task
collects the requests that arrive together (up to `max_batch`, waiting at most
`batch_window_ms` for more while other clients still have none pending) into one batch,
sampled in the sampler's threads (as `parallel_calls` concurrent calls of the jitted sampler:
on a CPU host one per core, on an accelerator one; `BatchedSampler.answer`) so the loop keeps
reading and answering other connections meanwhile.
Each connection has its own `PolicySession` (history, RNG stream, ensemble; docs/serving.md
"History rule"). Requests and errors are described in docs/serving.md; in short:

  binary msgpack dict  -> binary reply {"actions" | "frames", "server_timing", ...}
  anything wrong       -> a text frame "error: <what>"; the connection stays open and every
                          other connection is untouched
  GET /healthz         -> plain HTTP 200 "OK" on the same port
"""

import asyncio
import dataclasses
import hmac
import http
import itertools
import logging
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from uwm_jax import sampling
from uwm_jax.policies.sampler import (BatchedSampler, default_parallel_calls, part_size,
                                      power_of_two_sizes)
from uwm_jax.policies.session import PolicySession
from uwm_jax.policies.transforms import InvalidObservation, RobotTransforms
from uwm_jax.serving import protocol

log = logging.getLogger(__name__)

OBSERVE = "observe"  # push an observation into the history without sampling
HEALTH_PATH = "/healthz"
RESERVED_KEYS = ("mode", "reset", "seed", "actions", "goal")


class RequestError(ValueError):
  """A request the server answers with an error frame."""


@dataclasses.dataclass
class ServerOptions:
  host: str = "127.0.0.1"
  port: int = 8000
  api_key: str = ""  # "" = no authentication
  max_batch: int = 4  # requests per sampler call
  parallel_calls: int = 0  # concurrent sampler calls a batch is split into (0 = auto)
  batch_window_ms: float = 2.0  # longest wait for more requests to join a batch
  max_message_mb: float = 16.0  # larger requests are answered with an error
  exec_steps: int = 0  # actions returned per policy request (0 = the whole chunk)
  temporal_ensemble: bool = False
  ensemble_decay: float = 0.01
  seed: int = 0  # connection k's RNG stream is seed + k until a request resets it


@dataclasses.dataclass
class _Pending:
  mode: str
  inputs: dict
  key: tuple
  future: asyncio.Future


class PolicyServer:
  """Serves one checkpoint (see the module docstring)."""

  def __init__(self, model, diffusion_cfg, params, frozen, transforms: RobotTransforms,
               metadata: dict, options: ServerOptions):
    self.model, self.transforms, self.options = model, transforms, options
    modes = tuple(m for m in sampling.supported_modes(model) if m != sampling.JOINT)
    # Policy requests are batched across clients; world-model queries run one per call (one
    # compiled size each keeps start-up short). A batch runs as `parallel_calls` concurrent
    # calls (policies.sampler.default_parallel_calls: on a CPU host, one per core).
    max_batch = max(1, options.max_batch)
    calls = options.parallel_calls or default_parallel_calls(max_batch)
    # Compiled policy sizes: 1, 2, 4, ..., max_batch and a full batch's part (the evaluator's
    # in-process size for max_batch slots, so served rollouts run the same executables).
    policy_sizes = power_of_two_sizes(max_batch) + (part_size(max_batch, calls),)
    self.samplers = {
        m: BatchedSampler(model, diffusion_cfg, params, frozen, m,
                          policy_sizes if m == sampling.POLICY else (1,), parallel_calls=calls)
        for m in modes}
    self.modes = modes + (OBSERVE,)
    self.metadata = dict(metadata, modes=list(self.modes), max_batch=options.max_batch,
                         parallel_calls=calls,
                         action_horizon=options.exec_steps or model.dims.action_len,
                         model_action_horizon=model.dims.action_len,
                         num_obs_frames=model.dims.num_obs_frames,
                         temporal_ensemble=options.temporal_ensemble, **transforms.describe())
    self._metadata_bytes = protocol.pack(self.metadata)
    self._serial = itertools.count()
    self._connections = 0
    self._queue: Optional[asyncio.Queue] = None
    self.stats = {"requests": 0, "batches": 0, "errors": 0}

  # ------------------------------------------------------------------ start-up
  def example_inputs(self) -> Dict[str, dict]:
    """Zero inputs of every mode (for compiling)."""
    d = self.model.dims
    H, W = self.transforms.image_shape
    V = len(self.transforms.camera_keys)
    obs = np.zeros((V, d.num_obs_frames, H, W, 3), np.uint8)
    base = {"obs": obs}
    if self.transforms.state_fields:
      base["low_dim"] = np.zeros((d.num_obs_frames, self.model.cfg.low_dim_dim), np.float32)
    extra = {sampling.FORWARD_DYNAMICS: {"action": np.zeros((d.action_len, d.action_dim),
                                                            np.float32)},
             sampling.INVERSE_DYNAMICS: {"next_obs": obs}}
    return {m: dict(base, **extra.get(m, {})) for m in self.samplers}

  def compile(self, printer: Callable[[str], None] = print) -> float:
    """Compile every mode's sampler for every batch size; -> seconds."""
    t0 = time.perf_counter()
    for mode, example in self.example_inputs().items():
      sizes = self.samplers[mode].batch_sizes
      printer(f"compiling {mode} (batch sizes {', '.join(map(str, sizes))}) ...")
      self.samplers[mode].compile(example)
    return time.perf_counter() - t0

  # ------------------------------------------------------------------ HTTP hooks
  def process_request(self, connection, request):
    """Health check and API key, before the websocket handshake completes."""
    if request.path.split("?")[0] == HEALTH_PATH:
      return connection.respond(http.HTTPStatus.OK, "OK\n")
    key = self.options.api_key
    if key:
      got = request.headers.get("Authorization", "")
      if not hmac.compare_digest(got.encode(), f"Api-Key {key}".encode()):
        return connection.respond(http.HTTPStatus.UNAUTHORIZED,
                                  "Missing or wrong 'Authorization: Api-Key <key>' header.\n")
    return None

  # ------------------------------------------------------------------ requests
  def _parse(self, message) -> dict:
    if isinstance(message, str):
      raise RequestError("text frames are not requests: send a msgpack-encoded dict as a "
                         "binary frame")
    limit = int(self.options.max_message_mb * 2**20)
    if len(message) > limit:
      raise RequestError(f"message of {len(message)} bytes is larger than the server's limit "
                         f"of {limit} bytes (--max_message_mb)")
    request = protocol.unpack(message)
    if not isinstance(request, dict):
      raise RequestError(f"a request must be a dict (an observation), got "
                         f"{type(request).__name__}")
    mode = request.get("mode", sampling.POLICY)
    if mode not in self.modes:
      raise RequestError(f"unknown mode {mode!r}; this server answers {', '.join(self.modes)}")
    return request

  async def _answer(self, session: PolicySession, message) -> dict:
    request = self._parse(message)
    mode = request.get("mode", sampling.POLICY)
    frame = self.transforms.inputs({k: v for k, v in request.items()
                                    if k not in RESERVED_KEYS})
    extra, d = {}, self.model.dims  # a world-model query's own inputs
    if mode == sampling.FORWARD_DYNAMICS:
      extra["action"] = self.transforms.action_chunk(request.get("actions"),
                                                     (d.action_len, d.action_dim))
    elif mode == sampling.INVERSE_DYNAMICS:
      extra["next_obs"] = self.transforms.goal_frames(request.get("goal"), d.num_obs_frames)
    if request.get("reset"):
      seed = request.get("seed")
      if seed is not None and not isinstance(seed, (int, np.integer)):
        raise RequestError(f"'seed' must be an integer, got {type(seed).__name__}")
      session.reset(None if seed is None else int(seed))
    session.history.push(frame)
    if mode == OBSERVE:
      return {"observed": True, "history_length": len(session.history)}
    inputs = dict(session.model_inputs(), **extra)
    future = asyncio.get_running_loop().create_future()
    await self._queue.put(_Pending(mode, inputs, session.next_key(), future))
    answer, sampler_ms, batch = await future
    if "action" in answer:
      if mode == sampling.POLICY:
        actions = session.actions(answer["action"])
      else:
        actions = self.transforms.outputs(answer["action"])
      out = {"actions": actions}
    else:
      out = {"frames": answer["frames"]}
    out.update(mode=mode, policy_timing={"infer_ms": sampler_ms, "batch_size": batch})
    return out

  async def _handler(self, connection) -> None:
    import websockets  # pylint: disable=import-outside-toplevel
    serial = next(self._serial)
    o = self.options
    session = PolicySession(self.transforms, self.model.dims.num_obs_frames, seed=o.seed + serial,
                            temporal_ensemble=o.temporal_ensemble,
                            ensemble_decay=o.ensemble_decay, exec_steps=o.exec_steps)
    self._connections += 1
    try:
      await connection.send(self._metadata_bytes)
      async for message in connection:
        t0 = time.perf_counter()
        self.stats["requests"] += 1
        try:
          reply = await self._answer(session, message)
        except (protocol.ProtocolError, InvalidObservation, RequestError) as e:
          self.stats["errors"] += 1
          await connection.send(f"error: {e}")
          continue
        except websockets.ConnectionClosed:
          raise
        except Exception as e:  # pylint: disable=broad-except
          log.exception("request failed")
          self.stats["errors"] += 1
          await connection.send(f"error: internal error: {type(e).__name__}: {e}")
          continue
        reply["server_timing"] = {"infer_ms": (time.perf_counter() - t0) * 1e3}
        await connection.send(protocol.pack(reply))
    except websockets.ConnectionClosed:
      pass  # the client went away (maybe mid-request): nothing else is affected
    finally:
      self._connections -= 1

  # ------------------------------------------------------------------ batching
  async def _collect(self) -> List[_Pending]:
    """The next batch: the first request, then whatever joins within the window while some
    connection has not sent its request yet."""
    loop = asyncio.get_running_loop()
    items = [await self._queue.get()]
    deadline = loop.time() + self.options.batch_window_ms / 1e3
    while len(items) < self.options.max_batch:
      if not self._queue.empty():
        items.append(self._queue.get_nowait())
        continue
      timeout = deadline - loop.time()
      if timeout <= 0 or len(items) >= self._connections:
        break
      try:
        items.append(await asyncio.wait_for(self._queue.get(), timeout))
      except asyncio.TimeoutError:
        break
    return items

  async def _batcher(self) -> None:
    while True:
      items = await self._collect()
      for mode in dict.fromkeys(p.mode for p in items):
        group = [p for p in items if p.mode == mode]
        t0 = time.perf_counter()
        try:
          answers = await self.samplers[mode].answer([p.inputs for p in group],
                                                     [p.key for p in group])
        except Exception as e:  # pylint: disable=broad-except
          log.exception("sampler failed")
          for p in group:
            if not p.future.done():
              p.future.set_exception(RequestError(f"sampling failed: {e}"))
          continue
        ms = (time.perf_counter() - t0) * 1e3
        self.stats["batches"] += 1
        for p, a in zip(group, answers):
          if not p.future.done():
            p.future.set_result((a, ms, len(group)))

  # ------------------------------------------------------------------ running
  async def serve(self, on_ready: Optional[Callable[[str, int], None]] = None,
                  stop: Optional[asyncio.Event] = None) -> None:
    """Serve until `stop` is set (or forever); `on_ready(host, port)` once listening."""
    from websockets.asyncio.server import serve  # pylint: disable=import-outside-toplevel
    self._queue = asyncio.Queue()
    batcher = asyncio.create_task(self._batcher())
    # The hard cap of websockets itself sits well above our own limit, so an oversized
    # request gets our error reply; only beyond the cap is the connection closed (1009).
    hard_cap = int(self.options.max_message_mb * 2**20) * 4 + 2**20
    try:
      async with serve(self._handler, self.options.host, self.options.port,
                       process_request=self.process_request, compression=None,
                       max_size=hard_cap) as server:
        port = server.sockets[0].getsockname()[1]
        if on_ready is not None:
          on_ready(self.options.host, port)
        await (stop.wait() if stop is not None else asyncio.Future())
    finally:
      batcher.cancel()
      for sampler in self.samplers.values():
        sampler.close()
