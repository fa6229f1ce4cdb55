"""Input-pipeline benchmark: windows/s, decoded frames/s per host and peak RSS.

  python -m uwm_jax.bench.data --config=configs/tiny.py --seconds=60
  # A DROID-schema fixture at full 180x320 resolution, written, converted, then loaded:
  python -m uwm_jax.bench.data --config=configs/droid.py --fixture_episodes=40 \\
      --config.batch_size=32 --config.data.num_workers=2 --seconds=120
  # Real data:
  python -m uwm_jax.bench.data --config=configs/droid.py \\
      --config.data.sources.droid.path=/data/uwm/droid_weird

Decoded frames = 2 * T_o * V per window (current + next observations of every view). Peak RSS
is the largest resident memory of this process plus its grain workers, sampled every 0.5 s.
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
    "config's image shape, convert it and load it instead of config.data.sources.")
_PROCESS = flags.DEFINE_integer("process_count", 1, "Simulated host count (this is host 0).")


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


def _write_fixture(config, episodes: int, root: str) -> str:
  proc = multiprocessing.get_context("spawn").Process(
      target=_fixture_job, args=(tuple(config.model.image_shape), episodes, root))
  proc.start()
  proc.join()
  if proc.exitcode:
    raise RuntimeError(f"Writing the fixture failed (exit code {proc.exitcode}).")
  out = os.path.join(root, "uwm")
  config.data.sources = {}
  config.data.sources.droid = source_configs.array_record(out)
  return out


def main(argv):
  del argv
  config = _CONFIG.value
  root = None
  if _FIXTURE.value:
    root = tempfile.mkdtemp(prefix="uwm_bench_data_")
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
      shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  cli_config.run(main)
