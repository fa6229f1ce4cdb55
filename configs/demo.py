"""The embedded demo: push a puck onto a goal pad, from two 32x32 camera views, on a CPU.

  python -m uwm_jax.train --config=configs/demo.py        # UWM
  python -m uwm_jax.train --config=configs/demo.py:dp     # the diffusion-policy baseline

On first use it generates 600 scripted-expert demonstrations of the embedded MuJoCo task
(`uwm_jax/envs/`, no download; DART-style recovery noise on the executed actions)
into workdirs/data/tabletop_push, trains a small UWM (pixels codec, 4 DiT blocks of width 128;
the two camera views plus the pusher's xy position as a low-dim observation — the puck and the
goal pad are only in the images) in workdirs/demo, then rolls the policy out on 50 seeded
episodes it never saw (re-planning every step, temporal ensembling of the chunks) and prints
one line with the success rate (beside a random policy's), offline metrics and where the
rollout and forward-dynamics videos are (workdirs/demo/eval/step_<N>/videos/); the last line
gives the wall time of each phase.

Expect 82% success (41/50; random policy 0%) in 18.3 minutes end to end, with no data or
workdir present, on an idle 2-vCPU AMD EPYC 7003 VM (2026-12-02). The rate moves with the CPU
kind and the seed: every run, per machine, in docs/results/demo-per-machine.md; how the recipe
below was chosen in docs/results/demo-recipe-rounds.md. Evaluate again any time with
`python -m uwm_jax.evaluate --checkpoint_dir=workdirs/demo`.
"""

from uwm_jax import config_base
from uwm_jax.data import source_configs

TASK = "tabletop_push"
DATA_PATH = f"workdirs/data/{TASK}"


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
  # The pusher's own xy position (envs.EMBEDDED_LOW_DIM_KEYS) as a low-dim observation
  # (docs/model.md, "Observation encoder");
  # the puck and the goal pad are only in the images.
  m.low_dim_dim = 2
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
  # Colour tells the puck (red) from the goal (green): no hue jitter (+-72 deg would rotate
  # one into the other's range), mild brightness/contrast/saturation jitter and random crops
  # (against the default jitter and none: docs/results/demo-recipe-rounds.md, first round).
  m.hue = 0.0
  m.brightness = m.contrast = m.saturation = 0.1
  c.batch_size = 32
  c.num_steps = 4000
  c.optim.learning_rate = 5e-4
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 200

  # ~6 epochs over 170 MB of frames: decode each PNG once, not every epoch (docs/data.md).
  c.data.sources[TASK] = source_configs.array_record(DATA_PATH, cache_decoded_frames=True)
  c.data.demo_task = TASK
  c.data.demo_episodes = 600  # generated into DATA_PATH on first use (~1 min)
  # DART-style recovery data: the expert's executed actions get correlated noise of this std, the
  # recorded actions stay the expert's (envs/demos.py).
  c.data.demo_action_noise = 0.5
  c.data.read_threads = 2
  c.data.num_workers = 0  # the frame cache is filled ahead in this process (workers: one each)

  t = c.train
  t.log_every = 100
  t.save_every = 1000
  t.eval_every = 0
  # The evaluator that runs right after training computes the same offline metrics
  # (e.offline_num_batches): the loop's own end-of-run pass would repeat them and compile a
  # second eval step.
  t.eval_at_end = False
  t.eval_num_batches = 4
  t.keep_last = 1
  t.keep_every = 0
  t.async_checkpointing = False
  # No EMA: the cosine schedule already anneals to 0, and EMA params did worse than the raw
  # ones of the same run (docs/results/demo-recipe-rounds.md, second round).
  t.ema_decay = 0.0
  t.compilation_cache_dir = "workdirs/compilation_cache"  # a rerun skips the compilations

  e = c.eval
  e.env = TASK
  e.num_episodes = 50
  e.num_envs = 25
  # Re-plan after every action and execute the mean of every chunk's prediction for that step
  # (ACT temporal ensembling: docs/results/demo-recipe-rounds.md, third round).
  e.exec_steps = 1
  e.temporal_ensemble = True
  e.num_videos = 2
  e.offline_num_batches = 4
  e.random_baseline = True
  e.after_training = True
  config_base.apply_variant(c, variant)
  return c
