"""Input-pipeline benchmark: windows/s, decoded frames/s per host and peak RSS.

  python -m benchmarks.data --config=configs/tiny.py --seconds=60
  # A DROID-schema fixture at full 180x320 resolution, written, converted, then loaded:
  python -m benchmarks.data --config=configs/droid.py --fixture_episodes=40 \\
      --config.batch_size=32 --config.data.num_workers=2 --seconds=120
  # Real data:
  python -m benchmarks.data --config=configs/droid.py \\
      --config.data.sources.droid.path=/data/uwm/droid_weird
  # Action-free video clips (web-video-like 256x340 mp4 or webm), decoded at load time or
  # converted once to array_record (python -m uwm_jax.data.convert_video) and read from it:
  python -m benchmarks.data --config=configs/droid.py --config.batch_size=32 \\
      --video_fixture=webm --video_path=converted --fixture_episodes=24 --seconds=60

What does not scale with worker processes: `--mode=serial` times the main process's own work
per host batch with the workers' output made free (batches made beforehand, handed over as the
workers do, received, placed on this process's devices, released); `--mode=worker` one
worker's (read, decode, collate, hand over); `--mode=split` both, and the cores a host needs for
--target_windows_per_s. Each is measured with grain's own handoff (a new shared-memory segment
per batch) and with the loader's (reused slots, uwm_jax/data/batch_slots.py), in windows per
CPU-second on one pinned core (benchmarks/data_split.py). With --random_latent_cache the
data get a latent cache of random moments, so that windows read their next obs' latents
instead of decoding those frames, as training with data.latent_cache_dir does:
  python -m benchmarks.data --config=configs/droid.py --fixture_episodes=12 \\
      --random_latent_cache --mode=split --seconds=10

With --video_fixture the loader reads only the clips (one action-free source; identity action
statistics; a clip frame is decoded once and placed in every view). Decoded frames = 2 * T_o * V
per window (current + next observations of every view; T_o * V with a latent cache). Peak RSS
is the largest resident memory of this process plus its grain workers, sampled every 0.5 s.
"""

import multiprocessing
import os
import resource
import shutil
import tempfile
import threading
import time
from typing import List

import jax
from absl import flags

from uwm_jax import cli_config
from benchmarks import data_split
from uwm_jax.data import batch_slots
from uwm_jax.data import loader as loader_lib
from uwm_jax.data import source_configs
from uwm_jax.data import sources as sources_lib
from uwm_jax.dims import model_dims

_CONFIG = cli_config.define_config_flag("Config file (and overrides).")
_SECONDS = flags.DEFINE_float("seconds", 60.0, "How long to load after the first batch (--mode="
                               "serial/worker/split: CPU seconds timed per part and handoff).")
_WARMUP = flags.DEFINE_integer("warmup_batches", 2, "Batches not timed (start-up).")
_FIXTURE = flags.DEFINE_integer(
    "fixture_episodes", 0, "If > 0: write a DROID-schema fixture of this many episodes at the "
    "config's image shape, convert it and load it instead of config.data.sources (with "
    "--video_fixture: the number of clips).")
_PROCESS = flags.DEFINE_integer("process_count", 1, "Simulated host count (this is host 0).")
_VIDEO = flags.DEFINE_enum(
    "video_fixture", "", ["", "mp4", "webm"], "If set: write --fixture_episodes clips (default "
    "24) of this format and load them as the only source, by --video_path.")
_VIDEO_PATH = flags.DEFINE_enum(
    "video_path", "decode", ["decode", "converted"], "--video_fixture: decode the clips at load "
    "time (source_configs.video_folder) or convert them once and read the array_record data.")
_MODE = flags.DEFINE_enum(
    "mode", "loader", ["loader", "serial", "worker", "split"], "loader: the whole loader as "
    "training runs it (config's workers and threads); serial: the main process's part alone, "
    "one core; worker: one worker's part, one core; split: serial and worker, and the cores "
    "needed for --target_windows_per_s.")
_SERIAL_BATCHES = flags.DEFINE_integer(
    "serial_batches", 4, "--mode=serial/split: distinct host batches made beforehand and placed "
    "again and again (each held in memory twice: as made and in shared memory).")
_TARGET = flags.DEFINE_float(
    "target_windows_per_s", 3800.0, "--mode=split: the rate to size a host for (3800: one "
    "v5p-8 host at uwm_jax.compile's 37.9 ms estimate of the :v5p-8 DROID step, batch 144).")
_LATENT = flags.DEFINE_bool(
    "random_latent_cache", False, "Write a latent cache of random moments for the data (in a "
    "temporary folder) and read it (data.latent_cache_dir), as latent-cache training does: a "
    "window then decodes only its T_o current frames per view and reads its next obs' latents.")
_ROUNDS = 3  # --mode=serial/worker/split: alternating rounds per handoff
_VIDEO_SHAPE = (256, 340)  # H, W of the clips written (a typical web-video resolution)
_VIDEO_FRAMES = 150  # frames per clip (5 s at 30 fps)


class PeakRss:
  """Samples the resident memory of this process and its children."""

  def __init__(self, interval: float = 0.5):
    self.peak = 0
    self._stop = threading.Event()
    self._interval = interval
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _sample(self) -> int:
    try:
      import psutil  # pylint: disable=import-outside-toplevel  # optional: counts the workers
    except ImportError:
      return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
      try:
        total += child.memory_info().rss
      except psutil.Error:
        pass
    return total

  def _run(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, self._sample())
      self._stop.wait(self._interval)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, self._sample())


def _fixture_job(image_shape, episodes: int, root: str) -> None:
  """Runs in a child process, so that TensorFlow does not count in the loader's RSS."""
  # Imported here, in the child process: TensorFlow (the RLDS writer) must not count in the
  # parent's (the loader's) RSS.
  # pylint: disable=import-outside-toplevel
  from benchmarks.droid_sample import write_droid_fixture
  from uwm_jax.data import convert_rlds as convert, profiles
  # pylint: enable=import-outside-toplevel
  t = time.time()
  tfds_dir = write_droid_fixture(os.path.join(root, "tfds"), episodes,
                                          image_shape=tuple(image_shape),
                                          lengths=(120, 150, 90), num_shards=4)
  t_write = time.time() - t
  t = time.time()
  convert.convert_rlds(tfds_dir, os.path.join(root, "uwm"), profiles.droid_profile(),
                       dataset="droid", progress=False)
  print(f"fixture: wrote {episodes} DROID episodes in {t_write:.1f} s, converted to "
        f"array_record in {time.time() - t:.1f} s", flush=True)


def _video_fixture_job(ext: str, clips: int, image_shape, convert: bool, root: str) -> None:
  """Runs in a child process (the writer's and converter's memory must not count)."""
  # pylint: disable=import-outside-toplevel
  from benchmarks.video_sample import write_video_clip
  from uwm_jax.data import convert_video
  # pylint: enable=import-outside-toplevel
  t = time.time()
  for i in range(clips):
    write_video_clip(os.path.join(root, "clips", f"{i:04d}.{ext}"), _VIDEO_FRAMES, _VIDEO_SHAPE,
                     fps=30, seed=i)
  line = (f"fixture: wrote {clips} {ext} clips of {_VIDEO_FRAMES} frames at "
          f"{_VIDEO_SHAPE[0]}x{_VIDEO_SHAPE[1]} in {time.time() - t:.1f} s")
  if convert:
    t = time.time()
    convert_video.convert_video(os.path.join(root, "uwm"), folder=os.path.join(root, "clips"),
                                image_shape=tuple(image_shape), progress=False)
    line += f", converted to array_record in {time.time() - t:.1f} s"
  print(line, flush=True)


def _in_child(target, args) -> None:
  proc = multiprocessing.get_context("spawn").Process(target=target, args=args)
  proc.start()
  proc.join()
  if proc.exitcode:
    raise RuntimeError(f"Writing the fixture failed (exit code {proc.exitcode}).")


def _write_fixture(config, episodes: int, root: str) -> str:
  _in_child(_fixture_job, (tuple(config.model.image_shape), episodes, root))
  out = os.path.join(root, "uwm")
  config.data.sources = {}
  config.data.sources.droid = source_configs.array_record(out)
  return out


def _write_video_fixture(config, ext: str, clips: int, converted: bool, root: str) -> None:
  _in_child(_video_fixture_job, (ext, clips, tuple(config.model.image_shape), converted, root))
  config.data.sources = {}
  if converted:
    config.data.sources.video = source_configs.array_record(os.path.join(root, "uwm"),
                                                            action_free=True)
  else:
    config.data.sources.video = source_configs.video_folder(os.path.join(root, "clips"))
  config.data.normalize = False  # no robot data: identity action statistics


def _write_latent_cache(config, root: str) -> None:
  names, sources, _ = sources_lib.build_sources(config)
  config.data.latent_cache_dir = os.path.join(root, "latents")
  data_split.write_random_latent_cache(config.data.latent_cache_dir, names, sources,
                                       config.model)


def _describe(config, loader) -> str:
  dims = model_dims(config.model)
  cached = loader.latent_caches is not None
  return (f"sources {loader.source_names} windows {loader.num_windows}; host batch "
          f"{loader.batch_size}; workers {loader.num_workers}; threads "
          f"{config.data.read_threads}; image {tuple(config.model.image_shape)} x "
          f"{dims.num_views} views; window {dims.window} frames; next obs "
          f"{'from the latent cache' if cached else 'decoded'}")


def _measure_loader(config) -> None:
  """The loader as training runs it: windows/s, decoded frames/s, peak RSS."""
  dims = model_dims(config.model)
  with PeakRss() as rss:
    t0 = time.time()
    loader = loader_lib.make_train_loader(config, process_index=0, process_count=_PROCESS.value)
    for _ in range(_WARMUP.value):
      next(loader)
    startup = time.time() - t0
    n, t1 = 0, time.time()
    while time.time() - t1 < _SECONDS.value:
      next(loader)
      n += 1
    elapsed = time.time() - t1
    loader.close()
  frames_per_window = (1 if loader.latent_caches is not None else 2) * dims.num_obs_frames * (
      dims.num_views)
  windows = n * loader.batch_size
  print(_describe(config, loader))
  print(f"start-up (build + {_WARMUP.value} batches): {startup:.1f} s")
  print(f"windows/s per host: {windows / elapsed:.1f}  ({n} batches in {elapsed:.1f} s)")
  print(f"decoded frames/s per host: {windows * frames_per_window / elapsed:.1f}")
  print(f"peak RSS (process + workers): {rss.peak / 2**20:.0f} MiB")


def _handoffs(max_slots: int):
  """(label, factory) of the handoffs to measure: grain's own, and the loader's slots."""
  out = [("grain's (a new shared-memory segment per batch)", data_split.GrainHandoff)]
  if batch_slots.supported():
    out.append(("the loader's (reused slots)", lambda: data_split.SlotHandoff(max_slots)))
  return out


def _rate_line(part: str, label: str, rate, batch_size: int) -> str:
  if isinstance(rate, data_split.SerialRate):
    line = _rate_line(part, label, rate.total, batch_size)
    if rate.transfer is not None:
      line += (f"; of it the main thread {rate.thread.windows_per_s:.0f} windows/s, the "
               f"transfer stand-in {rate.transfer.windows_per_s:.0f} windows/s")
    return line
  return (f"{part}, {label} handoff: {rate.windows_per_s:.0f} windows/s per core "
          f"({rate.cpu_seconds / rate.windows * batch_size * 1e3:.1f} CPU ms per host batch "
          f"of {batch_size}; {rate.windows_per_wall_s:.0f} windows per wall second)")


def _speed(rate) -> float:
  return (rate.total if isinstance(rate, data_split.SerialRate) else rate).windows_per_s


def _measure_part(part: str, measure, max_slots: int, batch_size: int) -> List:
  """`measure(handoff, seconds)` for each handoff, pinned to one core, in `_ROUNDS` alternating
  rounds (so that other work on the machine weighs on both alike); print and return the rates."""
  cores = os.sched_getaffinity(0)
  handoffs = [(label, make()) for label, make in _handoffs(max_slots)]
  rates = [None] * len(handoffs)
  core = data_split.pin_to_one_core()
  try:
    for _ in range(_ROUNDS):
      for i, (_, handoff) in enumerate(handoffs):
        rate = measure(handoff, _SECONDS.value / _ROUNDS)
        rates[i] = rate if rates[i] is None else rates[i] + rate
  finally:
    data_split.unpin(cores)
    for _, handoff in handoffs:
      handoff.close()
  for (label, _), rate in zip(handoffs, rates):
    print(_rate_line(part, label, rate, batch_size) + f" [core {core}]", flush=True)
  if len(rates) == 2:
    print(f"{part}: the loader's handoff is {_speed(rates[1]) / _speed(rates[0]):.2f}x grain's "
          f"(same run, same core, alternating rounds)")
  return rates


def _measure_split(config, mode: str) -> None:
  """--mode=serial / worker / split: per-core rates of the two parts (data_split)."""
  config.data.num_workers = 0  # this process is the main process and the worker in turn
  loader = loader_lib.make_train_loader(config, process_index=0, process_count=_PROCESS.value)
  print(_describe(config, loader))
  B = loader.batch_size
  serial = worker = None
  if mode in ("serial", "split"):
    batches = [next(loader) for _ in range(max(1, _SERIAL_BATCHES.value))]
    nbytes = data_split.batch_bytes(batches[0]) / B
    place = data_split.local_placer()
    jax.block_until_ready(place(batches[0]))  # start-up of the devices and the transfer path
    platform = jax.devices()[0].platform
    copy = platform == "cpu"
    print(f"serial = the main process per host batch: receive, place on "
          f"{jax.local_device_count()} {platform} device(s), release"
          + (" (+ one copy of the batch, the transfer stand-in: a TPU/GPU runtime reads the "
             "batch's bytes in its own threads, jax's zero-copy placement on CPU does not)"
             if copy else ""))
    serial = _measure_part("serial", lambda h, seconds: data_split.serial_rate(
        batches, place, h, seconds, copy), len(batches), B)
    del batches
    gbps = data_split.memcpy_gb_per_s()
    print(f"bytes per window: {nbytes / 1e6:.2f} MB; one core copies {gbps:.1f} GB/s here "
          f"({gbps * 1e9 / nbytes:.0f} windows/s per copy of the batch)")
  if mode in ("worker", "split"):
    loader.read_batch(0)  # opens the files
    worker = _measure_part("worker", lambda h, seconds: data_split.worker_rate(
        loader.read_batch, h, seconds, first=1), 2, B)
  loader.close()
  if serial and worker:
    target = _TARGET.value
    for label, s, w in zip([h[0] for h in _handoffs(1)], serial, worker):
      need = data_split.cores_needed(target, s, w)
      if need is None:
        print(f"cores for {target:.0f} windows/s with {label} handoff: not reachable (the main "
              f"thread alone would need {target / s.thread.windows_per_s:.2f} cores)")
      else:
        main = target / s.total.windows_per_s
        print(f"cores for {target:.0f} windows/s with {label} handoff: {need:.1f} "
              f"({target:.0f} / {w.windows_per_s:.0f} for the workers + {main:.2f} for the main "
              f"process, {target / s.thread.windows_per_s:.2f} of it in its Python thread"
              + ("; more than one core: only if the runtime reads the batch in threads of its "
                 "own" if main > 1 else "") + ")")


def main(argv):
  del argv
  config = _CONFIG.value
  root = None
  if _FIXTURE.value or _VIDEO.value or _LATENT.value:
    root = tempfile.mkdtemp(prefix="uwm_bench_data_")
  if _VIDEO.value:
    _write_video_fixture(config, _VIDEO.value, _FIXTURE.value or 24,
                         _VIDEO_PATH.value == "converted", root)
  elif _FIXTURE.value:
    _write_fixture(config, _FIXTURE.value, root)
  if _LATENT.value:
    _write_latent_cache(config, root)
  try:
    if _MODE.value == "loader":
      _measure_loader(config)
    else:
      _measure_split(config, _MODE.value)
  finally:
    if root:
      time.sleep(2.0)  # reads the prefetcher started before close() finish on existing files
      shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  cli_config.run(main)
