"""Turn a window reference (source, episode, start) into one sample of the batch contract.

A window is `2 * T_o + H_a - 1` consecutive steps (`uwm_jax.batch.window_slices`); only the
2 * T_o frames of current and next observations are read from the source, the actions and
low-dim values come from the (image-free) per-episode arrays. With latent caches (one per source,
`uwm_jax.data.latent_cache`) only the T_o current frames are read and the next obs is the
cached latent moments (keys `NEXT_LATENT_MEAN` / `NEXT_LATENT_STD` instead of `NEXT_OBS`).
"""

from typing import Mapping, Optional, Sequence

import numpy as np

from uwm_jax import batch as batch_lib
from uwm_jax.data import normalization
from uwm_jax.data.episodes import EpisodeSource, check_finite

# Extra batch key: (B,) int32 index of the sample's dataset in `loader.source_names`.
SOURCE = "source"


class WindowReader:
  """Callable (source, episode, start) row -> dict sample; picklable for grain workers.

  Sample shapes: obs/next_obs (V, T_o, H, W, 3) uint8, action (H_a, A) float32 normalised (zeros
  for action-free samples), action_mask () bool, low_dim (T_o, D) float32 when D > 0,
  source () int32. With `latent_caches` (one `LatentCache` per source): next_latent_mean/std
  (V, C, T_o, h, w) float16 instead of next_obs.
  """

  def __init__(self, sources: Sequence[EpisodeSource], model_cfg, stats: Mapping,
               latent_caches: Optional[Sequence] = None):
    self.sources = list(sources)
    self.latent_caches = list(latent_caches) if latent_caches is not None else None
    self.slices = batch_lib.window_slices(model_cfg.num_obs_frames, model_cfg.action_len)
    self.image_shape = tuple(model_cfg.image_shape)
    self.num_views = len(model_cfg.camera_keys)
    self.action_len = int(model_cfg.action_len)
    self.action_dim = int(model_cfg.action_dim)
    self.low_dim_dim = int(model_cfg.low_dim_dim)
    self.stats = {k: dict(v) for k, v in stats.items()}  # identity entries = unnormalised
    self._scale_offset = {k: normalization.scale_offset(v) for k, v in self.stats.items()}

  def _norm(self, x: np.ndarray, key: str) -> np.ndarray:
    return normalization.normalize_by(x, self._scale_offset[key]).astype(np.float32)

  def __call__(self, row) -> dict:
    s, ep, start = (int(v) for v in row)
    src = self.sources[s]
    sl = self.slices
    length = int(src.episode_lengths[ep])
    if start < 0 or start + sl.window > length:
      raise IndexError(f"{src.episode_name(ep)}: window [{start}, {start + sl.window}) outside "
                       f"the episode's {length} steps.")
    obs_idx = np.arange(sl.obs.start, sl.obs.stop) + start
    next_idx = np.arange(sl.next_obs.start, sl.next_obs.stop) + start
    if self.latent_caches is not None:
      next_idx = next_idx[:0]  # the next obs comes from the latent cache: decode no frame of it
    frames = src.frames(ep, np.concatenate([obs_idx, next_idx]))
    want = (self.num_views, len(obs_idx) + len(next_idx)) + self.image_shape + (3,)
    if frames.shape != want or frames.dtype != np.uint8:
      raise ValueError(f"{src.episode_name(ep)}: frames have shape {frames.shape} "
                       f"{frames.dtype}, the config expects {want} uint8 (views "
                       f"{tuple(src.camera_keys)}, model.image_shape {self.image_shape}).")
    t_o = len(obs_idx)
    action_free = bool(src.action_free[ep])
    sample = {
        batch_lib.OBS: frames[:, :t_o],
        batch_lib.ACTION_MASK: np.bool_(not action_free),
        SOURCE: np.int32(s),
    }
    if self.latent_caches is None:
      sample[batch_lib.NEXT_OBS] = frames[:, t_o:]
    else:
      mean, std = self.latent_caches[s].window_moments(ep, start)
      sample[batch_lib.NEXT_LATENT_MEAN], sample[batch_lib.NEXT_LATENT_STD] = mean, std
    if action_free:
      sample[batch_lib.ACTION] = np.zeros((self.action_len, self.action_dim), np.float32)
    else:
      acts = src.actions(ep)[start + sl.action.start:start + sl.action.stop]
      if acts.shape != (self.action_len, self.action_dim):
        raise ValueError(f"{src.episode_name(ep)}: action chunk has shape {acts.shape}, the "
                         f"config expects {(self.action_len, self.action_dim)}.")
      check_finite(acts, src, ep, "action",
                   np.arange(start + sl.action.start, start + sl.action.stop))
      sample[batch_lib.ACTION] = self._norm(acts, normalization.ACTION)
    if self.low_dim_dim:
      sample[batch_lib.LOW_DIM] = self._low_dim(src, ep, obs_idx)
    return sample

  def _low_dim(self, src: EpisodeSource, ep: int, obs_idx: np.ndarray) -> np.ndarray:
    """(T_o, D) normalised low-dim observations; zeros where the source records none (web video).

    Action-free episodes keep theirs: the low-dim values are observations, not action labels."""
    low: Optional[np.ndarray] = src.low_dim(ep)
    if low is None:
      return np.zeros((len(obs_idx), self.low_dim_dim), np.float32)
    low = low[obs_idx]
    if low.shape[1] != self.low_dim_dim:
      raise ValueError(f"{src.episode_name(ep)}: low_dim has width {low.shape[1]}, the config "
                       f"expects model.low_dim_dim = {self.low_dim_dim}.")
    check_finite(low, src, ep, "low_dim", np.asarray(obs_idx))
    return self._norm(low, normalization.LOW_DIM)
