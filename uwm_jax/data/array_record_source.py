"""Read the array_record training format: `ArrayRecordSource`, the `array_record` kind of
`source_configs` (layout: `array_record_format`; written by `uwm_jax.data.convert_rlds`,
`convert_video` and `convert_lerobot`).

Frames come through `grain.sources.ArrayRecordDataSource` (random access, one record per step,
opened lazily in each worker); actions / low-dim values are memory-mapped .npy slices. Only the
model's cameras of the requested steps are decoded.
"""

import hashlib
import json
import logging
import os
from typing import List, Optional, Sequence, Tuple

import grain
import numpy as np

from uwm_jax.data import array_record_format as fmt
from uwm_jax.data import filters as filters_lib
from uwm_jax.data.episodes import EpisodeSource
from uwm_jax.data.frame_cache import DecodedFrameCache


def load_dataset_json(path: str, name: str) -> dict:
  """dataset.json of a converted dataset; errors say what is missing or unfinished."""
  if not path or not os.path.isdir(path):
    raise FileNotFoundError(f"Dataset {name!r}: converted data folder {path!r} does not exist "
                            f"(write it with `python -m uwm_jax.data.convert_rlds`).")
  meta_path = os.path.join(path, fmt.DATASET_JSON)
  if not os.path.exists(meta_path):
    conv = os.path.join(path, fmt.CONVERSION_JSON)
    if os.path.exists(conv):
      n = fmt.read_json(conv)["num_input_shards"]
      missing = [k for k in range(n) if not fmt.shard_done(path, k, n)]
      raise ValueError(f"Dataset {name!r}: conversion in {path!r} is unfinished (input shards "
                       f"{missing[:10]}{'...' if len(missing) > 10 else ''} of {n} missing); "
                       f"rerun the conversion command.")
    raise FileNotFoundError(f"Dataset {name!r}: {path!r} holds no {fmt.DATASET_JSON}; it is not "
                            f"a converted dataset.")
  meta = fmt.read_json(meta_path)
  if meta.get("format") != fmt.FORMAT:
    raise ValueError(f"Dataset {name!r}: {meta_path} has format {meta.get('format')!r}, "
                     f"expected {fmt.FORMAT!r}.")
  return meta


def stored_views(meta: dict, camera_keys: Sequence[str], name: str) -> List[Optional[int]]:
  """For each model camera, the stored view it shows (None: black). A converted video corpus
  (one CLIP_CAMERA view) fills the model's views as its `clip_padding` says."""
  stored = list(meta["camera_keys"])
  padding = meta.get("conversion", {}).get("clip_padding")
  if padding:
    return [0 if padding == "same" or v == 0 else None for v in range(len(camera_keys))]
  missing = [k for k in camera_keys if k not in stored]
  if missing:
    raise ValueError(f"Dataset {name!r}: no camera {missing} (model.camera_keys); it stores "
                     f"{stored}.")
  return [stored.index(k) for k in camera_keys]


class ArrayRecordSource(EpisodeSource):
  """Episodes of a converted dataset, optionally filtered; views in the model's order."""

  def __init__(self, name: str, path: str, camera_keys: Sequence[str],
               image_shape: Tuple[int, int], action_dim: int, low_dim_dim: int = 0,
               action_free: bool = False,
               episode_filter: filters_lib.EpisodeFilter = filters_lib.EpisodeFilter(),
               max_episodes: int = 0, cache_decoded_frames: bool = False):
    self.name = name
    self.path = os.path.abspath(path)
    meta = load_dataset_json(path, name)
    self._meta = meta
    stored = list(meta["camera_keys"])
    self.camera_keys = tuple(camera_keys)
    self._views = stored_views(meta, camera_keys, name)
    for k in sorted(set(stored[v] for v in self._views if v is not None)):
      shape = meta["image_shapes"].get(k)
      if shape is not None and tuple(shape) != tuple(image_shape):
        raise ValueError(f"Dataset {name!r}: camera {k!r} stores {tuple(shape)} images, "
                         f"model.image_shape is {tuple(image_shape)}.")
    self.image_shape = tuple(image_shape)
    stored_free = bool(meta["action_free"])
    if not (action_free or stored_free) and meta["action_dim"] != action_dim:
      raise ValueError(f"Dataset {name!r}: actions have {meta['action_dim']} dimensions, "
                       f"model.action_dim is {action_dim}.")
    if low_dim_dim and not (action_free or stored_free) and meta["low_dim_dim"] != low_dim_dim:
      raise ValueError(f"Dataset {name!r}: low-dim observations have {meta['low_dim_dim']} "
                       f"dimensions, model.low_dim_dim is {low_dim_dim}.")
    self._has_actions = not stored_free
    # An action-free source keeps its low-dim observations when they have the model's width;
    # with another width (another robot's proprioception) it is read as video without them.
    self._has_low_dim = bool(meta["low_dim_dim"]) and low_dim_dim in (0, meta["low_dim_dim"])
    if low_dim_dim and meta["low_dim_dim"] and not self._has_low_dim:
      logging.warning("Dataset %r (action-free): its %d-d low-dim observations do not fit "
                      "model.low_dim_dim = %d; its samples get zeros.", name,
                      meta["low_dim_dim"], low_dim_dim)
    self._filter_desc = [list(episode_filter.include), list(episode_filter.exclude),
                         episode_filter.success_only, int(max_episodes)]

    # Episode table over the shards, in `tfds.load` order (dataset.json's episode_order;
    # datasets converted before it existed: shard by shard).
    shard_of, offset, record, length, metadata = [], [], [], [], []
    records_before = 0
    first_episode = []
    self._shard_names = [s["name"] for s in meta["shards"]]
    for s, name_s in enumerate(self._shard_names):
      info = fmt.read_json(os.path.join(self.path, name_s, fmt.EPISODES))
      first_episode.append(len(shard_of))
      for off, L, m in zip(info["offset"], info["length"], info["metadata"]):
        shard_of.append(s)
        offset.append(off)
        record.append(records_before + off)
        length.append(L)
        metadata.append(m)
      records_before += info["num_steps"]
    if meta.get("episode_order") is not None:
      order = [first_episode[p] + local for p, local in meta["episode_order"]]
      shard_of, offset, record, length = ([x[i] for i in order]
                                          for x in (shard_of, offset, record, length))
      metadata = [metadata[i] for i in order]
    limit = int(max_episodes or 0)
    if meta.get("max_episodes"):
      limit = min(limit, meta["max_episodes"]) if limit else meta["max_episodes"]
    keep = np.asarray(filters_lib.select(metadata, episode_filter, limit), np.int64)
    if not len(keep):
      raise ValueError(f"Dataset {name!r}: no episode in {path!r} passes the filters "
                       f"{self._filter_desc}.")
    self._shard_of = np.asarray(shard_of, np.int64)[keep]
    self._offset = np.asarray(offset, np.int64)[keep]
    self._record = np.asarray(record, np.int64)[keep]
    self.episode_lengths = np.asarray(length, np.int64)[keep]
    self.metadata = [metadata[i] for i in keep]
    self.action_free = np.full((len(keep),), bool(action_free or stored_free))
    self._frames = None  # grain ArrayRecordDataSource, opened lazily per process
    self._arrays = {}  # (shard, file) -> memory-mapped array
    self.cache_decoded_frames = bool(cache_decoded_frames)
    self._cache_start = np.concatenate([[0], np.cumsum(self.episode_lengths)]).astype(np.int64)
    self._cache = None  # DecodedFrameCache, allocated lazily per process

  @classmethod
  def from_config(cls, name: str, cfg, model_cfg) -> "ArrayRecordSource":
    return cls(name, cfg.path, model_cfg.camera_keys, model_cfg.image_shape,
               model_cfg.action_dim, model_cfg.low_dim_dim, bool(cfg.action_free),
               filters_lib.EpisodeFilter.from_args(cfg.include, cfg.exclude, cfg.success_only),
               int(cfg.max_episodes), bool(cfg.get("cache_decoded_frames", False)))

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_frames"], state["_arrays"], state["_cache"] = None, {}, None
    return state

  def episode_name(self, episode: int) -> str:
    ident = self.metadata[episode].get("file_path", "")
    return f"dataset {self.name!r}, episode {episode}" + (f" ({ident})" if ident else "")

  def _array(self, episode: int, filename: str) -> np.ndarray:
    s = int(self._shard_of[episode])
    key = (s, filename)
    if key not in self._arrays:
      self._arrays[key] = np.load(os.path.join(self.path, self._shard_names[s], filename),
                                  mmap_mode="r")
    off = int(self._offset[episode])
    return self._arrays[key][off:off + int(self.episode_lengths[episode])]

  def actions(self, episode: int) -> Optional[np.ndarray]:
    if not self._has_actions:
      return None
    return np.asarray(self._array(episode, fmt.ACTIONS), np.float32)

  def low_dim(self, episode: int) -> Optional[np.ndarray]:
    if not self._has_low_dim:
      return None
    return np.asarray(self._array(episode, fmt.LOW_DIM), np.float32)

  def _frame_source(self):
    if self._frames is None:
      self._frames = grain.sources.ArrayRecordDataSource(
          [os.path.join(self.path, n, fmt.FRAMES) for n in self._shard_names])
    return self._frames

  def frames(self, episode: int, indices: np.ndarray) -> np.ndarray:
    indices = np.asarray(indices, np.int64)
    L = int(self.episode_lengths[episode])
    if indices.min(initial=0) < 0 or indices.max(initial=0) >= L:
      raise IndexError(f"{self.episode_name(episode)}: steps {indices} outside [0, {L}).")
    if not self.cache_decoded_frames:
      return self._decode_frames(episode, indices)
    if self._cache is None:
      self._cache = DecodedFrameCache(int(self._cache_start[-1]), len(self._views),
                                      self.image_shape, self.name)
    start = int(self._cache_start[episode])
    return self._cache.get(start + indices, lambda rows: self._decode_frames(episode, rows - start))

  def fill_frame_cache(self) -> None:
    """Decode every step into the decoded-frame cache now (the training loader does this in a
    thread while the train step compiles); nothing without `cache_decoded_frames`."""
    if self.cache_decoded_frames:
      for episode, length in enumerate(self.episode_lengths):
        self.frames(episode, np.arange(int(length)))

  def _decode_frames(self, episode: int, indices: np.ndarray) -> np.ndarray:
    """(V, len(indices), H, W, 3) uint8: the steps' records read and decoded."""
    keys = [int(self._record[episode] + i) for i in indices]
    records = self._frame_source().__getitems__(keys)
    out = np.zeros((len(self._views), len(keys)) + self.image_shape + (3,), np.uint8)
    wanted = sorted(set(v for v in self._views if v is not None))
    for j, rec in enumerate(records):
      images = dict(zip(wanted, (fmt.decode_image(b) for b in fmt.decode_step(rec, wanted))))
      for v, stored in enumerate(self._views):
        if stored is None:
          continue
        img = images[stored]
        if img.shape != out.shape[2:]:
          raise ValueError(f"{self.episode_name(episode)}: camera {self.camera_keys[v]!r} step "
                           f"{indices[j]} decodes to {img.shape}, expected {out.shape[2:]}.")
        out[v, j] = img
    return out

  def fingerprint(self) -> str:
    """dataset.json (conversion parameters, shard sizes) + the load-time filters."""
    text = json.dumps([self._meta, self._filter_desc], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()

  def stats_cache_dir(self) -> Optional[str]:
    return self.path

