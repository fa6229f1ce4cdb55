"""LIBERO demonstration HDF5 -> RLDS/TFDS (upright images) -> array_record -> grain windows."""

import os

import numpy as np
import pytest

from configs import libero as libero_config
from uwm_jax import batch as batch_lib
from tests import fixtures
from tests.helpers import run_cli
from uwm_jax.data import convert_libero, loader, rlds_read, source_configs
from uwm_jax.data.windows import WindowReader

IMAGE = (32, 32)


@pytest.fixture(scope="module")
def hdf5_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("libero_10")
  frames = {}
  for i, builder in enumerate(("libero_book_caddy", "libero_mug_mug")):
    stem = convert_libero.PAPER_TASKS[builder][1]
    frames[builder] = fixtures.write_libero_hdf5_fixture(
        str(d / (stem + convert_libero.DEMO_SUFFIX)), num_demos=3 if i == 0 else 12,
        lengths=(30, 24, 27), image_shape=IMAGE, seed=i)
  return str(d), frames


def _rlds_episodes(builder_dir):
  import tensorflow_datasets as tfds
  ds = rlds_read.open_builder(builder_dir).as_dataset(split="train", shuffle_files=False)
  ds = ds.map(lambda e: {**e, "steps": e["steps"].batch(10_000).get_single_element()})
  return list(tfds.as_numpy(ds))


def test_paper_task_becomes_rlds_with_upright_images(hdf5_dir, tmp_path):
  d, frames = hdf5_dir
  (path,) = convert_libero.convert_suite(d, str(tmp_path / "tfds"), "Book-Caddy")
  assert path.endswith(os.path.join("libero_book_caddy", "1.0.0"))
  eps = _rlds_episodes(path)
  assert len(eps) == 3
  stem = convert_libero.PAPER_TASKS["libero_book_caddy"][1]
  for i, ep in enumerate(eps):
    assert ep["episode_metadata"]["file_path"].decode() == f"{stem}/demo_{i}"
    for v, cam in enumerate(("agentview_rgb", "eye_in_hand_rgb")):
      np.testing.assert_array_equal(ep["steps"]["observation"][cam], frames[
          "libero_book_caddy"][i][v])  # PNG is lossless: exactly the upright frames
    demo = fixtures.libero_demo(i, len(ep["steps"]["action"]), IMAGE, seed=0)
    np.testing.assert_allclose(ep["steps"]["action"], demo["actions"], rtol=1e-6)
    assert ep["steps"]["observation"]["ee_pos"].shape[1] == 3
    assert ep["steps"]["is_first"][0] and ep["steps"]["is_last"][-1]


def test_demos_in_index_order_and_libero90_to_training_windows(hdf5_dir, tmp_path):
  d, frames = hdf5_dir
  (path,) = convert_libero.convert_suite(d, str(tmp_path / "tfds"), "libero_90")
  eps = _rlds_episodes(path)
  names = [e["episode_metadata"]["file_path"].decode().split("/")[1] for e in eps]
  # Files in sorted order (LIVING_ROOM... before STUDY...), demos in index order (2 before 10).
  assert names == [f"demo_{i}" for i in range(12)] + [f"demo_{i}" for i in range(3)]
  assert rlds_read.open_builder(path).info.splits["train"].num_shards == 2  # one per file

  out = str(tmp_path / "uwm")
  run = run_cli("uwm_jax.data.convert_rlds", "rlds", f"--builder_dir={path}", f"--out={out}",
                "--num_processes=1", "--camera_keys=agentview_rgb,eye_in_hand_rgb",
                "--action_key=action")
  assert run.returncode == 0, run.stderr[-3000:]
  c = libero_config.get_config()
  c.model.image_shape = IMAGE
  c.batch_size = 4
  c.data.sources.libero_90 = source_configs.array_record(out)
  train = loader.make_train_loader(c, process_index=0, process_count=1)
  assert train.dataset_stats["action"] == {"min": [-1.0] * 7, "max": [1.0] * 7}  # identity
  batch_lib.validate_batch(next(train), c.model)
  src = train.sources[0]
  reader = WindowReader([src], c.model, train.dataset_stats)
  sl = batch_lib.window_slices(c.model.num_obs_frames, c.model.action_len)
  ep, start = 2, 3  # demo_2 of the mug file
  sample = reader((0, ep, start))
  upright = frames["libero_mug_mug"][2]
  np.testing.assert_array_equal(sample["obs"], upright[:, start:start + sl.window][:, sl.obs])
  np.testing.assert_array_equal(sample["next_obs"],
                                upright[:, start:start + sl.window][:, sl.next_obs])
  np.testing.assert_allclose(sample["action"], eps[ep]["steps"]["action"][
      start:start + sl.window][sl.action], rtol=1e-6)


def test_libero_bad_inputs(tmp_path):
  with pytest.raises(ValueError, match="Unknown LIBERO task 'Cup-Cup'"):
    convert_libero.task_file(str(tmp_path), "Cup-Cup")
  with pytest.raises(FileNotFoundError, match="Moka-Moka"):
    convert_libero.task_file(str(tmp_path), "moka_moka")
  path = str(tmp_path / "bad_demo.hdf5")
  fixtures.write_libero_hdf5_fixture(path, num_demos=2, lengths=(10,), image_shape=(8, 8),
                                     nan_demo=1)
  with pytest.raises(ValueError, match=r"bad_demo.hdf5.*episode demo_1.*'actions'.*NaN"):
    list(convert_libero.read_hdf5_episodes(path))
  with pytest.raises(ValueError, match=r"episode demo_0.*'obs/wrist_rgb'"):
    list(convert_libero.read_hdf5_episodes(path, camera_keys=("agentview_rgb", "wrist_rgb")))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    list(convert_libero.read_hdf5_episodes(str(tmp_path / "none.hdf5")))
