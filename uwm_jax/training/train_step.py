"""One optimisation step: loss, gradients, AdamW update, EMA, non-finite guard, metrics."""

from typing import Callable, Tuple

import jax
import jax.numpy as jnp
import optax

from uwm_jax.diffusion import Schedule
from uwm_jax.training import optimizer as optim_lib
from uwm_jax.training.loss import compute_loss
from uwm_jax.training.train_state import TrainState


def cast_floats(tree, dtype):
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                      tree)


def ema_update(ema, params, decay: float):
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def make_train_step(model, schedule: Schedule, optimizer: optax.GradientTransformation, *,
                    ema_decay: float = 0.0, nan_guard: bool = False,
                    action_loss_labelled_only: bool = False) -> Callable:
  """Returns train_step(state, batch, rng) -> (state, metrics), pure (jit it).

  The step's randomness is fold_in(rng, state.step), so a step is a function of the state, the
  batch and the run's base key alone. With model.compute_dtype = "bfloat16" the forward pass
  runs on bf16 copies of the fp32 params; gradients, params and optimizer state stay fp32.
  ema_decay > 0 updates `state.ema_params` (which must exist). With nan_guard, a step whose
  loss or gradient norm is not finite leaves the whole state unchanged and reports
  metrics["finite"] = False, so the caller can stop with the last good state.
  action_loss_labelled_only: the action loss averages over action-labelled samples only
  (`loss.action_noise_loss`; default: over all, as the reference).
  metrics: loss, action_loss, dynamics_loss, grad_norm, lr (+ finite); lr is the rate this
  step applied, read from the optimizer state (`optimizer.make_optimizer` injects it).
  """
  compute_dtype = jnp.bfloat16 if model.cfg.compute_dtype == "bfloat16" else jnp.float32

  def loss_fn(params, frozen, batch, rng):
    return compute_loss(model, schedule, cast_floats(params, compute_dtype), frozen, batch, rng,
                        action_loss_labelled_only=action_loss_labelled_only)

  def train_step(state: TrainState, batch: dict, rng: jax.Array) -> Tuple[TrainState, dict]:
    step_rng = jax.random.fold_in(rng, state.step)
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.frozen, batch, step_rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                   lr=optim_lib.learning_rate(opt_state))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    if ema_decay:
      new_state = new_state.replace(ema_params=ema_update(state.ema_params, params, ema_decay))
    if nan_guard:
      finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
      new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
      metrics["finite"] = finite
    return new_state, metrics

  return train_step
