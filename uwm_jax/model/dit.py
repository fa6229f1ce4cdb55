"""AdaLN-Zero DiT blocks (docs/model.md, "Noise network"): attention, MLP, modulation, final layer.

x: (B, N, E) tokens; c: the condition, the same for every token, as a tuple of parts
((B, D_1), (B, D_2), ...) that together are the (B, D_c) condition [global_cond | timestep
embedding] (`ConditionDense`).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from uwm_jax.model.layers import Dense, dense_init, gelu_exact, matmul, zeros

# Parameter names that model/block_layout.py converts between layouts.
BLOCKS = "blocks"  # DiTStack's blocks: `blocks` (scanned, stacked) or `blocks_<i>` (unrolled)
MODULATION = "adaLN_modulation"  # ConditionDense in every block and in the head


def part_kernel(i: int) -> str:
  """ConditionDense's kernel of condition part i in the split layout."""
  return f"kernel_{i}"


def layer_norm(dtype) -> nn.LayerNorm:
  """LayerNorm without affine parameters, eps 1e-6 (statistics in fp32)."""
  return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=dtype)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """x (B, N, E) * (1 + scale (B, E)) + shift (B, E)."""
  return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


class ConditionDense(nn.Module):
  """The AdaLN modulation: nn.Dense(features) over SiLU of the condition [part_1 | part_2 | ...],
  parts ((B, D_1), (B, D_2), ...) -> (B, features), in one of two parameter layouts:

  - split=False (training and checkpoints; the reference's nn.Linear): `kernel`
    (D_1 + D_2 + ..., features), `bias`; one matmul over the concatenated condition.
  - split=True (inference, `model.block_layout.inference_layout`): `kernel_<i>` (D_i, features)
    per part, `bias`; sum_i SiLU(part_i) @ kernel_<i> + bias. The same function up to float
    rounding, but the observation condition's product is its own matmul, which does not change
    across diffusion steps: XLA hoists it out of the sampler's loop, so each step multiplies only
    the timestep embedding's rows (512 of 5120 for the DROID config, whose modulation kernels hold
    most of the parameters: `python -m uwm_jax.summarize`).
  """
  features: int
  dtype: Any = jnp.float32
  split: bool = False

  @nn.compact
  def __call__(self, parts: Sequence[jax.Array]) -> jax.Array:
    dims = [p.shape[-1] for p in parts]
    if not self.split:
      x = nn.silu(jnp.concatenate(parts, axis=-1))
      kernel = self.param("kernel", zeros, (sum(dims), self.features))
      terms = [matmul(x.astype(self.dtype), kernel.astype(self.dtype))]
    else:
      terms = [matmul(nn.silu(part).astype(self.dtype),
                       self.param(part_kernel(i), zeros, (d, self.features)).astype(self.dtype))
               for i, (part, d) in enumerate(zip(parts, dims))]
    bias = self.param("bias", zeros, (self.features,))
    return sum(terms[1:], terms[0]) + bias.astype(self.dtype)


class Attention(nn.Module):
  """Full bidirectional multi-head self-attention with a fused qkv projection (bias)."""
  num_heads: int
  dtype: Any = jnp.float32
  implementation: str = "xla"  # jax.nn.dot_product_attention: xla | cudnn

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    B, N, E = x.shape
    H = self.num_heads
    qkv = Dense(3 * E, kernel_init=dense_init, dtype=self.dtype, name="qkv")(x)
    q, k, v = jnp.split(qkv.reshape(B, N, 3, H, E // H), 3, axis=2)
    out = jax.nn.dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0],
                                       implementation=self.implementation)
    return Dense(E, kernel_init=dense_init, dtype=self.dtype, name="proj")(out.reshape(B, N, E))


class Mlp(nn.Module):
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    E = x.shape[-1]
    h = Dense(self.hidden, kernel_init=dense_init, dtype=self.dtype, name="fc1")(x)
    return Dense(E, kernel_init=dense_init, dtype=self.dtype, name="fc2")(gelu_exact(h))


class AdaLNBlock(nn.Module):
  """x += g1 * Attn(mod(LN(x))); x += g2 * MLP(mod(LN(x))); modulation zero-initialised.

  Returns (x, None) so the block can be used directly under `nn.scan`.
  """
  num_heads: int
  mlp_ratio: int
  dtype: Any = jnp.float32
  attention_impl: str = "xla"
  split_modulation: bool = False  # ConditionDense's layout

  @nn.compact
  def __call__(self, x: jax.Array, c: Sequence[jax.Array]):
    E = x.shape[-1]
    mod = ConditionDense(6 * E, self.dtype, self.split_modulation, name=MODULATION)(c)
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
  split_modulation: bool = False  # ConditionDense's layout

  @nn.compact
  def __call__(self, x: jax.Array, c: Sequence[jax.Array]) -> jax.Array:
    E = x.shape[-1]
    mod = ConditionDense(2 * E, self.dtype, self.split_modulation, name=MODULATION)(c)
    shift, scale = jnp.split(mod, 2, axis=-1)
    h = modulate(layer_norm(self.dtype)(x), shift, scale)
    return Dense(E, kernel_init=zeros, dtype=self.dtype, name="linear")(h)


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
  split_modulation: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, c: Sequence[jax.Array]) -> jax.Array:
    block = AdaLNBlock
    if self.remat:
      block = nn.remat(block, prevent_cse=not self.scan)
    kwargs = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dtype=self.dtype,
                  attention_impl=self.attention_impl, split_modulation=self.split_modulation)
    if self.scan:
      scanned = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=nn.broadcast, length=self.depth)
      x, _ = scanned(**kwargs, name=BLOCKS)(x, c)
      return x
    for i in range(self.depth):
      x, _ = block(**kwargs, name=f"{BLOCKS}_{i}")(x, c)
    return x
