"""Latent caching: cached next-obs moments equal what the train step's codec path computes."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uwm_jax import batch as batch_lib
from uwm_jax.data import latent_cache
from uwm_jax.model.codecs import SDXL_SCALING_FACTOR, VAE_LATENT_SCALE, make_codec
from uwm_jax.model.uwm import UnifiedWorldModel
from uwm_jax.model.vae import AutoencoderKL
from uwm_jax.weights.uwm_checkpoint import load_config


def _episodes(model_cfg, lengths, seed=0):
  rng = np.random.default_rng(seed)
  V = len(model_cfg.camera_keys)
  shape = (V,) + tuple(model_cfg.image_shape) + (3,)
  return [(f"ep{i}", rng.integers(0, 256, (n,) + shape, dtype=np.uint8))
          for i, n in enumerate(lengths)]


def _codec_path(model, frozen, frames, start):
  """What the train step computes without the cache, in eval mode: the window's next obs
  through the model's transform and the codec's posterior."""
  ws = batch_lib.window_slices(model.cfg.num_obs_frames, model.cfg.action_len)
  window = frames[start:start + ws.window].transpose(1, 0, 2, 3, 4)[None]  # (1, V, w, H, W, 3)
  _, next_img = model.transform(jnp.asarray(window[:, :, ws.obs]),
                                jnp.asarray(window[:, :, ws.next_obs]),
                                jax.random.PRNGKey(0), train=False)
  mean, std = model.codec.moments(frozen, next_img)
  return np.asarray(mean[0]), np.asarray(std[0])


def test_window_moments_match_the_codec_path(tmp_path):
  cfg = load_config("configs/tiny.py").model  # window 7
  model = UnifiedWorldModel(cfg)
  frozen = model.init_frozen(jax.random.PRNGKey(0))
  episodes = _episodes(cfg, [12, 5, 9])  # ep1 is shorter than a window
  meta = latent_cache.build_latent_cache(iter(episodes), str(tmp_path), cfg, frozen,
                                         batch_size=4)
  assert sorted(meta["episodes"]) == ["ep0", "ep2"]
  cache = latent_cache.LatentCache(str(tmp_path), cfg, frozen)
  for key, frames in (episodes[0], episodes[2]):
    for start in range(frames.shape[0] - 7 + 1):
      mean, std = cache.window_moments(key, start)
      want_mean, want_std = _codec_path(model, frozen, frames, start)
      assert mean.shape == model.dims.latent_shape
      np.testing.assert_allclose(mean, want_mean, atol=2e-3)
      np.testing.assert_array_equal(std, want_std)
  with pytest.raises(IndexError, match="ep0"):
    cache.window_moments("ep0", 6)
  with pytest.raises(KeyError, match="ep1"):
    cache._array("ep1")  # pylint: disable=protected-access


def test_cached_latent_in_a_batch(tmp_path):
  cfg = load_config("configs/tiny.py").model
  model = UnifiedWorldModel(cfg)
  frozen = model.init_frozen(jax.random.PRNGKey(0))
  episodes = _episodes(cfg, [10])
  latent_cache.build_latent_cache(episodes, str(tmp_path), cfg, frozen, batch_size=8)
  cache = latent_cache.LatentCache(str(tmp_path), cfg)
  pairs = [cache.window_moments("ep0", s) for s in (0, 3)]
  batch = {latent_cache.NEXT_LATENT_MEAN: np.stack([m for m, _ in pairs]),
           latent_cache.NEXT_LATENT_STD: np.stack([s for _, s in pairs])}
  latent = latent_cache.cached_next_latent(model, batch, jax.random.PRNGKey(1))
  assert latent.shape == (2,) + model.dims.latent_shape and latent.dtype == jnp.float32
  np.testing.assert_array_equal(latent, batch[latent_cache.NEXT_LATENT_MEAN].astype(np.float32))


def test_mismatch_sharding_and_resume(tmp_path):
  cfg = load_config("configs/tiny.py").model
  model = UnifiedWorldModel(cfg)
  frozen = model.init_frozen(jax.random.PRNGKey(0))
  episodes = _episodes(cfg, [8, 9, 10])
  for p in range(2):
    latent_cache.build_latent_cache(episodes, str(tmp_path), cfg, frozen, process_index=p,
                                    process_count=2)
  cache = latent_cache.LatentCache(str(tmp_path), cfg)
  assert sorted(cache.episodes) == ["ep0", "ep1", "ep2"]
  path = os.path.join(str(tmp_path), cache.episodes["ep1"]["file"])
  before = os.stat(path).st_mtime_ns
  latent_cache.build_latent_cache(episodes, str(tmp_path), cfg, frozen, process_index=1,
                                  process_count=2)
  assert os.stat(path).st_mtime_ns == before  # not recomputed

  other = load_config("configs/tiny.py").model
  other.crop_shape = (28, 28)
  other.pixels_downsample = 2
  with pytest.raises(ValueError, match="model.crop_shape"):
    latent_cache.LatentCache(str(tmp_path), other)
  with pytest.raises(ValueError, match="codec params"):
    latent_cache.LatentCache(str(tmp_path), cfg, {"w": np.ones(3)})
  with pytest.raises(ValueError, match="ep0"):
    latent_cache.build_latent_cache([("ep0", episodes[0][1][..., :2])], str(tmp_path / "x"),
                                    cfg, frozen)
  with pytest.raises(FileNotFoundError, match="meta"):
    latent_cache.LatentCache(str(tmp_path / "absent"), cfg)


def test_vae_moments_are_the_scaled_posterior():
  """The codec's (mean, std) split that the cache stores: the VAE posterior scaled as the
  reference (x 0.13025 / 3), and encode = mean + std * N(0, 1)."""
  cfg = load_config("configs/tiny.py").model
  cfg.codec = "sdxl_vae"
  cfg.crop_shape = (16, 16)
  codec = make_codec(cfg)
  shapes = jax.eval_shape(codec.init, jax.random.PRNGKey(0))  # random values, no init compile
  rng_np = np.random.default_rng(0)
  frozen = jax.tree.map(lambda s: rng_np.normal(0, 0.02, s.shape).astype(np.float32), shapes)
  frames = jax.random.uniform(jax.random.PRNGKey(1), (1, 2, 2, 16, 16, 3))
  rng = jax.random.PRNGKey(2)

  def everything(frozen, frames):
    images = frames.reshape((-1, 16, 16, 3)) * 2 - 1
    return (codec.moments(frozen, frames), codec.encode(frozen, frames, rng),
            AutoencoderKL().apply({"params": frozen}, images, method=AutoencoderKL.encode))

  (mean, std), sample, (want_mean, want_logvar) = jax.jit(everything)(frozen, frames)
  to_latent = lambda x: np.asarray(x).reshape(1, 2, 2, 2, 2, 4).transpose(0, 1, 5, 2, 3, 4)
  factor = SDXL_SCALING_FACTOR / VAE_LATENT_SCALE
  np.testing.assert_allclose(mean, to_latent(want_mean) * factor, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(std, to_latent(np.exp(0.5 * want_logvar)) * factor, rtol=1e-4)
  np.testing.assert_allclose(sample, mean + std * jax.random.normal(rng, mean.shape), rtol=1e-4,
                             atol=1e-6)
