"""The training/evaluation batch: key names, shapes, window layout, and validation.

A batch is a dict of arrays (numpy on the host, jax.Array on devices):

  obs          (B, V, T_o, H, W, 3) uint8    current frames, views in `model.camera_keys` order
  next_obs     (B, V, T_o, H, W, 3) uint8    the T_o frames after the action chunk
  action       (B, H_a, A) float32           normalised action chunk (zeros for action-free video)
  action_mask  (B,) bool                     False = action-free video sample
  low_dim      (B, T_o, D_low) float32       only when model.low_dim_dim > 0

With a latent cache (`data.latent_cache_dir`, `uwm_jax.data.latent_cache`) a training batch
carries the posterior moments of the next obs' latent instead of `next_obs` (whose frames are
then not decoded):

  next_latent_mean  (B, V, C, T_o, h, w) float16   `dims.model_dims(cfg).latent_shape`
  next_latent_std   (B, V, C, T_o, h, w) float16

H, W are the raw `model.image_shape`; the model resizes/crops. A training sample is a window of
`2 * T_o + H_a - 1` consecutive frames f_0..f_{w-1} of one episode (docs/data.md, "Windows and
the validation split"):
current obs = f_0..f_{T_o-1}, actions = a_{T_o-1}..a_{T_o+H_a-2} (a_i is issued at f_i),
next obs = f_{T_o+H_a-1}..f_{2T_o+H_a-2}.
"""

from typing import Mapping, NamedTuple

import numpy as np

from uwm_jax import dims as dims_lib

OBS = "obs"
NEXT_OBS = "next_obs"
ACTION = "action"
ACTION_MASK = "action_mask"
LOW_DIM = "low_dim"
NEXT_LATENT_MEAN = "next_latent_mean"
NEXT_LATENT_STD = "next_latent_std"


class WindowSlices(NamedTuple):
  obs: slice
  action: slice
  next_obs: slice
  window: int


def window_slices(num_obs_frames: int, action_len: int) -> WindowSlices:
  """Where current obs, the action chunk and next obs sit inside one window of frames."""
  t_o, h_a = num_obs_frames, action_len
  return WindowSlices(
      obs=slice(0, t_o),
      action=slice(t_o - 1, t_o - 1 + h_a),
      next_obs=slice(t_o + h_a - 1, 2 * t_o + h_a - 1),
      window=2 * t_o + h_a - 1,
  )


# The dtype of every key of a host batch (what the loader produces).
DTYPES = {OBS: np.uint8, NEXT_OBS: np.uint8, ACTION: np.float32, ACTION_MASK: np.bool_,
          LOW_DIM: np.float32, NEXT_LATENT_MEAN: np.float16, NEXT_LATENT_STD: np.float16}


def expected_shapes(model_cfg, batch_size: int, cached_latents: bool = False) -> dict:
  """The shape every key of a batch must have for this model config.

  cached_latents: the batch carries the next obs' latent moments (a latent cache) instead of
  the next-obs frames.
  """
  V = len(model_cfg.camera_keys)
  H, W = model_cfg.image_shape
  T = model_cfg.num_obs_frames
  shapes = {OBS: (batch_size, V, T, H, W, 3)}
  if cached_latents:
    latent = (batch_size,) + dims_lib.latent_shape(model_cfg)
    shapes[NEXT_LATENT_MEAN] = shapes[NEXT_LATENT_STD] = latent
  else:
    shapes[NEXT_OBS] = (batch_size, V, T, H, W, 3)
  shapes[ACTION] = (batch_size, model_cfg.action_len, model_cfg.action_dim)
  shapes[ACTION_MASK] = (batch_size,)
  if model_cfg.low_dim_dim:
    shapes[LOW_DIM] = (batch_size, T, model_cfg.low_dim_dim)
  return shapes


def has_cached_latents(batch: Mapping) -> bool:
  """Whether a batch carries cached next-obs latent moments (then the codec is skipped)."""
  return NEXT_LATENT_MEAN in batch


def validate_batch(batch: Mapping, model_cfg) -> None:
  """Raise ValueError naming the key when a batch does not fit the model config."""
  cached = has_cached_latents(batch)
  missing = [k for k in expected_shapes(model_cfg, 0, cached) if k not in batch]
  if missing:
    raise ValueError(f"Batch is missing keys {missing}; it has {sorted(batch)}.")
  B = batch[ACTION].shape[0]
  for key, shape in expected_shapes(model_cfg, B, cached).items():
    if tuple(batch[key].shape) != shape:
      raise ValueError(f"Batch key {key!r} has shape {tuple(batch[key].shape)}, the config "
                       f"expects {shape} (B, ...) ")
  images = [OBS] if cached else [OBS, NEXT_OBS]
  if any(np.dtype(batch[k].dtype) != np.uint8 for k in images):
    raise ValueError(f"Batch images {images} must be uint8 in [0, 255].")
