"""Action-free video: a folder of mp4 clips filling the camera views, mixed with robot data."""

import os

import numpy as np
import pytest

from configs import tiny
from uwm_jax import batch as batch_lib
from tests import fixtures
from uwm_jax.data import loader, source_configs
from uwm_jax.data.video_folder import FRAME_COUNT_CACHE, VideoFolderSource, resize_cover_crop
from uwm_jax.data.windows import SOURCE, WindowReader
from uwm_jax.dims import model_dims


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("videos")
  clips = {
      "a.mp4": fixtures.write_video_fixture(str(d / "a.mp4"), 40, seed=1),
      os.path.join("sub", "b.mp4"): fixtures.write_video_fixture(str(d / "sub" / "b.mp4"), 30,
                                                                  seed=2),
      "short.mp4": fixtures.write_video_fixture(str(d / "short.mp4"), 6, seed=3),
  }
  (d / "broken.mp4").write_bytes(b"\0" * 10)  # below min_bytes
  (d / "notes.txt").write_text("not a video")
  return str(d), clips


def _config(folder, **kw):
  c = tiny.get_config()
  c.data.sources.video = source_configs.video_folder(folder, weight=1.0, **kw)
  return c


def test_clips_fill_views_with_strided_resized_frames(video_dir):
  folder, clips = video_dir
  c = _config(folder)
  window = model_dims(c.model).window
  src = VideoFolderSource.from_config("video", c.data.sources.video, c.model)
  assert src.files == ["a.mp4", os.path.join("sub", "b.mp4")]  # short and tiny files skipped
  assert os.path.exists(os.path.join(folder, FRAME_COUNT_CACHE))
  np.testing.assert_array_equal(src.episode_lengths, [20, 15])  # 40 and 30 frames, stride 2
  reader = WindowReader([src], c.model, {"action": {"min": [0] * 4, "max": [1] * 4}})
  sample = reader((0, 0, 3))
  assert not sample["action_mask"] and not sample["action"].any()
  obs, nxt = sample["obs"], sample["next_obs"]
  assert obs.shape == (2, 2, 32, 32, 3)
  np.testing.assert_array_equal(obs[0], obs[1])  # padding "same": every view shows the clip
  sl = batch_lib.window_slices(c.model.num_obs_frames, c.model.action_len)
  want_idx = (3 + np.arange(window)) * 2
  ref = np.stack([resize_cover_crop(f, (32, 32)) for f in clips["a.mp4"][want_idx]])
  # H.264 is lossy: compare on average.
  assert np.abs(obs[0].astype(int) - ref[sl.obs]).mean() < 8
  assert np.abs(nxt[0].astype(int) - ref[sl.next_obs]).mean() < 8
  assert np.abs(nxt[0].astype(int) - ref[sl.obs]).mean() > np.abs(
      nxt[0].astype(int) - ref[sl.next_obs]).mean()  # the frames are really in order

  none = VideoFolderSource.from_config("video", _config(folder, padding="none").data.sources
                                       .video, c.model)
  frames = none.frames(1, np.array([0, 1]))
  assert frames[0].any() and not frames[1].any()


def test_video_mixed_with_robot_data(video_dir):
  folder, _ = video_dir
  c = _config(folder)
  c.data.sources.video.weight = 0.5
  train = loader.make_train_loader(c, process_index=0, process_count=1)
  assert train.source_names == ("synthetic", "video")
  batches = [next(train) for _ in range(6)]
  src = np.concatenate([b[SOURCE] for b in batches])
  mask = np.concatenate([b[batch_lib.ACTION_MASK] for b in batches])
  np.testing.assert_array_equal(mask, src == 0)
  assert abs((src == 1).mean() - 1 / 3) < 0.1
  ev = loader.make_eval_loader(c, process_index=0, process_count=1)
  assert all(b[batch_lib.ACTION_MASK].all() for b in ev)  # validation is robot-only


def test_missing_or_empty_video_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"'video': video folder .*none' \(config\.data"
                     r"\.sources\.video\.path\) does not exist; give --config\.data\.sources"
                     r"\.video\.path=DIR, a folder of video files"):
    loader.make_train_loader(_config(str(tmp_path / "none")), process_index=0, process_count=1)
  with pytest.raises(ValueError, match="'video'.*no usable video"):
    loader.make_train_loader(_config(str(tmp_path)), process_index=0, process_count=1)
