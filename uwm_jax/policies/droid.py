"""DROID (Franka, two exterior ZED cameras + a wrist camera).

Cameras: the DROID config's `exterior_image_1_left`, `exterior_image_2_left`,
`wrist_image_left`, each accepted under its own name or `observation/<name>` (openpi's DROID
client prefix), any size (resized to model.image_shape, 180x320 in configs/droid.py).
State (models with model.low_dim_dim = 7): `cartesian_position` (6) + `gripper_position` (1),
as the conversion concatenates them (`uwm_jax.data.profiles.DROID_LOW_DIM`).
Actions: the model's 10-d [linear velocity 3 | rot6d 6 | gripper 1], de-normalised, decoded
to DROID's cartesian velocity (6: linear xyz + angular as Euler) + gripper position (1) by
`uwm_jax.data.droid_actions.droid_action_from_10d`, the exact inverse of the training
encoding `droid_action_10d`.
"""

import numpy as np

from uwm_jax.config_base import DROID_CAMERA_KEYS
from uwm_jax.data import droid_actions
from uwm_jax.policies import transforms as T

PREFIXES = ("", "observation/")
STATE = (("cartesian_position", 6), ("gripper_position", 1))
MODEL_ACTION_DIM = 10
ROBOT_ACTION_DIM = 7


def decode_actions(actions: np.ndarray) -> np.ndarray:
  """(..., 10) de-normalised model actions -> (..., 7) [cartesian velocity 6 | gripper 1]."""
  velocity, gripper = droid_actions.droid_action_from_10d(actions)
  return np.concatenate([velocity, gripper], axis=-1).astype(np.float32)


def encode_actions(actions: np.ndarray) -> np.ndarray:
  """(..., 7) robot actions -> (..., 10): the training encoding (`droid_action_10d`)."""
  a = np.asarray(actions, np.float64)
  flat = a.reshape(-1, ROBOT_ACTION_DIM)
  out = droid_actions.droid_action_10d(flat[:, :6], flat[:, 6:7])
  return out.reshape(a.shape[:-1] + (MODEL_ACTION_DIM,))


def make(config, dataset_stats) -> T.RobotTransforms:
  m = config.model
  if m.action_dim != MODEL_ACTION_DIM:
    raise ValueError(f"DROID checkpoints predict {MODEL_ACTION_DIM}-d actions; model.action_dim "
                     f"is {m.action_dim}.")
  unknown = [k for k in m.camera_keys if k not in DROID_CAMERA_KEYS]
  if unknown:
    raise ValueError(f"DROID cameras are {DROID_CAMERA_KEYS}; model.camera_keys has {unknown}.")
  fields = ()
  if m.get("low_dim_dim"):
    fields = tuple(T.StateField(k, tuple(T.Source(p + k) for p in PREFIXES), w)
                   for k, w in STATE)
    if sum(w for _, w in STATE) != m.low_dim_dim:
      raise ValueError(f"The DROID state is 7 numbers; model.low_dim_dim is {m.low_dim_dim}.")
  return T.RobotTransforms(
      camera_keys=tuple(m.camera_keys),
      camera_sources=T.same_key_sources(m.camera_keys, PREFIXES),
      image_shape=tuple(m.image_shape), state_fields=fields,
      action_stats=T.stats_entry(dataset_stats, "action"),
      low_dim_stats=T.stats_entry(dataset_stats, "low_dim"),
      robot_action_dim=ROBOT_ACTION_DIM, decode=decode_actions, encode=encode_actions)
