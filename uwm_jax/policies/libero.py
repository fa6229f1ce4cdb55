"""LIBERO (agentview + wrist cameras, 7-d actions), as the LIBERO training data has them.

The training frames are LIBERO's renders flipped vertically (robosuite renders upside down;
`uwm_jax.data.convert_libero`, `uwm_jax.envs.libero_env.to_training_orientation`). Accepted request
keys per camera, first present wins:
  agentview_rgb / eye_in_hand_rgb                 already in the training orientation (what
                                                  `uwm_jax.envs.libero_env.LiberoEnv` returns)
  agentview_image / robot0_eye_in_hand_image      robosuite's raw renders: flipped vertically
  observation/image / observation/wrist_image     openpi's LIBERO example client, which rotates
                                                  the raw renders by 180 degrees: flipped
                                                  horizontally
Any size is resized to model.image_shape. Actions: the 7-d delta end-effector command,
de-normalised with the checkpoint's statistics (LIBERO trains on raw actions: identity).
"""

from uwm_jax.envs import libero_env
from uwm_jax.policies import transforms as T

OPENPI_KEYS = {"agentview_rgb": "observation/image", "eye_in_hand_rgb": "observation/wrist_image"}


def camera_sources(camera_keys):
  raw = {v: k for k, v in libero_env.CAMERA_RENAMES.items()}
  out = {}
  for key in camera_keys:
    if key not in raw:
      raise ValueError(f"LIBERO provides cameras {sorted(raw)}; model.camera_keys has {key!r}.")
    out[key] = (T.Source(key), T.Source(raw[key], T.FLIP_VERTICAL),
                T.Source(OPENPI_KEYS[key], T.FLIP_HORIZONTAL))
  return out


def make(config, dataset_stats) -> T.RobotTransforms:
  m = config.model
  if m.get("low_dim_dim"):
    raise ValueError("model.low_dim_dim > 0: LIBERO low-dim observations are not wired up for "
                     "rollouts or serving (only images).")
  if m.action_dim != libero_env.ACTION_DIM:
    raise ValueError(f"LIBERO actions are {libero_env.ACTION_DIM}-d; model.action_dim is "
                     f"{m.action_dim}.")
  return T.RobotTransforms(
      camera_keys=tuple(m.camera_keys), camera_sources=camera_sources(m.camera_keys),
      image_shape=tuple(m.image_shape), state_fields=(),
      action_stats=T.stats_entry(dataset_stats, "action"), low_dim_stats=None,
      robot_action_dim=libero_env.ACTION_DIM)
