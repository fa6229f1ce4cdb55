"""The train state created directly in its sharded layout, and the sharded, jitted train step."""

import logging
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import optax
from jax.sharding import Mesh

from uwm_jax.training import mesh as mesh_lib
from uwm_jax.training import sharding as sharding_lib
from uwm_jax.training.train_state import TrainState, create_train_state

log = logging.getLogger(__name__)


def abstract_train_state(model, optimizer: optax.GradientTransformation,
                         ema: bool = False) -> TrainState:
  """The TrainState's shapes and dtypes (nothing allocated)."""
  return jax.eval_shape(lambda k: create_train_state(model, optimizer, k, ema),
                        jax.random.key(0))


def train_state_shardings(abstract: TrainState, mesh: Mesh, rules: Sequence[Tuple[str, str]],
                          fsdp_min_size: int, log_decisions: bool = True) -> TrainState:
  """NamedShardings for every leaf of the state (each decision logged once)."""
  specs = sharding_lib.state_partition_specs(abstract, mesh, rules, fsdp_min_size,
                                             log_decisions)
  if log_decisions:
    log.info("Train state: %s.", sharding_lib.summarize(abstract, specs, mesh))
  return sharding_lib.to_shardings(specs, mesh)


def init_train_state(model, optimizer: optax.GradientTransformation, rng: jax.Array,
                     shardings: TrainState, ema: bool = False,
                     compiler_options: Optional[dict] = None) -> TrainState:
  """Initialise the state straight into `shardings` (never whole on one device)."""
  init = jax.jit(lambda k: create_train_state(model, optimizer, k, ema), out_shardings=shardings,
                 compiler_options=dict((compiler_options or {}).items()) or None)
  return init(rng)


def jit_train_step(train_step: Callable, state_shardings: TrainState, mesh: Mesh,
                   compiler_options: Optional[dict] = None) -> Callable:
  """jit(train_step) with NamedSharding in/out: state as `state_shardings` (donated), the
  batch split over ("data", "fsdp"), the rng and metrics replicated. compiler_options: XLA
  options for this executable (`config.train.compiler_options`)."""
  replicated = mesh_lib.replicated(mesh)
  return jax.jit(train_step,
                 in_shardings=(state_shardings, mesh_lib.batch_sharding(mesh), replicated),
                 out_shardings=(state_shardings, replicated),
                 donate_argnums=(0,), compiler_options=dict((compiler_options or {}).items()) or None)


def replicate(x: Any, mesh: Mesh) -> Any:
  """Place host values (an rng key, scalars) on every device of the mesh."""
  return jax.device_put(x, mesh_lib.replicated(mesh))
