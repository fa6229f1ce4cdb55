"""Every shape derived from a config, computed in one place.

`summarize`, the model, the data pipeline and the tests all call `model_dims(config.model)`.
"""

import dataclasses
from typing import Tuple

# The SDXL VAE downsamples by 8 and has 4 latent channels; raw pixels have 3 channels.
VAE_DOWNSAMPLE = 8
VAE_LATENT_CHANNELS = 4
PIXEL_CHANNELS = 3


@dataclasses.dataclass(frozen=True)
class ModelDims:
  num_views: int  # V
  num_obs_frames: int  # T_o (current frames = next frames)
  action_len: int  # H_a
  action_dim: int  # A
  window: int  # frames per training sample: 2 * T_o + H_a - 1
  crop_shape: Tuple[int, int]  # (H, W) of an image after transform
  latent_shape: Tuple[int, int, int, int, int]  # next-obs latent (V, C, T, h, w)
  patch_shape: Tuple[int, int, int]  # (pt, ph, pw)
  patches_per_view: int
  num_action_tokens: int
  num_obs_tokens: int
  num_register_tokens: int
  num_tokens: int
  global_cond_dim: int  # image features (+ low-dim) per sample
  timestep_embed_dim: int
  cond_dim: int  # AdaLN condition width = global_cond_dim + timestep_embed_dim
  num_timesteps: int  # timesteps fed to the network: 2 (UWM) or 1 (DP baseline)

  @property
  def patch_dim(self) -> int:
    """Values per latent patch: C * pt * ph * pw."""
    pt, ph, pw = self.patch_shape
    return self.latent_shape[1] * pt * ph * pw


def latent_shape(model_cfg) -> Tuple[int, int, int, int, int]:
  """Shape (V, C, T, h, w) of the next-obs latent the codec produces for one sample."""
  V = len(model_cfg.camera_keys)
  H, W = model_cfg.crop_shape
  T = model_cfg.num_obs_frames
  if model_cfg.codec == "sdxl_vae":
    f, C = VAE_DOWNSAMPLE, VAE_LATENT_CHANNELS
  elif model_cfg.codec == "pixels":
    f, C = model_cfg.pixels_downsample, PIXEL_CHANNELS
  else:
    raise ValueError(f"Unknown model.codec {model_cfg.codec!r}: expected 'sdxl_vae' or 'pixels'.")
  if H % f or W % f:
    raise ValueError(f"crop_shape {(H, W)} is not divisible by the codec's downsampling {f}.")
  return (V, C, T, H // f, W // f)


def model_dims(model_cfg) -> ModelDims:
  """All derived shapes; raises ValueError with the offending fields when they do not fit."""
  V = len(model_cfg.camera_keys)
  T_o = model_cfg.num_obs_frames
  lat = latent_shape(model_cfg)
  pt, ph, pw = model_cfg.latent_patch_shape
  _, _, T, h, w = lat
  if T % pt or h % ph or w % pw:
    raise ValueError(
        f"Latent (T, h, w) = {(T, h, w)} is not divisible by latent_patch_shape {(pt, ph, pw)}.")
  if model_cfg.embed_dim % model_cfg.num_heads:
    raise ValueError(f"embed_dim {model_cfg.embed_dim} not divisible by num_heads "
                     f"{model_cfg.num_heads}.")
  predict_obs = bool(model_cfg.predict_next_obs)
  patches = (T // pt) * (h // ph) * (w // pw)
  num_obs_tokens = V * patches if predict_obs else 0
  num_registers = model_cfg.num_registers
  global_cond = V * T_o * model_cfg.image_feature_dim + T_o * model_cfg.low_dim_dim
  return ModelDims(
      num_views=V,
      num_obs_frames=T_o,
      action_len=model_cfg.action_len,
      action_dim=model_cfg.action_dim,
      window=2 * T_o + model_cfg.action_len - 1,
      crop_shape=tuple(model_cfg.crop_shape),
      latent_shape=lat,
      patch_shape=(pt, ph, pw),
      patches_per_view=patches,
      num_action_tokens=model_cfg.action_len,
      num_obs_tokens=num_obs_tokens,
      num_register_tokens=num_registers,
      num_tokens=model_cfg.action_len + num_obs_tokens + num_registers,
      global_cond_dim=global_cond,
      timestep_embed_dim=model_cfg.timestep_embed_dim,
      cond_dim=global_cond + model_cfg.timestep_embed_dim,
      num_timesteps=2 if predict_obs else 1,
  )
