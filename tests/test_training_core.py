import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.helpers import OPTIMIZED, structured_batch, tiny_config
from uwm_jax.diffusion import make_schedule
from uwm_jax.model.uwm import UnifiedWorldModel
from uwm_jax.training.loss import action_noise_loss, compute_loss, sample_timesteps
from uwm_jax.training.optimizer import make_lr_schedule, make_optimizer
from uwm_jax.training.train_state import create_train_state
from uwm_jax.training.train_step import make_train_step


def _setup(config):
  model = UnifiedWorldModel(config.model)
  optimizer = make_optimizer(config.optim, config.num_steps)
  schedule = make_schedule(config.diffusion)
  step = jax.jit(make_train_step(model, schedule, optimizer))
  state = create_train_state(model, optimizer, jax.random.key(config.seed))
  return model, schedule, step, state


def test_video_samples_get_last_action_timestep():
  mask = jnp.array([True, False, True, False] * 64)
  t_a, t_o = sample_timesteps(jax.random.key(0), mask, 100)
  assert jnp.all(t_a[~mask] == 99)
  assert len(np.unique(np.asarray(t_a[mask]))) > 50  # uniform over [0, 100)
  assert int(t_a.min()) >= 0 and int(t_o.max()) <= 99 and len(np.unique(np.asarray(t_o))) > 50


def test_action_loss_over_labelled_samples_only_ignores_video_samples():
  mask = jnp.array([True, False, True, False])
  noise = jax.random.normal(jax.random.key(0), (4, 8, 2))
  eps_hat = noise + jnp.arange(4.0)[:, None, None]  # per-sample squared error 0, 1, 4, 9
  assert float(action_noise_loss(eps_hat, noise, mask, labelled_only=False)) == pytest.approx(3.5)
  assert float(action_noise_loss(eps_hat, noise, mask, labelled_only=True)) == pytest.approx(2.0)
  grad = jax.grad(lambda e: action_noise_loss(e, noise, mask, labelled_only=True))(eps_hat)
  assert np.all(np.asarray(grad[~mask]) == 0) and np.all(np.asarray(grad[mask][1:]) != 0)
  no_labels = jnp.zeros(4, bool)
  assert float(action_noise_loss(eps_hat, noise, no_labels, labelled_only=True)) == 0.0


@pytest.mark.slow
def test_overfits_one_batch_both_losses_drop_10x():
  """One sample, 1,000 steps at 3e-3 (cosine): both losses fall more than 10x (over 3 seeds of
  init and data: 17-30x). The tiny model at width 128 on 16x16 images memorises one sample
  in a third of the steps the (B=8, 32x32) tiny config needs, at a fifth of the step's cost."""
  config = tiny_config(augment=False)
  model_cfg = config.model
  model_cfg.image_shape = model_cfg.resize_shape = model_cfg.crop_shape = (16, 16)
  model_cfg.embed_dim = 128
  config.num_steps = 1000
  config.optim.schedule = "cosine"
  config.optim.warmup_steps = 20
  config.optim.learning_rate = 3e-3
  model, schedule, step, state = _setup(config)
  batch = structured_batch(config.model, 1)
  # 1000 steps: optimized code (conftest's default level 0 would run them ~3x slower)
  step = step.lower(state, batch, jax.random.key(1)).compile(OPTIMIZED)
  eval_keys = [jax.random.key(100 + i) for i in range(16)]
  losses = jax.jit(lambda p, k: compute_loss(model, schedule, p, state.frozen, batch, k,
                                             train=False)[1])

  def mean_losses(params):
    ms = [losses(params, k) for k in eval_keys]
    return {n: float(np.mean([m[n] for m in ms])) for n in ("action_loss", "dynamics_loss")}

  before = mean_losses(state.params)
  for i in range(config.num_steps):
    state, metrics = step(state, batch, jax.random.fold_in(jax.random.key(1), i))
  after = mean_losses(state.params)
  assert np.isfinite(float(metrics["loss"]))
  for name in before:
    assert after[name] < before[name] / 10, (name, before[name], after[name])


def test_train_step_is_deterministic_and_reports_metrics():
  config = tiny_config()
  config.optim.schedule, config.optim.warmup_steps, config.num_steps = "cosine", 0, 6
  _, _, step, state0 = _setup(config)
  batch = structured_batch(config.model, 8, action_mask=[True] * 6 + [False] * 2)
  s1, m1 = step(state0, batch, jax.random.key(7))
  _, _, _, state0b = _setup(config)
  s2, m2 = step(state0b, batch, jax.random.key(7))
  assert set(m1) == {"loss", "action_loss", "dynamics_loss", "grad_norm", "lr"}
  for k in m1:
    assert float(m1[k]) == float(m2[k])
  jax.tree.map(np.testing.assert_array_equal, s1.params, s2.params)
  _, m3 = step(s1, batch, jax.random.key(7))  # next step: new timesteps/noise
  assert float(m3["loss"]) != float(m1["loss"])
  assert int(s1.step) == 1
  # The logged rate is the one applied, read from the optimizer state: the schedule's value.
  lr = make_lr_schedule(config.optim, config.num_steps)
  assert float(lr(0)) != float(lr(1))
  assert float(m1["lr"]) == pytest.approx(float(lr(0)))
  assert float(m3["lr"]) == pytest.approx(float(lr(1)))
  assert float(m1["loss"]) == pytest.approx(float(m1["action_loss"] + m1["dynamics_loss"]))


def test_dp_baseline_trains_actions_only():
  config = tiny_config("dp")
  _, _, step, state = _setup(config)
  state, metrics = step(state, structured_batch(config.model, 8), jax.random.key(0))
  assert float(metrics["dynamics_loss"]) == 0.0 and float(metrics["action_loss"]) > 0


def test_bf16_step_keeps_fp32_params():
  config = tiny_config()
  config.model.compute_dtype = "bfloat16"
  _, _, step, state = _setup(config)
  state, metrics = step(state, structured_batch(config.model, 8), jax.random.key(0))
  assert np.isfinite(float(metrics["loss"]))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.opt_state)
             if jnp.issubdtype(x.dtype, jnp.floating))


def test_schedules():
  c = tiny_config().optim
  c.schedule, c.warmup_steps, c.learning_rate = "cosine", 10, 1.0
  lr = make_lr_schedule(c, 110)
  assert float(lr(0)) == 0.0
  assert float(lr(5)) == pytest.approx(0.5)
  assert float(lr(10)) == pytest.approx(1.0)
  assert float(lr(60)) == pytest.approx(0.5, abs=1e-6)
  assert float(lr(110)) == pytest.approx(0.0, abs=1e-6)
  c.schedule, c.warmup_steps = "constant", 0
  assert float(make_lr_schedule(c, 10)(7)) == 1.0
  c.schedule = "linear"
  with pytest.raises(ValueError, match="schedule"):
    make_lr_schedule(c, 10)


def test_grad_clipping_bounds_the_gradient_the_optimizer_sees():
  """The project's optimizer clips before AdamW: its first moment after one step is
  (1 - b1) * the clipped gradient (Adam's update itself is scale-free, so look at its state)."""
  c = tiny_config().optim
  c.grad_clip_norm = 1e-3
  params = {"w": jnp.ones(4)}
  g = {"w": jnp.full(4, 100.0)}  # global norm 200
  tx = make_optimizer(c, 10)
  _, opt_state = tx.update(g, tx.init(params), params)
  mu = optax.tree_utils.tree_get(opt_state, "mu")["w"]
  np.testing.assert_allclose(mu, (1 - c.b1) * np.full(4, 1e-3 / 2), rtol=1e-5)
  c.grad_clip_norm = 0.0  # no clipping: the raw gradient
  tx = make_optimizer(c, 10)
  _, opt_state = tx.update(g, tx.init(params), params)
  np.testing.assert_allclose(optax.tree_utils.tree_get(opt_state, "mu")["w"],
                             (1 - c.b1) * np.full(4, 100.0), rtol=1e-5)
