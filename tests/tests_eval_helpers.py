"""Shared by the eval tests: a tiny UWM config on the embedded task."""

from configs import tiny


def tiny_push_config(variant: str = ""):
  """configs/tiny.py's model on the embedded task's cameras and action space."""
  c = tiny.get_config(variant)
  c.model.camera_keys = ("front_rgb", "top_rgb")
  c.model.action_dim = 2
  e = c.eval
  e.env = "tabletop_push"
  e.num_episodes, e.num_envs, e.max_steps, e.exec_steps = 3, 3, 12, 4
  e.num_videos = 1
  e.video_format = "gif"
  e.offline_num_batches = 1
  e.prediction_samples = 2
  e.tracking_episodes = 1
  e.random_baseline = True
  return c
