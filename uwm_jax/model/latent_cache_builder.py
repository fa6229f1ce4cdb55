"""Build the latent cache: every next-obs frame of a dataset pushed once through the codec.

The cache's format, its read side and its checks live in the data stage
(`uwm_jax.data.latent_cache`): the training loader only reads `.npy` files. Writing them needs
the model's codec and image transforms, so the builder sits here, downstream of both (data must
not import the model). `python -m uwm_jax.import_weights --latent_cache_out=DIR` runs it.
"""

import os
from typing import Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from uwm_jax import dims as dims_lib
from uwm_jax.data import latent_cache
from uwm_jax.data.episodes import EpisodeSource
from uwm_jax.data.sources import build_sources
from uwm_jax.model.codecs import make_codec
from uwm_jax.model.image_transforms import transform_views
from uwm_jax.runs import storage
from uwm_jax.runs.checkpoint import load_params_checkpoint


def make_moments_fn(model_cfg):
  """jit fn(frozen, frames (N, V, H, W, 3) uint8) -> (mean, std), each (N, V, C, h, w) float32,
  of the eval transform (resize, centre crop, no jitter) of every frame."""
  codec = make_codec(model_cfg)

  def fn(frozen, frames):
    images = transform_views(frames[:, :, None], jax.random.PRNGKey(0), model_cfg, train=False)
    mean, std = codec.moments(frozen, images)
    return mean[:, :, :, 0], std[:, :, :, 0]

  return jax.jit(fn)


def build_latent_cache(source: EpisodeSource, cache_dir: str, model_cfg, frozen, *,
                       episodes: Optional[Sequence[int]] = None, batch_size: int = 64,
                       process_index: int = 0, process_count: int = 1) -> dict:
  """Encode the next-obs frames of every episode of `source` once; returns this process's meta.

  episodes: which episodes (default all); process p handles the i-th of them when
  i % process_count == p and writes `meta-<p>.json`. Only frames from `first_cached_frame` on
  are decoded, `batch_size` at a time. Episodes shorter than a window are skipped; an episode
  whose file already exists with the right shape is not recomputed (an interrupted build
  resumes).
  """
  if tuple(source.camera_keys) != tuple(model_cfg.camera_keys):
    raise ValueError(f"{source.name}: camera keys {tuple(source.camera_keys)} differ from "
                     f"model.camera_keys {tuple(model_cfg.camera_keys)}.")
  d = dims_lib.model_dims(model_cfg)
  first = latent_cache.first_cached_frame(model_cfg)
  moments_fn = make_moments_fn(model_cfg)
  os.makedirs(cache_dir, exist_ok=True)
  meta = latent_cache.cache_meta(source, model_cfg, latent_cache.params_fingerprint(frozen))
  V, C, _, h, w = d.latent_shape
  episodes = range(source.num_episodes) if episodes is None else episodes
  mine = [int(e) for i, e in enumerate(episodes) if i % process_count == process_index]
  for episode in tqdm(mine, desc=f"latent cache {source.name}", disable=process_index != 0):
    length = int(source.episode_lengths[episode])
    if length < d.window:
      continue
    name = f"{episode:07d}.npy"
    path = os.path.join(cache_dir, name)
    if not latent_cache.has_array(path, (2, length - first, V, C, h, w)):
      moments = [_encode_frames(moments_fn, frozen, source, episode, idx, batch_size, model_cfg)
                 for idx in np.array_split(np.arange(first, length),
                                           -(-(length - first) // batch_size))]
      latent_cache.write_npy_atomic(path, np.concatenate(moments, axis=1))
    meta["episodes"][str(episode)] = {"file": name, "frames": length}
  latent_cache.write_json_atomic(os.path.join(cache_dir, f"meta-{process_index}.json"), meta)
  return meta


def _encode_frames(moments_fn, frozen, source: EpisodeSource, episode: int, indices: np.ndarray,
                   batch_size: int, model_cfg) -> np.ndarray:
  """Frames `indices` of an episode -> (2, n, V, C, h, w) float16 [mean, std], through a
  batch padded to `batch_size` (every call has one shape: one compilation)."""
  frames = np.asarray(source.frames(episode, indices))  # (V, n, H, W, 3)
  expected = (len(model_cfg.camera_keys), len(indices)) + tuple(model_cfg.image_shape) + (3,)
  if frames.dtype != np.uint8 or frames.shape != expected:
    raise ValueError(f"{source.episode_name(episode)}: frames are {frames.dtype}"
                     f"{frames.shape}, expected uint8 {expected} (model.image_shape).")
  frames = frames.transpose(1, 0, 2, 3, 4)
  n = frames.shape[0]
  if n < batch_size:
    frames = np.concatenate([frames, np.repeat(frames[-1:], batch_size - n, axis=0)])
  mean, std = moments_fn(frozen, jnp.asarray(frames))
  return np.stack([np.asarray(mean)[:n], np.asarray(std)[:n]]).astype(np.float16)


def build_latent_caches(config, frozen, root: str, *, batch_size: int = 64,
                        process_index: int = 0, process_count: int = 1) -> Dict[str, dict]:
  """Build the cache of every source of `config.data.sources` under `root`/<source name>
  (video and robot episodes alike: every sample has next obs). -> {source name: meta}."""
  names, sources, _ = build_sources(config)
  return {name: build_latent_cache(src, latent_cache.source_cache_dir(root, name), config.model,
                                   frozen,
                                   batch_size=batch_size, process_index=process_index,
                                   process_count=process_count)
          for name, src in zip(names, sources)}


def build_latent_caches_from_checkpoint(config, checkpoint_dir: str, root: str, *,
                                        batch_size: int = 64, process_index: int = 0,
                                        process_count: int = 1) -> Dict[str, dict]:
  """`build_latent_caches` with the codec params of a checkpoint (the latest step of a
  `checkpoints` folder, local or gs://); its codec must be the config's. The cache `root` is
  written as local files (a mounted bucket is fine). -> {source name: meta}."""
  storage.require_local(root, "latent cache folder")
  _, frozen, ckpt_config, _ = load_params_checkpoint(checkpoint_dir)
  if ckpt_config.model.codec != config.model.codec:
    raise ValueError(f"The checkpoint {checkpoint_dir} has model.codec "
                     f"{ckpt_config.model.codec!r}, the config {config.model.codec!r}.")
  return build_latent_caches(config, frozen, root, batch_size=batch_size,
                             process_index=process_index, process_count=process_count)
