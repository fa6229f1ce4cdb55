"""ResNet-18 with GroupNorm (docs/model.md, "Observation encoder"): the image feature encoder.

torchvision's ResNet-18 layout with every BatchNorm replaced by GroupNorm(channels/16, eps 1e-5)
and `fc` replaced by Linear(512 -> feature_dim). ImageNet normalisation happens inside.
Parameter names follow torchvision (`conv1`, `bn1`, `layer1_0/conv1`, `layer2_0/downsample_0`,
`fc`) so that torchvision weights map one to one. Images are NHWC.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from uwm_jax.model.layers import Dense, matmul

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GN_EPS = 1e-5
STAGE_BLOCKS = (2, 2, 2, 2)


def group_norm(channels: int, dtype, name: str) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=max(1, channels // 16), epsilon=GN_EPS, dtype=dtype, name=name)


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _matmul_conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
  """The same convolution as one matmul over im2col patches: (N, H', W', kh*kw*C) @
  (kh*kw*C, F). Patches are (i, j, c)-ordered like the HWIO kernel's reshape."""
  kh, kw, c, f = kernel.shape
  x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  cols = [x[:, i:i + (ho - 1) * stride + 1:stride, j:j + (wo - 1) * stride + 1:stride]
          for i in range(kh) for j in range(kw)]
  cols = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
  return matmul(cols, kernel.reshape(kh * kw * c, f))


class Conv(nn.Module):
  """A bias-free square convolution with `nn.Conv`'s parameter (`kernel` (k, k, C, F),
  LeCun-normal init) and result. On CPU it runs as one matmul over im2col patches: XLA:CPU's
  convolutions, their backward pass above all, are 2-3x slower than the same work as a matmul
  (docs/results/cpu-convolutions.md); other platforms use XLA's convolution."""
  features: int
  kernel_size: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, x.shape[-1], self.features))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    pad = k // 2
    return jax.lax.platform_dependent(
        x, kernel, cpu=lambda a, b: _matmul_conv(a, b, self.stride, pad),
        default=lambda a, b: _xla_conv(a, b, self.stride, pad))


def conv(features: int, kernel: int, stride: int, dtype, name: str) -> Conv:
  return Conv(features, kernel, stride, dtype, name=name)


class BasicBlock(nn.Module):
  features: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    identity = x
    h = conv(self.features, 3, self.stride, self.dtype, "conv1")(x)
    h = nn.relu(group_norm(self.features, self.dtype, "bn1")(h))
    h = conv(self.features, 3, 1, self.dtype, "conv2")(h)
    h = group_norm(self.features, self.dtype, "bn2")(h)
    if self.stride != 1 or x.shape[-1] != self.features:
      identity = conv(self.features, 1, self.stride, self.dtype, "downsample_0")(x)
      identity = group_norm(self.features, self.dtype, "downsample_1")(identity)
    return nn.relu(h + identity)


def coordinate_channels(n: int, h: int, w: int, dtype) -> jax.Array:
  """(N, H, W, 2) pixel-centre coordinates (x, y) in [-1, 1] (CoordConv, Liu et al. 2018)."""
  ys = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h * 2 - 1
  xs = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w * 2 - 1
  grid = jnp.stack(jnp.meshgrid(xs, ys, indexing="xy"), axis=-1).astype(dtype)  # (H, W, 2)
  return jnp.broadcast_to(grid, (n, h, w, 2))


class ResNet18GN(nn.Module):
  """(N, H, W, 3) float images in [0, 1] -> (N, feature_dim) features.

  coord_channels: append the pixel coordinates as two input channels (conv1 then takes 5
  channels, so torchvision weights no longer fit it). With small images the last stage's map is
  1x1 and global pooling keeps little of where things are; coordinates let the first layers
  write positions into the features.
  """
  feature_dim: int = 768
  width: int = 64
  dtype: Any = jnp.float32
  coord_channels: bool = False

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = (images - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    if self.coord_channels:
      n, h, w, _ = x.shape
      x = jnp.concatenate([x, coordinate_channels(n, h, w, x.dtype)], axis=-1)
    x = conv(self.width, 7, 2, self.dtype, "conv1")(x.astype(self.dtype))
    x = nn.relu(group_norm(self.width, self.dtype, "bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, blocks in enumerate(STAGE_BLOCKS):
      features = self.width * 2**stage
      for b in range(blocks):
        stride = 2 if (stage > 0 and b == 0) else 1
        x = BasicBlock(features, stride, self.dtype, name=f"layer{stage + 1}_{b}")(x)
    x = jnp.mean(x, axis=(1, 2))
    return Dense(self.feature_dim, dtype=self.dtype, name="fc")(x)
