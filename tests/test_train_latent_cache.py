"""Training with a latent cache (data.latent_cache_dir): loader batches carry the cached
next-obs moments instead of next-obs frames, the loss from them equals the loss through the VAE,
the train loop runs on a (2, 4) mesh with them, and a missing or mismatched cache is one clear
error naming the dataset and the cache folder."""

import threading

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests.helpers import FAST_COMPILE, structured_batch, tiny_config
from uwm_jax import batch as batch_lib
from uwm_jax.data import latent_cache
from uwm_jax.data import loader as loader_lib
from uwm_jax.data import source_configs
from uwm_jax.data.sources import build_sources
from uwm_jax.diffusion import make_schedule
from uwm_jax.model import latent_cache_builder
from uwm_jax.model.uwm import UnifiedWorldModel
from uwm_jax.training import loop
from uwm_jax.training.loss import compute_loss

MEAN, STD = batch_lib.NEXT_LATENT_MEAN, batch_lib.NEXT_LATENT_STD


def _config(root=""):
  """tiny (pixels codec) with a robot and an action-free video source."""
  c = tiny_config()
  c.data.sources = ml_collections.ConfigDict(dict(
      robot=source_configs.synthetic(num_episodes=6, episode_len=16),
      video=source_configs.synthetic(num_episodes=4, episode_len=10, action_free_fraction=1.0,
                                     seed=3)))
  c.data.latent_cache_dir = root
  return c


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("latents"))
  metas = latent_cache_builder.build_latent_caches(_config(), {}, root, batch_size=8)
  assert sorted(metas) == ["robot", "video"]
  return root


def _stack(samples):
  return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


def test_loader_batches_carry_the_cached_moments(cache_root, monkeypatch):
  config = _config(cache_root)
  loader = loader_lib.make_train_loader(config, process_index=0, process_count=1, frozen={})
  plain = loader_lib.make_train_loader(_config(), process_index=0, process_count=1)
  model = UnifiedWorldModel(config.model)
  try:
    sources = set()
    for _ in range(3):
      b, ref = next(loader), next(plain)  # same seed: the same windows
      assert batch_lib.NEXT_OBS not in b and b[MEAN].dtype == b[STD].dtype == np.float16
      batch_lib.validate_batch(b, config.model)
      for k in (batch_lib.OBS, batch_lib.ACTION, batch_lib.ACTION_MASK, loader_lib.SOURCE):
        np.testing.assert_array_equal(b[k], ref[k], err_msg=k)
      # The moments are the codec's (eval transform) of exactly these windows' next frames;
      # float16 storage of values in [-1, 1]: error <= 2**-11.
      _, next_img = model.transform(ref[batch_lib.OBS], ref[batch_lib.NEXT_OBS],
                                    jax.random.key(0), train=False)
      want_mean, want_std = model.codec.moments({}, next_img)
      np.testing.assert_allclose(b[MEAN], want_mean, atol=5e-4)
      np.testing.assert_array_equal(b[STD], want_std)
      sources |= {(s, m) for s, m in zip(b[loader_lib.SOURCE], b[batch_lib.ACTION_MASK])}
    assert sources == {(0, True), (1, False)}  # robot and action-free video samples alike
  finally:
    loader.close()
    plain.close()

  # Only the current frames are decoded; the eval loader keeps decoding next obs (VAE metrics).
  # Counted in this thread only: a read-ahead thread of the closed loader may still be finishing
  # a window.
  calls = []
  src = loader.sources[0]
  frames = src.frames
  this_thread = threading.get_ident()

  def counted_frames(ep, idx):
    if threading.get_ident() == this_thread:
      calls.append(len(idx))
    return frames(ep, idx)

  monkeypatch.setattr(src, "frames", counted_frames)
  loader.reader((0, 2, 1))
  assert calls == [config.model.num_obs_frames]
  eval_batch = next(iter(loader_lib.make_eval_loader(config, process_index=0, process_count=1)))
  assert batch_lib.NEXT_OBS in eval_batch and MEAN not in eval_batch


def test_missing_or_mismatched_cache_is_one_clear_error(cache_root, tmp_path):
  def make(config, frozen=None):
    loader_lib.make_train_loader(config, process_index=0, process_count=1, frozen=frozen)

  absent = str(tmp_path / "absent")
  with pytest.raises(FileNotFoundError, match=f"Dataset 'robot', data.latent_cache_dir='{absent}'"
                                              f": No latent cache in '{absent}/robot'"):
    make(_config(absent))
  other = _config(cache_root)
  other.model.crop_shape, other.model.pixels_downsample = (28, 28), 2
  with pytest.raises(ValueError, match="Dataset 'robot'.*model.crop_shape = \\[32, 32\\]"):
    make(other)
  with pytest.raises(ValueError, match="Dataset 'robot'.*other codec params"):
    make(_config(cache_root), frozen={"w": np.ones(3, np.float32)})
  changed = _config(cache_root)
  changed.data.sources.video.seed = 4
  with pytest.raises(ValueError, match="Dataset 'video'.*rebuild"):
    make(changed)
  partial = str(tmp_path / "partial")
  config = _config(partial)
  names, sources, _ = build_sources(config)
  for name, src in zip(names, sources):
    latent_cache_builder.build_latent_cache(src, latent_cache.source_cache_dir(partial, name),
                                    config.model, {}, episodes=[0, 1], batch_size=8)
  with pytest.raises(ValueError, match=f"Dataset 'robot', data.latent_cache_dir='{partial}': 4 "
                                       f"of its 6 episodes are not in the latent cache "
                                       f"{partial}/robot \\(first: \\[2, 3, 4, 5\\]\\)"):
    make(config)
  dp = tiny_config("dp")  # no next obs: the cache is not read, no error
  dp.data.latent_cache_dir = absent
  loader = loader_lib.make_train_loader(dp, process_index=0, process_count=1)
  assert loader.latent_caches is None and batch_lib.NEXT_OBS in next(loader)
  loader.close()


def test_loss_with_cached_moments_equals_the_vae_path():
  """SDXL VAE codec (random weights) at 16x16, augmentation off, a cache holding the exact VAE
  moments of the eval transform: the cached path draws the same posterior sample with the same
  key, so the losses agree (float32 moments: rtol 1e-6; rounded to float16 as the cache stores
  them: rtol 2e-5). One compilation (the VAE path and the cached paths in one jit)."""
  config = tiny_config(augment=False)
  m = config.model
  m.codec, m.image_shape, m.resize_shape, m.crop_shape = "sdxl_vae", (16, 16), (16, 16), (16, 16)
  m.camera_keys = m.camera_keys[:1]  # 2 samples x 1 view x 2 frames: 4 images through the VAE
  model = UnifiedWorldModel(m)
  rng_np = np.random.default_rng(0)
  random = lambda s: rng_np.normal(0, 0.05, s.shape).astype(np.float32)
  frozen = jax.tree.map(random, jax.eval_shape(model.codec.init, jax.random.key(0)))
  # Random (not zero-initialised) output layers, so the loss depends on the latent.
  params = jax.tree.map(random, jax.eval_shape(model.init_params, jax.random.key(1)))
  batch = structured_batch(m, 2)
  schedule = make_schedule(config.diffusion)
  moments_fn = latent_cache_builder.make_moments_fn(m)  # what build_latent_cache stores, per frame

  def losses(params, frozen, batch, key):  # the weights as arguments, not program constants
    loss = lambda b, k: compute_loss(model, schedule, params, frozen, b, k)[1]
    next_obs = batch.pop(batch_lib.NEXT_OBS)
    B, V, T = next_obs.shape[:3]
    frames = next_obs.transpose(0, 2, 1, 3, 4, 5).reshape((B * T, V) + next_obs.shape[3:])
    mean, std = (x.reshape((B, T) + x.shape[1:]).transpose(0, 2, 3, 1, 4, 5)
                 for x in moments_fn.__wrapped__(frozen, frames))
    cached = lambda mean, std: dict(batch, **{MEAN: mean, STD: std})
    half = lambda x: x.astype(jnp.float16)
    return {"vae": loss(dict(batch, **{batch_lib.NEXT_OBS: next_obs}), key),
            "exact": loss(cached(mean, std), key),
            "float16": loss(cached(half(mean), half(std)), key),
            "other_key": loss(cached(mean, std), jax.random.fold_in(key, 1)),
            "std_zero": loss(cached(mean, jnp.zeros_like(std)), key),
            "min_std": jnp.min(std)}

  out = jax.jit(losses)(params, frozen, batch, jax.random.key(5))
  assert float(out["min_std"]) > 0.01  # a real posterior: the sample depends on the key
  for name in ("loss", "action_loss", "dynamics_loss"):
    np.testing.assert_allclose(out["exact"][name], out["vae"][name], rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(out["float16"][name], out["vae"][name], rtol=2e-5, err_msg=name)
  # The agreement comes from the same posterior sample: another draw of it (another key, or
  # none: the mean) moves the loss 10x further than the float16 tolerance.
  vae = float(out["vae"]["dynamics_loss"])
  for other in ("other_key", "std_zero"):
    assert abs(float(out[other]["dynamics_loss"]) - vae) > 2e-4 * vae, other


def test_train_loop_on_a_mesh_with_the_cache(cache_root, tmp_path, monkeypatch):
  config = _config(cache_root)
  config.num_steps = 3
  config.train.mesh_shape = (2, 4, 1)
  config.train.fsdp_min_size = 1024
  config.train.eval_at_end = False
  config.train.compiler_options = FAST_COMPILE
  config.train.progress_bar = config.train.tensorboard = False
  seen = []
  to_global = loop.global_batch_lib.host_batch_to_global

  def spy(batch, mesh, spec):
    out = to_global(batch, mesh, spec)
    seen.append(out)
    return out

  monkeypatch.setattr(loop.global_batch_lib, "host_batch_to_global", spy)
  result = loop.train(config, str(tmp_path / "run"))
  assert result.step == 3 and np.isfinite(result.last_train_metrics["loss"])
  assert len(seen) == 3
  for batch in seen:
    assert batch_lib.NEXT_OBS not in batch
    for key in (MEAN, STD):  # split over the data x fsdp devices like every batch key
      shards = batch[key].addressable_shards
      assert len(shards) == 8 and shards[0].data.shape[0] == 1
      assert batch[key].sharding.spec == batch[batch_lib.OBS].sharding.spec


def test_codec_fingerprint_of_sharded_params():
  """The run's frozen params are sharded global arrays: the fingerprint samples them on the
  devices and equals the one of the host copy that `build_latent_cache` computes."""
  rng = np.random.default_rng(0)
  host = {"enc": {"kernel": rng.normal(size=(64, 96)).astype(np.float32),
                  "bias": rng.normal(size=(96,)).astype(np.float32)}}
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "fsdp"))
  spec = {"enc": {"kernel": jax.sharding.PartitionSpec("fsdp", "data"),
                  "bias": jax.sharding.PartitionSpec("fsdp")}}
  sharded = jax.tree.map(lambda x, s: jax.device_put(x, jax.sharding.NamedSharding(mesh, s)),
                         host, spec)
  assert len(sharded["enc"]["kernel"].addressable_shards) == 8
  assert latent_cache.params_fingerprint(sharded) == latent_cache.params_fingerprint(host)
  other = {"enc": dict(host["enc"], bias=host["enc"]["bias"] + np.eye(96, dtype=np.float32)[0])}
  assert latent_cache.params_fingerprint(sharded) != latent_cache.params_fingerprint(other)
