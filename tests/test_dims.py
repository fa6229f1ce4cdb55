import pytest

from configs import droid, libero, tiny
from uwm_jax import dims as dims_lib
from uwm_jax.model.summary import describe, parameter_counts
from uwm_jax.model.uwm import UnifiedWorldModel

SDXL_VAE_PARAMS = 83_653_863


def test_droid_dims():
  d = dims_lib.model_dims(droid.get_config().model)
  assert (d.num_action_tokens, d.num_obs_tokens, d.num_register_tokens, d.num_tokens) == (
      16, 147, 8, 171)
  assert d.cond_dim == 5120 and d.global_cond_dim == 4608
  assert d.latent_shape == (3, 4, 2, 28, 28)
  assert d.window == 19


def test_libero_dims():
  d = dims_lib.model_dims(libero.get_config().model)
  assert (d.num_obs_tokens, d.num_register_tokens, d.num_tokens) == (98, 24, 138)
  assert d.cond_dim == 3584
  assert d.latent_shape == (2, 4, 2, 28, 28)


@pytest.mark.parametrize("module,trainable,net", [
    (droid, 396_485_578, 384_915_082),
    (libero, 309_160_135, 297_589_639),
])
def test_parameter_counts(module, trainable, net):
  counts = parameter_counts(UnifiedWorldModel(module.get_config().model))
  assert counts["trainable"] == trainable
  assert counts["noise_net"] == net
  assert counts["image_encoder"] == 11_570_496
  assert counts["frozen_codec"] == SDXL_VAE_PARAMS


def test_droid_adaln_share():
  counts = parameter_counts(UnifiedWorldModel(droid.get_config().model))
  assert counts["noise_net.blocks.adaLN_modulation"] == 283_170_816  # docs/model.md: 74%


def test_dp_baseline_is_a_config_of_the_same_network():
  c = droid.get_config("dp")
  d = dims_lib.model_dims(c.model)
  assert d.num_tokens == 16 and d.num_timesteps == 1 and d.cond_dim == 4608 + 256
  counts = parameter_counts(UnifiedWorldModel(c.model))
  assert counts["frozen_codec"] == 0
  assert 367e6 < counts["noise_net"] < 368e6  # docs/model.md: DP net ~367.4M


def test_describe_prints_layout():
  text = describe(droid.get_config())
  for expected in ("171", "5120", "(3, 4, 2, 28, 28)", "396,485,578", "83,653,863"):
    assert expected in text


def test_bad_shapes_raise():
  c = tiny.get_config()
  c.model.latent_patch_shape = (2, 3, 3)
  with pytest.raises(ValueError, match="latent_patch_shape"):
    dims_lib.model_dims(c.model)
  c = tiny.get_config()
  c.model.codec = "jpeg"
  with pytest.raises(ValueError, match="codec"):
    dims_lib.model_dims(c.model)
  with pytest.raises(ValueError, match="variant"):
    tiny.get_config("nope")
