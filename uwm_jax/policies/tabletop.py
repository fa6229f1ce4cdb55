"""The embedded MuJoCo tabletop tasks (`uwm_jax.envs.tabletop`): push and reach.

Request keys: the env's own observation keys — one (S, S, 3) uint8 image per camera
(`front_rgb`, `top_rgb`, as named by model.camera_keys) and, for models with low-dim input,
`pusher_pos` (2,) in metres. Output: the 2-d pusher displacement in [-1, 1] (de-normalised).
"""

from uwm_jax import envs
from uwm_jax.policies import transforms as T

STATE_WIDTHS = {"pusher_pos": 2}


def make(config, dataset_stats) -> T.RobotTransforms:
  m = config.model
  fields = ()
  if m.get("low_dim_dim"):
    fields = tuple(T.StateField(k, (T.Source(k),), STATE_WIDTHS[k])
                   for k in envs.EMBEDDED_LOW_DIM_KEYS)
    width = sum(f.width for f in fields)
    if width != m.low_dim_dim:
      raise ValueError(f"The tabletop state {envs.EMBEDDED_LOW_DIM_KEYS} has width {width}; "
                       f"model.low_dim_dim is {m.low_dim_dim}.")
  return T.RobotTransforms(
      camera_keys=tuple(m.camera_keys),
      camera_sources=T.same_key_sources(m.camera_keys), image_shape=tuple(m.image_shape),
      state_fields=fields, action_stats=T.stats_entry(dataset_stats, "action"),
      low_dim_stats=T.stats_entry(dataset_stats, "low_dim"),
      robot_action_dim=int(m.action_dim))
