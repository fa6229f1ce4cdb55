"""The train state: a pytree of step, trained params, frozen codec params and optimizer state
(plus an exponential moving average of the params when `train.ema_decay` > 0)."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # () int32
  params: Any  # {"image_encoder", "noise_net"}: optimised
  frozen: Any  # codec params: never optimised
  opt_state: optax.OptState
  ema_params: Any = None  # like params, or None when EMA is off

  @property
  def inference_params(self):
    """The params evaluation and inference use: the EMA when on, else the trained params."""
    return self.params if self.ema_params is None else self.ema_params


def create_train_state(model, optimizer: optax.GradientTransformation,
                       rng: jax.Array, ema: bool = False) -> TrainState:
  params, frozen = model.init(rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen=frozen,
                    opt_state=optimizer.init(params),
                    ema_params=jax.tree.map(jnp.copy, params) if ema else None)
