"""Shared by the eval tests: a tiny UWM config on the embedded task."""

from uwm_jax import config_base
from uwm_jax.data import source_configs


def tiny_push_config(variant: str = ""):
  """configs/tiny.py's model on the embedded task's cameras and action space."""
  c = config_base.base_config()
  m = c.model
  m.camera_keys = ("front_rgb", "top_rgb")
  m.image_shape, m.resize_shape, m.crop_shape = (32, 32), (36, 36), (32, 32)
  m.num_obs_frames, m.action_len, m.action_dim = 2, 4, 2
  m.resnet_width, m.image_feature_dim = 8, 32
  m.codec, m.pixels_downsample = "pixels", 4
  m.embed_dim, m.timestep_embed_dim, m.depth, m.num_heads, m.num_registers = 64, 32, 2, 4, 4
  m.latent_patch_shape = (2, 2, 2)
  c.batch_size = 8
  c.data.sources.synthetic = source_configs.synthetic(num_episodes=16, episode_len=24)
  e = c.eval
  e.env = "tabletop_push"
  e.num_episodes, e.num_envs, e.max_steps, e.exec_steps = 3, 3, 12, 4
  e.num_videos = 1
  e.video_format = "gif"
  e.offline_num_batches = 1
  e.prediction_samples = 2
  e.tracking_episodes = 1
  e.random_baseline = True
  config_base.apply_variant(c, variant)
  return c
