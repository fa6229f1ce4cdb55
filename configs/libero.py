"""UWM on LIBERO with the reference hyperparameters (uwm_spec.md 1.2; train_uwm_robomimic.yaml).

  python -m uwm_jax.inspect --config=configs/libero.py

Expect 138 tokens (16 action + 98 obs + 24 registers), AdaLN condition width 3584, next-obs
latent (2, 4, 2, 28, 28) and 309,160,135 trainable parameters (+ the frozen SDXL VAE).
"""

from uwm_jax import config_base


def get_config(variant: str = ""):
  c = config_base.base_config()
  m = c.model
  m.camera_keys = config_base.LIBERO_CAMERA_KEYS
  m.image_shape = (128, 128)
  m.resize_shape = (240, 240)
  m.crop_shape = (224, 224)
  m.action_dim = 7
  m.num_registers = 24
  config_base.apply_variant(c, variant)
  return c
