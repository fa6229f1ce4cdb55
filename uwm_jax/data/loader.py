"""Grain loaders: an endless, exactly-resumable training stream and a finite validation pass.

The global sample stream is a pure function of the config (`data.seed`): each source's windows
are shuffled per epoch and repeated (`grain.MapDataset.shuffle().repeat()`), the sources are
interleaved by weight (`grain.MapDataset.mix`), and global batch j is samples
[j * B, (j + 1) * B) of that stream. Host p of P takes the contiguous block
[j * B + p * B / P, j * B + (p + 1) * B / P), so the hosts' batches j are disjoint and, stacked in
process order (`host_batch_to_global`), are exactly global batch j for any number of hosts (the
train step's per-row randomness then does not depend on the host count either). Batching
happens before the grain worker processes split the work, so batches do not depend on
`data.num_workers` (-1, the default: from the host's cores, `resolve_num_workers`). Workers
collate whole host batches and hand them to the main process in reused shared-memory slots
(`uwm_jax.data.batch_slots`), so the main process's own work per batch is receiving it and
placing it on the devices (docs/data.md, "Feeding a big host").

The loader state is the index of the next batch (JSON: `{"next_batch": j, ...}`); restoring it
rebuilds the pipeline from batch j, so a resumed run sees exactly the batches it would have
seen — also with a different number of workers or hosts, as long as the global batch size is
unchanged.

With `data.latent_cache_dir` the training loader reads each window's next obs from the latent
cache of its dataset (`uwm_jax.data.latent_cache`) instead of decoding its frames; the eval
loader always decodes them (offline metrics encode with the codec).
"""

import concurrent.futures
import dataclasses
import logging
import os
import threading
import time
import weakref
import zlib
from typing import Iterator, List, Optional, Sequence, Tuple

import grain
import jax
import numpy as np
from absl import flags

from uwm_jax.data import batch_slots, latent_cache
from uwm_jax.data import sources as sources_lib
from uwm_jax.data import stats as stats_lib
from uwm_jax.data.episodes import (EpisodeSource, concat_sources_windows, split_episodes,
                                   window_starts)
from uwm_jax.data.windows import SOURCE, WindowReader
from uwm_jax.dims import model_dims

__all__ = ["SOURCE", "TrainLoader", "EvalLoader", "make_train_loader", "make_eval_loader"]

STATE_VERSION = 1


def _process(process_index: Optional[int], process_count: Optional[int]) -> Tuple[int, int]:
  if process_index is None or process_count is None:
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
  return int(process_index), int(process_count)


# data.num_workers = -1: worker processes per host, from the cores this process may use.
AUTO_WORKERS_MIN_CORES = 8  # below it, read in the main process (workers did not help on 2)
AUTO_WORKERS_RESERVED = 2  # cores left to the main process and the accelerator runtime
AUTO_WORKERS_MAX = 32  # each holds up to prefetch_batches + 6 host batches (DROID: ~1.3 GB)


def usable_cores() -> int:
  """Cores this process may run on (its affinity: what SLURM or a container gives it, not the
  machine's count)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def resolve_num_workers(num_workers: int, cores: Optional[int] = None) -> int:
  """`data.num_workers` -> grain worker processes: as given when >= 0; for -1 (auto), one per
  usable core less `AUTO_WORKERS_RESERVED`, at most `AUTO_WORKERS_MAX`, and 0 (the main
  process reads) with fewer than `AUTO_WORKERS_MIN_CORES` cores."""
  num_workers = int(num_workers)
  if num_workers >= 0:
    return num_workers
  if num_workers != -1:
    raise ValueError(f"data.num_workers = {num_workers}: use a count >= 0, or -1 for one per "
                     f"core (auto).")
  cores = usable_cores() if cores is None else int(cores)
  if cores < AUTO_WORKERS_MIN_CORES:
    return 0
  return min(cores - AUTO_WORKERS_RESERVED, AUTO_WORKERS_MAX)


def _host_batch_size(batch_size: int, process_count: int) -> int:
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} is not divisible by the {process_count} "
                     f"processes (hosts).")
  return batch_size // process_count


def _seed(*parts) -> int:
  """A stable 32-bit seed from strings/ints (grain shuffle seeds must fit in uint32)."""
  return zlib.crc32(":".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


@dataclasses.dataclass
class Split:
  """Per-source (episode, start) window tables of the training and validation splits, and the
  validation episodes themselves (the one place `data.split_seed` is read)."""
  train: List[np.ndarray]
  val: List[np.ndarray]
  val_episodes: List[np.ndarray]


def make_split(config, sources: Sequence[EpisodeSource], eval_stride: int = 1) -> Split:
  """Windows of every source: training (all but validation episodes), validation (robot only)."""
  window = model_dims(config.model).window
  train, val, val_episodes = [], [], []
  for src in sources:
    tr_eps, val_eps = split_episodes(src.action_free, config.data.val_fraction,
                                     config.data.split_seed)
    train.append(window_starts(src.episode_lengths, tr_eps, window, 1, src.name))
    val.append(window_starts(src.episode_lengths, val_eps, window, eval_stride, src.name))
    val_episodes.append(np.asarray(val_eps, np.int64))
  return Split(train, val, val_episodes)


class _Loader:
  """What the train and eval loaders share: sources, statistics, the window reader."""

  def __init__(self, config, process_index, process_count, use_latent_cache=False,
               frozen=None):
    self.config = config
    self.process_index, self.process_count = _process(process_index, process_count)
    self.global_batch_size = int(config.batch_size)
    self.batch_size = _host_batch_size(self.global_batch_size, self.process_count)
    self.source_names, self.sources, self.weights = sources_lib.build_sources(config)
    self.dataset_stats = stats_lib.dataset_stats(config.data, config.model, self.sources)
    self.latent_caches = (_open_latent_caches(config, self.source_names, self.sources, frozen)
                          if use_latent_cache else None)
    self.reader = WindowReader(self.sources, config.model, self.dataset_stats,
                               self.latent_caches)
    self.split = make_split(config, self.sources, max(1, int(config.data.eval_window_stride)))
    self.num_workers = resolve_num_workers(config.data.num_workers)

  def _batches(self, rows: grain.MapDataset,
               slot_prefix: Optional[str] = None) -> grain.MapDataset:
    """Global rows (source, episode, start) -> this host's batches, read by a thread pool.

    Host p's batch j is the p-th contiguous block of global batch j. With `slot_prefix` (in
    grain worker processes) a batch is written into a reused shared-memory slot
    (`uwm_jax.data.batch_slots`) and yielded as its `SlotRef`.
    """
    p, P = self.process_index, self.process_count
    d = self.config.data
    return rows.batch(self.batch_size, drop_remainder=True)[p::P].map(
        BatchReader(self.reader, int(d.read_threads), slot_prefix,
                    max_slots=_prefetch_batches(d) + SLOTS_BEYOND_PREFETCH))

  def _pipeline(self, rows: grain.MapDataset,
                start_batch: int = 0) -> Tuple[grain.IterDataset, Optional[str]]:
    """This host's batches of `rows` from `start_batch` on, as grain reads them: in
    `data.num_workers` worker processes (handed over in shared-memory slots where supported)
    or in this process. Returns the dataset and the slots' name prefix (None without slots),
    for `batch_slots.remove_slots` once its iterator is closed."""
    d = self.config.data
    workers = self.num_workers
    prefix = batch_slots.new_prefix() if workers > 0 and batch_slots.supported() else None
    ahead = _prefetch_batches(d)
    it = self._batches(rows, prefix)[start_batch:].to_iter_dataset(
        grain.ReadOptions(num_threads=ahead, prefetch_buffer_size=ahead))
    if workers > 0:
      if not flags.FLAGS.is_parsed():  # grain reads its absl flags; use their defaults
        flags.FLAGS.mark_as_parsed()  # when no app.run parsed them (tests, notebooks).
      it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                       per_worker_buffer_size=1))
      if prefix is not None:
        it = it.map(batch_slots.SlotReader())
    return it, prefix


# Slots a worker may hold beyond its `data.prefetch_batches` batches read ahead: the batch its
# loop is putting into grain's queue and the one in the queue, the one the main process reads
# ahead and the one waiting behind it, the batch being placed and the one before it (its host
# arrays are dropped by jax's next call). Beyond that a worker hands batches over grain's way.
SLOTS_BEYOND_PREFETCH = 6


def _prefetch_batches(data_config) -> int:
  return max(1, int(data_config.prefetch_batches))


class BatchReader:
  """(b, 3) rows -> one stacked batch; the b windows are read by `threads` threads.

  Memory stays at a few batches (`data.prefetch_batches` in flight per process) while decoding
  runs in parallel inside each batch (Pillow and array_record release the GIL). With
  `slot_prefix` (in a grain worker) the batch is stacked straight into a shared-memory slot of
  this process (at most `max_slots` of them) and its `batch_slots.SlotRef` is returned; while
  every slot is in use, the stacked arrays are.
  """

  def __init__(self, reader: WindowReader, threads: int, slot_prefix: Optional[str] = None,
               max_slots: int = 1):
    self.reader = reader
    self.threads = max(1, threads)
    self.slot_prefix = slot_prefix
    self.max_slots = max_slots
    self._pool = None
    self._slots = None

  def __getstate__(self):
    return {**self.__dict__, "_pool": None, "_slots": None}

  def __call__(self, rows: np.ndarray):
    if self.threads == 1:
      samples = [self.reader(r) for r in rows]
    else:
      if self._pool is None:
        self._pool = concurrent.futures.ThreadPoolExecutor(self.threads)
      samples = list(self._pool.map(self.reader, rows))
    if self.slot_prefix is not None:
      if self._slots is None:
        self._slots = batch_slots.SlotWriter(self.slot_prefix, self.max_slots)
      ref = self._slots.write(samples)
      if ref is not None:
        return ref
    return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


def prefill_frame_caches(sources: Sequence[EpisodeSource]) -> Optional[threading.Thread]:
  """Fill the decoded-frame caches of `sources` (docs/data.md) in a daemon thread, so that the
  decoding overlaps the train step's compilation; None when no source caches frames. An error
  stops the fill with one logged line (the reader meets and reports it again)."""
  fills = [s.fill_frame_cache for s in sources if getattr(s, "cache_decoded_frames", False)]
  if not fills:
    return None

  def fill_all():
    t0 = time.perf_counter()
    try:
      for fill in fills:
        fill()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("Decoded-frame cache: filling ahead stopped (%s: %s); windows decode "
                      "on first read instead.", type(e).__name__, e)
      return
    logging.info("Decoded-frame cache filled in %.1f s.", time.perf_counter() - t0)

  thread = threading.Thread(target=fill_all, name="frame-cache-fill", daemon=True)
  thread.start()
  return thread


class TrainLoader(_Loader):
  """Endless iterator of host-local numpy batches (see `uwm_jax.batch`, plus `source`).

  Attributes: dataset_stats (normalisation statistics, JSON-able), source_names (index order of
  the `source` key), batch_size (host-local), global_batch_size, num_windows (per source),
  latent_caches (one `LatentCache` per source when `data.latent_cache_dir` is set, else None).

  frozen: the codec params the train step would encode with; with a latent cache they must be
  the params the cache was built with (checked by fingerprint; None = not checked).
  """

  def __init__(self, config, process_index=None, process_count=None, frozen=None):
    super().__init__(config, process_index, process_count, use_latent_cache=True,
                     frozen=frozen)
    self.num_windows = {n: len(t) for n, t in zip(self.source_names, self.split.train)}
    for name, n in self.num_windows.items():
      if n == 0:
        raise ValueError(f"Dataset {name!r} has no training windows of "
                         f"{model_dims(config.model).window} frames (all episodes too short "
                         f"or held out for validation).")
    logging.info("Training windows per source: %s; weights %s.", self.num_windows, self.weights)
    logging.info("Input pipeline: %s (data.num_workers=%s, %d usable cores), %d read threads "
                 "each, %d batches read ahead.",
                 f"{self.num_workers} worker processes" if self.num_workers else
                 "read in the main process", config.data.num_workers, usable_cores(),
                 int(config.data.read_threads), _prefetch_batches(config.data))
    self._stream = self._global_stream()
    self._next_batch = 0
    self._iter: Optional[Iterator] = None
    self._remove_slots = lambda: None  # set with each pipeline
    self._readers = {}  # slot prefix -> this host's batches (read_batch)
    # With grain worker processes each worker holds its own cache: nothing to fill here.
    self.cache_fill = (prefill_frame_caches(self.sources) if self.num_workers == 0 else None)

  def _global_stream(self) -> grain.MapDataset:
    """Endless MapDataset of (source, episode, start) rows: the global sample order."""
    seed = int(self.config.data.seed)
    parts = []
    for s, (name, table) in enumerate(zip(self.source_names, self.split.train)):
      rows = np.concatenate([np.full((len(table), 1), s, np.int64), table], axis=1)
      parts.append(grain.MapDataset.source(rows).shuffle(seed=_seed(seed, name)).repeat())
    if len(parts) == 1:
      return parts[0]
    return grain.MapDataset.mix(parts, self.weights)

  def read_batch(self, j: int, slot_prefix: Optional[str] = None):
    """This host's batch j of the stream (counted from the start), read in the calling process
    as a grain worker reads it: a dict of arrays, or with `slot_prefix` its
    `batch_slots.SlotRef` (in a slot of this process; map it with a `batch_slots.SlotReader`)."""
    if slot_prefix not in self._readers:
      self._readers[slot_prefix] = self._batches(self._stream, slot_prefix)
    return self._readers[slot_prefix][j]

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._iter is None:
      pipeline, prefix = self._pipeline(self._stream, self._next_batch)
      self._iter = iter(pipeline)
      # Also when the loader is dropped unclosed: after grain stopped the workers.
      self._remove_slots = weakref.finalize(self._iter, batch_slots.remove_slots, prefix)
    batch = next(self._iter)
    self._next_batch += 1
    return batch

  def get_state(self) -> dict:
    """JSON-able position: the next batch this loader will yield."""
    return {"version": STATE_VERSION, "next_batch": self._next_batch,
            "global_batch_size": self.global_batch_size, "seed": int(self.config.data.seed),
            "sources": list(self.source_names)}

  def set_state(self, state: dict) -> None:
    """Continue with exactly the batches that followed when `state` was taken."""
    if state.get("version") != STATE_VERSION:
      raise ValueError(f"Loader state version {state.get('version')} != {STATE_VERSION}.")
    mine = self.get_state()
    for key in ("global_batch_size", "seed", "sources"):
      if state[key] != mine[key]:
        raise ValueError(f"Loader state was saved with {key}={state[key]!r}, this loader has "
                         f"{mine[key]!r}: the stream would differ.")
    self.close()
    self._next_batch = int(state["next_batch"])

  def close(self) -> None:
    """Stop worker processes (also done on garbage collection) and free their shared memory."""
    it, self._iter = self._iter, None
    if it is not None and hasattr(it, "close"):
      it.close()
    self._remove_slots()


def _open_latent_caches(config, names, sources, frozen) -> Optional[list]:
  """The latent caches of the sources, or None when `data.latent_cache_dir` is unset (or the
  model predicts no next obs)."""
  root = config.data.get("latent_cache_dir", "")
  if not root:
    return None
  if model_dims(config.model).num_timesteps != 2:
    logging.warning("data.latent_cache_dir is set but model.predict_next_obs is False (no next "
                    "obs is encoded): the latent cache is not read.")
    return None
  caches = latent_cache.open_latent_caches(root, names, sources, config.model, frozen)
  logging.info("Training reads next-obs latents from the cache %s (VAE skipped; next obs not "
               "augmented).", root)
  return caches


class EvalLoader(_Loader):
  """Finite, re-iterable host-local batches of the robot-only validation split.

  Windows: every `data.eval_window_stride`-th start of each validation episode, at most
  `data.eval_max_windows` of them (evenly spaced), truncated to whole global batches so that
  every host yields the same number of batches.
  """

  def __init__(self, config, process_index=None, process_count=None):
    super().__init__(config, process_index, process_count)
    rows = concat_sources_windows(self.split.val)
    cap = int(config.data.eval_max_windows)
    if cap and len(rows) > cap:
      rows = rows[np.linspace(0, len(rows) - 1, cap).round().astype(np.int64)]
    self.num_batches = len(rows) // self.global_batch_size
    if self.num_batches == 0:
      logging.warning("Validation split has %d windows, fewer than one global batch of %d: "
                      "the eval loader is empty.", len(rows), self.global_batch_size)
    self._rows = rows[:self.num_batches * self.global_batch_size]

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self):
    pipeline, prefix = self._pipeline(grain.MapDataset.source(self._rows))
    it = iter(pipeline)
    try:
      yield from it
    finally:
      if hasattr(it, "close"):
        it.close()
      batch_slots.remove_slots(prefix)


def make_train_loader(config, *, process_index=None, process_count=None,
                      frozen=None) -> TrainLoader:
  """Endless host-local training batches of `config.batch_size // process_count` samples
  (with next-obs latent moments instead of next-obs frames when `data.latent_cache_dir` is set;
  `frozen`: the codec params to check the cache against)."""
  return TrainLoader(config, process_index, process_count, frozen)


def make_eval_loader(config, *, process_index=None, process_count=None) -> EvalLoader:
  """Finite host-local batches from the robot-only validation split."""
  return EvalLoader(config, process_index, process_count)
