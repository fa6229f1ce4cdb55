"""The embedded demo: push a puck onto a goal pad, from two 32x32 camera views, on a CPU.

  python -m uwm_jax.train --config=configs/demo.py        # UWM
  python -m uwm_jax.train --config=configs/demo.py:dp     # the diffusion-policy baseline

On first use it generates 200 scripted-expert demonstrations of the embedded MuJoCo task
(`uwm_jax/evaluation/envs/`, no download) into workdirs/data/tabletop_push, trains a small UWM
(pixels codec, 4 DiT blocks of width 128) in workdirs/demo, then rolls the policy out on 50
seeded episodes it never saw and prints one line with the success rate (beside a random
policy's), offline metrics and where the rollout and forward-dynamics videos are
(workdirs/demo/eval/step_<N>/videos/). The whole run takes about 10-15 minutes on a 2-core CPU;
docs/evaluation.md lists the measured success rates. Evaluate again any time with
`python -m uwm_jax.evaluate --checkpoint_dir=workdirs/demo`.
"""

from uwm_jax import config_base
from uwm_jax.data import source_configs

DATA_PATH = "workdirs/data/tabletop_push"


def get_config(variant: str = ""):
  c = config_base.base_config()
  m = c.model
  m.camera_keys = ("front_rgb", "top_rgb")  # the embedded task's cameras
  m.image_shape = (32, 32)
  m.resize_shape = (36, 36)
  m.crop_shape = (32, 32)
  m.num_obs_frames = 2
  m.action_len = 8
  m.action_dim = 2
  m.resnet_width = 16
  m.image_feature_dim = 64
  m.codec = "pixels"
  m.pixels_downsample = 4  # next-obs "latent" = 8x8 RGB per view and frame
  m.latent_patch_shape = (2, 4, 4)  # 4 tokens per view
  m.embed_dim = 128
  m.timestep_embed_dim = 64
  m.depth = 4
  m.num_heads = 4
  m.num_registers = 4
  # Colours tell the puck (red) from the goal (green): no hue jitter, which would rotate one
  # into the other's range; mild brightness/contrast/saturation jitter only.
  m.hue = 0.0
  m.brightness = m.contrast = m.saturation = 0.1
  c.batch_size = 32
  c.num_steps = 4000
  c.optim.learning_rate = 5e-4
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 200

  c.data.sources.tabletop_push = source_configs.array_record(DATA_PATH)
  c.data.read_threads = 2

  t = c.train
  t.log_every = 100
  t.save_every = 1000
  t.eval_every = 0  # offline metrics once, at the end
  t.eval_num_batches = 4
  t.keep_last = 1
  t.keep_every = 0
  t.async_checkpointing = False

  e = c.eval
  e.env = "tabletop_push"
  e.demo_episodes = 200  # generated into DATA_PATH on first use
  e.num_episodes = 50
  e.num_envs = 25
  e.exec_steps = 4  # re-plan every 4 of the 8 predicted actions
  e.num_videos = 2
  e.offline_num_batches = 4
  e.random_baseline = True
  e.after_training = True
  config_base.apply_variant(c, variant)
  return c
