"""Multi-view latent video <-> token patches, as pure reshapes.

A patch flattens as (c, pt, ph, pw), the order of a PyTorch Conv3d kernel, so the patch
projection is a Dense whose kernel is the Conv3d weight reshaped (E, C*pt*ph*pw) and transposed.
Token order is view-major, then (t, h, w) raster: "b (v t h w) (c pt ph pw)".
"""

from typing import Tuple

import jax
import jax.numpy as jnp


def patchify(latent: jax.Array, patch_shape: Tuple[int, int, int]) -> jax.Array:
  """(B, V, C, T, H, W) -> (B, V * T/pt * H/ph * W/pw, C * pt * ph * pw)."""
  B, V, C, T, H, W = latent.shape
  pt, ph, pw = patch_shape
  x = latent.reshape(B, V, C, T // pt, pt, H // ph, ph, W // pw, pw)
  x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6, 8)  # B V t h w C pt ph pw
  return x.reshape(B, V * (T // pt) * (H // ph) * (W // pw), C * pt * ph * pw)


def unpatchify(tokens: jax.Array, latent_shape: Tuple[int, ...],
               patch_shape: Tuple[int, int, int]) -> jax.Array:
  """(B, N, C * pt * ph * pw) -> (B, V, C, T, H, W), the inverse of `patchify`.

  latent_shape is the per-sample (V, C, T, H, W).
  """
  V, C, T, H, W = latent_shape
  pt, ph, pw = patch_shape
  B = tokens.shape[0]
  x = tokens.reshape(B, V, T // pt, H // ph, W // pw, C, pt, ph, pw)
  x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4, 8)  # B V C t pt h ph w pw
  return x.reshape(B, V, C, T, H, W)
