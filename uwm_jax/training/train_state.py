"""The train state: a pytree of step, trained params, frozen codec params and optimizer state."""

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


def create_train_state(model, optimizer: optax.GradientTransformation,
                       rng: jax.Array) -> TrainState:
  params, frozen = model.init(rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen=frozen,
                    opt_state=optimizer.init(params))
