"""Small datasets in the exact published formats, written by the tests.

  write_droid_fixture(data_dir, num_episodes=6)      # TFDS RLDS, builder `droid`, tfrecord
  write_libero_hdf5_fixture(path, num_demos=3)       # one LIBERO demonstration HDF5 file
  write_video_fixture(path, num_frames=48)           # an mp4 or webm clip

The DROID and video writers live with the benchmarks (`benchmarks.droid_sample`,
`benchmarks.video_sample`: the data benchmark uses them too); the LIBERO one is test-only. Images
are moving shapes (`uwm_jax.data.synthetic`), so JPEG/PNG/H.264/VP9 compression and decoding are exercised on structured content; values are
deterministic given `seed`.
"""

import json
import os
from typing import Optional, Sequence, Tuple

import h5py
import numpy as np

from benchmarks.droid_sample import (  # pylint: disable=unused-import
    DROID_LABS, droid_episode, moving_shapes, write_droid_fixture)
from benchmarks.video_sample import write_video_clip
from uwm_jax.config_base import LIBERO_CAMERA_KEYS


def libero_demo(index: int, length: int, image_shape: Tuple[int, int] = (128, 128),
                seed: int = 0) -> dict:
  """One LIBERO demo's arrays as stored in the HDF5 (images upside down, like LIBERO's)."""
  rng = np.random.default_rng([seed, index])
  upright = moving_shapes(length, image_shape, 2, seed=seed * 1000 + index)
  t = np.arange(length)[:, None]
  actions = np.clip(np.concatenate([0.8 * np.sin(0.1 * t + rng.uniform(0, 6, 6)),
                                    np.where(np.sin(0.05 * t) > 0, 1.0, -1.0)], axis=1), -1, 1)
  ee_pos = np.cumsum(actions[:, :3], axis=0) * 0.01
  return {
      "obs": {LIBERO_CAMERA_KEYS[0]: upright[0][:, ::-1], LIBERO_CAMERA_KEYS[1]: upright[1][:, ::-1],
              "ee_pos": ee_pos, "ee_ori": np.cumsum(actions[:, 3:6], axis=0) * 0.01,
              "ee_states": np.concatenate([ee_pos, np.zeros((length, 3))], axis=1),
              "gripper_states": np.repeat(actions[:, 6:7] * 0.04, 2, axis=1),
              "joint_states": np.cumsum(0.01 * rng.standard_normal((length, 7)), axis=0)},
      "actions": actions,
      "states": rng.standard_normal((length, 47)),
      "robot_states": rng.standard_normal((length, 9)),
      "rewards": (np.arange(length) == length - 1).astype(np.uint8),
      "dones": (np.arange(length) == length - 1).astype(np.uint8),
      "upright": upright,  # not written: the frames a correct reader must return
  }


def write_libero_hdf5_fixture(path: str, num_demos: int = 3, *, lengths: Sequence[int] = (
    40, 33, 52), image_shape: Tuple[int, int] = (128, 128), seed: int = 0,
                              problem_name: str = "libero_fixture",
                              nan_demo: Optional[int] = None) -> list:
  """A LIBERO demonstration file: data/demo_i/{obs/<key>, actions, states, ...}.

  Returns the demos' upright frames [(2, L, H, W, 3) per demo] for checking readers.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  upright = []
  with h5py.File(path, "w") as f:
    data = f.create_group("data")
    data.attrs["env_args"] = json.dumps({"env_name": problem_name, "type": 1,
                                         "env_kwargs": {"camera_heights": image_shape[0],
                                                        "camera_widths": image_shape[1]}})
    data.attrs["problem_info"] = json.dumps({"problem_name": problem_name,
                                             "language_instruction": "do the task"})
    data.attrs["bddl_file_name"] = f"{problem_name}.bddl"
    total = 0
    for i in range(num_demos):
      L = lengths[i % len(lengths)]
      demo = libero_demo(i, L, image_shape, seed)
      if nan_demo == i:
        demo["actions"][L // 2, 1] = np.nan
      g = data.create_group(f"demo_{i}")
      g.attrs["num_samples"] = L
      obs = g.create_group("obs")
      for k, v in demo["obs"].items():
        obs.create_dataset(k, data=v)
      for k in ("actions", "states", "robot_states", "rewards", "dones"):
        g.create_dataset(k, data=demo[k])
      upright.append(demo["upright"])
      total += L
    data.attrs["total"] = total
  return upright


def write_video_fixture(path: str, num_frames: int = 48, image_shape: Tuple[int, int] = (
    64, 96), fps: int = 15, seed: int = 0) -> np.ndarray:
  """An mp4 (H.264) or webm (VP9) clip of moving shapes, by the extension of `path`
  (`benchmarks.video_sample`); returns the frames written (L, H, W, 3)."""
  return write_video_clip(path, num_frames, image_shape, fps, seed)
