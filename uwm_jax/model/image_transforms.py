"""Image transforms in JAX (docs/model.md, "Observation encoder"): resize, crop, colour jitter.

Granularity differs from the reference on purpose: the reference draws ONE crop offset and ONE
jitter parameter set per camera per training step (shared by every sample of the batch); here each
(sample, view) pair gets its own draw. Within a (sample, view) the current and next frames share
the crop and the jitter, as in the reference, so the temporal consistency the model relies on is
kept. Jitter ops run in a fixed order (brightness, contrast, saturation, hue) instead of
torchvision's random order.
"""

from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # numpy: no device work at import


def to_unit_float(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1]."""
  return images.astype(jnp.float32) / 255.0


def resize(images: jax.Array, shape: Tuple[int, int]) -> jax.Array:
  """(..., H, W, 3) -> (..., h, w, 3), bilinear with antialiasing (torchvision antialias=True)."""
  if tuple(images.shape[-3:-1]) == tuple(shape):
    return images
  out = images.shape[:-3] + tuple(shape) + images.shape[-1:]
  return jax.image.resize(images, out, method="bilinear", antialias=True)


def crop(images: jax.Array, offset: jax.Array, shape: Tuple[int, int]) -> jax.Array:
  """(T, H, W, 3) clip -> (T, h, w, 3) window at offset (2,) int (top, left)."""
  T, _, _, C = images.shape
  return jax.lax.dynamic_slice(images, (0, offset[0], offset[1], 0), (T,) + tuple(shape) + (C,))


def center_offset(image_shape: Tuple[int, int], crop_shape: Tuple[int, int]) -> jax.Array:
  return jnp.array([(image_shape[0] - crop_shape[0]) // 2, (image_shape[1] - crop_shape[1]) // 2])


def random_offset(rng: jax.Array, image_shape: Tuple[int, int],
                  crop_shape: Tuple[int, int]) -> jax.Array:
  maxval = jnp.array([image_shape[0] - crop_shape[0] + 1, image_shape[1] - crop_shape[1] + 1])
  return jax.random.randint(rng, (2,), 0, maxval)


def grayscale(images: jax.Array) -> jax.Array:
  """(..., 3) -> (..., 1)."""
  return jnp.sum(images * _LUMA, axis=-1, keepdims=True)


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  maxc = jnp.max(rgb, axis=-1)
  minc = jnp.min(rgb, axis=-1)
  delta = maxc - minc
  safe_delta = jnp.where(delta > 0, delta, 1.0)
  s = jnp.where(maxc > 0, delta / jnp.where(maxc > 0, maxc, 1.0), 0.0)
  rc, gc, bc = (maxc - r) / safe_delta, (maxc - g) / safe_delta, (maxc - b) / safe_delta
  h = jnp.where(r == maxc, bc - gc, jnp.where(g == maxc, 2.0 + rc - bc, 4.0 + gc - rc))
  h = jnp.where(delta > 0, (h / 6.0) % 1.0, 0.0)
  return jnp.stack([h, s, maxc], axis=-1)


def _pick(i: jax.Array, options) -> jax.Array:
  """options[i] per element, i in [0, len(options)), as a chain of selects. (`jnp.choose`
  lowers to a gather with a full index array per element: on a v5p the colour jitter of a
  DROID batch then took longer than the rest of the step,
  docs/results/tpu-image-transforms-fix.md.)"""
  out = options[-1]
  for k in range(len(options) - 2, -1, -1):
    out = jnp.where(i == k, options[k], out)
  return out


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  i = jnp.floor(h * 6.0)
  f = h * 6.0 - i
  p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
  i = i.astype(jnp.int32) % 6
  r = _pick(i, [v, q, p, p, t, v])
  g = _pick(i, [t, v, v, q, p, p])
  b = _pick(i, [p, p, t, v, v, q])
  return jnp.stack([r, g, b], axis=-1)


def color_jitter(images: jax.Array, brightness: jax.Array, contrast: jax.Array,
                 saturation: jax.Array, hue: jax.Array) -> jax.Array:
  """Jitter a (T, H, W, 3) clip in [0, 1] with scalar factors (1 = identity) and hue shift (0)."""
  x = jnp.clip(images * brightness, 0.0, 1.0)
  mean = jnp.mean(grayscale(x), axis=(-3, -2, -1), keepdims=True)
  x = jnp.clip((x - mean) * contrast + mean, 0.0, 1.0)
  gray = grayscale(x)
  x = jnp.clip((x - gray) * saturation + gray, 0.0, 1.0)
  hsv = rgb_to_hsv(x)
  hsv = hsv.at[..., 0].set((hsv[..., 0] + hue) % 1.0)
  return hsv_to_rgb(hsv)


def sample_jitter(rng: jax.Array, brightness: float, contrast: float, saturation: float,
                  hue: float):
  """Factors uniform in [1-b, 1+b] (b, c, s) and a hue shift uniform in [-hue, hue]."""
  kb, kc, ks, kh = jax.random.split(rng, 4)
  u = lambda k, lo, hi: jax.random.uniform(k, (), minval=lo, maxval=hi)
  return (u(kb, 1 - brightness, 1 + brightness), u(kc, 1 - contrast, 1 + contrast),
          u(ks, 1 - saturation, 1 + saturation), u(kh, -hue, hue))


def transform_clip(clip: jax.Array, rng: jax.Array, model_cfg, train: bool) -> jax.Array:
  """One view's frames (T, H, W, 3) uint8 -> (T, h, w, 3) float32 in [0, 1].

  All T frames share the crop and the jitter (pass current and next frames together).
  """
  x = resize(to_unit_float(clip), model_cfg.resize_shape)
  resized, cropped = tuple(model_cfg.resize_shape), tuple(model_cfg.crop_shape)
  k_crop, k_jit = jax.random.split(rng)
  if train and model_cfg.random_crop:
    offset = random_offset(k_crop, resized, cropped)
  else:
    offset = center_offset(resized, cropped)
  x = crop(x, offset, cropped)
  if train and (model_cfg.brightness or model_cfg.contrast or model_cfg.saturation
                or model_cfg.hue):
    x = color_jitter(x, *sample_jitter(k_jit, model_cfg.brightness, model_cfg.contrast,
                                       model_cfg.saturation, model_cfg.hue))
  return x


def transform_views(frames: jax.Array, rng: jax.Array, model_cfg, train: bool) -> jax.Array:
  """(B, V, T, H, W, 3) uint8 -> (B, V, T, h, w, 3) float32, one draw per (sample, view).

  In eval mode (train=False) the rng is unused: centre crop, no jitter.
  """
  B, V = frames.shape[:2]
  keys = jax.random.split(rng, (B, V))
  fn = lambda clip, key: transform_clip(clip, key, model_cfg, train)
  return jax.vmap(jax.vmap(fn))(frames, keys)
