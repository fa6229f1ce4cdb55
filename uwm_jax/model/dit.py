"""AdaLN-Zero DiT blocks (docs/model.md, "Noise network"): attention, MLP, modulation, final layer.

x: (B, N, E) tokens; c: (B, D_c) condition, the same for every token.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from uwm_jax.model.layers import dense_init, gelu_exact, zeros


def layer_norm(dtype) -> nn.LayerNorm:
  """LayerNorm without affine parameters, eps 1e-6 (statistics in fp32)."""
  return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=dtype)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """x (B, N, E) * (1 + scale (B, E)) + shift (B, E)."""
  return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


class Attention(nn.Module):
  """Full bidirectional multi-head self-attention with a fused qkv projection (bias)."""
  num_heads: int
  dtype: Any = jnp.float32
  implementation: str = "xla"  # jax.nn.dot_product_attention: xla | cudnn

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    B, N, E = x.shape
    H = self.num_heads
    qkv = nn.Dense(3 * E, kernel_init=dense_init, dtype=self.dtype, name="qkv")(x)
    q, k, v = jnp.split(qkv.reshape(B, N, 3, H, E // H), 3, axis=2)
    out = jax.nn.dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0],
                                       implementation=self.implementation)
    return nn.Dense(E, kernel_init=dense_init, dtype=self.dtype, name="proj")(out.reshape(B, N, E))


class Mlp(nn.Module):
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    E = x.shape[-1]
    h = nn.Dense(self.hidden, kernel_init=dense_init, dtype=self.dtype, name="fc1")(x)
    return nn.Dense(E, kernel_init=dense_init, dtype=self.dtype, name="fc2")(gelu_exact(h))


class AdaLNBlock(nn.Module):
  """x += g1 * Attn(mod(LN(x))); x += g2 * MLP(mod(LN(x))); modulation zero-initialised.

  Returns (x, None) so the block can be used directly under `nn.scan`.
  """
  num_heads: int
  mlp_ratio: int
  dtype: Any = jnp.float32
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array):
    E = x.shape[-1]
    mod = nn.Dense(6 * E, kernel_init=zeros, dtype=self.dtype,
                   name="adaLN_modulation")(nn.silu(c))
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
    h = modulate(layer_norm(self.dtype)(x), shift1, scale1)
    x = x + gate1[:, None, :] * Attention(self.num_heads, self.dtype, self.attention_impl,
                                          name="attn")(h)
    h = modulate(layer_norm(self.dtype)(x), shift2, scale2)
    x = x + gate2[:, None, :] * Mlp(self.mlp_ratio * E, self.dtype, name="mlp")(h)
    return x, None


class FinalLayer(nn.Module):
  """out = Linear(E -> E)(mod(LN(x))), with the modulation and the Linear zero-initialised."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    E = x.shape[-1]
    mod = nn.Dense(2 * E, kernel_init=zeros, dtype=self.dtype, name="adaLN_modulation")(nn.silu(c))
    shift, scale = jnp.split(mod, 2, axis=-1)
    h = modulate(layer_norm(self.dtype)(x), shift, scale)
    return nn.Dense(E, kernel_init=zeros, dtype=self.dtype, name="linear")(h)


class DiTStack(nn.Module):
  """`depth` AdaLN blocks, optionally scanned (params stacked on a leading depth axis under
  `blocks`) and/or rematerialised; unscanned blocks are named `blocks_0` .. `blocks_{depth-1}`."""
  depth: int
  num_heads: int
  mlp_ratio: int
  dtype: Any = jnp.float32
  attention_impl: str = "xla"
  scan: bool = True
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    block = AdaLNBlock
    if self.remat:
      block = nn.remat(block, prevent_cse=not self.scan)
    kwargs = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dtype=self.dtype,
                  attention_impl=self.attention_impl)
    if self.scan:
      scanned = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=nn.broadcast, length=self.depth)
      x, _ = scanned(**kwargs, name="blocks")(x, c)
      return x
    for i in range(self.depth):
      x, _ = block(**kwargs, name=f"blocks_{i}")(x, c)
    return x
