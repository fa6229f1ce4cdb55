"""The UWM training loss (docs/model.md, "Training loss and the two timesteps"): two noise
regressions with independent timesteps."""

from typing import Tuple

import jax
import jax.numpy as jnp

from uwm_jax import batch as B_
from uwm_jax.diffusion import Schedule, add_noise


def sample_timesteps(rng: jax.Array, action_mask: jax.Array, num_train_steps: int):
  """Independent uniform t_action, t_obs in [0, T) per sample; t_action = T-1 where the sample
  is action-free video (action_mask False). -> ((B,), (B,)) int32."""
  k_a, k_o = jax.random.split(rng)
  B = action_mask.shape[0]
  t_action = jax.random.randint(k_a, (B,), 0, num_train_steps)
  t_action = jnp.where(action_mask, t_action, num_train_steps - 1)
  t_obs = jax.random.randint(k_o, (B,), 0, num_train_steps)
  return t_action, t_obs


def action_noise_loss(eps_hat: jax.Array, noise: jax.Array, action_mask: jax.Array,
                      labelled_only: bool) -> jax.Array:
  """MSE of the action noise, (B, T_a, D_a) each. labelled_only False: a plain mean over all
  elements (the reference: video samples regress action noise at t = T-1 too). True: the mean
  over the action-labelled samples only (action_mask (B,) True); 0 for a batch without any."""
  squared = jnp.square(eps_hat - noise)
  if not labelled_only:
    return jnp.mean(squared)  # one reduction, as before the option existed (same bits)
  per_sample = jnp.mean(squared, axis=tuple(range(1, eps_hat.ndim)))
  weight = action_mask.astype(per_sample.dtype)
  return jnp.sum(per_sample * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def compute_loss(model, schedule: Schedule, params: dict, frozen: dict, batch: dict,
                 rng: jax.Array, train: bool = True,
                 action_loss_labelled_only: bool = False) -> Tuple[jax.Array, dict]:
  """loss = MSE(eps_hat_action, eps_action) + MSE(eps_hat_latent, eps_latent).

  Both are plain means over all elements; by default the action term is not masked for video
  samples (they regress action noise at t = T-1, as the reference); with
  action_loss_labelled_only it averages over the labelled samples alone
  (`action_noise_loss`). Returns (loss, metrics).

  The next-obs latent is the codec's encoding of the transformed next frames, or, when the
  batch carries cached moments (`B_.NEXT_LATENT_MEAN/STD`, a latent cache), a posterior sample
  from them drawn with the same key (`model.next_latent_from_moments`): the codec is then
  skipped and only the current frames are transformed.
  """
  k_aug, k_codec, k_t, k_na, k_no = jax.random.split(rng, 5)
  cached = model.predicts_next_obs and B_.has_cached_latents(batch)
  obs_img, next_img = model.transform(
      batch[B_.OBS], batch[B_.NEXT_OBS] if model.predicts_next_obs and not cached else None,
      k_aug, train)
  cond = model.global_cond(params, obs_img, batch.get(B_.LOW_DIM))

  action = batch[B_.ACTION].astype(jnp.float32)
  t_action, t_obs = sample_timesteps(k_t, batch[B_.ACTION_MASK], schedule.num_train_steps)
  noise_a = jax.random.normal(k_na, action.shape)
  noisy_action = add_noise(schedule, action, noise_a, t_action)

  noisy_latent = noise_o = None
  if model.predicts_next_obs:
    if cached:
      latent = model.next_latent_from_moments(batch[B_.NEXT_LATENT_MEAN],
                                              batch[B_.NEXT_LATENT_STD], k_codec)
    else:
      latent = model.encode_next_obs(frozen, next_img, k_codec)
    noise_o = jax.random.normal(k_no, latent.shape)
    noisy_latent = add_noise(schedule, latent, noise_o, t_obs)

  eps_a, eps_o = model.predict_noise(params, cond, noisy_action, t_action, noisy_latent,
                                     t_obs if model.predicts_next_obs else None)
  action_loss = action_noise_loss(eps_a, noise_a, batch[B_.ACTION_MASK], action_loss_labelled_only)
  dynamics_loss = (jnp.mean(jnp.square(eps_o - noise_o)) if model.predicts_next_obs
                   else jnp.zeros((), jnp.float32))
  loss = action_loss + dynamics_loss
  return loss, {"loss": loss, "action_loss": action_loss, "dynamics_loss": dynamics_loss}
