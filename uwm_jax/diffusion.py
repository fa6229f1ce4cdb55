"""DDIM diffusion as pure functions (docs/model.md, "Diffusion schedule and DDIM"; no diffusers).

Matches diffusers' DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2",
clip_sample=True, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading",
prediction_type="epsilon") stepped with eta = 0.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

MAX_BETA = 0.999


def squaredcos_cap_v2_betas(num_train_steps: int) -> np.ndarray:
  """(T,) float32 betas: beta_i = min(1 - abar(i+1)/abar(i), 0.999), cosine abar."""

  def abar(s):
    return math.cos((s / num_train_steps + 0.008) / 1.008 * math.pi / 2) ** 2

  betas = [min(1 - abar(i + 1) / abar(i), MAX_BETA) for i in range(num_train_steps)]
  return np.asarray(betas, dtype=np.float32)


def leading_timesteps(num_train_steps: int, num_inference_steps: int) -> np.ndarray:
  """Inference timesteps with "leading" spacing, descending: T=100, n=10 -> [90, 80, ..., 0]."""
  if not 0 < num_inference_steps <= num_train_steps:
    raise ValueError(f"num_inference_steps must be in [1, {num_train_steps}], got "
                     f"{num_inference_steps}.")
  ratio = num_train_steps // num_inference_steps
  return (np.arange(num_inference_steps) * ratio)[::-1].astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A noise schedule. Arrays are numpy so the schedule can be a static jit argument."""
  alphas_cumprod: np.ndarray  # (T,) float32
  timesteps: np.ndarray  # (n,) int32, descending inference timesteps
  clip_sample_range: float  # 0 = no clipping

  @property
  def num_train_steps(self) -> int:
    return int(self.alphas_cumprod.shape[0])

  def __hash__(self):
    return hash((self.alphas_cumprod.tobytes(), self.timesteps.tobytes(), self.clip_sample_range))

  def __eq__(self, other):
    return isinstance(other, Schedule) and hash(self) == hash(other)


def make_schedule(diffusion_cfg) -> Schedule:
  if diffusion_cfg.beta_schedule != "squaredcos_cap_v2":
    raise ValueError(f"Unsupported beta_schedule {diffusion_cfg.beta_schedule!r}.")
  T = diffusion_cfg.num_train_steps
  betas = squaredcos_cap_v2_betas(T)
  alphas_cumprod = np.cumprod(1.0 - betas, dtype=np.float32)
  return Schedule(
      alphas_cumprod=alphas_cumprod,
      timesteps=leading_timesteps(T, diffusion_cfg.num_inference_steps),
      clip_sample_range=float(diffusion_cfg.clip_sample_range),
  )


def _per_sample(values: jax.Array, ndim: int) -> jax.Array:
  """(B,) -> (B, 1, ..., 1) broadcastable against a (B, ...) array of rank ndim."""
  return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def add_noise(schedule: Schedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps; x0, noise (B, ...), t (B,) int."""
  abar = _per_sample(jnp.asarray(schedule.alphas_cumprod)[t], x0.ndim)
  return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def ddim_step(schedule: Schedule, x_t: jax.Array, eps: jax.Array, t: jax.Array,
              t_prev: jax.Array) -> jax.Array:
  """One deterministic DDIM update (eta 0) from t to t_prev; t_prev < 0 means abar_prev = 1.

  x0_hat = (x_t - sqrt(1-abar_t) eps) / sqrt(abar_t), clipped to the configured range;
  x_prev = sqrt(abar_prev) x0_hat + sqrt(1-abar_prev) eps (the unclipped eps).
  t, t_prev: scalars or (B,) ints.
  """
  ac = jnp.asarray(schedule.alphas_cumprod)
  t = jnp.asarray(t)
  t_prev = jnp.asarray(t_prev)
  abar_t = _per_sample(ac[t], x_t.ndim)
  abar_prev = _per_sample(jnp.where(t_prev >= 0, ac[jnp.maximum(t_prev, 0)], 1.0), x_t.ndim)
  x0 = (x_t - jnp.sqrt(1.0 - abar_t) * eps) / jnp.sqrt(abar_t)
  if schedule.clip_sample_range > 0:
    x0 = jnp.clip(x0, -schedule.clip_sample_range, schedule.clip_sample_range)
  return jnp.sqrt(abar_prev) * x0 + jnp.sqrt(1.0 - abar_prev) * eps
