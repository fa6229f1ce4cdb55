"""AdamW and its learning-rate schedules (docs/training.md, "Optimizer").

The schedule is built once, inside the optimizer: the learning rate is an injected
hyperparameter (`optax.inject_hyperparams`), so the optimizer state carries the rate of the
step it last applied and the train step logs that value (`learning_rate`).
"""

import jax
import optax


def make_lr_schedule(optim_cfg, num_steps: int) -> optax.Schedule:
  """constant (optionally after a linear warmup from 0) or cosine: linear warmup over
  `warmup_steps`, then a half cosine to 0 at `num_steps` (diffusers' "cosine")."""
  lr, warmup = optim_cfg.learning_rate, optim_cfg.warmup_steps
  if optim_cfg.schedule == "constant":
    if not warmup:
      return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
  if optim_cfg.schedule == "cosine":
    if num_steps <= warmup:
      raise ValueError(f"cosine schedule needs num_steps ({num_steps}) > warmup_steps ({warmup}).")
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, num_steps, end_value=0.0)
  raise ValueError(f"Unknown optim.schedule {optim_cfg.schedule!r}: constant | cosine.")


def make_optimizer(optim_cfg, num_steps: int) -> optax.GradientTransformation:
  """AdamW with weight decay on every parameter (as the reference), optional global-norm clip.

  Only the learning rate is injected into the state (a scalar, `learning_rate`); the other
  hyperparameters stay constants of the update.
  """
  adamw = optax.inject_hyperparams(optax.adamw, static_args=("b1", "b2", "eps", "eps_root",
                                                            "weight_decay"))
  tx = adamw(learning_rate=make_lr_schedule(optim_cfg, num_steps), b1=optim_cfg.b1,
             b2=optim_cfg.b2, eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay)
  if optim_cfg.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(optim_cfg.grad_clip_norm), tx)
  return tx


def learning_rate(opt_state) -> jax.Array:
  """The learning rate of the last update applied with `opt_state` (after `update`: the rate
  of that step; after `init`: the rate of step 0)."""
  return optax.tree_utils.tree_get(opt_state, "hyperparams")["learning_rate"]
