"""DROID as published (RLDS/TFDS tfrecord) -> array_record conversion -> grain windows."""

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import droid as droid_config
from uwm_jax import batch as batch_lib
from uwm_jax.data import array_record_format as fmt
from tests import fixtures
from tests.helpers import run_cli
from uwm_jax.data import convert_rlds as convert
from uwm_jax.data import droid_actions, filters, loader, normalization, profiles, rlds_read
from uwm_jax.data import source_configs, sources
from uwm_jax.data.array_record_source import ArrayRecordSource
from uwm_jax.data.windows import WindowReader

IMAGE = (36, 64)  # small frames keep the tests fast; the schema is otherwise DROID's own.
NUM_EPISODES = 7


@pytest.fixture(scope="module")
def droid_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("droid")
  return fixtures.write_droid_fixture(str(root / "tfds"), NUM_EPISODES, image_shape=IMAGE,
                                      num_shards=3)


@pytest.fixture(scope="module")
def raw_episodes(droid_dir):
  """Every episode read through plain tfds (images decoded by tfds)."""
  import tensorflow_datasets as tfds
  b = rlds_read.open_builder(droid_dir)
  ds = b.as_dataset(split="train", shuffle_files=False).map(
      lambda e: {**e, "steps": e["steps"].batch(10_000).get_single_element()})
  return list(tfds.as_numpy(ds))


@pytest.fixture(scope="module")
def converted(droid_dir, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("conv") / "droid")
  assert convert.convert_rlds(droid_dir, out, profiles.droid_profile(), dataset="droid",
                              progress=False)
  return out


def _config(path, **src):
  c = droid_config.get_config()
  c.model.image_shape = IMAGE
  c.batch_size = 4
  c.data.sources.droid = source_configs.array_record(path, **src)
  return c


def test_schema_is_droids(droid_dir):
  paths = rlds_read.feature_paths(rlds_read.open_builder(droid_dir).info.features)
  for key in ("steps/observation/exterior_image_1_left", "steps/observation/wrist_image_left",
              "steps/observation/cartesian_position", "steps/observation/gripper_position",
              "steps/action_dict/cartesian_velocity", "steps/action_dict/gripper_position",
              "steps/language_instruction", "steps/is_first", "steps/is_last",
              "steps/is_terminal", "episode_metadata/recording_folderpath",
              "episode_metadata/file_path"):
    assert key in paths, key
  assert paths["steps/observation/exterior_image_2_left"].shape == IMAGE + (3,)
  assert paths["steps/action_dict/cartesian_velocity"].shape == (6,)


def test_windows_match_the_raw_rlds_episode(converted, raw_episodes, monkeypatch):
  c = _config(converted)
  train = loader.make_train_loader(c, process_index=0, process_count=1)
  src = train.sources[0]
  assert src.num_episodes == NUM_EPISODES
  reader = WindowReader([src], c.model, train.dataset_stats)
  sl = batch_lib.window_slices(c.model.num_obs_frames, c.model.action_len)
  ep, start = 1, 7
  raw = raw_episodes[ep]["steps"]
  assert src.metadata[ep]["file_path"] == raw_episodes[ep]["episode_metadata"]["file_path"].decode()

  decoded = []
  real_decode = fmt.decode_image
  monkeypatch.setattr(fmt, "decode_image", lambda b: decoded.append(1) or real_decode(b))
  sample = reader((0, ep, start))
  # Only current + next frames of the model's 3 views are decoded (not all 19 frames).
  assert len(decoded) == 3 * 2 * c.model.num_obs_frames

  for v, cam in enumerate(c.model.camera_keys):
    frames = raw["observation"][cam][start:start + sl.window]
    # Pillow vs TF JPEG decoders may differ by a few levels.
    np.testing.assert_allclose(sample["obs"][v], frames[sl.obs], atol=12)
    np.testing.assert_allclose(sample["next_obs"][v], frames[sl.next_obs], atol=12)
  raw_act = droid_actions.droid_action_10d(raw["action_dict"]["cartesian_velocity"],
                                           raw["action_dict"]["gripper_position"])
  np.testing.assert_allclose(
      normalization.denormalize(sample["action"], train.dataset_stats["action"]),
      raw_act[start:start + sl.window][sl.action], rtol=1e-5, atol=1e-6)
  batch_lib.validate_batch(next(train), c.model)


def test_decoded_frame_cache_gives_the_same_frames_and_batches_and_decodes_once(converted,
                                                                                monkeypatch):
  # Each step is decoded once, however often and in whatever pieces it is read. (Decodes are
  # counted per source object: other tests' loaders may still be reading in their threads.)
  _, (src,), _ = sources.build_sources(_config(converted, cache_decoded_frames=True))
  _, (reference,), _ = sources.build_sources(_config(converted))
  decoded = {"cached": 0, "plain": 0}

  def counting(name, decode):
    def wrapped(episode, indices):
      decoded[name] += len(indices)
      return decode(episode, indices)
    return wrapped

  monkeypatch.setattr(src, "_decode_frames", counting("cached", src._decode_frames))
  monkeypatch.setattr(reference, "_decode_frames",
                      counting("plain", reference._decode_frames))
  for _ in range(2):
    for ep, length in enumerate(src.episode_lengths):
      for steps in (np.arange(length)[::-2], np.arange(length)):
        np.testing.assert_array_equal(src.frames(ep, steps), reference.frames(ep, steps))
  assert decoded["plain"] == 2 * sum(len(np.arange(n)[::-2]) + n for n in src.episode_lengths)
  assert decoded["cached"] == int(src.episode_lengths.sum())
  # Through the loader (reader threads, prefetch): the same batches, over two epochs.
  plain = loader.make_train_loader(_config(converted), process_index=0, process_count=1)
  cached = loader.make_train_loader(_config(converted, cache_decoded_frames=True),
                                    process_index=0, process_count=1)
  # The loader fills the cache ahead, in a thread (during the train step's compilation).
  cached.cache_fill.join(120)
  assert cached.sources[0]._cache.filled.all()  # pylint: disable=protected-access
  assert plain.cache_fill is None
  epoch = sum(len(t) for t in cached.split.train) // cached.batch_size + 1
  for _ in range(2 * epoch):
    want, got = next(plain), next(cached)
    assert want.keys() == got.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize("latents", [False, True], ids=["frames", "latent_cache"])
def test_worker_processes_hand_over_the_same_batches_in_reused_slots(converted, latents,
                                                                     tmp_path, monkeypatch):
  """Batches from 2 grain workers through reused shared-memory slots (data/batch_slots.py) are
  bit for bit those read in this process, with and without a latent cache; consumed as the
  train loop does (each batch placed on the device, then dropped), every batch comes in a slot
  and a worker's slots are reused; closing the loader leaves no slot behind."""
  import jax
  from benchmarks.data_split import write_random_latent_cache
  from uwm_jax.data import batch_slots
  if not batch_slots.supported():
    pytest.skip("needs /dev/shm (Linux)")
  def config(num_workers):
    c = _config(converted)
    c.batch_size = 8
    c.data.num_workers = num_workers
    if latents:
      c.data.latent_cache_dir = str(tmp_path / "latents")
    return c

  if latents:
    names, srcs, _ = sources.build_sources(config(0))
    write_random_latent_cache(str(tmp_path / "latents"), names, srcs, config(0).model)
  readers = []

  class Recording(batch_slots.SlotReader):
    def __init__(self):
      super().__init__()
      readers.append(self)

  monkeypatch.setattr(batch_slots, "SlotReader", Recording)
  plain = loader.make_train_loader(config(0), process_index=0, process_count=1)
  workers = loader.make_train_loader(config(2), process_index=0, process_count=1)
  n = 20
  try:
    for _ in range(n):
      want, got = next(plain), next(workers)
      assert sorted(got) == sorted(want)
      assert (batch_lib.NEXT_LATENT_MEAN in got) == latents
      for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        assert got[k].tobytes() == want[k].tobytes(), k
      jax.block_until_ready(jax.device_put(got))
      del got
    (reader,) = readers
    assert (reader.slot_batches, reader.other_batches) == (n, 0)
    slots = list(reader._maps)  # pylint: disable=protected-access  # <prefix>_<pid>_<k>
    per_worker = int(config(2).data.prefetch_batches) + loader.SLOTS_BEYOND_PREFETCH
    per_process = collections.Counter(s.rsplit("_", 1)[0] for s in slots)
    assert len(per_process) == 2 and max(per_process.values()) <= per_worker
    assert len(slots) < n, slots  # slots were reused
    prefix = slots[0].rsplit("_", 2)[0]  # <prefix>_<pid>_<k>
  finally:
    workers.close()
  assert not [f for f in os.listdir("/dev/shm") if f.startswith(prefix + "_")]


def test_statistics_equal_numpy_and_are_cached(converted, raw_episodes):
  c = _config(converted)
  c.model.low_dim_dim = 7
  stats = loader.make_train_loader(c, process_index=0, process_count=1).dataset_stats
  acts = np.concatenate([
      droid_actions.droid_action_10d(e["steps"]["action_dict"]["cartesian_velocity"],
                                     e["steps"]["action_dict"]["gripper_position"])
      for e in raw_episodes])
  low = np.concatenate([np.concatenate([e["steps"]["observation"]["cartesian_position"],
                                        e["steps"]["observation"]["gripper_position"]], 1)
                        for e in raw_episodes])
  np.testing.assert_allclose(stats["action"]["min"], acts.min(0), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(stats["action"]["max"], acts.max(0), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(stats["low_dim"]["min"], low.min(0), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(stats["low_dim"]["max"], low.max(0), rtol=1e-6, atol=1e-6)
  cache = os.listdir(os.path.join(converted, "uwm_stats"))
  assert cache
  # A different transform of the data (a filter) gets another key.
  c2 = _config(converted, include=("WEIRD",))
  stats2 = loader.make_train_loader(c2, process_index=0, process_count=1).dataset_stats
  assert len(os.listdir(os.path.join(converted, "uwm_stats"))) == len(cache) + 1
  assert stats2 != stats


def test_load_time_filters_follow_tfds_order(converted, raw_episodes):
  metas = [{k: v.decode() for k, v in e["episode_metadata"].items()} for e in raw_episodes]
  c = _config(converted, include=("WEIRD", "IRIS"), success_only=True, max_episodes=2)
  src = loader.make_train_loader(c, process_index=0, process_count=1).sources[0]
  want = [m["file_path"] for m in metas
          if ("WEIRD" in m["recording_folderpath"] or "IRIS" in m["recording_folderpath"])
          and "/success/" in m["recording_folderpath"]][:2]
  assert [m["file_path"] for m in src.metadata] == want
  c = _config(converted, exclude=("WEIRD",))
  src = loader.make_train_loader(c, process_index=0, process_count=1).sources[0]
  assert all("WEIRD" not in m["recording_folderpath"] for m in src.metadata)
  assert len(src.metadata) == sum("WEIRD" not in m["recording_folderpath"] for m in metas)


def test_conversion_filters_max_episodes_and_resumes_per_shard(droid_dir, raw_episodes,
                                                                tmp_path):
  out = str(tmp_path / "weird")
  filt = filters.EpisodeFilter.from_args(exclude=["WEIRD"])
  prof = profiles.droid_profile()
  # Host 0 of 2 converts shards 0 and 2: not complete yet, the loader says so.
  assert not convert.convert_rlds(droid_dir, out, prof, episode_filter=filt, process_index=0,
                                  process_count=2, progress=False)
  assert sorted(os.listdir(out)) == ["conversion.json", "shard-00000-of-00003",
                                     "shard-00002-of-00003"]
  with pytest.raises(ValueError, match=r"unfinished.*\[1\]"):
    ArrayRecordSource("droid", out, prof.camera_keys, IMAGE, 10)
  stamp = os.path.getmtime(os.path.join(out, "shard-00000-of-00003", fmt.FRAMES))
  # A killed writer's temporary folder is deleted by the rerun; a live writer's is kept.
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  os.makedirs(os.path.join(out, f"shard-00001-of-00003.tmp-{dead.pid}"))
  live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    os.makedirs(os.path.join(out, f"shard-00001-of-00003.tmp-{live.pid}"))
    assert convert.convert_rlds(droid_dir, out, prof, episode_filter=filt, process_index=1,
                                process_count=2, progress=False)
    assert [d for d in os.listdir(out) if ".tmp-" in d] == [
        f"shard-00001-of-00003.tmp-{live.pid}"]
  finally:
    live.kill()
    live.wait()
  assert convert.convert_rlds(droid_dir, out, prof, episode_filter=filt, progress=False)
  assert os.path.getmtime(os.path.join(out, "shard-00000-of-00003", fmt.FRAMES)) == stamp
  src = ArrayRecordSource("droid", out, prof.camera_keys, IMAGE, 10)
  want = [e["episode_metadata"]["file_path"].decode() for e in raw_episodes
          if b"WEIRD" not in e["episode_metadata"]["recording_folderpath"]]
  assert [m["file_path"] for m in src.metadata] == want
  # Other parameters into the same folder are refused.
  with pytest.raises(ValueError, match="other parameters"):
    convert.convert_rlds(droid_dir, out, prof, progress=False)

  # --max_episodes: the first N matches in TFDS order; later shards are not converted.
  out2 = str(tmp_path / "first2")
  out = run_cli("uwm_jax.data.convert_rlds", "droid", f"--builder_dir={droid_dir}",
                f"--out={out2}", "--max_episodes=2")  # the command line, as a user runs it
  assert out.returncode == 0, out.stderr[-3000:]
  meta = json.load(open(os.path.join(out2, fmt.DATASET_JSON)))
  assert meta["num_episodes"] == 2 and len(meta["shards"]) == 1
  assert not os.path.exists(os.path.join(out2, "shard-00002-of-00003"))
  src = ArrayRecordSource("droid", out2, prof.camera_keys, IMAGE, 10)
  assert [m["file_path"] for m in src.metadata] == [
      e["episode_metadata"]["file_path"].decode() for e in raw_episodes[:2]]


def test_action_free_conversion_gives_video_samples(droid_dir, tmp_path):
  out = str(tmp_path / "video")
  run = run_cli("uwm_jax.data.convert_rlds", "droid", f"--builder_dir={droid_dir}",
                f"--out={out}", "--action_free")
  assert run.returncode == 0, run.stderr[-3000:]
  assert not os.path.exists(os.path.join(out, "shard-00000-of-00003", fmt.ACTIONS))
  c = _config(out)
  with pytest.raises(ValueError, match="No source has robot episodes"):
    loader.make_train_loader(c, process_index=0, process_count=1)
  c.data.normalize = False
  b = next(loader.make_train_loader(c, process_index=0, process_count=1))
  assert not b["action_mask"].any() and not b["action"].any()
  assert len(loader.make_eval_loader(c, process_index=0, process_count=1)) == 0


def test_bad_inputs_name_what_is_wrong(droid_dir, tmp_path):
  data_dir = os.path.dirname(os.path.dirname(droid_dir))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    rlds_read.builder_dir(str(tmp_path / "nowhere"), "droid")
  with pytest.raises(ValueError, match="Unknown builder 'droid_101'.*'droid'"):
    rlds_read.builder_dir(data_dir, "droid_101")
  with pytest.raises(ValueError, match="'droid'.*schema has no.*steps/observation/side_cam"):
    convert.convert_rlds(droid_dir, str(tmp_path / "x"),
                         profiles.rlds_profile(["side_cam"], "action"), dataset="droid")
  # The config's folder is missing: the field to set and the command that writes the data.
  with pytest.raises(FileNotFoundError, match=r"'droid': converted data folder .*missing' "
                     r"\(config\.data\.sources\.droid\.path\) does not exist; give "
                     r"--config\.data\.sources\.droid\.path=DIR, a folder written by "
                     r"`python -m uwm_jax\.data\.convert_rlds .*--out=DIR"):
    loader.make_train_loader(_config(str(tmp_path / "missing")), process_index=0,
                             process_count=1)
  # NaN in an episode's actions: dataset, episode and field are named.
  bad = fixtures.write_droid_fixture(str(tmp_path / "tfds"), 3, builder="droid_100",
                                     image_shape=(8, 8), lengths=(20,), nan_episode=1,
                                     num_shards=1)
  with pytest.raises(ValueError, match=r"'droid_100', episode 1 .*trajectory.h5.*"
                                       r"cartesian_velocity.*NaN"):
    convert.convert_rlds(bad, str(tmp_path / "bad"), profiles.droid_profile(),
                         dataset="droid_100")
  assert not [d for d in os.listdir(tmp_path / "bad") if d.startswith("shard")]


def test_camera_and_shape_mismatch_errors(converted):
  c = _config(converted)
  c.model.camera_keys = ("exterior_image_1_left", "top_cam")
  with pytest.raises(ValueError, match="'droid'.*no camera.*top_cam"):
    loader.make_train_loader(c, process_index=0, process_count=1)
  c = _config(converted)
  c.model.image_shape = (180, 320)
  with pytest.raises(ValueError, match="'droid'.*stores.*image_shape"):
    loader.make_train_loader(c, process_index=0, process_count=1)
  c = _config(converted)
  c.model.action_dim = 7
  with pytest.raises(ValueError, match="'droid'.*10 dimensions.*action_dim is 7"):
    loader.make_train_loader(c, process_index=0, process_count=1)


# ------------------------------------------------------------------ tfds.load order, robustness
ORDER_SHARDS = 17  # > tfds' 16 files read at once, so a file's slot is handed to the next one


@pytest.fixture(scope="module")
def shuffled_droid_dir(tmp_path_factory):
  """A dataset written the usual way (tfds spreads episodes over 17 files by key hash;
  `tfds.load` interleaves the files), ~20 episodes per file (> the 16-episode blocks)."""
  root = tmp_path_factory.mktemp("droid_shuffled")
  return fixtures.write_droid_fixture(str(root / "tfds"), 20 * ORDER_SHARDS, image_shape=(8, 8),
                                      lengths=(2,), num_shards=ORDER_SHARDS,
                                      disable_shuffling=False)


def _file_paths(episodes):
  return [rlds_read.as_text(e["episode_metadata"]["file_path"]) for e in episodes]


def test_interleave_order_is_tf_datas():
  import tensorflow as tf
  rng = np.random.default_rng(0)
  for _ in range(5):
    lengths = [int(n) for n in rng.integers(0, 30, int(rng.integers(1, 25)))]
    cycle, block = int(rng.integers(1, 18)), int(rng.integers(1, 18))
    table = tf.constant(lengths, tf.int64)
    ds = tf.data.Dataset.range(len(lengths)).interleave(
        lambda f: tf.data.Dataset.range(table[f]).map(lambda i: (f, i)), cycle_length=cycle,
        block_length=block, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    assert [(int(f), int(i)) for f, i in ds.as_numpy_iterator()] == \
        rlds_read.interleave_order(lengths, cycle, block), (lengths, cycle, block)


def test_max_episodes_takes_the_episodes_tfds_load_yields_first(shuffled_droid_dir, tmp_path):
  import tensorflow_datasets as tfds
  data_dir = os.path.dirname(os.path.dirname(shuffled_droid_dir))
  builder = rlds_read.open_builder(shuffled_droid_dir)
  assert not builder.info.disable_shuffling
  loaded = _file_paths(tfds.as_numpy(tfds.load("droid", data_dir=data_dir, split="train")))
  per_file = [_file_paths(rlds_read.iter_shard_episodes(builder, "train", k))
              for k in range(ORDER_SHARDS)]
  order = rlds_read.tfds_load_order(rlds_read.shard_lengths(builder, "train"), False)
  assert [per_file[f][i] for f, i in order] == loaded
  assert loaded != [p for paths in per_file for p in paths]  # not file after file
  # The reference: the first 12 WEIRD episodes tfds.load yields, in that order.
  out = str(tmp_path / "weird12")
  run = run_cli("uwm_jax.data.convert_rlds", "droid", f"--builder_dir={shuffled_droid_dir}",
                f"--out={out}", "--include=WEIRD", "--max_episodes=12")
  assert run.returncode == 0, run.stderr[-3000:]
  src = ArrayRecordSource("droid", out, profiles.droid_profile().camera_keys, (8, 8), 10)
  assert [m["file_path"] for m in src.metadata] == [p for p in loaded if "/WEIRD/" in p][:12]
  converted = [d for d in os.listdir(out) if d.startswith("shard-")]
  assert 0 < len(converted) < ORDER_SHARDS  # files the selection never reaches are skipped


def test_corrupt_input_file_is_named(droid_dir, tmp_path):
  import shutil
  copy = str(tmp_path / "droid" / "1.0.0")
  shutil.copytree(droid_dir, copy)
  victim = sorted(f for f in os.listdir(copy) if ".tfrecord-" in f)[1]
  path = os.path.join(copy, victim)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(ValueError) as err:
    convert.convert_rlds(copy, str(tmp_path / "out"), profiles.droid_profile(),
                         dataset="droid", progress=False)
  msg = str(err.value)
  assert "input shard 1 of 3" in msg and victim in msg and len(msg.splitlines()) == 1, msg


def _children(pid):
  try:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
      return [int(p) for p in f.read().split()]
  except FileNotFoundError:
    return []


def _alive(pid):
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().split(")")[-1].split()[0] != "Z"
  except FileNotFoundError:
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_log_their_shards_and_die_with_the_parent(droid_dir, tmp_path):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=repo, TF_CPP_MIN_LOG_LEVEL="2")
  cmd = [sys.executable, "-m", "uwm_jax.data.convert_rlds", "droid",
         f"--builder_dir={droid_dir}", "--num_processes=2"]
  # A whole run: every shard's line from the workers, then the summary line.
  done = subprocess.run(cmd + [f"--out={tmp_path / 'all'}"], env=env, cwd=repo,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  for k in range(3):
    assert f"droid shard {k}/3" in done.stderr, done.stderr[-3000:]
  # ... and no library INFO line (TFDS: "Load dataset info from ...", one per shard and worker).
  info = re.findall(r"INFO \[worker \d+\] [^\r\n]*", done.stderr)  # (after a progress bar)
  assert len(info) == 3 and all(" droid shard " in line for line in info), info
  last = done.stdout.strip().splitlines()[-1]
  assert (f"episodes read {NUM_EPISODES}, kept {NUM_EPISODES}, skipped 0 (filters) + 0 (empty)"
          in last and "dataset.json: 7 episodes" in last), last
  # SIGKILL of the parent takes its workers with it.
  parent = subprocess.Popen(cmd + [f"--out={tmp_path / 'killed'}"], env=env, cwd=repo,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while len(_children(parent.pid)) < 2 and time.time() < deadline and parent.poll() is None:
    time.sleep(0.05)
  workers = _children(parent.pid)
  assert len(workers) >= 2, "the workers never started"
  os.kill(parent.pid, signal.SIGKILL)
  parent.wait()
  deadline = time.time() + 30
  while any(_alive(w) for w in workers) and time.time() < deadline:
    time.sleep(0.1)
  survivors = [w for w in workers if _alive(w)]
  for w in survivors:
    os.kill(w, signal.SIGKILL)
  assert not survivors, "workers outlived the killed parent"


def test_action_free_samples_keep_the_sources_low_dim_observations(converted, caplog):
  # The same episodes read twice: with actions, and as action-free video. The video samples
  # carry no actions but the same (normalised) low-dim observations, which are observations.
  c = _config(converted)
  c.model.low_dim_dim = 7
  c.data.sources.video = source_configs.array_record(converted, action_free=True)
  train = loader.make_train_loader(c, process_index=0, process_count=1)
  names = list(train.source_names)
  robot, video = names.index("droid"), names.index("video")
  reader = WindowReader(train.sources, c.model, train.dataset_stats)
  ep, start = 2, 4
  labelled, free = reader((robot, ep, start)), reader((video, ep, start))
  assert labelled[batch_lib.ACTION_MASK] and not free[batch_lib.ACTION_MASK]
  assert not free[batch_lib.ACTION].any()
  assert free[batch_lib.LOW_DIM].shape == (c.model.num_obs_frames, 7)
  assert np.abs(free[batch_lib.LOW_DIM]).sum() > 0
  np.testing.assert_array_equal(free[batch_lib.LOW_DIM], labelled[batch_lib.LOW_DIM])
  # Another robot's low-dim width: read as video without low-dim (zeros), with one warning.
  with caplog.at_level("WARNING"):
    other = ArrayRecordSource("video", converted, c.model.camera_keys, IMAGE, 10, low_dim_dim=3,
                              action_free=True)
  assert other.low_dim(0) is None
  assert "do not fit model.low_dim_dim = 3" in caplog.text
