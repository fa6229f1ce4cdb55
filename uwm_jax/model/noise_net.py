"""The dual noise-prediction network (docs/model.md, "Noise network"; the reference's
DualNoisePredictionNet).

With `predict_next_obs=False` the same module is the DP baseline (docs/model.md): action tokens only
and one timestep.
"""

from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from uwm_jax import dims as dims_lib
from uwm_jax.model.dit import DiTStack, FinalLayer
from uwm_jax.model.layers import Dense, MishMLP, TimestepEmbedder, dense_init, dtype_of
from uwm_jax.model.patchify import patchify, unpatchify


class NoisePredictionNet(nn.Module):
  """Predicts the noise of the action chunk and of the next-obs latent.

  Sequence = [H_a action tokens | V * patches obs tokens | R registers] + learned pos-embed,
  through `depth` AdaLN-Zero blocks conditioned on c = [global_cond | timestep embedding].
  At initialisation both outputs are exactly zero.
  """
  model_cfg: object  # the `config.model` ConfigDict (hashable)

  @nn.compact
  def __call__(self, global_cond: jax.Array, noisy_action: jax.Array, t_action: jax.Array,
               noisy_latent: Optional[jax.Array] = None,
               t_obs: Optional[jax.Array] = None) -> Tuple[jax.Array, Optional[jax.Array]]:
    """global_cond (B, Dg); noisy_action (B, H_a, A); t_action (B,) int;
    noisy_latent (B, V, C, T, h, w); t_obs (B,) int.
    Returns eps_action (B, H_a, A) float32 and eps_latent (B, V, C, T, h, w) float32 (or None)."""
    cfg = self.model_cfg
    d = dims_lib.model_dims(cfg)
    dtype = dtype_of(cfg.compute_dtype)
    E = cfg.embed_dim
    B = noisy_action.shape[0]
    predict_obs = d.num_timesteps == 2

    timesteps = [t_action, t_obs] if predict_obs else [t_action]
    timesteps = [jnp.broadcast_to(jnp.asarray(t), (B,)) for t in timesteps]
    temb = TimestepEmbedder(cfg.timestep_embed_dim, dtype, name="timestep_embedding")(timesteps)
    # c = [global_cond | temb], kept as its two parts (dit.ConditionDense: in the inference
    # layout each part has its own kernel).
    c = (global_cond.astype(temb.dtype), temb)

    hidden = 4 * max(d.action_dim, E)
    tokens = [MishMLP(hidden, E, dtype, name="action_encoder")(noisy_action)]
    if predict_obs:
      patches = patchify(noisy_latent, d.patch_shape)
      tokens.append(Dense(E, kernel_init=dense_init, dtype=dtype,
                             name="patch_encoder")(patches))
    if d.num_register_tokens:
      registers = self.param("registers", dense_init, (1, d.num_register_tokens, E))
      tokens.append(jnp.broadcast_to(registers, (B,) + registers.shape[1:]).astype(dtype))
    x = jnp.concatenate([t.astype(dtype) for t in tokens], axis=1)
    x = x + self.param("pos_embed", dense_init, (1, d.num_tokens, E)).astype(dtype)

    x = DiTStack(cfg.depth, cfg.num_heads, cfg.mlp_ratio, dtype, cfg.attention_impl,
                 scan=cfg.scan_layers, remat=cfg.remat, split_modulation=cfg.split_modulation,
                 name="dit")(x, c)
    x = FinalLayer(dtype, cfg.split_modulation, name="head")(x, c)

    H_a = d.num_action_tokens
    eps_action = MishMLP(hidden, d.action_dim, dtype, name="action_decoder")(x[:, :H_a])
    if not predict_obs:
      return eps_action.astype(jnp.float32), None
    obs_tokens = x[:, H_a:H_a + d.num_obs_tokens]
    eps_patches = Dense(d.patch_dim, kernel_init=dense_init, dtype=dtype,
                           name="patch_decoder")(obs_tokens)
    eps_latent = unpatchify(eps_patches, d.latent_shape, d.patch_shape)
    return eps_action.astype(jnp.float32), eps_latent.astype(jnp.float32)
