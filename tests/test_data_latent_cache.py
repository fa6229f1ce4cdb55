"""Latent caching: cached next-obs moments equal what the train step's codec path computes."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uwm_jax import batch as batch_lib
from uwm_jax.data import latent_cache
from uwm_jax.data.synthetic import SyntheticSource
from uwm_jax.model import latent_cache_builder
from uwm_jax.model.codecs import SDXL_SCALING_FACTOR, VAE_LATENT_SCALE, make_codec
from uwm_jax.model.uwm import UnifiedWorldModel
from uwm_jax.model.vae import AutoencoderKL
from uwm_jax.cli_config import load_config


def _source(model_cfg, lengths, seed=0):
  """A synthetic source whose episodes have the given lengths."""
  src = SyntheticSource("synthetic", model_cfg.camera_keys, model_cfg.image_shape,
                        model_cfg.action_dim, num_episodes=len(lengths),
                        episode_len=max(lengths), seed=seed)
  src.episode_lengths = np.asarray(lengths, np.int64)
  return src


def _tiny():
  cfg = load_config("configs/tiny.py").model  # window 2 * 2 + 4 - 1 = 7
  model = UnifiedWorldModel(cfg)
  return cfg, model, model.init_frozen(jax.random.PRNGKey(0))


class _PixelsWithPosterior:
  """The pixels codec with a made-up, non-zero posterior std (0.1 + 0.05 * mean): the pixels
  codec's own std is 0, and a cache test must see both moments stored and read back."""

  def __init__(self, codec):
    self.codec = codec

  def moments(self, frozen, frames):
    mean, _ = self.codec.moments(frozen, frames)
    return mean, 0.1 + 0.05 * mean


@pytest.fixture
def posterior(monkeypatch):
  """The cache builder encodes with `_PixelsWithPosterior`; returns fn(mean) -> its std."""
  monkeypatch.setattr(latent_cache_builder, "make_codec",
                      lambda cfg: _PixelsWithPosterior(make_codec(cfg)))
  return lambda mean: 0.1 + 0.05 * mean


def _codec_path(model, frozen, source, episode, start):
  """What the train step computes without the cache, in eval mode: the window's next obs
  through the model's transform and the codec's posterior."""
  ws = batch_lib.window_slices(model.cfg.num_obs_frames, model.cfg.action_len)
  window = source.frames(episode, np.arange(start, start + ws.window))[None]  # (1, V, w, ...)
  _, next_img = model.transform(jnp.asarray(window[:, :, ws.obs]),
                                jnp.asarray(window[:, :, ws.next_obs]),
                                jax.random.PRNGKey(0), train=False)
  mean, std = model.codec.moments(frozen, next_img)
  return np.asarray(mean[0]), np.asarray(std[0])


def test_window_moments_match_the_codec_path(tmp_path, posterior):
  cfg, model, frozen = _tiny()
  source = _source(cfg, [12, 5, 9])  # episode 1 is shorter than a window
  meta = latent_cache_builder.build_latent_cache(source, str(tmp_path), cfg, frozen, batch_size=4)
  assert sorted(meta["episodes"]) == ["0", "2"]
  cache = latent_cache.LatentCache(str(tmp_path), cfg, frozen, source)
  for episode in (0, 2):
    for start in range(int(source.episode_lengths[episode]) - 7 + 1):
      mean, std = cache.window_moments(episode, start)
      want_mean, _ = _codec_path(model, frozen, source, episode, start)
      assert mean.shape == model.dims.latent_shape
      assert np.abs(want_mean).max() > 0.5  # frames in [-1, 1], not zeros
      np.testing.assert_allclose(mean, want_mean, atol=2e-3)
      np.testing.assert_allclose(std, posterior(want_mean), atol=1e-3)  # float16 storage
  with pytest.raises(IndexError, match="episode 0"):
    cache.window_moments(0, 6)
  with pytest.raises(KeyError, match="Episode 1"):
    cache.window_moments(1, 0)


def test_cached_latent_in_a_batch(tmp_path, posterior):
  """Cached moments -> the latent of a posterior codec: mean + std * N(0, 1) with the step's
  key (a sample, not the mean); the pixels codec has no posterior and returns the mean."""
  cfg, model, frozen = _tiny()
  source = _source(cfg, [10])
  latent_cache_builder.build_latent_cache(source, str(tmp_path), cfg, frozen, batch_size=8)
  cache = latent_cache.LatentCache(str(tmp_path), cfg)
  pairs = [cache.window_moments(0, s) for s in (0, 3)]
  mean = np.stack([m for m, _ in pairs]).astype(np.float32)
  std = np.stack([s for _, s in pairs]).astype(np.float32)
  assert std.min() > 0.04
  vae_cfg = load_config("configs/tiny.py").model
  vae_cfg.codec = "sdxl_vae"  # only its sampling rule is used: no VAE is built or run
  key = jax.random.PRNGKey(1)
  latent = UnifiedWorldModel(vae_cfg).next_latent_from_moments(mean, std, key)
  assert latent.shape == (2,) + model.dims.latent_shape and latent.dtype == jnp.float32
  np.testing.assert_allclose(latent, mean + std * jax.random.normal(key, mean.shape), rtol=1e-6)
  assert np.abs(np.asarray(latent) - mean).max() > 0.1
  np.testing.assert_array_equal(model.next_latent_from_moments(mean, std, key), mean)


def test_mismatch_sharding_and_resume(tmp_path):
  cfg, _, frozen = _tiny()
  source = _source(cfg, [8, 9, 10])
  for p in range(2):
    latent_cache_builder.build_latent_cache(source, str(tmp_path), cfg, frozen, process_index=p,
                                    process_count=2)
  cache = latent_cache.LatentCache(str(tmp_path), cfg)
  assert sorted(cache.episodes) == ["0", "1", "2"]
  path = os.path.join(str(tmp_path), cache.episodes["1"]["file"])
  before = os.stat(path).st_mtime_ns
  latent_cache_builder.build_latent_cache(source, str(tmp_path), cfg, frozen, process_index=1,
                                  process_count=2)
  assert os.stat(path).st_mtime_ns == before  # not recomputed

  other = load_config("configs/tiny.py").model
  other.crop_shape = (28, 28)
  other.pixels_downsample = 2
  with pytest.raises(ValueError, match="model.crop_shape"):
    latent_cache.LatentCache(str(tmp_path), other)
  with pytest.raises(ValueError, match="codec params"):
    latent_cache.LatentCache(str(tmp_path), cfg, {"w": np.ones(3)})
  with pytest.raises(ValueError, match="rebuild"):
    latent_cache.LatentCache(str(tmp_path), cfg, source=_source(cfg, [8, 9, 10], seed=1))
  wrong_views = load_config("configs/tiny.py").model
  wrong_views.camera_keys = ("agentview_rgb",)
  with pytest.raises(ValueError, match="synthetic: camera keys"):
    latent_cache_builder.build_latent_cache(source, str(tmp_path / "x"), wrong_views, frozen)
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
