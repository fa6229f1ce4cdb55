"""A robot recorded as a LeRobot dataset (SO-100/101, Koch, ALOHA, ...): its own keys and actions.

Everything comes from the checkpoint's config, whose LeRobot source entry training filled from
the converted dataset (`uwm_jax.data.lerobot_source`): requests carry the dataset's own keys,
  cameras  one (H, W, 3) uint8 image per camera key the entry maps onto the model's views
           (e.g. "observation.images.front"), any size (resized to model.image_shape);
  state    each state key of the entry (e.g. "observation.state": its width of numbers), for
           models with model.low_dim_dim > 0; concatenated and zero-padded as in training;
and the answer's actions are in the dataset's action space: de-normalised, the first
`action_width` numbers of the model's (zero-padded) action.
"""

import numpy as np

from uwm_jax.data import source_configs
from uwm_jax.policies import transforms as T


def source_entry(config):
  """(name, entry) of the checkpoint config's one LeRobot source, with its mapping resolved."""
  entries = [(n, config.data.sources[n]) for n in sorted(config.data.sources.keys())
             if config.data.sources[n].get("kind") == source_configs.LEROBOT]
  if len(entries) != 1:
    raise ValueError(f"--robot=lerobot needs a checkpoint trained on exactly one LeRobot source "
                     f"(kind {source_configs.LEROBOT!r}); its config has {len(entries)}.")
  name, entry = entries[0]
  if not entry.get("cameras") or not entry.get("action_width"):
    raise ValueError(f"The checkpoint's config does not record the dataset's keys "
                     f"(data.sources.{name}: cameras {tuple(entry.get('cameras', ()))}, "
                     f"action_width {entry.get('action_width')}); it was not saved by a "
                     f"training run on that source.")
  return name, entry


def make(config, dataset_stats) -> T.RobotTransforms:
  m = config.model
  _, entry = source_entry(config)
  cameras = tuple(entry.cameras)
  if len(cameras) != len(m.camera_keys):
    raise ValueError(f"The LeRobot source maps {len(cameras)} cameras onto the model's "
                     f"{len(m.camera_keys)} views.")
  action_width = int(entry.action_width)
  model_action_dim = int(m.action_dim)
  fields = ()
  if m.get("low_dim_dim"):
    fields = tuple(T.StateField(k, (T.Source(k),), int(w))
                   for k, w in zip(entry.state, entry.state_widths))

  def decode(actions):
    return actions[..., :action_width]

  def encode(actions):
    pad = [(0, 0)] * (actions.ndim - 1) + [(0, model_action_dim - action_width)]
    return np.pad(actions, pad)

  return T.RobotTransforms(
      camera_keys=tuple(m.camera_keys),
      camera_sources={view: (T.Source(cam),) for view, cam in zip(m.camera_keys, cameras)},
      image_shape=tuple(m.image_shape), state_fields=fields,
      action_stats=T.stats_entry(dataset_stats, "action"),
      low_dim_stats=T.stats_entry(dataset_stats, "low_dim"),
      robot_action_dim=action_width,
      decode=decode, encode=encode, low_dim_width=int(m.get("low_dim_dim", 0)))
