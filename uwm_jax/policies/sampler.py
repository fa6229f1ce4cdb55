"""Batched sampling with one RNG key per request (`uwm_jax.sampling` modes, vmapped).

`BatchedSampler(model, diffusion_cfg, params, frozen, mode, batch_sizes)` answers a list of
requests with one jitted call: each request is sampled with its own key
fold_in(PRNGKey(seed), counter) (`uwm_jax.policies.session`), so its answer does not depend on
the other requests of the batch. Batches are padded (repeating the last request) to the
smallest of `batch_sizes` that holds them, so only those sizes are ever compiled; `compile()`
does that up front. With `parallel_calls=k`, a list of requests is split into k near-equal
parts that run as concurrent calls of the compiled function (threads; the jitted call releases
the GIL): on a CPU host one call of a small model keeps about one core busy, so k calls on k
cores answer a batch sooner than one call of all of it (docs/results/serving-latency.md).
`default_parallel_calls` picks k.
Requests, one per element (no batch axis):

  obs       (V, T_o, H, W, 3) uint8       every mode
  low_dim   (T_o, D) float32              models with model.low_dim_dim > 0
  action    (H_a, A) float32 normalised   forward_dynamics
  next_obs  (V, T_o, H, W, 3) uint8       inverse_dynamics (goal frames)

Answers: {"action": (H_a, A) normalised} for policy / inverse_dynamics, {"frames":
(V, T_o, h, w, 3) uint8} (decoded predicted frames at the crop size) for forward_dynamics /
video_prediction.
"""

import asyncio
import concurrent.futures
import os
import time
from typing import Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from uwm_jax import sampling


def frames_to_uint8(frames: jax.Array) -> jax.Array:
  """float [0, 1] -> uint8 (rounded, clipped)."""
  return jnp.clip(jnp.round(frames * 255.0), 0, 255).astype(jnp.uint8)


def _batch_sizes(sizes: Sequence[int]) -> Tuple[int, ...]:
  out = tuple(sorted({int(s) for s in sizes}))
  if not out or out[0] < 1:
    raise ValueError(f"Batch sizes must be >= 1, got {sizes}.")
  return out


def power_of_two_sizes(max_batch: int) -> Tuple[int, ...]:
  """1, 2, 4, ... below max_batch, and max_batch."""
  sizes, s = [], 1
  while s < max_batch:
    sizes.append(s)
    s *= 2
  return tuple(sizes) + (int(max_batch),)


def default_parallel_calls(max_batch: int) -> int:
  """Concurrent sampler calls for a batch of up to `max_batch` requests: on a CPU backend one
  per core this process may use (at most max_batch), on an accelerator 1 (one call of the whole
  batch keeps the chip busy)."""
  if jax.default_backend() != "cpu":
    return 1
  return max(1, min(len(os.sched_getaffinity(0)), int(max_batch)))


def part_size(max_batch: int, parallel_calls: int) -> int:
  """The largest part of a full batch of max_batch requests split into parallel_calls calls."""
  return split_sizes(max_batch, parallel_calls, max_batch)[0]


def split_sizes(n: int, parts: int, max_size: int) -> List[int]:
  """n requests as near-equal parts: at least `parts` (at most n) and none above max_size."""
  if n <= 0:
    return []
  k = min(n, max(int(parts), -(-n // int(max_size))))
  return [n // k + (1 if i < n % k else 0) for i in range(k)]


class BatchedSampler:
  """See the module docstring."""

  def __init__(self, model, diffusion_cfg, params, frozen, mode: str = sampling.POLICY,
               batch_sizes: Sequence[int] = (1,), parallel_calls: int = 1):
    self.model, self.mode = model, mode
    self.params, self.frozen = params, frozen
    self.batch_sizes = _batch_sizes(batch_sizes)
    if parallel_calls < 1:
      raise ValueError(f"parallel_calls must be >= 1, got {parallel_calls}.")
    self._parallel_calls = int(parallel_calls)
    # The one pool sampler calls run in: the parts of a batch, and whole batches from an
    # asyncio event loop (`answer`, the policy server's batcher). Threads start when used.
    self._pool = concurrent.futures.ThreadPoolExecutor(self._parallel_calls,
                                                       thread_name_prefix="sampler-call")
    sample = sampling.make_sampler(model, diffusion_cfg, mode)
    frames_out = sampling.MODE_SPECS[mode].denoise_obs

    def one(params, frozen, inputs, seed, counter):
      batch = jax.tree_util.tree_map(lambda x: x[None], inputs)
      key = jax.random.fold_in(jax.random.PRNGKey(seed), counter)
      out = sample(params, frozen, batch, key)
      if frames_out:
        return {"frames": frames_to_uint8(model.decode_latent(frozen, out["latent"]))[0]}
      return {"action": out["action"][0]}

    self._fn = jax.jit(jax.vmap(one, in_axes=(None, None, 0, 0, 0)))

  @property
  def parallel_calls(self) -> int:
    """Concurrent calls a list of requests is split into; fixed at construction, as the
    pool's size."""
    return self._parallel_calls

  def padded_size(self, n: int) -> int:
    for size in self.batch_sizes:
      if size >= n:
        return size
    return self.batch_sizes[-1]

  def _run(self, requests: List[dict], keys: List[Tuple[int, int]]) -> List[Dict[str, np.ndarray]]:
    n = len(requests)
    size = self.padded_size(n)
    requests = requests + [requests[-1]] * (size - n)
    keys = keys + [keys[-1]] * (size - n)
    stacked = {k: np.stack([r[k] for r in requests]) for k in requests[0]}
    seeds = np.array([s for s, _ in keys], np.int32)
    counters = np.array([c for _, c in keys], np.int32)
    out = jax.device_get(self._fn(self.params, self.frozen, stacked, seeds, counters))
    return [{k: np.asarray(v[i]) for k, v in out.items()} for i in range(n)]

  def _parts(self, requests: Sequence[dict], keys: Sequence[Tuple[int, int]]
             ) -> List[Tuple[List[dict], List[Tuple[int, int]]]]:
    """`requests` and their keys as the near-equal parts that run as one call each."""
    if len(requests) != len(keys):
      raise ValueError(f"{len(requests)} requests but {len(keys)} keys.")
    parts, start = [], 0
    for size in split_sizes(len(requests), self._parallel_calls, self.batch_sizes[-1]):
      parts.append((list(requests[start:start + size]), list(keys[start:start + size])))
      start += size
    return parts

  def __call__(self, requests: Sequence[dict],
               keys: Sequence[Tuple[int, int]]) -> List[Dict[str, np.ndarray]]:
    """Answer `requests` (dicts as in the module docstring) with their (seed, counter) keys."""
    parts = self._parts(requests, keys)
    if len(parts) == 1:
      answers = [self._run(*parts[0])]
    else:
      answers = list(self._pool.map(lambda part: self._run(*part), parts))
    return [a for part in answers for a in part]

  async def answer(self, requests: Sequence[dict],
                   keys: Sequence[Tuple[int, int]]) -> List[Dict[str, np.ndarray]]:
    """`self(requests, keys)` awaited from an asyncio event loop: every part runs in the
    sampler's threads, so the loop keeps serving meanwhile."""
    loop = asyncio.get_running_loop()
    answers = await asyncio.gather(*(loop.run_in_executor(self._pool, self._run, *part)
                                     for part in self._parts(requests, keys)))
    return [a for part in answers for a in part]

  def close(self) -> None:
    """Stop the sampler's threads (they end once their calls are answered)."""
    self._pool.shutdown(wait=False)

  def compile(self, example: dict) -> float:
    """Run every batch size once on `example` (compiling it); -> seconds taken."""
    t0 = time.perf_counter()
    for size in self.batch_sizes:
      self._run([example] * size, [(0, 0)] * size)
    return time.perf_counter() - t0
