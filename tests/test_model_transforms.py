import jax
import jax.numpy as jnp
import numpy as np

from tests.helpers import structured_batch, tiny_config
from uwm_jax.model import image_transforms as T
from uwm_jax.model.uwm import UnifiedWorldModel


# The transforms run jitted, as in training (eagerly, each of their ops compiles on its own).


def test_hsv_roundtrip():
  rgb = jax.random.uniform(jax.random.key(0), (64, 3))
  np.testing.assert_allclose(jax.jit(lambda x: T.hsv_to_rgb(T.rgb_to_hsv(x)))(rgb), rgb,
                             atol=1e-5)
  np.testing.assert_allclose(
      jax.jit(T.rgb_to_hsv)(jnp.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]))[:, 0],
      [0, 1 / 3, 2 / 3], atol=1e-6)


def test_identity_jitter():
  clip = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
  np.testing.assert_allclose(jax.jit(lambda c: T.color_jitter(c, 1.0, 1.0, 1.0, 0.0))(clip),
                             clip, atol=1e-5)


def _transform(model):
  return jax.jit(model.transform, static_argnames="train")


def test_eval_transform_is_centre_crop_and_deterministic():
  cfg = tiny_config()
  model = UnifiedWorldModel(cfg.model)
  batch = structured_batch(cfg.model, 2)
  a, _ = _transform(model)(batch["obs"], None, jax.random.key(0), train=False)
  b, _ = _transform(model)(batch["obs"], None, jax.random.key(5), train=False)
  np.testing.assert_array_equal(a, b)
  resized = jax.jit(lambda o: T.resize(T.to_unit_float(o), cfg.model.resize_shape))(
      batch["obs"])
  np.testing.assert_allclose(a, resized[..., 2:34, 2:34, :], atol=1e-6)
  assert a.shape == (2, 2, 2, 32, 32, 3)


def test_train_transform_shares_draws_between_current_and_next_frames():
  cfg = tiny_config()
  model = UnifiedWorldModel(cfg.model)
  batch = structured_batch(cfg.model, 4)
  transform = _transform(model)
  obs_img, next_img = transform(batch["obs"], batch["obs"], jax.random.key(3), train=True)
  # Same frames in, same crop and jitter applied -> identical outputs.
  np.testing.assert_allclose(obs_img, next_img, atol=1e-6)
  # Different (sample, view) pairs get different draws: identical inputs, different outputs.
  same = np.repeat(batch["obs"][:1], 4, axis=0)
  out, _ = jax.device_get(transform(same, None, jax.random.key(3), train=True))
  assert float(np.abs(out[0] - out[1]).max()) > 1e-3
  assert float(np.abs(out[0, 0] - out[0, 1]).max()) > 1e-3
