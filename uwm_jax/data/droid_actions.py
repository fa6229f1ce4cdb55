"""The DROID action codec: DROID's recorded action <-> the 10-d action UWM trains on.

  droid_action_10d       conversion: cartesian velocity (L, 6) + gripper position (L, 1) ->
                         (L, 10) [linear velocity 3 | rot6d of the angular velocity (as Euler
                         angles) 6 | gripper position 1]
  droid_action_from_10d  deployment: the exact inverse, (..., 10) de-normalised model actions ->
                         ((..., 6) cartesian velocity in the same Euler convention, (..., 1)
                         gripper position); `uwm_jax.policies.droid` decodes with it

The conversion records `droid_action_10d`'s name in a dataset's conversion parameters
(`profiles.RldsProfile.describe`), so the names stay.
"""

from typing import Tuple

import numpy as np

from uwm_jax.data import rotation


def droid_action_10d(cartesian_velocity: np.ndarray, gripper_position: np.ndarray) -> np.ndarray:
  """(L, 6) [linear xyz | angular as Euler (a, b, c)] + (L, 1) -> (L, 10) float32.

  Angular part -> R = Rx(a) Ry(b) Rz(c) -> first two rows (see `uwm_jax.data.rotation`).
  """
  v = np.asarray(cartesian_velocity, np.float64)
  g = np.asarray(gripper_position, np.float64).reshape(len(v), 1)
  return np.concatenate([v[:, :3], rotation.euler_to_rot6d(v[:, 3:6]), g], axis=1).astype(
      np.float32)


def droid_action_from_10d(action: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Inverse for deployment: (..., 10) de-normalised -> ((..., 6) cartesian velocity with the
  same Euler convention, (..., 1) gripper position)."""
  a = np.asarray(action, np.float64)
  euler = rotation.rot6d_to_euler(a[..., 3:9])
  return np.concatenate([a[..., :3], euler], axis=-1), a[..., 9:10]
