"""Environments in a separate (spawned) process.

TensorFlow and MuJoCo's offscreen EGL rendering (Mesa llvmpipe) crash when they share a
process, in either import order, and TensorFlow is loaded by tfds/RLDS code, the TensorBoard
writer's fallback and other tests in the same pytest run. So environments live in a worker
process that never imports TensorFlow (nor JAX); the rollout loop talks to them through
`RemoteEnv` proxies with the same protocol (camera_keys, action_dim, reset, step).

  envs, close = make_remote_envs("tabletop_push", 10, config)
  Worker().call(fn, *args)   run any picklable module-level function in a worker
"""

import multiprocessing
import traceback
from typing import Any, Callable, Dict, List, Tuple

from uwm_jax import envs as envs_lib

# Exceptions re-raised with their own type in the parent (clear errors stay clear).
_PASS_THROUGH = (ValueError, KeyError, FileNotFoundError, ImportError, IndexError, TypeError)
_STATE: Dict[str, Any] = {}  # worker-side objects


def _serve(conn) -> None:
  while True:
    try:
      msg = conn.recv()
    except EOFError:
      break
    if msg is None:
      break
    fn, args, kwargs = msg
    try:
      conn.send((True, fn(*args, **kwargs)))
    except BaseException as e:  # pylint: disable=broad-except
      conn.send((False, (e if isinstance(e, _PASS_THROUGH) else None, type(e).__name__, str(e),
                         traceback.format_exc())))
  close = _STATE.pop("close", None)
  if close is not None:
    close()


class Worker:
  """A spawned process running functions sent to it, one at a time."""

  def __init__(self):
    ctx = multiprocessing.get_context("spawn")
    self._conn, child = ctx.Pipe()
    self._proc = ctx.Process(target=_serve, args=(child,), daemon=True)
    self._proc.start()
    child.close()

  def call(self, fn: Callable, *args, **kwargs):
    try:
      self._conn.send((fn, args, kwargs))
      ok, out = self._conn.recv()
    except (EOFError, BrokenPipeError, ConnectionResetError) as e:
      self._proc.join(1)
      raise RuntimeError(f"Environment worker process died (exit code {self._proc.exitcode}) "
                         f"while running {fn.__name__}.") from e
    if ok:
      return out
    exc, name, message, tb = out
    if exc is not None:
      raise exc
    raise RuntimeError(f"{name} in environment worker running {fn.__name__}: {message}\n{tb}")

  def close(self) -> None:
    if self._proc.is_alive():
      try:
        self._conn.send(None)
      except (BrokenPipeError, OSError):
        pass
      self._proc.join(10)
    if self._proc.is_alive():
      self._proc.terminate()
      self._proc.join(5)
    self._conn.close()


# ------------------------------------------------------------------ worker-side functions
def _make(name: str, n: int, config, images: bool) -> List[Tuple[tuple, int]]:
  envs, close = envs_lib.make_local_envs(name, n, config, images)
  _STATE["envs"], _STATE["close"] = envs, close
  return [(tuple(e.camera_keys), int(e.action_dim)) for e in envs]


def _reset(index: int, seed, init_state):
  return _STATE["envs"][index].reset(seed=seed, init_state=init_state)


def _step(index: int, action):
  return _STATE["envs"][index].step(action)


def _close():
  close = _STATE.pop("close", None)
  if close is not None:
    close()


class RemoteEnv:
  """Proxy for env `index` of a worker; the rollout loop's env protocol."""

  def __init__(self, worker: Worker, index: int, camera_keys: tuple, action_dim: int):
    self.worker, self.index = worker, index
    self.camera_keys, self.action_dim = camera_keys, action_dim

  def reset(self, seed=None, init_state=None) -> dict:
    return self.worker.call(_reset, self.index, seed, init_state)

  def step(self, action):
    return self.worker.call(_step, self.index, action)


def make_remote_envs(name: str, n: int, config,
                     images: bool = True) -> Tuple[List[RemoteEnv], Callable[[], None]]:
  """n envs of `name` in one worker process; -> (proxies, close)."""
  worker = Worker()
  try:
    specs = worker.call(_make, name, n, config, images)
  except BaseException:
    worker.close()
    raise

  def close():
    try:
      worker.call(_close)
    finally:
      worker.close()

  return [RemoteEnv(worker, i, *s) for i, s in enumerate(specs)], close
