import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import noise_net_inputs, perturbed_params, structured_batch, tiny_config
from uwm_jax.model.layers import sinusoidal_embedding
from uwm_jax.model.patchify import patchify, unpatchify
from uwm_jax.model.uwm import UnifiedWorldModel


def test_zero_output_at_init():
  model = UnifiedWorldModel(tiny_config().model)
  params, _ = model.init(jax.random.key(0))
  eps_a, eps_o = jax.jit(model.predict_noise)(params, *noise_net_inputs(model))
  assert eps_a.shape == (3,) + (model.dims.action_len, model.dims.action_dim)
  assert eps_o.shape == (3,) + model.dims.latent_shape
  assert not jnp.any(eps_a) and not jnp.any(eps_o)


def test_remat_alone_gives_the_same_gradients():
  """Rematerialisation only changes what the backward pass stores: the gradients of the noise
  network match the plain ones to float32 rounding."""
  cfg = tiny_config()
  model = UnifiedWorldModel(cfg.model)
  params = perturbed_params(model.init(jax.random.key(0))[0])
  inputs = noise_net_inputs(model)

  def grads(m):
    loss = lambda p: sum(jnp.sum(jnp.square(o)) for o in m.predict_noise(p, *inputs))
    return jax.jit(jax.grad(loss))(params)

  ref = grads(model)
  cfg.model.remat = True
  out = grads(UnifiedWorldModel(cfg.model))
  ref, out = jax.device_get((ref, out))  # compared in numpy: eager ops compile one by one
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(ref)[0], jax.tree.leaves(out)):
    scale = float(np.abs(a).max()) + 1e-12
    assert float(np.abs(a - b).max()) <= 1e-5 * scale, jax.tree_util.keystr(path)


def test_remat_and_bf16_run_close_to_fp32():
  cfg = tiny_config()
  model = UnifiedWorldModel(cfg.model)
  params = perturbed_params(model.init(jax.random.key(0))[0])
  inputs = noise_net_inputs(model)
  ref = jax.jit(model.predict_noise)(params, *inputs)
  cfg.model.remat = True
  cfg.model.compute_dtype = "bfloat16"
  out = jax.jit(UnifiedWorldModel(cfg.model).predict_noise)(params, *inputs)
  assert out[0].dtype == jnp.float32
  for a, b in zip(ref, out):
    assert float(jnp.abs(a - b).max()) < 0.1 * float(jnp.abs(a).max()) + 0.05


def test_patchify_roundtrip_and_token_order():
  x = jnp.arange(2 * 3 * 4 * 2 * 8 * 8, dtype=jnp.float32).reshape(2, 3, 4, 2, 8, 8)
  tokens = patchify(x, (2, 4, 4))
  assert tokens.shape == (2, 3 * 1 * 2 * 2, 4 * 2 * 4 * 4)
  np.testing.assert_array_equal(unpatchify(tokens, x.shape[1:], (2, 4, 4)), x)
  # Token 5 = view 1, (t, h, w) = (0, 0, 1); its patch flattens as (c, pt, ph, pw).
  np.testing.assert_array_equal(tokens[0, 5], x[0, 1, :, 0:2, 0:4, 4:8].reshape(-1))


def test_sinusoidal_embedding_frequencies():
  emb = sinusoidal_embedding(jnp.array([0, 7]), 16)
  np.testing.assert_allclose(emb[0], [0.0] * 8 + [1.0] * 8, atol=1e-7)
  # First frequency is 1 and the last 1/10000 (denominator half - 1).
  np.testing.assert_allclose(emb[1, 0], np.sin(7.0), rtol=1e-6)
  np.testing.assert_allclose(emb[1, 7], np.sin(7.0 / 10000), rtol=1e-4)


def test_dp_baseline_predicts_actions_only():
  model = UnifiedWorldModel(tiny_config("dp").model)
  params, frozen = model.init(jax.random.key(0))
  assert frozen == {}
  d = model.dims
  eps_a, eps_o = jax.jit(model.predict_noise)(params, jnp.zeros((2, d.global_cond_dim)),
                                              jnp.zeros((2, d.action_len, d.action_dim)),
                                              jnp.array([1, 2]))
  assert eps_o is None and eps_a.shape == (2, d.action_len, d.action_dim)


def test_global_cond_layout_and_low_dim():
  cfg = tiny_config()
  cfg.model.low_dim_dim = 3
  model = UnifiedWorldModel(cfg.model)
  params, _ = model.init(jax.random.key(0))
  batch = structured_batch(cfg.model, 2)
  # jitted: eager, every op of the ResNet compiles on its own (a minute on a 2-core CPU)
  obs, _ = jax.jit(lambda o, k: model.transform(o, None, k, train=False))(batch["obs"],
                                                                         jax.random.key(0))
  cond = jax.jit(model.global_cond)(params, obs, batch["low_dim"])
  d = model.dims
  assert cond.shape == (2, d.global_cond_dim)
  np.testing.assert_allclose(cond[:, -6:], batch["low_dim"].reshape(2, -1))
  # Features are ordered (view, frame, feature): view 1 frame 0 is the third block.
  F = cfg.model.image_feature_dim
  single = jax.jit(model.image_encoder.apply)({"params": params["image_encoder"]}, obs[:, 1, 0])
  np.testing.assert_allclose(cond[:, 2 * F:3 * F], single, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="low_dim"):  # raised while tracing: nothing to compile
    jax.eval_shape(model.global_cond, params, obs, None)


def test_coordinate_channels_reach_the_encoder():
  from uwm_jax.model.resnet import ResNet18GN, coordinate_channels
  grid = np.asarray(coordinate_channels(1, 4, 8, jnp.float32))[0]  # (H, W, 2) = (x, y)
  np.testing.assert_allclose(grid[0, :, 0], (np.arange(8) + 0.5) / 8 * 2 - 1)
  np.testing.assert_allclose(grid[:, 0, 1], (np.arange(4) + 0.5) / 4 * 2 - 1)
  images = jnp.full((2, 32, 32, 3), 0.5)
  plain = ResNet18GN(feature_dim=8, width=16)
  coord = ResNet18GN(feature_dim=8, width=16, coord_channels=True)
  plain_shapes = jax.eval_shape(plain.init, jax.random.key(0), images)["params"]
  assert plain_shapes["conv1"]["kernel"].shape == (7, 7, 3, 16)
  params = jax.jit(coord.init)(jax.random.key(0), images)["params"]  # eager: a minute of compiles
  assert params["conv1"]["kernel"].shape == (7, 7, 5, 16)
  # A uniform image carries no position; only the coordinate channels can move the features.
  grads = jax.jit(jax.grad(lambda p: jnp.sum(coord.apply({"params": p}, images) ** 2)))(params)
  assert np.abs(np.asarray(grads["conv1"]["kernel"][..., 3:, :])).max() > 0
  cfg = tiny_config()
  cfg.model.image_coord_channels = True
  model = UnifiedWorldModel(cfg.model)
  kernel = jax.eval_shape(model.init_params, jax.random.key(0))["image_encoder"]["conv1"]["kernel"]
  assert kernel.shape[2] == 5


@pytest.mark.parametrize("kernel,stride,channels", [(7, 2, 3), (3, 1, 8), (3, 2, 8), (1, 2, 8)])
def test_cpu_matmul_convolution_equals_xla_convolution(kernel, stride, channels):
  """The ResNet's CPU path (im2col patches @ kernel) is XLA's convolution, values and grads."""
  from uwm_jax.model import resnet  # pylint: disable=import-outside-toplevel
  kx, kk = jax.random.split(jax.random.key(kernel * 10 + stride))
  x = jax.random.normal(kx, (2, 13, 10, channels))
  k = jax.random.normal(kk, (kernel, kernel, channels, 5))
  pad = kernel // 2
  # jitted (eagerly, each slice and pad of the im2col path compiles on its own)
  conv = lambda f: jax.jit(lambda a, b: f(a, b, stride, pad))
  got = conv(resnet._matmul_conv)(x, k)  # pylint: disable=protected-access
  want = conv(resnet._xla_conv)(x, k)  # pylint: disable=protected-access
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  loss = lambda f: jax.jit(jax.grad(lambda a, b: jnp.sum(jnp.sin(f(a, b, stride, pad))),
                                    (0, 1)))(x, k)
  for g, w in zip(loss(resnet._matmul_conv), loss(resnet._xla_conv)):  # pylint: disable=protected-access
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-3)


def test_bf16_matmuls_on_cpu_accumulate_and_return_through_float32():
  """layers.matmul / Dense on CPU: bf16 operands, products summed in fp32, rounded once to
  bf16 (XLA:CPU runs a bf16-result dot on a slow path: docs/results/cpu-bf16.md);
  compiled for TPU or GPU, the plain bf16 dot."""
  from uwm_jax.model import layers
  x = jax.random.normal(jax.random.key(0), (8, 2048)).astype(jnp.bfloat16)
  w = jax.random.normal(jax.random.key(1), (2048, 16)).astype(jnp.bfloat16)
  traced = jax.jit(layers.matmul).trace(x, w)
  hlo = traced.lower(lowering_platforms=("cpu",)).as_text()
  assert "dot_general" in hlo and "-> tensor<8x16xf32>" in hlo  # the dot itself yields fp32
  for platform in ("tpu", "cuda"):
    hlo = traced.lower(lowering_platforms=(platform,)).as_text()
    assert "-> tensor<8x16xbf16>" in hlo and "-> tensor<8x16xf32>" not in hlo, platform
  out = layers.matmul(x, w)
  assert out.dtype == jnp.bfloat16
  exact = jnp.dot(x.astype(jnp.float32), w.astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(exact), rtol=2**-8, atol=1e-2)
  dense = layers.Dense(16, dtype=jnp.bfloat16)
  p = dense.init(jax.random.key(2), x)
  assert "-> tensor<8x16xf32>" in jax.jit(dense.apply).trace(p, x).lower(
      lowering_platforms=("cpu",)).as_text()
  assert dense.apply(p, x).dtype == jnp.bfloat16
  # fp32 stays fp32
  assert layers.matmul(x.astype(jnp.float32), w.astype(jnp.float32)).dtype == jnp.float32
