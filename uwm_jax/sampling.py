"""The five inference modes of UWM (docs/model.md, "The five inference modes"), each a jitted
DDIM loop in `lax.scan`.

| mode              | denoised          | the other modality                 | its timestep        |
|-------------------|-------------------|------------------------------------|---------------------|
| policy            | action            | next-obs latent = one N(0,I) draw  | marginal_timestep   |
| forward_dynamics  | next-obs latent   | the given clean action             | conditional_timestep|
| inverse_dynamics  | action            | latent of the given next obs       | conditional_timestep|
| video_prediction  | next-obs latent   | action = one N(0,I) draw           | marginal_timestep   |
| joint             | both              | -                                  | same t as the other |

Observations are transformed in eval mode (centre crop, no jitter). Latents are returned in the
codec's latent space; `UnifiedWorldModel.decode_latent` turns them into frames.
"""

import dataclasses
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from uwm_jax import batch as B_
from uwm_jax.diffusion import Schedule, ddim_step, make_schedule

POLICY = "policy"
FORWARD_DYNAMICS = "forward_dynamics"
INVERSE_DYNAMICS = "inverse_dynamics"
VIDEO_PREDICTION = "video_prediction"
JOINT = "joint"
MODES = (POLICY, FORWARD_DYNAMICS, INVERSE_DYNAMICS, VIDEO_PREDICTION, JOINT)


@dataclasses.dataclass(frozen=True)
class ModeSpec:
  denoise_action: bool
  denoise_obs: bool
  needs: tuple  # batch keys the mode reads besides obs (and low_dim)


MODE_SPECS = {
    POLICY: ModeSpec(True, False, ()),
    FORWARD_DYNAMICS: ModeSpec(False, True, (B_.ACTION,)),
    INVERSE_DYNAMICS: ModeSpec(True, False, (B_.NEXT_OBS,)),
    VIDEO_PREDICTION: ModeSpec(False, True, ()),
    JOINT: ModeSpec(True, True, ()),
}


def mode_timesteps(mode: str, schedule: Schedule, diffusion_cfg):
  """Per DDIM step, the (t_action, t_obs) the network sees: two (n,) int32 arrays."""
  spec = MODE_SPECS[mode]
  ts = schedule.timesteps
  conditional = mode in (FORWARD_DYNAMICS, INVERSE_DYNAMICS)
  held = diffusion_cfg.conditional_timestep if conditional else diffusion_cfg.marginal_timestep
  held = np.full_like(ts, held)
  return (ts if spec.denoise_action else held), (ts if spec.denoise_obs else held)


def _prev_timesteps(schedule: Schedule) -> np.ndarray:
  """t - T // n for each inference timestep (negative = final step, abar_prev = 1)."""
  ratio = schedule.num_train_steps // len(schedule.timesteps)
  return schedule.timesteps - ratio


def make_sampler(model, diffusion_cfg, mode: str, unroll: bool = False) -> Callable:
  """Returns a jitted fn(params, frozen, batch, rng) -> {"action": (B, H_a, A)} and/or
  {"latent": (B, V, C, T, h, w)} for `mode`. `batch` holds `obs` (and `low_dim`), plus `action`
  for forward dynamics and `next_obs` for inverse dynamics. unroll: unroll the DDIM loop (the
  same result; XLA's cost analysis then counts every step, `uwm_jax.compile`)."""
  if mode not in MODES:
    raise ValueError(f"Unknown sampling mode {mode!r}; known: {MODES}.")
  spec = MODE_SPECS[mode]
  if spec.denoise_obs or B_.NEXT_OBS in spec.needs:
    if not model.predicts_next_obs:
      raise ValueError(f"Mode {mode!r} needs a model that predicts next observations; this "
                       "config is the DP baseline (model.predict_next_obs=False).")
  schedule = make_schedule(diffusion_cfg)
  t_action_seq, t_obs_seq = mode_timesteps(mode, schedule, diffusion_cfg)
  t_prev_seq = _prev_timesteps(schedule)
  d = model.dims

  def sample(params, frozen, batch, rng):
    for key in spec.needs:
      if key not in batch:
        raise ValueError(f"Sampling mode {mode!r} needs batch[{key!r}].")
    k_tf, k_codec, k_a, k_o = jax.random.split(rng, 4)
    obs = batch[B_.OBS]
    B = obs.shape[0]
    # Only inverse dynamics reads the next frames; other modes ignore them even when present.
    next_obs = batch[B_.NEXT_OBS] if B_.NEXT_OBS in spec.needs else None
    obs_img, next_img = model.transform(obs, next_obs, k_tf, train=False)
    cond = model.global_cond(params, obs_img, batch.get(B_.LOW_DIM))

    x_a = jax.random.normal(k_a, (B, d.action_len, d.action_dim))
    if B_.ACTION in spec.needs:
      x_a = batch[B_.ACTION].astype(jnp.float32)
    x_o = None
    if model.predicts_next_obs:
      x_o = jax.random.normal(k_o, (B,) + d.latent_shape)
      if next_img is not None:
        x_o = model.encode_next_obs(frozen, next_img, k_codec)

    def step(carry, ts):
      x_a, x_o = carry
      t_a, t_o, t, t_prev = ts
      eps_a, eps_o = model.predict_noise(params, cond, x_a, jnp.full((B,), t_a), x_o,
                                         jnp.full((B,), t_o) if x_o is not None else None)
      if spec.denoise_action:
        x_a = ddim_step(schedule, x_a, eps_a, t, t_prev)
      if spec.denoise_obs:
        x_o = ddim_step(schedule, x_o, eps_o, t, t_prev)
      return (x_a, x_o), None

    xs = tuple(jnp.asarray(a) for a in (t_action_seq, t_obs_seq, schedule.timesteps, t_prev_seq))
    (x_a, x_o), _ = jax.lax.scan(step, (x_a, x_o), xs, unroll=bool(unroll))
    out = {}
    if spec.denoise_action:
      out["action"] = x_a
    if spec.denoise_obs:
      out["latent"] = x_o
    return out

  return jax.jit(sample)


def supported_modes(model) -> Tuple[str, ...]:
  """The modes `model` can sample: all of MODES, or only the policy for the DP baseline (a model
  that does not predict next observations)."""
  return MODES if model.predicts_next_obs else (POLICY,)
