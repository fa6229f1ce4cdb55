"""What the conversion takes from an RLDS episode: camera keys, actions, low-dim, metadata.

Profiles:
  droid   published DROID (builder `droid` / `droid_100`): cameras exterior_image_1_left,
          exterior_image_2_left, wrist_image_left; 10-d actions
          [linear velocity 3 | rot6d(angular velocity as Euler) 6 | gripper position 1]
          (`uwm_jax.data.droid_actions`, also used at deployment); low-dim
          cartesian_position (6) + gripper_position (1).
  rlds    any RLDS dataset: camera keys, an action field and low-dim fields named on the
          command line (LIBERO converted by `uwm_jax.data.convert_libero`: `--camera_keys
          agentview_rgb,eye_in_hand_rgb --action_key action`); `--action_free` reads it
          without actions (video).
"""

import dataclasses
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from uwm_jax.config_base import DROID_CAMERA_KEYS
from uwm_jax.data.droid_actions import droid_action_10d
from uwm_jax.data.rlds_read import as_text, get_path

DROID_VELOCITY = "steps/action_dict/cartesian_velocity"
DROID_GRIPPER = "steps/action_dict/gripper_position"
DROID_LOW_DIM = ("steps/observation/cartesian_position", "steps/observation/gripper_position")
DROID_METADATA = ("episode_metadata/recording_folderpath", "episode_metadata/file_path")
LANGUAGE = "steps/language_instruction"


@dataclasses.dataclass(frozen=True)
class RldsProfile:
  """How to read one RLDS dataset. Paths are '/'-joined feature paths of an episode."""
  name: str
  camera_keys: Tuple[str, ...]  # under steps/observation
  action_fields: Tuple[str, ...] = ()  # read (and NaN-checked) to build the actions
  action_fn: Optional[Callable[..., np.ndarray]] = None  # action_fields -> (L, A)
  low_dim_fields: Tuple[str, ...] = ()  # concatenated along the last axis
  metadata_fields: Tuple[str, ...] = ()  # optional text fields kept per episode

  @property
  def action_free(self) -> bool:
    return self.action_fn is None

  def required_keys(self) -> Tuple[str, ...]:
    cams = tuple(f"steps/observation/{k}" for k in self.camera_keys)
    return cams + self.action_fields + self.low_dim_fields

  def describe(self) -> Dict[str, object]:
    """JSON-able description (part of the conversion parameters / statistics key)."""
    return {"profile": self.name, "camera_keys": list(self.camera_keys),
            "action_fields": list(self.action_fields),
            "action_transform": getattr(self.action_fn, "__name__", None),
            "low_dim_fields": list(self.low_dim_fields)}

  def metadata(self, episode: dict) -> Dict[str, str]:
    out = {}
    for path in self.metadata_fields:
      try:
        out[path.split("/")[-1]] = as_text(get_path(episode, path))
      except KeyError:
        pass
    try:
      out["language_instruction"] = as_text(get_path(episode, LANGUAGE))
    except KeyError:
      pass
    return out


def concat_fields(*arrays: np.ndarray) -> np.ndarray:
  """Fields (L, ...) flattened per step and concatenated: (L, sum of widths) float32."""
  L = len(arrays[0])
  return np.concatenate([np.asarray(a, np.float64).reshape(L, -1) for a in arrays],
                        axis=1).astype(np.float32)


def droid_profile() -> RldsProfile:
  return RldsProfile(name="droid", camera_keys=tuple(DROID_CAMERA_KEYS),
                     action_fields=(DROID_VELOCITY, DROID_GRIPPER), action_fn=droid_action_10d,
                     low_dim_fields=DROID_LOW_DIM, metadata_fields=DROID_METADATA)


def rlds_profile(camera_keys: Sequence[str], action_key: str = "action",
                 low_dim_keys: Sequence[str] = (), action_free: bool = False,
                 metadata_keys: Sequence[str] = DROID_METADATA) -> RldsProfile:
  """A generic profile: action = steps/<action_key> as float32 (None when action_free)."""
  action_fields = () if action_free else (f"steps/{action_key}",)
  return RldsProfile(
      name="rlds", camera_keys=tuple(camera_keys), action_fields=action_fields,
      action_fn=None if action_free else concat_fields,
      low_dim_fields=tuple(f"steps/observation/{k}" for k in low_dim_keys),
      metadata_fields=tuple(metadata_keys))
