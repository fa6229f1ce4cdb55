"""Small building blocks shared by the networks: activations, initialisers, embeddings."""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# docs/model.md "Noise network": every Linear of the noise network is N(0, 0.02) with zero bias.
dense_init = nn.initializers.normal(stddev=0.02)
zeros = nn.initializers.zeros


def mish(x: jax.Array) -> jax.Array:
  """Mish(x) = x * tanh(softplus(x)) (not a Flax built-in)."""
  return x * jnp.tanh(jax.nn.softplus(x))


def gelu_exact(x: jax.Array) -> jax.Array:
  """The erf GELU of PyTorch's default (Flax's nn.gelu defaults to the tanh approximation)."""
  return nn.gelu(x, approximate=False)


def dtype_of(name: str):
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


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
    h = nn.Dense(4 * self.dim, kernel_init=dense_init, dtype=self.dtype, name="proj_0")(emb)
    return nn.Dense(self.dim, kernel_init=dense_init, dtype=self.dtype, name="proj_2")(mish(h))


class MishMLP(nn.Module):
  """Linear(hidden) -> Mish -> Linear(out): the action encoder and decoder (per chunk step)."""
  hidden: int
  out: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.Dense(self.hidden, kernel_init=dense_init, dtype=self.dtype, name="fc_0")(x)
    return nn.Dense(self.out, kernel_init=dense_init, dtype=self.dtype, name="fc_2")(mish(h))
