"""Shared test utilities: configs and structured synthetic batches (no files)."""

import numpy as np

from configs import tiny
from uwm_jax import batch as batch_lib


def tiny_config(variant: str = "", augment: bool = True):
  c = tiny.get_config(variant)
  if not augment:
    c.model.random_crop = False
    c.model.resize_shape = c.model.crop_shape
    c.model.brightness = c.model.contrast = c.model.saturation = c.model.hue = 0.0
  return c


def structured_batch(model_cfg, batch_size: int, seed: int = 0, action_mask=None) -> dict:
  """A batch of smooth moving-pattern images and uniform actions in [-1, 1]."""
  rng = np.random.default_rng(seed)
  shapes = batch_lib.expected_shapes(model_cfg, batch_size)
  B, V, T, H, W, _ = shapes[batch_lib.OBS]
  yy, xx = np.mgrid[0:H, 0:W] / max(H, W)
  phase = rng.uniform(0, 2 * np.pi, (B, V, 1, 1, 1, 3))
  freq = rng.uniform(2, 8, (B, V, 1, 1, 1, 1))

  def frames(t0):
    t = (np.arange(T) + t0)[None, None, :, None, None, None]
    pattern = np.sin(freq * xx[..., None] + phase + 0.3 * t) * np.cos(4 * yy[..., None] + phase)
    return (127.5 + 120 * pattern).astype(np.uint8)

  batch = {
      batch_lib.OBS: frames(0),
      batch_lib.NEXT_OBS: frames(model_cfg.action_len + 1),
      batch_lib.ACTION: rng.uniform(-1, 1, shapes[batch_lib.ACTION]).astype(np.float32),
      batch_lib.ACTION_MASK: (np.ones(B, bool) if action_mask is None
                              else np.asarray(action_mask, bool)),
  }
  if model_cfg.low_dim_dim:
    batch[batch_lib.LOW_DIM] = rng.uniform(-1, 1, shapes[batch_lib.LOW_DIM]).astype(np.float32)
  return batch
