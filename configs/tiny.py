"""A tiny UWM for tests and quick CPU runs (pixels codec, 2 DiT blocks, 32x32 images).

  python -m uwm_jax.summarize --config=configs/tiny.py
  python -m uwm_jax.summarize --config=configs/tiny.py:dp

Compiles in seconds and trains at tens of steps/s on a laptop CPU. A whole training run on
synthetic data (no files), with checkpoints at steps 100 and 200 and offline evaluation:

  python -m uwm_jax.train --config=configs/tiny.py --workdir=/tmp/uwm_tiny

Expect the loss to fall from ~2 to well under 1 within 200 steps; rerunning the command
resumes (here: finds step 200 and stops at once).
"""

from uwm_jax import config_base
from uwm_jax.data import source_configs


def get_config(variant: str = ""):
  c = config_base.base_config()
  m = c.model
  m.camera_keys = ("agentview_rgb", "eye_in_hand_rgb")
  m.image_shape = (32, 32)
  m.resize_shape = (36, 36)
  m.crop_shape = (32, 32)
  m.num_obs_frames = 2
  m.action_len = 4
  m.action_dim = 4
  m.resnet_width = 8
  m.image_feature_dim = 32
  m.codec = "pixels"
  m.pixels_downsample = 4
  m.embed_dim = 64
  m.timestep_embed_dim = 32
  m.depth = 2
  m.num_heads = 4
  m.num_registers = 4
  m.latent_patch_shape = (2, 2, 2)
  c.batch_size = 8
  # Data: deterministic moving shapes, no files (windows of 2 * 2 + 4 - 1 = 7 frames).
  c.data.sources.synthetic = source_configs.synthetic(num_episodes=16, episode_len=24)
  c.data.num_workers = 0  # rendering 32x32 frames in the main process beats starting workers
  c.num_steps = 200
  c.optim.learning_rate = 1e-3
  # Training loop: frequent logs/checkpoints/evaluation so a 200-step CPU run shows all of them.
  t = c.train
  t.log_every = 10
  t.save_every = 100
  t.eval_every = 100
  t.eval_num_batches = 2
  t.keep_last = 2
  t.keep_every = 0
  config_base.apply_variant(c, variant)
  return c
