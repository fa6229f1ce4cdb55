"""Video corpora at scale: index files (alone and as a weighted mixture), unreadable clips
skipped with a count, and the one-time conversion into the array_record format (round trip
against decode-at-load, resume of an interrupted conversion, the command line)."""

import logging
import os
import shutil

import numpy as np
import pytest

from configs import tiny
from tests import fixtures
from tests.helpers import run_cli
from uwm_jax import batch as batch_lib
from uwm_jax.data import array_record_format as fmt
from uwm_jax.data import convert_video, loader, shard_conversion, source_configs
from uwm_jax.data.array_record_source import ArrayRecordSource
from uwm_jax.data.sources import build_source, check_sources
from uwm_jax.data.video_folder import VideoFolderSource, read_index_file
from uwm_jax.data.windows import SOURCE, WindowReader

SHAPE = (32, 32)
CAMS = ("agentview_rgb", "eye_in_hand_rgb")
WINDOW = 7  # configs/tiny.py: 2 * T_o + H_a - 1


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """mp4 and webm clips in a folder tree, a corrupt clip, and index files listing them."""
  d = tmp_path_factory.mktemp("corpus")
  fixtures.write_video_fixture(str(d / "k400" / "a.mp4"), 30, seed=1)
  fixtures.write_video_fixture(str(d / "k400" / "sub" / "b.webm"), 26, seed=2)
  fixtures.write_video_fixture(str(d / "ssv2" / "c.webm"), 24, seed=3)
  fixtures.write_video_fixture(str(d / "ssv2" / "d.mp4"), 28, seed=4)
  (d / "k400" / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
  (d / "k400" / "list.txt").write_text(
      "# filtered Kinetics-style list\n\nsub/b.webm\n  a.mp4  \n# corrupt.mp4 is listed too\n"
      "corrupt.mp4\n")
  (d / "ssv2.txt").write_text(f"ssv2/c.webm\n{d / 'ssv2' / 'd.mp4'}\n")
  return d


def _index_config(corpus, weights=(1.0, 2.0, 1.0)):
  c = tiny.get_config()
  c.data.sources.synthetic.weight = weights[0]
  c.data.sources.k400 = source_configs.video_index(str(corpus / "k400" / "list.txt"),
                                                   weight=weights[1])
  c.data.sources.ssv2 = source_configs.video_index(str(corpus / "ssv2.txt"), weight=weights[2])
  return c


def test_index_file_lists_clips_relative_to_itself(corpus):
  listed = read_index_file(str(corpus / "k400" / "list.txt"))
  assert listed == [str(corpus / "k400" / "sub" / "b.webm"), str(corpus / "k400" / "a.mp4"),
                    str(corpus / "k400" / "corrupt.mp4")]
  assert read_index_file(str(corpus / "ssv2.txt")) == [str(corpus / "ssv2" / "c.webm"),
                                                       str(corpus / "ssv2" / "d.mp4")]
  c = _index_config(corpus)
  src = build_source("k400", c.data.sources.k400, c.model)
  assert src.files == [os.path.join("sub", "b.webm"), "a.mp4"]  # listed order, corrupt skipped
  np.testing.assert_array_equal(src.episode_lengths, [13, 15])  # 26 and 30 frames, stride 2
  folder = VideoFolderSource("f", str(corpus / "k400"), CAMS, SHAPE, WINDOW)
  np.testing.assert_array_equal(src.frames(1, np.arange(4)),
                                folder.frames(folder.files.index("a.mp4"), np.arange(4)))


def test_index_files_mix_in_their_configured_proportion_without_actions(corpus):
  train = loader.make_train_loader(_index_config(corpus), process_index=0, process_count=1)
  assert train.source_names == ("k400", "ssv2", "synthetic")
  batches = [next(train) for _ in range(12)]
  src = np.concatenate([b[SOURCE] for b in batches])
  mask = np.concatenate([b[batch_lib.ACTION_MASK] for b in batches])
  action = np.concatenate([b[batch_lib.ACTION] for b in batches])
  np.testing.assert_allclose([np.mean(src == s) for s in range(3)], [0.5, 0.25, 0.25],
                             atol=0.08)
  video = src != 2
  assert not mask[video].any() and mask[~video].all()
  assert not action[video].any()


def test_unreadable_clip_is_skipped_with_one_logged_count(corpus, caplog, tmp_path):
  with caplog.at_level(logging.INFO):
    src = VideoFolderSource("k400", str(corpus / "k400"), CAMS, SHAPE, WINDOW)
  assert "corrupt.mp4" not in src.files
  lines = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
  assert lines == ["k400: skipped 1 of 3 video files as unreadable (corrupt.mp4)."]
  # A clip that breaks after the source was built: the next readable clip stands in, counted.
  folder = tmp_path / "clips"
  shutil.copytree(corpus / "k400", folder, ignore=shutil.ignore_patterns("corrupt.mp4"))
  src = VideoFolderSource("k400", str(folder), CAMS, SHAPE, WINDOW)
  first, second = src.files
  want = src.frames(1, np.arange(3))
  (folder / first).write_bytes(b"\0" * 4096)
  np.testing.assert_array_equal(src.frames(0, np.arange(5, 8)), want)
  np.testing.assert_array_equal(src.frames(0, np.arange(3)), want)
  assert src.unreadable == [first]


def test_missing_or_empty_index_file_is_one_clear_error(corpus, tmp_path):
  c = _index_config(corpus)
  check_sources(c)
  c.data.sources.ssv2.path = str(tmp_path / "missing.txt")
  with pytest.raises(FileNotFoundError, match=r"'ssv2'.*missing.txt.*sources.ssv2.path.*give "
                     r"--config\.data\.sources\.ssv2\.path=FILE, a text file listing"):
    check_sources(c)
  (tmp_path / "empty.txt").write_text("# nothing yet\n\n")
  c.data.sources.ssv2.path = str(tmp_path / "empty.txt")
  with pytest.raises(ValueError, match="'ssv2'.*no usable video.*lists none"):
    build_source("ssv2", c.data.sources.ssv2, c.model)


def _convert(folder, out, **kw):
  return convert_video.convert_video(str(out), folder=str(folder), image_shape=SHAPE,
                                     clips_per_shard=1, progress=False, **kw)


def test_conversion_round_trip_equals_decoding_at_load(corpus, tmp_path):
  out = tmp_path / "k400_uwm"
  assert _convert(corpus / "k400", out)
  summary = shard_conversion.conversion_summary(str(out))
  assert "episodes read 3, kept 2, skipped 0 (size) + 1 (unreadable) + 0 (empty) (e.g. " \
         "corrupt.mp4)" in summary
  c = tiny.get_config()
  c.data.sources = {}
  c.data.sources.video = source_configs.array_record(str(out), action_free=True)
  converted = build_source("video", c.data.sources.video, c.model)
  decoded = VideoFolderSource("video", str(corpus / "k400"), CAMS, SHAPE, WINDOW)
  assert [m["file_path"] for m in converted.metadata] == decoded.files
  np.testing.assert_array_equal(converted.episode_lengths, decoded.episode_lengths)
  stats = {"action": {"min": [0] * 4, "max": [1] * 4}}
  got, want = WindowReader([converted], c.model, stats), WindowReader([decoded], c.model, stats)
  for ep, start in ((0, 0), (0, 6), (1, 5)):
    a, b, later = got((0, ep, start)), want((0, ep, start)), want((0, ep, start + 1))
    assert not a[batch_lib.ACTION_MASK] and not a[batch_lib.ACTION].any()
    for key in (batch_lib.OBS, batch_lib.NEXT_OBS):
      assert a[key].shape == b[key].shape == (2, 2) + SHAPE + (3,)
      error = np.abs(a[key].astype(int) - b[key].astype(int)).mean()
      assert error < 2  # JPEG quality 95
      assert error < 0.5 * np.abs(a[key].astype(int) - later[key].astype(int)).mean()
      np.testing.assert_array_equal(a[key][0], a[key][1])  # padding "same": every view
  assert _convert(corpus / "k400", tmp_path / "none", padding="none")
  frames = ArrayRecordSource("v", str(tmp_path / "none"), CAMS, SHAPE, 4).frames(0, np.arange(2))
  assert frames[0].any() and not frames[1].any()


def test_interrupted_conversion_resumes(corpus, tmp_path):
  out = tmp_path / "ssv2_uwm"
  assert not _convert(corpus / "ssv2", out, process_index=0, process_count=2)  # half done
  n = 2
  done = out / fmt.shard_dirname(0, n)
  assert done.is_dir() and not (out / fmt.DATASET_JSON).exists()
  with pytest.raises(ValueError, match="unfinished"):
    ArrayRecordSource("v", str(out), CAMS, SHAPE, 4, action_free=True)
  killed = out / f"{fmt.shard_dirname(1, n)}.tmp-999999999"  # a killed writer's folder
  killed.mkdir()
  stamp = os.stat(done / fmt.FRAMES).st_mtime_ns
  assert _convert(corpus / "ssv2", out)
  assert os.stat(done / fmt.FRAMES).st_mtime_ns == stamp  # the finished shard was kept
  assert not killed.exists()
  assert ArrayRecordSource("v", str(out), CAMS, SHAPE, 4).num_episodes == 2
  with pytest.raises(ValueError, match="other parameters.*frame_stride"):
    _convert(corpus / "ssv2", out, frame_stride=3.0)


def test_command_line_converts_with_two_processes_and_reports_bad_input(corpus, tmp_path):
  out = tmp_path / "cli"
  ok = run_cli("uwm_jax.data.convert_video", f"--folder={corpus / 'ssv2'}", f"--out={out}",
               "--image_shape=32,32", "--clips_per_shard=1", "--num_processes=2", timeout=300)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert "2 of 2 input shards converted; episodes read 2, kept 2" in ok.stdout
  bad = run_cli("uwm_jax.data.convert_video", f"--index={tmp_path / 'missing.txt'}",
                f"--out={out}", "--image_shape=32x32", timeout=300)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1].startswith("error: --image_shape must be H,W")
