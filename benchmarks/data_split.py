"""The input pipeline split into what scales with worker processes and what does not.

With `data.num_workers` > 0 every host batch is read, collated and handed over in shared memory
by a grain worker process; the main process (the one that runs the train loop) only takes the
finished batch over and puts it on the devices. More workers raise the first part's rate; the
second is serial, one core's worth, whatever the host has.

`serial_rate` times that main-process part alone, with the workers' output made free: host
batches made beforehand by the real loader are handed over the way the workers do, and the
main process's own steps are timed on them (receive, `host_batch_to_global` onto a mesh of this
process's devices, wait until the arrays are on the devices, release). `worker_rate` times one
worker's part: the loader's batch reader (decode, window assembly, collation) and the handoff.
Two handoffs: grain's own (`GrainHandoff`, a new shared-memory segment per batch) and the
loader's reused slots (`SlotHandoff`, `uwm_jax.data.batch_slots`). Both rates are windows per
CPU-second with every thread of this process pinned to one core, so they are per-core rates and
hold on a machine shared with other work; together they say how many cores a host needs for a
rate (`cores_needed`).
"""

import dataclasses
import gc
import math
import os
import time
from typing import Callable, List, Mapping, Optional

import jax
import numpy as np
from grain._src.python.ipc import shared_memory_array

from uwm_jax.data import batch_slots, latent_cache
from uwm_jax.dims import model_dims
from uwm_jax.training import global_batch
from uwm_jax.training import mesh as mesh_lib


@dataclasses.dataclass
class Rate:
  """Windows of one part of the pipeline, with the wall time and the CPU time (all threads of
  this process) they took. On a machine shared with other work the CPU time is the measure:
  windows per CPU-second is the rate of one core that does only this."""
  windows: int
  seconds: float  # wall
  cpu_seconds: float

  @property
  def windows_per_s(self) -> float:
    """Windows per CPU-second (per core)."""
    return self.windows / self.cpu_seconds

  @property
  def windows_per_wall_s(self) -> float:
    return self.windows / self.seconds

  def __add__(self, other: "Rate") -> "Rate":
    return Rate(self.windows + other.windows, self.seconds + other.seconds,
                self.cpu_seconds + other.cpu_seconds)


class _Clock:
  """Accumulates wall and process CPU time over the timed sections."""

  def __init__(self):
    self.wall = self.cpu = 0.0

  def __enter__(self):
    self._t, self._c = time.perf_counter(), time.process_time()

  def __exit__(self, *exc):
    self.wall += time.perf_counter() - self._t
    self.cpu += time.process_time() - self._c


def pin_to_one_core() -> int:
  """Pin every thread of this process (and the threads they start) to one CPU core: the last
  of the cores this process may use. Returns the core."""
  core = max(os.sched_getaffinity(0))
  for tid in os.listdir("/proc/self/task"):
    try:
      os.sched_setaffinity(int(tid), {core})
    except OSError:  # the thread ended meanwhile
      pass
  return core


def unpin(cores) -> None:
  for tid in os.listdir("/proc/self/task"):
    try:
      os.sched_setaffinity(int(tid), cores)
    except OSError:
      pass


def batch_bytes(batch: Mapping[str, np.ndarray]) -> int:
  return sum(np.asarray(v).nbytes for v in batch.values())


def local_placer() -> Callable[[Mapping[str, np.ndarray]], dict]:
  """What the train loop does with a host batch (`global_batch.batch_placer`), on a mesh of this
  process's devices with the batch split over all of them (the training mesh splits the batch
  over its data x fsdp axes, i.e. over every device when the tensor axis is 1)."""
  mesh = mesh_lib.make_mesh((-1, 1, 1), jax.local_devices())
  return global_batch.batch_placer(mesh)


class GrainHandoff:
  """grain's own way: the worker copies each array into a new shared-memory segment, the main
  process maps it and unlinks it when the array is released (in a thread of its own)."""
  slot_prefix = None  # the worker yields plain arrays

  def __init__(self):
    shared_memory_array.SharedMemoryArray.enable_async_del(1)  # as grain's main process does

  def send(self, batch):
    """The worker's part: a host batch (dict of arrays) -> what goes through grain's queue."""
    return shared_memory_array.copy_to_shm(batch)

  def receive(self, item) -> dict:
    return shared_memory_array.open_from_shm(item)

  def settle(self) -> None:
    """Wait until the batches released so far are freed (grain's main process unlinks them in
    a thread: part of the main process's cost)."""
    # pylint: disable-next=protected-access
    pool = shared_memory_array.SharedMemoryArray._del_thread_pool
    if pool is not None:
      pool.apply(lambda: None)  # one thread: runs after every release queued before it

  def close(self) -> None:
    pass


class SlotHandoff:
  """The loader's way with worker processes (`uwm_jax.data.batch_slots`): the worker stacks the
  batch into a reused slot, the main process maps each slot once."""

  def __init__(self, max_slots: int):
    self.slot_prefix = batch_slots.new_prefix()
    self._writer = batch_slots.SlotWriter(self.slot_prefix, max_slots)
    self._reader = batch_slots.SlotReader()

  def send(self, batch):
    n = len(next(iter(batch.values())))
    ref = self._writer.write([{k: v[i] for k, v in batch.items()} for i in range(n)])
    if ref is None:
      raise RuntimeError("every slot is in use")
    return ref

  def receive(self, item) -> dict:
    return self._reader(item)

  def settle(self) -> None:
    """A slot is marked free when its batch is collected; jax drops the host arrays it placed
    at its next call (the train loop makes one every step), so make one."""
    jax.block_until_ready(jax.numpy.zeros(()))

  def close(self) -> None:
    batch_slots.remove_slots(self.slot_prefix)


@dataclasses.dataclass
class SerialRate:
  """The main process's part: `total` (all of it, on one core) and of that the stand-in
  transfer copy (`transfer`, None when not made)."""
  total: Rate
  transfer: Optional[Rate]

  @property
  def thread(self) -> Rate:
    """Without the transfer copy: the work of the Python thread that runs the train loop."""
    if self.transfer is None:
      return self.total
    return Rate(self.total.windows, self.total.seconds - self.transfer.seconds,
                self.total.cpu_seconds - self.transfer.cpu_seconds)

  def __add__(self, other: "SerialRate") -> "SerialRate":
    transfer = (None if self.transfer is None or other.transfer is None
                else self.transfer + other.transfer)
    return SerialRate(self.total + other.total, transfer)


def serial_rate(batches: List[Mapping[str, np.ndarray]],
                place: Callable[[Mapping[str, np.ndarray]], dict], handoff,
                seconds: float, transfer_copy: bool) -> SerialRate:
  """The main process's cost per host batch, on one core, with the workers' output free.

  Rounds of len(batches) batches: each round first hands the batches over as the workers do
  (`handoff.send`, untimed: the workers' work), then times receiving them, placing them on the
  devices and releasing them. One untimed round first (a slot is mapped once). Rounds repeat
  until `seconds` of CPU time are timed. transfer_copy: also copy every placed batch into one
  reused host buffer (timed apart too), standing in for the read of the bytes that a TPU or
  GPU transfer makes (in the runtime's threads) and that jax's zero-copy placement on CPU
  devices skips; it is the first read of the batch's pages in this process.
  """
  staging = {}
  copy_clock = _Clock()

  def consume(item):
    batch = handoff.receive(item)
    jax.block_until_ready(place(batch))
    if transfer_copy:
      with copy_clock:
        for key, value in batch.items():
          if key not in staging:
            staging[key] = np.ones(value.shape, value.dtype)
          np.copyto(staging[key], value)
    return len(next(iter(batch.values())))

  windows, clock, first = 0, _Clock(), True
  while first or clock.cpu < seconds or windows == 0:
    items = [handoff.send(b) for b in batches]
    gc.collect()
    if first:
      for item in items:
        consume(item)
      handoff.settle()
      first, copy_clock = False, _Clock()
      continue
    with clock:
      for item in items:
        windows += consume(item)
      handoff.settle()
  transfer = Rate(windows, copy_clock.wall, copy_clock.cpu) if transfer_copy else None
  return SerialRate(Rate(windows, clock.wall, clock.cpu), transfer)


def worker_rate(read_batch: Callable, handoff, seconds: float, first: int = 0) -> Rate:
  """One worker's cost per host batch on one core: `read_batch(j, slot_prefix)` (the loader's
  batch j, read and collated) and its handoff to the main process (grain's copy into shared
  memory, or the loader's stacking into a slot).

  Batches first, first + 1, ... until `seconds` of CPU time are timed. Releasing the batch is
  the main process's work (counted by `serial_rate`), so it is not timed here.
  """
  windows, clock, j = 0, _Clock(), first
  while clock.cpu < seconds or windows == 0:
    with clock:
      item = read_batch(j, handoff.slot_prefix)
      if handoff.slot_prefix is None:
        item = handoff.send(item)
    batch = handoff.receive(item)
    windows += len(next(iter(batch.values())))
    del batch
    handoff.settle()
    j += 1
  return Rate(windows, clock.wall, clock.cpu)


def cores_needed(target_windows_per_s: float, serial: SerialRate,
                 worker: Rate) -> Optional[float]:
  """Cores for `target` windows/s: the workers' share plus the main process's; None when the
  main process's Python thread alone (one core at most) cannot keep up."""
  if target_windows_per_s / serial.thread.windows_per_s > 1.0:
    return None
  return (target_windows_per_s / worker.windows_per_s +
          target_windows_per_s / serial.total.windows_per_s)


def memcpy_gb_per_s(nbytes: int = 256 << 20, repeats: int = 3) -> float:
  """One core's rate of copying a large buffer into memory already written once (what a
  runtime's staging copy of a batch into pinned memory costs per byte), best of `repeats`."""
  src = np.full(nbytes, 7, np.uint8)
  dst = np.zeros_like(src)
  best = math.inf
  for _ in range(repeats):
    t = time.process_time()
    np.copyto(dst, src)
    best = min(best, time.process_time() - t)
  return nbytes / best / 1e9


def write_random_latent_cache(root: str, names, sources, model_cfg, seed: int = 0) -> None:
  """A latent cache of random moments (right shapes, float16) for every source, in the format
  `latent_cache.LatentCache` reads: what the loader reads with `data.latent_cache_dir` set,
  without running the codec. For benchmarks only: the values mean nothing."""
  rng = np.random.default_rng(seed)
  dims = model_dims(model_cfg)
  V, C, _, h, w = dims.latent_shape
  first = latent_cache.first_cached_frame(model_cfg)
  for name, source in zip(names, sources):
    folder = latent_cache.source_cache_dir(root, name)
    os.makedirs(folder, exist_ok=True)
    meta = latent_cache.cache_meta(source, model_cfg, frozen_fingerprint="random")
    for episode, length in enumerate(int(n) for n in source.episode_lengths):
      if length < dims.window:  # as the builder: such episodes hold no window
        continue
      file = f"{episode:07d}.npy"
      moments = rng.standard_normal((2, length - first, V, C, h, w)).astype(np.float16)
      moments[1] = np.abs(moments[1])
      latent_cache.write_npy_atomic(os.path.join(folder, file), moments)
      meta["episodes"][str(episode)] = {"file": file, "frames": length}
    latent_cache.write_meta(folder, meta)
