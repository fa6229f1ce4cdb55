"""Small building blocks shared by the networks: activations, initialisers, embeddings."""

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# docs/model.md "Noise network": every Linear of the noise network is N(0, 0.02) with zero bias.
dense_init = nn.initializers.normal(stddev=0.02)
zeros = nn.initializers.zeros


def dot_general_f32_on_cpu(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                           preferred_element_type=None) -> jax.Array:
  """`lax.dot_general`; on CPU, bf16 operands give a float32 result that is then rounded once to
  bf16 (products summed in fp32: what a bf16 matmul is on TPU and GPU anyway).

  XLA:CPU runs a bf16-result dot on a slow path (slower than float32) and a float32-result one
  on its bf16 kernels. Other platforms keep the plain dot: compiled for v5p-8, the float32
  result made the DROID step slower and larger (both: docs/results/cpu-bf16.md).
  float32 operands: the plain dot everywhere.
  """
  def plain(a, b):
    return lax.dot_general(a, b, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type)

  out_type = preferred_element_type or jnp.result_type(lhs, rhs)
  if out_type == jnp.float32:
    return plain(lhs, rhs)

  def f32_result(a, b):
    return lax.dot_general(a, b, dimension_numbers, precision=precision,
                           preferred_element_type=jnp.float32).astype(out_type)

  return jax.lax.platform_dependent(lhs, rhs, cpu=f32_result, default=plain)


def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x (..., K) @ w (K, F) -> (..., F) through `dot_general_f32_on_cpu`."""
  return dot_general_f32_on_cpu(x, w, (((x.ndim - 1,), (0,)), ((), ())))


# nn.Dense with dot_general_f32_on_cpu: every Linear of the trained networks.
Dense = functools.partial(nn.Dense, dot_general=dot_general_f32_on_cpu)


def mish(x: jax.Array) -> jax.Array:
  """Mish(x) = x * tanh(softplus(x)) (not a Flax built-in)."""
  return x * jnp.tanh(jax.nn.softplus(x))


def gelu_exact(x: jax.Array) -> jax.Array:
  """The erf GELU of PyTorch's default (Flax's nn.gelu defaults to the tanh approximation)."""
  return nn.gelu(x, approximate=False)


# model.compute_dtype's values.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype_of(name: str):
  return COMPUTE_DTYPES[name]


def sinusoidal_embedding(t: jax.Array, dim: int) -> jax.Array:
  """(B,) raw integer timesteps -> (B, dim) float32 [sin | cos] embedding.

  Frequencies f_i = exp(-ln(10000) * i / (half - 1)), i < half = dim // 2 (docs/model.md).
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class TimestepEmbedder(nn.Module):
  """Sinusoidal embedding of each timestep, concatenated, then Linear(4*dim) -> Mish -> Linear(dim).

  UWM embeds (t_action, t_next_obs) with dim 512 each: 1024 -> 2048 -> 512. The DP baseline
  embeds one timestep. Output (B, dim).
  """
  dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, timesteps: Sequence[jax.Array]) -> jax.Array:
    emb = jnp.concatenate([sinusoidal_embedding(t, self.dim) for t in timesteps], axis=-1)
    h = Dense(4 * self.dim, kernel_init=dense_init, dtype=self.dtype, name="proj_0")(emb)
    return Dense(self.dim, kernel_init=dense_init, dtype=self.dtype, name="proj_2")(mish(h))


class MishMLP(nn.Module):
  """Linear(hidden) -> Mish -> Linear(out): the action encoder and decoder (per chunk step)."""
  hidden: int
  out: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = Dense(self.hidden, kernel_init=dense_init, dtype=self.dtype, name="fc_0")(x)
    return Dense(self.out, kernel_init=dense_init, dtype=self.dtype, name="fc_2")(mish(h))
