"""LeRobot datasets against the REAL `lerobot` package (0.4.4, in .venv-lerobot: `.ci/run` builds
it with scripts/install_lerobot_venv.sh): datasets written by LeRobot's own writer
(`LeRobotDataset.create`, `add_frame`, `save_episode`, `finalize`; tests/lerobot_dataset_script.py)
are converted by `uwm_jax.data.convert_lerobot`, and the windows the training source reads must
equal what LeRobot's own `LeRobotDataset.__getitem__` returns for the same steps. v2.1 is the
same data in the published per-episode layout (H.264), read by LeRobot through its own
v2.1 -> v3.0 converter; a third dataset stores its cameras as images (dtype "image"). Then bad input, statistics and the split, and (slow) finetuning from a
pretrained checkpoint and serving it through `python -m uwm_jax.serve` with the dataset's keys.
"""

import json
import os
import shutil
import subprocess
import time
import types

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs import lerobot_finetune
from tests.helpers import FAST_COMPILE, run_cli, start_cli
from uwm_jax import batch as batch_lib
from uwm_jax import policies
from uwm_jax.data import array_record_format as fmt
from uwm_jax.data import convert_lerobot, episodes, lerobot_read, normalization, stats
from uwm_jax.data.sources import build_source, resolved_config
from uwm_jax.data.windows import WindowReader
from uwm_jax.model.uwm import UnifiedWorldModel
from uwm_jax.policies import transforms
from uwm_jax.runs import checkpoint
from uwm_jax.serving import client as client_lib
from uwm_jax.training import loop, resume

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PYTHON = os.path.join(ROOT, ".venv-lerobot", "bin", "python")
SCRIPT = os.path.join(ROOT, "tests", "lerobot_dataset_script.py")
FRONT, WRIST = "observation.images.front", "observation.images.wrist"
STATE, ACTION = "observation.state", "action"
# Two cameras of different sizes, a 7-d state and a 5-d action (narrower than the tiny
# variant's 8-d inputs: the padding is exercised), three episodes of uneven length.
SPEC = {"fps": 10, "cameras": {FRONT: [48, 64], WRIST: [32, 40]}, "state_dim": 7,
        "action_dim": 5, "lengths": [13, 9, 17], "seed": 0}
MODEL_SHAPE = (32, 32)  # the tiny variant's model.image_shape


@pytest.fixture(scope="module")
def lerobot_data(tmp_path_factory):
  """The v3.0 dataset LeRobot wrote, its v2.1 layout, and LeRobot's own items of both."""
  if not os.path.exists(VENV_PYTHON):
    pytest.skip("no LeRobot venv .venv-lerobot (scripts/install_lerobot_venv.sh; .ci/run "
                "builds it)")
  d = tmp_path_factory.mktemp("lerobot")
  out = subprocess.run([VENV_PYTHON, SCRIPT, "fixture", str(d), json.dumps(SPEC)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env=dict(os.environ, HF_HUB_OFFLINE="1"))
  assert out.returncode == 0, out.stderr[-3000:]
  written = json.loads(out.stdout.strip().splitlines()[-1])
  items = {v: dict(np.load(d / f"items_{v}.npz")) for v in ("v30", "v21", "images")}
  return types.SimpleNamespace(root=d, written=written, items=items)


@pytest.fixture(scope="module")
def converted(lerobot_data, tmp_path_factory):
  """The v3.0 dataset converted as training reads it: JPEG at the model's image shape."""
  out = tmp_path_factory.mktemp("converted") / "so_test"
  assert _convert(lerobot_data.root / "v30", out, image_shape=MODEL_SHAPE)
  return out


def _convert(src, out, **kw):
  return convert_lerobot.convert_lerobot(str(src), str(out), progress=False, **kw)


def _config(path, cameras=(), variant="tiny"):
  c = lerobot_finetune.get_config(variant)
  c.data.sources.lerobot.path = str(path)
  c.data.sources.lerobot.cameras = tuple(cameras)
  return c


def _identity_stats(model_cfg):
  return {normalization.ACTION: normalization.identity_entry(model_cfg.action_dim),
          normalization.LOW_DIM: normalization.identity_entry(model_cfg.low_dim_dim)}


def _lerobot_rows(items, episode_index):
  """Positions of one episode's steps in LeRobot's items, in frame order."""
  rows = np.flatnonzero(items["episode_index"] == episode_index)
  return rows[np.argsort(items["frame_index"][rows])]


@pytest.mark.parametrize("version", ["v30", "v21", "images"])
def test_windows_equal_lerobot_items(lerobot_data, tmp_path, version):
  """Every window of every episode, both cameras: frames as LeRobot decodes them (stored as
  PNG, so only decoding can differ), state and action exactly, zero-padded to the model.
  v30: AV1 videos holding every episode; v21: one H.264 video per episode; images: cameras of
  dtype "image" (PNG in the parquet rows)."""
  out = tmp_path / "png"
  assert _convert(lerobot_data.root / version, out, image_format="png", episodes_per_shard=2)
  items = lerobot_data.items[version]
  for camera, shape in SPEC["cameras"].items():
    c = _config(out, (camera, camera))
    c.model.image_shape = tuple(shape)
    src = build_source("lerobot", c.data.sources.lerobot, c.model)
    assert src.num_episodes == len(SPEC["lengths"])
    reader = WindowReader([src], c.model, _identity_stats(c.model))
    sl = reader.slices
    for ep in range(src.num_episodes):
      rows = _lerobot_rows(items, int(src.metadata[ep]["episode_index"]))
      assert len(rows) == src.episode_lengths[ep]
      for start in range(int(src.episode_lengths[ep]) - sl.window + 1):
        sample = reader((0, ep, start))
        for key, part in ((batch_lib.OBS, sl.obs), (batch_lib.NEXT_OBS, sl.next_obs)):
          want = items[camera][rows[start + part.start:start + part.stop]]
          for view in range(2):
            diff = np.abs(sample[key][view].astype(int) - want.astype(int))
            assert diff.max() <= 2 and diff.mean() < 0.05, (camera, ep, start, diff.max())
        act = sample[batch_lib.ACTION]
        np.testing.assert_array_equal(
            act[:, :5], items[ACTION][rows[start + sl.action.start:start + sl.action.stop]])
        assert not act[:, 5:].any()
        low = sample[batch_lib.LOW_DIM]
        np.testing.assert_array_equal(
            low[:, :7], items[STATE][rows[start + sl.obs.start:start + sl.obs.stop]])
        assert not low[:, 7:].any()


def test_training_frames_are_lerobots_resized_and_jpeg_encoded(lerobot_data, converted):
  """What training reads (the default: JPEG at the model's shape) is LeRobot's frame, resized
  as the policy server resizes request images, through the JPEG encoder."""
  items = lerobot_data.items["v30"]
  c = _config(converted)
  src = build_source("lerobot", c.data.sources.lerobot, c.model)
  assert src.camera_keys == (FRONT, WRIST)  # the converted cameras, in meta/info.json order
  for ep in range(src.num_episodes):
    rows = _lerobot_rows(items, int(src.metadata[ep]["episode_index"]))
    frames = src.frames(ep, np.arange(len(rows)))
    for view, camera in enumerate((FRONT, WRIST)):
      resized = [fmt.resize_image(im, MODEL_SHAPE) for im in items[camera][rows]]
      want = np.stack([fmt.decode_image(fmt.encode_image(im, "jpeg")) for im in resized])
      diff = np.abs(frames[view].astype(int) - want.astype(int))
      assert diff.max() <= 4 and diff.mean() < 0.1, (camera, ep, diff.max())
      # JPEG's own error on these hard-edged test images stays small on average.
      assert np.abs(frames[view].astype(int) - np.stack(resized)).mean() < 4


def test_statistics_and_split_like_every_source(lerobot_data, converted):
  c = _config(converted)
  src = build_source("lerobot", c.data.sources.lerobot, c.model)
  got = stats.dataset_stats(c.data, c.model, [src])
  actions = np.concatenate([np.asarray(a, np.float32) for a in lerobot_data.written["action"]])
  state = np.concatenate([np.asarray(s, np.float32) for s in lerobot_data.written["state"]])
  for key, values in ((normalization.ACTION, actions), (normalization.LOW_DIM, state)):
    width = values.shape[1]
    np.testing.assert_array_equal(np.float32(got[key]["min"][:width]), values.min(0))
    np.testing.assert_array_equal(np.float32(got[key]["max"][:width]), values.max(0))
    assert not any(got[key]["min"][width:]) and not any(got[key]["max"][width:])
  assert os.listdir(converted / stats.CACHE_DIR)  # cached beside the data, as for DROID
  train, val = episodes.split_episodes(src.action_free, c.data.val_fraction, c.data.split_seed)
  assert len(val) == 1 and len(train) == 2  # 5% of 3 robot episodes: one held out


def test_conversion_splits_over_processes_and_resumes(lerobot_data, tmp_path):
  src = lerobot_data.root / "v30"
  whole = tmp_path / "whole"
  assert _convert(src, whole, episodes_per_shard=1)
  parts = tmp_path / "parts"
  assert not _convert(src, parts, episodes_per_shard=1, process_index=0, process_count=2)
  assert _convert(src, parts, episodes_per_shard=1, process_index=1, process_count=2)
  meta = {p: fmt.read_json(str(p / fmt.DATASET_JSON)) for p in (whole, parts)}
  assert meta[whole]["num_steps"] == meta[parts]["num_steps"] == sum(SPEC["lengths"])
  assert meta[whole]["shards"] == meta[parts]["shards"]
  mtime = os.path.getmtime(parts / "shard-00000-of-00003" / fmt.EPISODES)
  assert _convert(src, parts, episodes_per_shard=1)  # a rerun finds every shard done
  assert os.path.getmtime(parts / "shard-00000-of-00003" / fmt.EPISODES) == mtime
  with pytest.raises(ValueError, match="holds a conversion with other parameters"):
    _convert(src, parts, episodes_per_shard=2)


def _broken_copy(lerobot_data, tmp_path):
  copy = tmp_path / "broken"
  shutil.copytree(lerobot_data.root / "v30", copy)
  return copy


def _assert_refused(src, out, match, **kw):
  with pytest.raises(lerobot_read.LeRobotFormatError, match=match):
    _convert(src, out, **kw)
  assert not os.path.exists(out / fmt.DATASET_JSON)
  assert not [n for n in os.listdir(out) if ".tmp-" in n]  # the partial shard is removed


def test_bad_input_names_the_file_and_field(lerobot_data, tmp_path):
  src = _broken_copy(lerobot_data, tmp_path)
  data = src / "data" / "chunk-000" / "file-000.parquet"
  video = src / "videos" / FRONT / "chunk-000" / "file-000.mp4"
  with pytest.raises(lerobot_read.LeRobotFormatError,
                     match=r"meta/info.json has no feature 'observation.images.top' \(named as "
                           r"a camera\); its features are \["):
    _convert(src, tmp_path / "out0", cameras=("observation.images.top",))
  table = pq.read_table(data)
  action = np.asarray(table.column(ACTION).to_pylist(), np.float32)
  action[13 + 2, 4] = np.nan  # episode 1 starts at row 13
  column = pa.array(list(action), type=table.schema.field(ACTION).type)
  pq.write_table(table.set_column(table.schema.get_field_index(ACTION), ACTION, column), data)
  _assert_refused(src, tmp_path / "out1",
                  r"file-000.parquet, episode 1: field 'action' holds NaN/inf \(first at frame 2\)")
  data.write_bytes(data.read_bytes()[:len(data.read_bytes()) // 2])
  _assert_refused(src, tmp_path / "out2", r"file-000.parquet is unreadable \(truncated or "
                                          r"corrupt\?\)")
  shutil.copy(lerobot_data.root / "v30" / "data" / "chunk-000" / "file-000.parquet", data)
  os.remove(video)
  _assert_refused(src, tmp_path / "out3",
                  f"video .*{FRONT}/chunk-000/file-000.mp4 of camera '{FRONT}' does not exist")


def test_command_line_errors_are_one_line(lerobot_data, tmp_path):
  old = tmp_path / "old"
  (old / "meta").mkdir(parents=True)
  info = json.loads((lerobot_data.root / "v30" / "meta" / "info.json").read_text())
  (old / "meta" / "info.json").write_text(json.dumps(dict(info, codebase_version="v2.0")))
  out = run_cli("uwm_jax.data.convert_lerobot", f"--src={old}", f"--out={tmp_path / 'o'}",
                timeout=300)
  assert out.returncode == 2, out.stderr
  assert out.stderr.strip().splitlines() == [
      f"error: {old}/meta/info.json: codebase_version 'v2.0' is not supported (supported: "
      f"v2.1, v3.0); convert the dataset with a recent `lerobot` first."]
  good = run_cli("uwm_jax.data.convert_lerobot", f"--src={lerobot_data.root / 'v30'}",
                 f"--out={tmp_path / 'ok'}", "--image_shape=32,32", timeout=300)
  assert good.returncode == 0, good.stderr[-2000:]
  assert ("episodes read 3, kept 3, skipped 0 (empty); steps written 39; dataset.json: 3 "
          "episodes, 39 steps.") in good.stdout


def test_mapping_errors_name_the_override(converted):
  c = _config(converted, (FRONT,))
  with pytest.raises(ValueError, match=r"1 cameras \['observation.images.front'\] for the "
                                       r"model's 2 views .*sources.lerobot.cameras="):
    build_source("lerobot", c.data.sources.lerobot, c.model)
  c = _config(converted, (FRONT, "observation.images.top"))
  with pytest.raises(ValueError, match=r"no camera \['observation.images.top'\] "
                                       r"\(--config.data.sources.lerobot.cameras\)"):
    build_source("lerobot", c.data.sources.lerobot, c.model)
  c = _config(converted)
  c.model.action_dim = 4
  with pytest.raises(ValueError, match="the action 'action' has 5 numbers, more than "
                                       "model.action_dim = 4"):
    build_source("lerobot", c.data.sources.lerobot, c.model)
  c = _config(converted)
  c.model.image_shape = (48, 64)
  with pytest.raises(ValueError, match=r"stores \(32, 32\) images, model.image_shape is "
                                       r"\(48, 64\); convert with --image_shape=48,64"):
    build_source("lerobot", c.data.sources.lerobot, c.model)
  resolved = resolved_config(_config(converted)).data.sources.lerobot
  assert resolved.cameras == (FRONT, WRIST) and resolved.state == (STATE,)
  assert resolved.state_widths == (7,) and resolved.action_width == 5


def test_training_loader_reads_batches_and_saves_the_resolved_mapping(converted, tmp_path):
  """The config training saves in its checkpoints (the loader's) names the dataset's keys."""
  c = _config(converted)
  loader, loader_config = resume.make_run_loader(c, None, str(tmp_path))
  try:
    batch = next(loader)
  finally:
    loader.close()
  entry = loader_config.data.sources.lerobot
  assert entry.cameras == (FRONT, WRIST) and entry.state == (STATE,)
  assert entry.state_widths == (7,) and entry.action_width == 5 and entry.action == ACTION
  assert c.data.sources.lerobot.cameras == ()  # the caller's config is left as given
  assert batch[batch_lib.OBS].shape == (c.batch_size, 2, 2) + MODEL_SHAPE + (3,)
  assert batch[batch_lib.ACTION].shape == (c.batch_size, c.model.action_len, 8)
  assert not batch[batch_lib.ACTION][..., 5:].any()  # padded dimensions normalise to 0
  assert np.abs(batch[batch_lib.ACTION]).max() <= 1.0


def test_robot_module_takes_the_dataset_keys_from_the_config(converted):
  """--robot=lerobot: request keys, state padding and the action slice come from the resolved
  source entry a checkpoint's config carries, nothing is hard-coded."""
  config = resolved_config(_config(converted))
  assert policies.robot_for_config(config) == "lerobot"
  lo, hi = -np.arange(1, 9, dtype=np.float32), np.arange(1, 9, dtype=np.float32)
  st = {"action": normalization.minmax_entry(lo, hi),
        "low_dim": normalization.minmax_entry(lo[:7].tolist() + [0], hi[:7].tolist() + [0])}
  t = policies.make_transforms("lerobot", config, st)
  rng = np.random.default_rng(0)
  state = rng.normal(size=7)
  frame = t.inputs({FRONT: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
                    WRIST: rng.integers(0, 256, (20, 20, 3), dtype=np.uint8), STATE: state})
  assert frame.images.shape == (2,) + MODEL_SHAPE + (3,)
  np.testing.assert_allclose(frame.low_dim, list(state / hi[:7]) + [0.0], rtol=1e-6)
  chunk = np.full((4, 8), 0.5, np.float32)
  np.testing.assert_allclose(t.outputs(chunk), np.tile(0.5 * hi[:5], (4, 1)))
  np.testing.assert_allclose(t.encode_actions(t.outputs(chunk)), np.pad(chunk[:, :5],
                                                                        ((0, 0), (0, 3))))
  with pytest.raises(transforms.InvalidObservation, match=f"missing key '{WRIST}'"):
    t.inputs({FRONT: np.zeros((8, 8, 3), np.uint8), STATE: state})
  with pytest.raises(transforms.InvalidObservation, match=f"'{STATE}' must hold 7 numbers"):
    t.inputs({FRONT: np.zeros((8, 8, 3), np.uint8), WRIST: np.zeros((8, 8, 3), np.uint8),
              STATE: state[:5]})
  with pytest.raises(ValueError, match="does not record the dataset's keys"):
    policies.make_transforms("lerobot", _config(converted), st)  # never trained: unresolved


def _wait_ready(proc, timeout: float = 300.0) -> int:
  """The port of a `python -m uwm_jax.serve --port=0` process, from its `ready:` line."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    line = proc.stdout.readline()
    if not line:
      break
    if line.startswith("ready: ws://"):
      return int(line.split()[1].rsplit(":", 1)[1])
  proc.kill()
  raise AssertionError(f"server not ready: {proc.stderr.read()[-3000:]}")


@pytest.mark.slow
def test_finetune_from_pretrained_and_serve_with_dataset_keys(lerobot_data, converted,
                                                              tmp_path):
  """A tiny 'pretrained' checkpoint, 4 finetuning steps on the converted LeRobot data, then the
  server takes the dataset's own keys and answers 5-d actions in the dataset's range. The DP
  variant: the same data and serving path, one sampling mode to compile instead of five."""
  c = _config(converted, variant="tiny,dp")
  c.train.compiler_options = dict(FAST_COMPILE)
  c.num_steps, c.batch_size = 4, 8
  c.train.save_every, c.train.eval_every, c.train.progress_bar = 4, 0, False
  c.train.eval_at_end = False
  pretrained = str(tmp_path / "pretrained" / "checkpoints")
  params, frozen = UnifiedWorldModel(c.model).init(jax.random.PRNGKey(0))
  checkpoint.save_params_checkpoint(pretrained, params=params, frozen=frozen, config=c,
                                    dataset_stats=_identity_stats(c.model), step=100)
  c.init_from = pretrained
  workdir = str(tmp_path / "finetune")
  result = loop.train(c, workdir)
  assert result.step == 4 and np.isfinite(result.last_train_metrics["loss"])
  actions = np.concatenate([np.asarray(a, np.float32) for a in lerobot_data.written["action"]])
  np.testing.assert_allclose(result.dataset_stats["action"]["max"][:5], actions.max(0),
                             rtol=1e-6)  # this dataset's statistics, not the pretrained run's
  saved = checkpoint.load_params_checkpoint(checkpoint.checkpoint_dir(workdir))[2]
  assert saved.data.sources.lerobot.cameras == (FRONT, WRIST)
  assert saved.data.sources.lerobot.action_width == 5

  proc = start_cli("uwm_jax.serve", f"--checkpoint_dir={checkpoint.checkpoint_dir(workdir)}",
                   "--robot=lerobot", "--port=0", "--max_batch=1")
  try:
    port = _wait_ready(proc)
    client = client_lib.PolicyClient(f"127.0.0.1:{port}", timeout=120)
    meta = client.metadata
    assert meta["robot"] == "lerobot" and meta["action_dim"] == 5
    assert meta["request_camera_keys"] == {"agentview_rgb": [FRONT], "eye_in_hand_rgb": [WRIST]}
    assert meta["state_keys"] == {STATE: [STATE]}
    rng = np.random.default_rng(0)
    obs = {FRONT: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
           WRIST: rng.integers(0, 256, (32, 40, 3), dtype=np.uint8),
           STATE: rng.normal(size=7).astype(np.float32)}
    for _ in range(2):
      out = np.asarray(client.infer(obs)["actions"])
      assert out.shape == (c.model.action_len, 5)
      assert np.all(out >= actions.min(0) - 1e-4) and np.all(out <= actions.max(0) + 1e-4)
    with pytest.raises(client_lib.ServerError, match=f"missing key '{STATE}'"):
      client.infer({FRONT: obs[FRONT], WRIST: obs[WRIST]})
    client.close()
  finally:
    proc.terminate()
    proc.wait(timeout=60)
