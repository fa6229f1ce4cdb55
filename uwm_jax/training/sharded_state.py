"""The train state created directly in its sharded layout, and the sharded, jitted train step."""

import logging
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import optax
from jax.sharding import Mesh

from uwm_jax import batch as batch_lib
from uwm_jax.diffusion import make_schedule
from uwm_jax.training import mesh as mesh_lib
from uwm_jax.training import sharding as sharding_lib
from uwm_jax.training.train_state import TrainState, create_train_state
from uwm_jax.training.train_step import make_train_step

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


def make_jitted_train_step(config, model, optimizer: optax.GradientTransformation,
                           state_shardings: TrainState, mesh: Mesh) -> Callable:
  """The run's train step (`make_train_step` with the config's schedule, learning rate, EMA and
  non-finite guard), jitted with `jit_train_step`: what training runs, benchmarks time and
  `uwm_jax.compile` compiles for TPU topologies."""
  tc = config.train
  step = make_train_step(model, make_schedule(config.diffusion), optimizer,
                         ema_decay=tc.ema_decay, nan_guard=tc.nan_guard,
                         action_loss_labelled_only=tc.action_loss_labelled_only)
  return jit_train_step(step, state_shardings, mesh, tc.compiler_options)


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying `shardings` (same tree): inputs for `jit(...).lower` on devices
  that hold no data (ahead-of-time compilation for a TPU topology)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract, shardings)


def abstract_batch(model_cfg, batch_size: int, cached_latents: bool, sharding) -> dict:
  """ShapeDtypeStructs of a global training batch (`batch.expected_shapes`, `batch.DTYPES`)
  carrying `sharding`: what the train step is compiled for ahead of the loop (and for a TPU
  topology by `uwm_jax.compile`)."""
  shapes = batch_lib.expected_shapes(model_cfg, batch_size, cached_latents)
  return {k: jax.ShapeDtypeStruct(s, batch_lib.DTYPES[k], sharding=sharding)
          for k, s in shapes.items()}


def replicate(x: Any, mesh: Mesh) -> Any:
  """Place a value every process holds alike (an rng key, scalars) on every device of the
  mesh (device_put cannot target other processes' devices; a jitted identity can)."""
  return jax.jit(lambda y: y, out_shardings=mesh_lib.replicated(mesh))(x)
