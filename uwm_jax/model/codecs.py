"""Next-observation latent codecs, chosen by `model.codec`.

A codec maps transformed next-obs frames (B, V, T, H, W, 3) in [0, 1] to the latent the
diffusion model denoises, (B, V, C, T, h, w) (see `dims.latent_shape`), and back. Codec
parameters are frozen: they live outside the optimised params (docs/model.md,
"Next-observation latents").
"""

import jax
import jax.numpy as jnp

from uwm_jax import dims as dims_lib
from uwm_jax.model.layers import dtype_of
from uwm_jax.model.vae import SDXL_SCALING_FACTOR, AutoencoderKL

# The reference's latent normalisation (docs/model.md): latent = (z * 0.13025 - shift) / scale.
VAE_LATENT_SHIFT = 0.0
VAE_LATENT_SCALE = 3.0


def _frames_to_images(frames: jax.Array) -> jax.Array:
  """(B, V, T, H, W, 3) -> (B*V*T, H, W, 3)."""
  return frames.reshape((-1,) + frames.shape[3:])


def _images_to_latent(images: jax.Array, B: int, V: int, T: int) -> jax.Array:
  """(B*V*T, h, w, C) -> (B, V, C, T, h, w)."""
  x = images.reshape((B, V, T) + images.shape[1:])
  return x.transpose(0, 1, 5, 2, 3, 4)


def _latent_to_images(latent: jax.Array) -> jax.Array:
  """(B, V, C, T, h, w) -> (B*V*T, h, w, C)."""
  x = latent.transpose(0, 1, 3, 4, 5, 2)
  return x.reshape((-1,) + x.shape[3:])


class PixelCodec:
  """Raw pixels mapped to [-1, 1], average-pooled by `pixels_downsample`. No parameters."""

  def __init__(self, model_cfg):
    self.factor = model_cfg.pixels_downsample

  def init(self, rng: jax.Array) -> dict:
    del rng
    return {}

  def encode(self, frozen: dict, frames: jax.Array, rng: jax.Array) -> jax.Array:
    del frozen, rng
    B, V, T, H, W, C = frames.shape
    f = self.factor
    x = frames.reshape(B, V, T, H // f, f, W // f, f, C).mean(axis=(4, 6))
    return (x * 2.0 - 1.0).transpose(0, 1, 5, 2, 3, 4)

  def moments(self, frozen: dict, frames: jax.Array):
    """(mean, std) of the latent (deterministic: std 0), each (B, V, C, T, h, w)."""
    latent = self.encode(frozen, frames, None)
    return latent, jnp.zeros_like(latent)

  def sample(self, mean: jax.Array, std: jax.Array, rng: jax.Array) -> jax.Array:
    del std, rng
    return mean

  def decode(self, frozen: dict, latent: jax.Array) -> jax.Array:
    """(B, V, C, T, h, w) -> (B, V, T, h*f, w*f, 3) in [0, 1] (nearest upsampling)."""
    del frozen
    x = (latent.transpose(0, 1, 3, 4, 5, 2) + 1.0) / 2.0
    f = self.factor
    x = jnp.repeat(jnp.repeat(x, f, axis=3), f, axis=4)
    return jnp.clip(x, 0.0, 1.0)


class VAECodec:
  """The frozen SDXL AutoencoderKL: encode samples the posterior (or takes its mean), scales by
  0.13025 and divides by 3; decode inverts. Images go through the VAE `vae_microbatch` at a time."""

  def __init__(self, model_cfg):
    self.module = AutoencoderKL(dtype=dtype_of(model_cfg.compute_dtype))
    self.microbatch = model_cfg.vae_microbatch
    self.sample_posterior = model_cfg.vae_sample_posterior
    self.crop_shape = tuple(model_cfg.crop_shape)

  def init(self, rng: jax.Array) -> dict:
    dummy = jnp.zeros((1,) + self.crop_shape + (3,), jnp.float32)
    return self.module.init(rng, dummy)["params"]

  def _map(self, fn, images):
    return jax.lax.map(fn, images, batch_size=min(self.microbatch, images.shape[0]))

  def moments(self, frozen: dict, frames: jax.Array):
    """(B, V, T, H, W, 3) in [0, 1] -> (mean, std) of the scaled latent posterior, each
    (B, V, C, T, h, w) float32: latent = (z * 0.13025 - shift) / scale, z ~ the VAE posterior."""
    B, V, T = frames.shape[:3]
    images = _frames_to_images(frames) * 2.0 - 1.0
    enc = lambda x: self.module.apply({"params": frozen}, x[None], method=AutoencoderKL.encode)
    mean, logvar = self._map(lambda x: jax.tree.map(lambda a: a[0], enc(x)), images)
    mean = (mean.astype(jnp.float32) * SDXL_SCALING_FACTOR - VAE_LATENT_SHIFT) / VAE_LATENT_SCALE
    std = jnp.exp(0.5 * logvar.astype(jnp.float32)) * SDXL_SCALING_FACTOR / VAE_LATENT_SCALE
    return _images_to_latent(mean, B, V, T), _images_to_latent(std, B, V, T)

  def sample(self, mean: jax.Array, std: jax.Array, rng: jax.Array) -> jax.Array:
    """A latent from posterior moments: a sample (vae_sample_posterior) or the mean."""
    if not self.sample_posterior:
      return mean
    return mean + std * jax.random.normal(rng, mean.shape, mean.dtype)

  def encode(self, frozen: dict, frames: jax.Array, rng: jax.Array) -> jax.Array:
    return self.sample(*self.moments(frozen, frames), rng)

  def decode(self, frozen: dict, latent: jax.Array) -> jax.Array:
    """(B, V, 4, T, h, w) -> (B, V, T, 8h, 8w, 3) in [0, 1] (clamped for display)."""
    B, V, _, T = latent.shape[:4]
    z = (_latent_to_images(latent) * VAE_LATENT_SCALE + VAE_LATENT_SHIFT) / SDXL_SCALING_FACTOR
    dec = lambda x: self.module.apply({"params": frozen}, x[None],
                                      method=AutoencoderKL.decode)[0]
    y = self._map(dec, z).astype(jnp.float32)
    y = jnp.clip((y + 1.0) / 2.0, 0.0, 1.0)
    return y.reshape((B, V, T) + y.shape[1:])


def make_codec(model_cfg):
  dims_lib.latent_shape(model_cfg)  # validates model.codec and the crop shape
  return {"sdxl_vae": VAECodec, "pixels": PixelCodec}[model_cfg.codec](model_cfg)
