"""The per-robot transforms (uwm_jax/policies): DROID's output is the exact inverse of the
training encoding; LIBERO's cameras come out in the training orientation from every accepted
key; a world-model query's own inputs (action chunk, goal images) and their errors."""

import numpy as np
import pytest

from configs import droid as droid_config
from configs import libero as libero_config
from tests.helpers import tiny_push_config
from uwm_jax.data import droid_actions
from uwm_jax.policies import droid, make_transforms, robot_for_config
from uwm_jax.policies.transforms import InvalidObservation


def test_droid_output_inverts_the_training_encoding_on_random_rotations():
  rng = np.random.default_rng(0)
  n = 500
  velocity = np.concatenate([rng.uniform(-1, 1, (n, 3)),
                             # Euler angles away from gimbal lock (|b| < pi/2 - 0.05)
                             rng.uniform(-np.pi, np.pi, (n, 1)),
                             rng.uniform(-np.pi / 2 + 0.05, np.pi / 2 - 0.05, (n, 1)),
                             rng.uniform(-np.pi, np.pi, (n, 1))], axis=1)
  gripper = rng.uniform(0, 1, (n, 1))
  encoded = droid_actions.droid_action_10d(velocity, gripper)  # what training saw (raw units)
  stats = {"action": {"min": encoded.min(0).tolist(), "max": encoded.max(0).tolist()}}
  config = droid_config.get_config()
  transforms = make_transforms("droid", config, stats)
  assert robot_for_config(config) == "droid"
  normalised = transforms.encode_actions(np.concatenate([velocity, gripper], axis=1))
  assert normalised.shape == (n, 10) and np.abs(normalised).max() <= 1 + 1e-5
  decoded = transforms.outputs(normalised.reshape(50, 10, 10))  # (..., H, 10) -> (..., H, 7)
  assert decoded.shape == (50, 10, 7)
  decoded = decoded.reshape(n, 7)
  np.testing.assert_allclose(decoded[:, :6], velocity, atol=1e-4)
  np.testing.assert_allclose(decoded[:, 6:], gripper, atol=1e-5)
  # The decoder is the module's (not a copy): the same numbers as the codec's inverse.
  v, g = droid_actions.droid_action_from_10d(encoded)
  np.testing.assert_allclose(droid.decode_actions(encoded), np.concatenate([v, g], 1),
                             atol=1e-6)


def test_droid_cameras_accept_openpi_names_and_any_size():
  config = droid_config.get_config()
  transforms = make_transforms("droid", config, None)
  rng = np.random.default_rng(1)
  obs = {f"observation/{k}": rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
         for k in config.model.camera_keys}
  frame = transforms.inputs(obs)
  assert frame.images.shape == (3, 180, 320, 3) and frame.low_dim is None


def test_libero_orientation_from_every_accepted_key():
  config = libero_config.get_config()
  transforms = make_transforms("libero", config, None)
  raw = np.random.default_rng(2).integers(0, 256, (128, 128, 3), dtype=np.uint8)
  wrist = np.random.default_rng(3).integers(0, 256, (128, 128, 3), dtype=np.uint8)
  training = np.stack([raw[::-1], wrist[::-1]])  # uwm_jax.data.convert_libero flips vertically
  from_raw = transforms.inputs({"agentview_image": raw, "robot0_eye_in_hand_image": wrist})
  from_env = transforms.inputs({"agentview_rgb": raw[::-1], "eye_in_hand_rgb": wrist[::-1]})
  from_openpi = transforms.inputs({"observation/image": raw[::-1, ::-1],
                                   "observation/wrist_image": wrist[::-1, ::-1]})
  for frame in (from_raw, from_env, from_openpi):
    np.testing.assert_array_equal(frame.images, training)
  assert robot_for_config(config) == "libero"


def test_world_model_query_inputs_and_their_errors():
  """A forward-dynamics query's robot action chunk and an inverse-dynamics query's goal images
  (one per camera, or T_o of them) become model inputs; a missing or misshapen one is one
  clear error (the server answers it with an error frame)."""
  config = tiny_push_config()
  transforms = make_transforms("tabletop", config, {"action": {"min": [0.0, -2.0],
                                                               "max": [2.0, 2.0]}})
  np.testing.assert_allclose(transforms.action_chunk(np.full((4, 2), 2.0), (4, 2)), 1.0)
  with pytest.raises(InvalidObservation, match="forward_dynamics needs 'actions'"):
    transforms.action_chunk(None, (4, 2))
  with pytest.raises(InvalidObservation, match="must have 4 rows"):
    transforms.action_chunk(np.zeros((3, 2)), (4, 2))
  top = np.random.default_rng(4).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  goal = transforms.goal_frames({"front_rgb": np.zeros((32, 32, 3), np.uint8), "top_rgb": top}, 2)
  assert goal.shape == (2, 2, 32, 32, 3)  # (V, T_o, H, W, 3)
  np.testing.assert_array_equal(goal[0], 0)  # one image fills every time step
  np.testing.assert_array_equal(goal[1], top)  # T_o images, one per step
  with pytest.raises(InvalidObservation, match="inverse_dynamics needs 'goal'"):
    transforms.goal_frames(None, 2)
