"""A small dataset in the exact published DROID RLDS schema, written locally.

  write_droid_fixture(data_dir, num_episodes=6)      # TFDS RLDS, builder `droid`, tfrecord

It lives with the benchmarks because `python -m benchmarks.data --fixture_episodes=N`
benchmarks the conversion and the loader on it where DROID is not downloaded; the tests use it
too (through tests/fixtures.py, which adds the LIBERO writer only tests need): imports go one
way, tests -> benchmarks -> uwm_jax (scripts/import_graph.py).
Images are moving shapes (`uwm_jax.data.synthetic`), so JPEG compression and decoding are
exercised on structured content; values are deterministic given `seed`.
"""

import os
from typing import Optional, Sequence, Tuple

import numpy as np

from uwm_jax.config_base import DROID_CAMERA_KEYS
from uwm_jax.data.rlds_writer import write_rlds_dataset
from uwm_jax.data.synthetic import SyntheticSource

DROID_LABS = ("WEIRD", "AUTOLab", "IRIS")


def moving_shapes(num_frames: int, image_shape: Tuple[int, int], num_views: int,
                  seed: int = 0) -> np.ndarray:
  """(V, L, H, W, 3) uint8 frames of one synthetic episode."""
  src = SyntheticSource("fixture", [f"view{v}" for v in range(num_views)], image_shape,
                        action_dim=2, num_episodes=1, episode_len=num_frames, seed=seed)
  return src.frames(0, np.arange(num_frames))


def droid_episode(index: int, length: int, image_shape: Tuple[int, int] = (180, 320),
                  lab: str = "WEIRD", success: bool = True, seed: int = 0,
                  nan_field: Optional[str] = None) -> dict:
  """One episode in the published DROID RLDS schema (float64 states/actions, 3 cameras).

  nan_field: name of an action_dict field to poison with a NaN (for error tests).
  """
  rng = np.random.default_rng([seed, index])
  frames = moving_shapes(length, image_shape, 3, seed=seed * 1000 + index)
  t = np.arange(length)[:, None]
  cart_vel = np.concatenate([0.3 * np.sin(0.2 * t + rng.uniform(0, 6, 3)),
                             0.4 * np.cos(0.15 * t + rng.uniform(0, 6, 3))], axis=1)
  cart_pos = np.cumsum(cart_vel, axis=0) * 0.05 + rng.uniform(-0.5, 0.5, 6)
  grip = (0.5 + 0.5 * np.sin(0.1 * t + rng.uniform(0, 6))).astype(np.float64)
  joints = np.cumsum(0.01 * rng.standard_normal((length, 7)), axis=0)
  action_dict = {
      "cartesian_position": cart_pos, "cartesian_velocity": cart_vel,
      "gripper_position": grip, "gripper_velocity": np.gradient(grip, axis=0),
      "joint_position": joints, "joint_velocity": np.gradient(joints, axis=0)}
  if nan_field:
    action_dict[nan_field] = action_dict[nan_field].copy()
    action_dict[nan_field][length // 2, 0] = np.nan
  outcome = "success" if success else "failure"
  folder = (f"gs://xembodiment_data/r2d2/r2d2-data-full/{lab}/{outcome}/2023-07-0{index % 9 + 1}"
            f"/Fri_Jul__7_09:{index:02d}:23_2023")
  steps = {
      "observation": {
          DROID_CAMERA_KEYS[0]: frames[0], DROID_CAMERA_KEYS[1]: frames[1],
          DROID_CAMERA_KEYS[2]: frames[2],
          "cartesian_position": cart_pos, "gripper_position": grip, "joint_position": joints},
      "action_dict": action_dict,
      "action": np.concatenate([cart_vel, grip], axis=1),
      "language_instruction": f"put the marker in the cup {index}",
      "language_instruction_2": "", "language_instruction_3": "",
  }
  return {"steps": steps, "episode_metadata": {
      "recording_folderpath": folder + "/recordings/MP4",
      "file_path": folder + "/trajectory.h5"}}


def write_droid_fixture(data_dir: str, num_episodes: int = 6, *, builder: str = "droid",
                        image_shape: Tuple[int, int] = (180, 320),
                        lengths: Sequence[int] = (30, 41, 25), labs: Sequence[str] = DROID_LABS,
                        failure_every: int = 3, num_shards: int = 2, seed: int = 0,
                        nan_episode: Optional[int] = None, file_format: str = "tfrecord",
                        disable_shuffling: bool = True) -> str:
  """A DROID-schema RLDS dataset; returns `<data_dir>/<builder>/1.0.0`.

  Episode i has length lengths[i % len(lengths)], lab labs[i % len(labs)], is a failure when
  i % failure_every == failure_every - 1, and has a NaN cartesian_velocity if i == nan_episode.
  Images are JPEG like the published dataset.
  """
  def episodes():
    for i in range(num_episodes):
      yield droid_episode(
          i, lengths[i % len(lengths)], image_shape, labs[i % len(labs)],
          success=not (failure_every and i % failure_every == failure_every - 1), seed=seed,
          nan_field="cartesian_velocity" if i == nan_episode else None)
  return write_rlds_dataset(data_dir, builder, episodes(), image_format="jpeg",
                            num_shards=num_shards, file_format=file_format,
                            description="DROID-schema fixture written by uwm_jax.",
                            disable_shuffling=disable_shuffling)
