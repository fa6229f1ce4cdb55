"""Input-pipeline benchmark: windows/s, decoded frames/s per host and peak RSS.

  python -m uwm_jax.bench.data --config=configs/tiny.py --seconds=60
  # A DROID-schema fixture at full 180x320 resolution, written, converted, then loaded:
  python -m uwm_jax.bench.data --config=configs/droid.py --fixture_episodes=40 \\
      --config.batch_size=32 --config.data.num_workers=2 --seconds=120
  # Real data:
  python -m uwm_jax.bench.data --config=configs/droid.py \\
      --config.data.sources.droid.path=/data/uwm/droid_weird
  # Action-free video clips (web-video-like 256x340 mp4 or webm), decoded at load time or
  # converted once to array_record (python -m uwm_jax.data.convert_video) and read from it:
  python -m uwm_jax.bench.data --config=configs/droid.py --config.batch_size=32 \\
      --video_fixture=webm --video_path=converted --fixture_episodes=24 --seconds=60

With --video_fixture the loader reads only the clips (one action-free source; identity action
statistics; a clip frame is decoded once and placed in every view). Decoded frames = 2 * T_o * V
per window (current + next observations of every view). Peak RSS is the largest resident
memory of this process plus its grain workers, sampled every 0.5 s.
"""

import multiprocessing
import os
import resource
import shutil
import tempfile
import threading
import time

from absl import flags

from uwm_jax import cli_config
from uwm_jax.data import loader as loader_lib
from uwm_jax.data import source_configs
from uwm_jax.dims import model_dims

_CONFIG = cli_config.define_config_flag("Config file (and overrides).")
_SECONDS = flags.DEFINE_float("seconds", 60.0, "How long to load after the first batch.")
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
  from uwm_jax.bench.droid_sample import write_droid_fixture
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
  from uwm_jax.bench.video_sample import write_video_clip
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


def main(argv):
  del argv
  config = _CONFIG.value
  root = None
  if _FIXTURE.value or _VIDEO.value:
    root = tempfile.mkdtemp(prefix="uwm_bench_data_")
  if _VIDEO.value:
    _write_video_fixture(config, _VIDEO.value, _FIXTURE.value or 24,
                         _VIDEO_PATH.value == "converted", root)
  elif _FIXTURE.value:
    _write_fixture(config, _FIXTURE.value, root)
  try:
    dims = model_dims(config.model)
    frames_per_window = 2 * dims.num_obs_frames * dims.num_views
    with PeakRss() as rss:
      t0 = time.time()
      loader = loader_lib.make_train_loader(config, process_index=0,
                                            process_count=_PROCESS.value)
      for _ in range(_WARMUP.value):
        next(loader)
      startup = time.time() - t0
      n, t1 = 0, time.time()
      while time.time() - t1 < _SECONDS.value:
        next(loader)
        n += 1
      elapsed = time.time() - t1
      loader.close()
    windows = n * loader.batch_size
    print(f"sources {loader.source_names} windows {loader.num_windows}; host batch "
          f"{loader.batch_size}; workers {config.data.num_workers}; threads "
          f"{config.data.read_threads}; image {tuple(config.model.image_shape)} x "
          f"{dims.num_views} views; window {dims.window} frames")
    print(f"start-up (build + {_WARMUP.value} batches): {startup:.1f} s")
    print(f"windows/s per host: {windows / elapsed:.1f}  ({n} batches in {elapsed:.1f} s)")
    print(f"decoded frames/s per host: {windows * frames_per_window / elapsed:.1f}")
    print(f"peak RSS (process + workers): {rss.peak / 2**20:.0f} MiB")
  finally:
    if root:
      time.sleep(2.0)  # reads the prefetcher started before close() finish on existing files
      shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  cli_config.run(main)
