import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uwm_jax import config_base
from uwm_jax.diffusion import (add_noise, ddim_step, leading_timesteps, make_schedule,
                               squaredcos_cap_v2_betas)

# docs/model.md "Diffusion schedule and DDIM": alphas_cumprod of the reference scheduler.
SPEC_ALPHAS_CUMPROD = {0: 0.99937, 10: 0.9667, 50: 0.4783, 80: 0.0851, 90: 0.01954,
                       98: 2.43e-4, 99: 2.43e-7}


@pytest.fixture(scope="module")
def schedule():
  return make_schedule(config_base.diffusion_config())


def test_alphas_cumprod_match_spec(schedule):
  for t, expected in SPEC_ALPHAS_CUMPROD.items():
    # The spec prints 3-4 significant digits.
    np.testing.assert_allclose(schedule.alphas_cumprod[t], expected, rtol=6e-3, err_msg=f"t={t}")


def test_betas_capped_and_increasing():
  betas = squaredcos_cap_v2_betas(100)
  assert betas.dtype == np.float32
  assert betas[-1] == pytest.approx(0.999)
  assert np.all(np.diff(betas) > 0)


def test_leading_timesteps():
  np.testing.assert_array_equal(leading_timesteps(100, 10), [90, 80, 70, 60, 50, 40, 30, 20, 10, 0])
  np.testing.assert_array_equal(leading_timesteps(100, 4), [75, 50, 25, 0])
  with pytest.raises(ValueError):
    leading_timesteps(100, 0)


def test_add_noise_formula(schedule):
  x0 = jnp.ones((3, 2, 5))
  noise = jnp.full((3, 2, 5), 2.0)
  t = jnp.array([0, 50, 99])
  out = add_noise(schedule, x0, noise, t)
  ac = schedule.alphas_cumprod[np.array([0, 50, 99])]
  expected = np.sqrt(ac)[:, None, None] * 1.0 + np.sqrt(1 - ac)[:, None, None] * 2.0
  np.testing.assert_allclose(out, np.broadcast_to(expected, (3, 2, 5)), rtol=1e-6)


def test_ddim_with_true_noise_recovers_x0(schedule):
  """With the exact noise as eps_hat, every DDIM step lands on the forward marginal of x0."""
  key = jax.random.key(0)
  x0 = jax.random.uniform(key, (4, 7), minval=-1, maxval=1)
  noise = jax.random.normal(jax.random.key(1), (4, 7))
  x = add_noise(schedule, x0, noise, jnp.full((4,), 90))
  ts = schedule.timesteps
  for t, t_prev in zip(ts, list(ts[1:]) + [-10]):
    x = ddim_step(schedule, x, noise, t, t_prev)
    if t_prev >= 0:
      np.testing.assert_allclose(x, add_noise(schedule, x0, noise, jnp.full((4,), t_prev)),
                                 atol=1e-5)
  np.testing.assert_allclose(x, x0, atol=1e-5)


def test_ddim_clips_x0(schedule):
  x_t = jnp.full((1, 3), 5.0)
  out = ddim_step(schedule, x_t, jnp.zeros((1, 3)), 10, -1)
  np.testing.assert_allclose(out, 1.0)  # x0_hat = 5 / sqrt(abar) clipped to 1; abar_prev = 1
