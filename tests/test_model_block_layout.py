"""The DiT stack's two parameter layouts (uwm_jax/model/block_layout.py): the same function, a
lossless conversion, and inference always unrolled."""

import jax
import numpy as np
import pytest

from tests.helpers import tiny_config
from tests.test_model_networks import _perturb, _random_inputs
from uwm_jax.model import block_layout
from uwm_jax.model.uwm import UnifiedWorldModel


def _scanned_params(cfg):
  params, _ = UnifiedWorldModel(cfg.model).init(jax.random.key(0))
  return _perturb(params)


def test_scanned_and_unrolled_layouts_compute_the_same_noise():
  cfg = tiny_config()
  assert cfg.model.scan_layers and cfg.model.depth > 1
  params = _scanned_params(cfg)
  unrolled_params, unrolled_cfg = block_layout.inference_layout(params, cfg.model)
  assert unrolled_cfg.scan_layers is False and cfg.model.scan_layers is True  # a copy
  dit = unrolled_params["noise_net"]["dit"]
  assert sorted(dit) == [f"blocks_{i}" for i in range(cfg.model.depth)]
  scanned, unrolled = UnifiedWorldModel(cfg.model), UnifiedWorldModel(unrolled_cfg)
  # The unrolled model's own init has exactly this tree: the layout is the one flax builds.
  own, _ = unrolled.init(jax.random.key(0))
  assert (jax.tree.structure(own) == jax.tree.structure(unrolled_params) and
          jax.tree.map(np.shape, own) == jax.tree.map(np.shape, unrolled_params))
  inputs = _random_inputs(scanned)
  out_s = jax.jit(scanned.predict_noise)(params, *inputs)
  out_u = jax.jit(unrolled.predict_noise)(unrolled_params, *inputs)
  assert np.abs(out_s[0]).max() > 0
  for a, b in zip(out_s, out_u):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_stack_and_unstack_are_inverse():
  cfg = tiny_config()
  dit = _scanned_params(cfg)["noise_net"]["dit"]
  unstacked = block_layout.unstack_blocks(dit)
  block_1 = jax.tree.map(lambda x: x[1], dit["blocks"])
  jax.tree.map(np.testing.assert_array_equal, unstacked["blocks_1"], block_1)
  restacked = block_layout.stack_blocks(unstacked)
  jax.tree.map(np.testing.assert_array_equal, restacked, dit)
  assert block_layout.unstack_blocks(unstacked) is unstacked  # already unrolled
  unrolled_cfg = tiny_config().model
  unrolled_cfg.scan_layers = False
  params = {"noise_net": {"dit": unstacked}}
  assert block_layout.inference_layout(params, unrolled_cfg) == (params, unrolled_cfg)


def test_badly_numbered_blocks_are_one_clear_error():
  with pytest.raises(ValueError, match="not numbered 0..n-1"):
    block_layout.stack_blocks({"blocks_0": {"w": np.zeros(2)}, "blocks_2": {"w": np.zeros(2)}})
