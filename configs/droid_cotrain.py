"""UWM pretraining on DROID robot data cotrained with action-free DROID video (docs/training.md).

The reference's mixture: 2000 DROID episodes recorded at "WEIRD" as robot data and 2000 other
DROID episodes with their actions removed as video, sampled uniformly over the union of windows
(about 1:1). Video samples carry action_mask False, so they train with the action timestep held
at T-1 and only the dynamics loss is informative for them. Validation = the robot split only.

  python -m uwm_jax.data.convert_rlds droid --data_dir=/data/tfds --builder=droid \\
      --out=/data/uwm/droid_video --exclude=WEIRD --max_episodes=2000 --action_free
  python -m uwm_jax.train --config=configs/droid_cotrain.py --workdir=/ckpt/uwm_droid_cotrain \\
      --config.data.sources.droid.path=/data/uwm/droid_weird \\
      --config.data.sources.droid_video.path=/data/uwm/droid_video \\
      --config.init_from=/ckpt/uwm_init_droid/checkpoints

Same model, batch, schedule and cost per step as configs/droid.py. The paper's cotrained UWM
beats the pretrained-only one on every real task after finetuning (Table I: e.g. Stack-Bowls
0.92 vs 0.86 in distribution); expect the validation action MSE to be close to the
robot-only run (video adds no action supervision) and the image MSEs to be lower.
"""

from configs import droid
from uwm_jax.data import source_configs

# The command that writes the action-free video split (docs/data.md); DIR is the folder that
# --config.data.sources.droid_video.path names.
CONVERT_VIDEO_SPLIT = ("python -m uwm_jax.data.convert_rlds droid --data_dir=/data/tfds "
                       "--builder=droid --out=DIR --exclude=WEIRD --max_episodes=2000 "
                       "--action_free")


def get_config(variant: str = ""):
  c = droid.get_config(variant)
  c.data.sources.droid.weight = 1.0
  c.data.sources.droid_video = source_configs.array_record(
      "", weight=1.0, action_free=True, write_command=CONVERT_VIDEO_SPLIT)
  return c
