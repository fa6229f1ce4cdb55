"""The DiT stack's parameter layouts (uwm_jax/model/block_layout.py): the same function, lossless
conversions, and inference always in the unrolled, split layout."""

import jax
import numpy as np
import pytest

from tests.helpers import noise_net_inputs, perturbed_params, tiny_config
from uwm_jax.dims import model_dims
from uwm_jax.model import block_layout
from uwm_jax.model.uwm import UnifiedWorldModel


def _trained_params(cfg):
  params, _ = UnifiedWorldModel(cfg.model).init(jax.random.key(0))
  return perturbed_params(params)  # every parameter non-zero: the zero-initialised modulation too


@pytest.mark.parametrize("scan_layers", [True, False])
def test_training_and_inference_layouts_compute_the_same_noise(scan_layers):
  cfg = tiny_config()
  cfg.model.scan_layers = scan_layers
  assert cfg.model.depth > 1 and not cfg.model.split_modulation
  params = _trained_params(cfg)
  inf_params, inf_cfg = block_layout.inference_layout(params, cfg.model)
  assert inf_cfg.scan_layers is False and inf_cfg.split_modulation is True
  assert cfg.model.scan_layers is scan_layers and not cfg.model.split_modulation  # a copy
  dit = inf_params["noise_net"]["dit"]
  assert sorted(dit) == [f"blocks_{i}" for i in range(cfg.model.depth)]
  assert sorted(dit["blocks_0"]["adaLN_modulation"]) == ["bias", "kernel_0", "kernel_1"]
  trained, inference = UnifiedWorldModel(cfg.model), UnifiedWorldModel(inf_cfg)
  # The inference model's own init has exactly this tree: the layout is the one flax builds.
  own, _ = inference.init(jax.random.key(0))
  assert (jax.tree.structure(own) == jax.tree.structure(inf_params) and
          jax.tree.map(np.shape, own) == jax.tree.map(np.shape, inf_params))
  inputs = noise_net_inputs(trained)
  out_t = jax.jit(trained.predict_noise)(params, *inputs)
  out_i = jax.jit(inference.predict_noise)(inf_params, *inputs)
  assert np.abs(out_t[0]).max() > 0
  for a, b in zip(out_t, out_i):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  again = block_layout.inference_layout(inf_params, inf_cfg)  # already in that layout
  assert again[0] is inf_params and again[1] is inf_cfg


def test_conversions_are_lossless():
  cfg = tiny_config()
  params = _trained_params(cfg)
  dit = params["noise_net"]["dit"]
  unstacked = block_layout.unstack_blocks(dit)
  block_1 = jax.tree.map(lambda x: x[1], dit["blocks"])
  jax.tree.map(np.testing.assert_array_equal, unstacked["blocks_1"], block_1)
  jax.tree.map(np.testing.assert_array_equal, block_layout.stack_blocks(unstacked), dit)
  assert block_layout.unstack_blocks(unstacked) is unstacked  # already unrolled
  rows = model_dims(cfg.model).global_cond_dim
  split = block_layout.split_modulation_kernels(params["noise_net"], rows)
  for name, modulation in (("blocks", dit["blocks"]["adaLN_modulation"]),
                           ("head", params["noise_net"]["head"]["adaLN_modulation"])):
    got = split["dit"]["blocks"]["adaLN_modulation"] if name == "blocks" else \
        split["head"]["adaLN_modulation"]
    assert got["kernel_0"].shape[-2] == rows
    np.testing.assert_array_equal(
        np.concatenate([got["kernel_0"], got["kernel_1"]], axis=-2), modulation["kernel"])
    np.testing.assert_array_equal(got["bias"], modulation["bias"])


def test_bad_layouts_are_one_clear_error():
  with pytest.raises(ValueError, match="not numbered 0..n-1"):
    block_layout.stack_blocks({"blocks_0": {"w": np.zeros(2)}, "blocks_2": {"w": np.zeros(2)}})
  modulation = {"adaLN_modulation": {"kernel": np.zeros((8, 4)), "bias": np.zeros(4)}}
  with pytest.raises(ValueError, match=r"cannot be split at row 8"):
    block_layout.split_modulation_kernels(modulation, 8)
