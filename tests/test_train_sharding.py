"""Mesh + partition rules: one sharded training step equals the single-device step.

Tolerance: the loss and every updated parameter agree to 1e-5 (absolute, fp32): sharded
reductions sum in a different order, which moves results by ~1e-7; a real sharding bug moves
them by a good part of the learning rate (1e-3) or more. Adam's eps is raised to 1e-2 here: with
the usual 1e-8 the first update is lr * sign(gradient), and a gradient element that is a sum of
near-cancelling terms (the zero-initialised output head has a few) flips its sign with the
summation order, a full 2 * lr apart; with eps 1e-2 the update is smooth in the gradient.
"""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from configs import tiny
from tests.helpers import FAST_COMPILE
from uwm_jax import batch as B_
from uwm_jax.data.loader import make_train_loader
from uwm_jax.diffusion import make_schedule
from uwm_jax.model.uwm import UnifiedWorldModel
from uwm_jax.training import global_batch
from uwm_jax.training import mesh as mesh_lib
from uwm_jax.training import optimizer as optim_lib
from uwm_jax.training import sharded_state
from uwm_jax.training import sharding
from uwm_jax.training.train_step import make_train_step
from uwm_jax.tree_paths import path_name

FSDP_MIN = 1024  # small, so the tiny model's matrices are really split
TOL = 1e-5


def test_mesh_shape_resolution_and_errors():
  assert mesh_lib.resolve_mesh_shape((-1, 2, 1), 8) == (4, 2, 1)
  assert mesh_lib.resolve_mesh_shape((2, 2, 2), 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="devices"):
    mesh_lib.resolve_mesh_shape((3, 1, 1), 8)
  with pytest.raises(ValueError, match="at most one -1"):
    mesh_lib.resolve_mesh_shape((-1, -1, 1), 8)
  mesh = mesh_lib.make_mesh((2, 4, 1))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  assert mesh_lib.batch_shards(mesh) == 8


def test_partition_rules_decisions(caplog):
  rules = tiny.get_config().train.partition_rules
  mesh_shape = {"data": 1, "fsdp": 4, "tensor": 2}

  def spec(name, shape, min_size=FSDP_MIN):
    _, tactic = sharding.match_rule(name, rules)
    stacked = "/blocks/" in name
    return sharding.partition_spec(shape, tactic, mesh_shape, min_size, stacked)[0]

  # AdaLN modulation (scanned: leading layer axis never split): FSDP over the larger axis.
  assert spec("noise_net/dit/blocks/adaLN_modulation/kernel", (12, 5120, 4608)) == \
      P(None, "fsdp")
  assert spec("noise_net/head/adaLN_modulation/kernel", (5120, 1536)) == P("fsdp")
  # Tensor parallel: column (qkv, fc1) and row (proj, fc2), FSDP on the other matrix axis.
  assert spec("noise_net/dit/blocks/attn/qkv/kernel", (12, 768, 2304)) == \
      P(None, "fsdp", "tensor")
  assert spec("noise_net/dit/blocks/attn/qkv/bias", (12, 2304)) == P(None, "tensor")
  assert spec("noise_net/dit/blocks/mlp/fc2/kernel", (12, 3072, 768)) == \
      P(None, "tensor", "fsdp")
  # Small arrays replicated; a layer-stacked bias is never split on its layer axis.
  assert spec("noise_net/head/linear/bias", (768,)) == P()
  assert spec("noise_net/dit/blocks/attn/proj/bias", (12, 768), min_size=1) == P(None, "fsdp")
  # Nothing divisible: replicated.
  assert spec("noise_net/action_decoder/fc_2/kernel", (3071, 7)) == P()


def test_optimizer_state_and_ema_follow_params():
  cfg = tiny.get_config()
  model = UnifiedWorldModel(cfg.model)
  tx = optim_lib.make_optimizer(cfg.optim, cfg.num_steps)
  mesh = mesh_lib.make_mesh((2, 4, 1))
  abstract = sharded_state.abstract_train_state(model, tx, ema=True)
  specs = sharding.state_partition_specs(abstract, mesh, cfg.train.partition_rules, FSDP_MIN,
                                         log_decisions=False)
  kernel = lambda t: t["noise_net"]["dit"]["blocks"]["adaLN_modulation"]["kernel"]
  mu, nu = (optax.tree_utils.tree_get(specs.opt_state, k) for k in ("mu", "nu"))
  assert kernel(specs.params) == P(None, None, "fsdp")
  assert kernel(mu) == kernel(nu) == kernel(specs.ema_params) == kernel(specs.params)
  # The scalars (step counts, the injected learning rate) are replicated.
  assert optax.tree_utils.tree_get(specs.opt_state, "hyperparams")["learning_rate"] == P()
  assert optax.tree_utils.tree_get(specs.opt_state, "inner_state")[0].count == P()
  assert specs.step == P()


def _batch(cfg):
  loader = make_train_loader(cfg, process_index=0, process_count=1)
  try:
    return next(loader)
  finally:
    loader.close()


def _one_step(cfg, mesh_shape, host_batch):
  model = UnifiedWorldModel(cfg.model)
  tx = optim_lib.make_optimizer(cfg.optim, cfg.num_steps)
  devices = jax.devices()[:int(np.prod(mesh_shape))]
  mesh = mesh_lib.make_mesh(mesh_shape, devices)
  abstract = sharded_state.abstract_train_state(model, tx)
  shardings = sharded_state.train_state_shardings(abstract, mesh, cfg.train.partition_rules,
                                                  FSDP_MIN, log_decisions=False)
  state = sharded_state.init_train_state(model, tx, jax.random.key(0), shardings,
                                         compiler_options=FAST_COMPILE)
  step = sharded_state.jit_train_step(make_train_step(model, make_schedule(cfg.diffusion), tx),
                                      shardings, mesh, FAST_COMPILE)
  batch = global_batch.host_batch_to_global(host_batch, mesh, mesh_lib.batch_spec())
  state, metrics = step(state, batch, sharded_state.replicate(jax.random.key(1), mesh))
  return jax.device_get(metrics), jax.device_get(state.params), state


@pytest.fixture(scope="module")
def reference():
  cfg = tiny.get_config()
  cfg.optim.eps = 1e-2  # the update smooth in the gradient (module docstring)
  host_batch = _batch(cfg)
  metrics, params, _ = _one_step(cfg, (1, 1, 1), host_batch)
  return cfg, host_batch, metrics, params


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_step_matches_single_device(reference, mesh_shape):
  cfg, host_batch, ref_metrics, ref_params = reference
  metrics, params, state = _one_step(cfg, mesh_shape, host_batch)
  for k in ("loss", "action_loss", "dynamics_loss", "grad_norm"):
    np.testing.assert_allclose(metrics[k], ref_metrics[k], atol=TOL, rtol=TOL, err_msg=k)
  flat_ref = jax.tree_util.tree_flatten_with_path(ref_params)[0]
  for (path, want), got in zip(flat_ref, jax.tree.leaves(params)):
    np.testing.assert_allclose(got, want, atol=TOL, err_msg=path_name(path))
  # The state really is split: the AdaLN kernel lives in pieces when fsdp > 1.
  kernel = state.params["noise_net"]["dit"]["blocks"]["adaLN_modulation"]["kernel"]
  shard_shape = kernel.addressable_shards[0].data.shape
  assert shard_shape[-1] == kernel.shape[-1] // mesh_shape[1]


def test_sharding_log_is_one_table_at_info_and_details_at_debug(caplog):
  import logging
  cfg = tiny.get_config()
  model = UnifiedWorldModel(cfg.model)
  tx = optim_lib.make_optimizer(cfg.optim, cfg.num_steps)
  abstract = sharded_state.abstract_train_state(model, tx, False)
  mesh = mesh_lib.make_mesh((2, 4, 1))
  with caplog.at_level(logging.INFO, logger="uwm_jax.training.sharding"):
    sharding.state_partition_specs(abstract, mesh, cfg.train.partition_rules, FSDP_MIN)
  info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
  assert len(info) == 1 and info[0].startswith("Parameter sharding by rule"), info
  num_arrays = len(jax.tree.leaves(abstract.params)) + len(jax.tree.leaves(abstract.frozen))
  assert sum(int(line.split()[-3]) for line in info[0].splitlines()[2:]) == num_arrays
  caplog.clear()
  with caplog.at_level(logging.DEBUG, logger="uwm_jax.training.sharding"):
    sharding.state_partition_specs(abstract, mesh, cfg.train.partition_rules, FSDP_MIN)
  assert sum(r.getMessage().startswith("sharding params/") for r in caplog.records) == len(
      jax.tree.leaves(abstract.params))
