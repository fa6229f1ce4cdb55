import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import perturbed_params, structured_batch, tiny_config
from uwm_jax import sampling
from uwm_jax.diffusion import make_schedule
from uwm_jax.model.uwm import UnifiedWorldModel

B = 2


@pytest.fixture(scope="module")
def setup():
  config = tiny_config()
  model = UnifiedWorldModel(config.model)
  params, frozen = model.init(jax.random.key(0))
  params = perturbed_params(params, 0.005)  # non-zero weights so outputs depend on the inputs
  return config, model, params, frozen, structured_batch(config.model, B)


def _spy_timesteps(model):
  """Wrap model.predict_noise to record the (t_action, t_obs) of every network call."""
  calls = []
  original = model.predict_noise

  def record(t_a, t_o):
    calls.append((np.asarray(t_a).tolist(), None if t_o is None else np.asarray(t_o).tolist()))

  def spy(params, cond, x_a, t_a, x_o=None, t_o=None):
    jax.debug.callback(record, t_a, t_o, ordered=False)
    return original(params, cond, x_a, t_a, x_o, t_o)

  model.predict_noise = spy
  return calls


# A held marginal modality sits at config.diffusion.marginal_timestep (90 by default, and 99);
# a conditional one at 0 and the joint mode holds none, whatever the marginal timestep.
@pytest.mark.parametrize("mode,held,marginal", [
    ("policy", ("obs", 90), 90), ("policy", ("obs", 90), 99),
    ("video_prediction", ("action", 90), 90), ("video_prediction", ("action", 90), 99),
    ("forward_dynamics", ("action", 0), 99), ("inverse_dynamics", ("obs", 0), 99),
    ("joint", None, 99)])
def test_modes_hold_other_modality_at_configured_timestep(setup, mode, held, marginal):
  config, _, params, frozen, batch = setup
  config.diffusion.marginal_timestep = marginal
  model = UnifiedWorldModel(config.model)
  calls = _spy_timesteps(model)
  sampler = sampling.make_sampler(model, config.diffusion, mode)
  out = sampler(params, frozen, batch, jax.random.key(0))
  jax.effects_barrier()
  ts = list(make_schedule(config.diffusion).timesteps)
  assert len(calls) == len(ts)
  t_a = [c[0][0] for c in calls]
  t_o = [c[1][0] for c in calls]
  assert all(len(set(c[0])) == 1 for c in calls)  # one timestep for the whole batch
  expected_held = None if held is None else (marginal if held[1] == 90 else 0)
  if held is None:
    assert t_a == ts and t_o == ts
  elif held[0] == "obs":
    assert t_a == ts and t_o == [expected_held] * len(ts)
  else:
    assert t_o == ts and t_a == [expected_held] * len(ts)
  d = model.dims
  if mode in ("policy", "inverse_dynamics", "joint"):
    assert out["action"].shape == (B, d.action_len, d.action_dim)
    assert float(jnp.abs(out["action"]).max()) <= 1.0  # x0 clipped at the last step
  if mode in ("forward_dynamics", "video_prediction", "joint"):
    assert out["latent"].shape == (B,) + d.latent_shape


@pytest.mark.parametrize("mode", sampling.MODES)
def test_sampling_is_deterministic_for_a_fixed_key(setup, mode):
  config, model, params, frozen, batch = setup
  sampler = sampling.make_sampler(model, config.diffusion, mode)
  a = sampler(params, frozen, batch, jax.random.key(3))
  b = sampler(params, frozen, batch, jax.random.key(3))
  c = sampler(params, frozen, batch, jax.random.key(4))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a[k], c[k])


def test_conditional_modes_use_their_condition(setup):
  config, model, params, frozen, batch = setup
  fwd = sampling.make_sampler(model, config.diffusion, "forward_dynamics")
  other = dict(batch, action=-batch["action"])
  assert not np.allclose(fwd(params, frozen, batch, jax.random.key(0))["latent"],
                         fwd(params, frozen, other, jax.random.key(0))["latent"])
  inv = sampling.make_sampler(model, config.diffusion, "inverse_dynamics")
  other = dict(batch, next_obs=batch["obs"])
  assert not np.allclose(inv(params, frozen, batch, jax.random.key(0))["action"],
                         inv(params, frozen, other, jax.random.key(0))["action"])
  with pytest.raises(ValueError, match="next_obs"):
    inv(params, frozen, {"obs": batch["obs"]}, jax.random.key(0))


def test_dp_baseline_supports_only_the_policy():
  config = tiny_config("dp")
  model = UnifiedWorldModel(config.model)
  assert sampling.supported_modes(model) == ("policy",)
  assert sampling.supported_modes(UnifiedWorldModel(tiny_config().model)) == sampling.MODES
  with pytest.raises(ValueError, match="DP baseline"):
    sampling.make_sampler(model, config.diffusion, "video_prediction")
  params, frozen = model.init(jax.random.key(0))
  out = sampling.make_sampler(model, config.diffusion, "policy")(
      params, frozen, structured_batch(config.model, B), jax.random.key(0))
  assert out["action"].shape == (B, config.model.action_len, config.model.action_dim)


def test_generative_modes_ignore_true_next_obs_in_the_batch(setup):
  config, model, params, frozen, batch = setup
  for mode in ("policy", "forward_dynamics", "video_prediction", "joint"):
    sampler = sampling.make_sampler(model, config.diffusion, mode)
    with_next = sampler(params, frozen, batch, jax.random.key(0))
    without = sampler(params, frozen, {k: v for k, v in batch.items() if k != "next_obs"},
                      jax.random.key(0))
    for k in with_next:
      np.testing.assert_array_equal(with_next[k], without[k])
