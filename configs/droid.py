"""UWM pretraining on DROID with the reference hyperparameters (uwm_spec.md 1.2, 3).

  python -m uwm_jax.inspect --config=configs/droid.py
  python -m uwm_jax.inspect --config=configs/droid.py:dp      # the DP baseline

Data: DROID (TFDS, as published) converted once (docs/data.md), e.g. the reference's robot split:
  python -m uwm_jax.data.convert droid --data_dir=/data/tfds --builder=droid \
      --out=/data/uwm/droid_weird --include=WEIRD --max_episodes=2000 --num_processes=8
  ... --config.data.sources.droid.path=/data/uwm/droid_weird
Cotraining adds the action-free split (`--exclude=WEIRD --action_free` into droid_video) as
  config.data.sources.video = source_configs.array_record("/data/uwm/droid_video",
                                                          action_free=True)

Expect 171 tokens (16 action + 147 obs + 8 registers), AdaLN condition width 5120, next-obs
latent (3, 4, 2, 28, 28) and 396,485,578 trainable parameters (+ the frozen 83.65M SDXL VAE).
The `dp` variant is the diffusion-policy baseline: action tokens only, one timestep.
"""

from uwm_jax import config_base
from uwm_jax.data import source_configs


def get_config(variant: str = ""):
  c = config_base.base_config()
  m = c.model
  m.camera_keys = config_base.DROID_CAMERA_KEYS
  m.image_shape = (180, 320)
  m.resize_shape = (240, 320)
  m.crop_shape = (224, 224)
  m.action_dim = 10
  m.num_registers = 8
  c.data.sources.droid = source_configs.array_record("")
  config_base.apply_variant(c, variant)
  return c
