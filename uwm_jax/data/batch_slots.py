"""Host batches handed from grain worker processes to the main process in reused shared memory.

grain's worker processes copy every array they yield into a new shared-memory segment, which
the main process maps, reads and unlinks. For a DROID batch (144 windows, 150-300 MB) that is
tens of thousands of 4 KiB pages faulted in by the main process and as many freed, per batch:
work of the one main process that does not shrink with more workers (docs/data.md, "Feeding a
big host").

Here a worker writes each host batch into a slot instead: a shared-memory segment it creates
once and reuses, mapped once by each process. The worker yields only a small `SlotRef` (the
slot's name and the arrays' layout; grain pickles it through its queue); the main process
(`SlotReader`) maps the slot the first time it meets it, and returns numpy views of it. When
the last of those views is gone (the device transfer that read them has finished: jax holds
the host array until then), the slot is marked free and the worker writes a later batch into
it. A worker keeps at most `max_slots` slots; while all of them are held (e.g. by a caller that
keeps many batches) it yields plain arrays, which grain hands over its own way. The data are
the same either way, bit for bit.

The one flag per slot (free or in use) is its first byte: only the worker sets it in use (before
writing the batch) and only the main process sets it free (after the last view of the batch
died), so no lock is shared between the processes.

Names and cleanup: the slots of one pipeline are named `<prefix>_<worker pid>_<k>` with a prefix
the main process draws (`new_prefix`). The main process removes a slot's name as soon as it
has mapped it (the memory lives on while the two processes map it), and `remove_slots(prefix)`
removes the names of slots it never saw (batches still in flight when the pipeline was
closed) once the workers have stopped. A worker registers its slots with multiprocessing's
resource tracker (shared with the main process), which removes what is left if the main
process dies. POSIX shared memory lives in /dev/shm on Linux; elsewhere `supported()` is False
and the loader hands batches over grain's way.
"""

import ctypes
import dataclasses
import glob
import mmap
import os
import secrets
import threading
import weakref
from multiprocessing import resource_tracker, shared_memory
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

_SHM_DIR = "/dev/shm"
_FREE, _IN_USE = 0, 1
_ALIGN = 64  # bytes: every array starts at a multiple (the flag sits in the first block)


def supported() -> bool:
  """Whether slots can be used here (POSIX shared memory under /dev/shm: Linux)."""
  return os.path.isdir(_SHM_DIR)


def new_prefix() -> str:
  """A name prefix for the slots of one pipeline (unique to this process and call)."""
  return f"uwm{os.getpid()}_{secrets.token_hex(4)}"


def _remove_name(name: str) -> bool:
  """Remove a slot's name (its memory stays while mapped) and its resource-tracker entry;
  False when it was already gone."""
  try:
    os.unlink(os.path.join(_SHM_DIR, name))
  except FileNotFoundError:
    return False
  resource_tracker.unregister("/" + name, "shared_memory")
  return True


def remove_slots(prefix: Optional[str]) -> None:
  """Remove the names of a pipeline's slots that the main process never mapped (call it once
  the workers have stopped)."""
  if prefix:
    for path in glob.glob(os.path.join(_SHM_DIR, glob.escape(prefix) + "_*")):
      _remove_name(os.path.basename(path))


@dataclasses.dataclass(frozen=True)
class SlotRef:
  """One batch in a slot: the slot's name and size, and per key (shape, dtype, byte offset)."""
  name: str
  size: int
  layout: Tuple[Tuple[str, Tuple[int, ...], str, int], ...]


def _layout(samples: List[Mapping[str, np.ndarray]]) -> Tuple[tuple, int]:
  """The batch's arrays (stacked samples) laid out one after another, each aligned."""
  layout, offset = [], _ALIGN
  for key, value in samples[0].items():
    value = np.asarray(value)
    shape = (len(samples),) + value.shape
    layout.append((key, shape, value.dtype.str, offset))
    nbytes = int(np.prod(shape, dtype=np.int64)) * value.dtype.itemsize
    offset += -(-nbytes // _ALIGN) * _ALIGN
  return tuple(layout), offset


def _views(buffer, layout) -> Dict[str, np.ndarray]:
  return {key: np.frombuffer(buffer, np.dtype(dtype), int(np.prod(shape, dtype=np.int64)),
                             offset).reshape(shape)
          for key, shape, dtype, offset in layout}


def stack_into(out: Mapping[str, np.ndarray], samples: List[Mapping[str, np.ndarray]]) -> None:
  """Stack the samples' arrays into `out` (the arrays `np.stack` would give)."""
  for key, dest in out.items():
    np.stack([s[key] for s in samples], out=dest)


def check_room(size: int) -> None:
  """Raise a clear error when /dev/shm cannot hold `size` more bytes (writing past its end would
  kill the worker with SIGBUS; containers often give it 64 MB)."""
  st = os.statvfs(_SHM_DIR)
  free = st.f_bavail * st.f_frsize
  if free < size:
    raise OSError(f"{_SHM_DIR} has {free / 2**20:.0f} MiB free, a host batch needs "
                  f"{size / 2**20:.0f} MiB of shared memory to reach the main process: give it "
                  f"more (a container: docker run --shm-size=..., about data.num_workers x "
                  f"(data.prefetch_batches + 6) batches), or lower data.num_workers.")


class SlotWriter:
  """Worker side: the slots of this process, created on demand, reused once freed."""

  def __init__(self, prefix: str, max_slots: int):
    self.prefix = prefix
    self.max_slots = max(1, int(max_slots))
    self._slots: List[shared_memory.SharedMemory] = []
    self._lock = threading.Lock()  # the worker's reader threads acquire slots concurrently

  def _acquire(self, size: int) -> Optional[shared_memory.SharedMemory]:
    with self._lock:
      for slot in self._slots:
        if slot.size >= size and slot.buf[0] == _FREE:
          slot.buf[0] = _IN_USE
          return slot
      if len(self._slots) >= self.max_slots:
        return None
      check_room(size)
      slot = shared_memory.SharedMemory(
          create=True, size=size, name=f"{self.prefix}_{os.getpid()}_{len(self._slots)}")
      slot.buf[0] = _IN_USE
      self._slots.append(slot)
      return slot

  def write(self, samples: List[Mapping[str, np.ndarray]]):
    """The stacked samples in a free slot -> its `SlotRef`; None when every slot is in use."""
    layout, size = _layout(samples)
    slot = self._acquire(size)
    if slot is None:
      return None
    stack_into(_views(slot.buf, layout), samples)
    return SlotRef(slot.name, slot.size, layout)


class SlotReader:
  """Main-process side: `SlotRef` -> dict of numpy views of the slot (anything else is passed
  through). Maps each slot once and removes its name at once (the memory stays while mapped)."""

  def __init__(self):
    self._maps: Dict[str, mmap.mmap] = {}
    self.slot_batches = 0  # batches that came in a slot
    self.other_batches = 0  # batches that came grain's way (every slot of the worker in use)

  def _map(self, ref: SlotRef) -> mmap.mmap:
    mapped = self._maps.get(ref.name)
    if mapped is None:
      fd = os.open(os.path.join(_SHM_DIR, ref.name), os.O_RDWR)
      try:
        mapped = mmap.mmap(fd, ref.size)
      finally:
        os.close(fd)
      _remove_name(ref.name)  # this process and the worker keep their mappings
      self._maps[ref.name] = mapped
    return mapped

  def __call__(self, item):
    if not isinstance(item, SlotRef):
      self.other_batches += 1
      return item
    self.slot_batches += 1
    mapped = self._map(item)
    # One lease per batch, the object every view of the batch keeps alive (numpy's views of a
    # ctypes array lead to it through their .base); the slot is free once it is collected.
    lease = (ctypes.c_char * item.size).from_buffer(mapped)
    views = _views(lease, item.layout)
    if any(_owner(v) is not lease for v in views.values()):  # not so in some numpy: copy
      views = {k: v.copy() for k, v in views.items()}
      _mark_free(mapped)
      return views
    weakref.finalize(lease, _mark_free, mapped)
    return views


def _owner(array: np.ndarray):
  """The object at the end of an array's .base chain (what keeps its memory alive)."""
  while isinstance(array, np.ndarray):
    array = array.base
  return array


def _mark_free(mapped: mmap.mmap) -> None:
  if not mapped.closed:
    mapped[0] = _FREE
