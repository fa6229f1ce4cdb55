"""AutoencoderKL (the SDXL-VAE architecture) in Flax linen.

Module and parameter names follow diffusers' AutoencoderKL state dict (`encoder.down_blocks.0.
resnets.1.conv1` -> `encoder/down_blocks_0_resnets_1/conv1`) so that weights map one to one.
Images are NHWC in [-1, 1]; latents NHWC. The SDXL VAE: block_out_channels (128, 256, 512, 512),
2 resnets per block, 4 latent channels, GroupNorm(32, eps 1e-6), ~83.65M parameters.
"""

from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

SDXL_BLOCK_OUT_CHANNELS = (128, 256, 512, 512)
SDXL_SCALING_FACTOR = 0.13025
NORM_GROUPS = 32
NORM_EPS = 1e-6


def _norm(name: str, dtype) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=NORM_GROUPS, epsilon=NORM_EPS, dtype=dtype, name=name)


def _conv(features: int, name: str, dtype, kernel: int = 3, stride: int = 1,
          padding=None) -> nn.Conv:
  if padding is None:
    padding = ((kernel // 2, kernel // 2),) * 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                 dtype=dtype, name=name)


class ResnetBlock(nn.Module):
  out_channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = _conv(self.out_channels, "conv1", self.dtype)(nn.silu(_norm("norm1", self.dtype)(x)))
    h = _conv(self.out_channels, "conv2", self.dtype)(nn.silu(_norm("norm2", self.dtype)(h)))
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, "conv_shortcut", self.dtype, kernel=1)(x)
    return x + h


class AttentionBlock(nn.Module):
  """Single-head spatial self-attention with a residual (diffusers' VAE mid-block attention)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    N, H, W, C = x.shape
    h = _norm("group_norm", self.dtype)(x).reshape(N, H * W, C)
    q = nn.Dense(C, dtype=self.dtype, name="to_q")(h)
    k = nn.Dense(C, dtype=self.dtype, name="to_k")(h)
    v = nn.Dense(C, dtype=self.dtype, name="to_v")(h)
    out = jax.nn.dot_product_attention(q[:, :, None], k[:, :, None], v[:, :, None])[:, :, 0]
    out = nn.Dense(C, dtype=self.dtype, name="to_out_0")(out)
    return x + out.reshape(N, H, W, C)


class MidBlock(nn.Module):
  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = ResnetBlock(self.channels, self.dtype, name="resnets_0")(x)
    x = AttentionBlock(self.dtype, name="attentions_0")(x)
    return ResnetBlock(self.channels, self.dtype, name="resnets_1")(x)


class Downsample(nn.Module):
  """Pad (0, 1) on bottom/right, then a 3x3 stride-2 conv (diffusers' Downsample2D, padding=0)."""
  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return _conv(self.channels, "conv", self.dtype, stride=2, padding=((0, 1), (0, 1)))(x)


class Upsample(nn.Module):
  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    N, H, W, C = x.shape
    x = jax.image.resize(x, (N, 2 * H, 2 * W, C), method="nearest")
    return _conv(self.channels, "conv", self.dtype)(x)


class Encoder(nn.Module):
  block_out_channels: Sequence[int]
  layers_per_block: int
  latent_channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    chans = self.block_out_channels
    x = _conv(chans[0], "conv_in", self.dtype)(x)
    for i, ch in enumerate(chans):
      for j in range(self.layers_per_block):
        x = ResnetBlock(ch, self.dtype, name=f"down_blocks_{i}_resnets_{j}")(x)
      if i < len(chans) - 1:
        x = Downsample(ch, self.dtype, name=f"down_blocks_{i}_downsamplers_0")(x)
    x = MidBlock(chans[-1], self.dtype, name="mid_block")(x)
    x = nn.silu(_norm("conv_norm_out", self.dtype)(x))
    return _conv(2 * self.latent_channels, "conv_out", self.dtype)(x)


class Decoder(nn.Module):
  block_out_channels: Sequence[int]
  layers_per_block: int
  out_channels: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z):
    chans = tuple(reversed(self.block_out_channels))
    x = _conv(chans[0], "conv_in", self.dtype)(z)
    x = MidBlock(chans[0], self.dtype, name="mid_block")(x)
    for i, ch in enumerate(chans):
      for j in range(self.layers_per_block + 1):
        x = ResnetBlock(ch, self.dtype, name=f"up_blocks_{i}_resnets_{j}")(x)
      if i < len(chans) - 1:
        x = Upsample(ch, self.dtype, name=f"up_blocks_{i}_upsamplers_0")(x)
    x = nn.silu(_norm("conv_norm_out", self.dtype)(x))
    return _conv(self.out_channels, "conv_out", self.dtype)(x)


class AutoencoderKL(nn.Module):
  """encode: (N, H, W, 3) in [-1, 1] -> posterior (mean, logvar), each (N, H/8, W/8, C).
  decode: (N, h, w, C) unscaled latent -> (N, 8h, 8w, 3) in about [-1, 1]."""
  block_out_channels: Tuple[int, ...] = SDXL_BLOCK_OUT_CHANNELS
  layers_per_block: int = 2
  latent_channels: int = 4
  dtype: Any = jnp.float32

  def setup(self):
    self.encoder = Encoder(self.block_out_channels, self.layers_per_block, self.latent_channels,
                           self.dtype)
    self.quant_conv = nn.Conv(2 * self.latent_channels, (1, 1), dtype=self.dtype)
    self.post_quant_conv = nn.Conv(self.latent_channels, (1, 1), dtype=self.dtype)
    self.decoder = Decoder(self.block_out_channels, self.layers_per_block, 3, self.dtype)

  def encode(self, x):
    moments = self.quant_conv(self.encoder(x))
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, z):
    return self.decoder(self.post_quant_conv(z))

  def __call__(self, x):
    mean, _ = self.encode(x)
    return self.decode(mean)
