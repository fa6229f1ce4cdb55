"""Precomputed next-observation latents, so training can skip the frozen VAE: the format and the
read side (the builder runs the codec, so it lives downstream of the model:
`uwm_jax.model.latent_cache_builder`).

`build_latent_cache(source, ...)` pushes every frame that can be a next observation (frame index
>= `window_slices(T_o, H_a).next_obs.start`) of every episode of an `EpisodeSource` once through
the codec and stores the posterior moments (mean, std) of the scaled latent, per episode, as
float16 `.npy` files (one cache folder per source). `LatentCache.window_moments(episode, start)`
(a `WindowRef`'s episode and start) returns the moments of the next obs of the window
starting at `start`; in the train step `UnifiedWorldModel.next_latent_from_moments` draws the
latent from them, so the stochastic VAE encoding of the reference (a fresh posterior sample
every step) is kept.

Augmentation (the documented choice): cached latents are of the EVAL transform of the next
frames (resize, centre crop, no colour jitter). With the cache on, next observations are not
augmented; current observations keep their random crop and jitter, which are then no longer
shared with the next observations (the reference shares them). Augmenting in latent space was
not chosen: a latent crop needs uncropped latents (1.5x the VAE work and storage), the
current-obs crop snapped to 8-pixel steps, and it differs from encoding the crop near the
borders; colour jitter has no latent-space equivalent. Training without the cache reproduces
the reference's augmentation exactly.

Training reads the cache when `config.data.latent_cache_dir` names a cache root (one folder per
dataset, `<root>/<dataset name>`, what `build_latent_caches` and
`python -m uwm_jax.import_weights latent_cache` write): the training loader (`open_latent_caches`)
then attaches the moments of each window's next obs to the batch under
`uwm_jax.batch.NEXT_LATENT_MEAN` / `NEXT_LATENT_STD` instead of decoding its next-obs frames,
and `uwm_jax.training.loss.compute_loss` samples the latent with
`UnifiedWorldModel.next_latent_from_moments`.

Layout of a cache folder: `meta-<process>.json` (the config fields the latents depend on,
fingerprints of the codec params and of the source, {episode: file, frames}) and one
`<episode>.npy` per episode of shape (2, L - first_frame, V, C, h, w): [mean, std] per frame.
"""

import collections
import hashlib
import json
import os
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np

from uwm_jax import batch as batch_lib
from uwm_jax.data.episodes import EpisodeSource
from uwm_jax.dims import model_dims

FORMAT_VERSION = 1
AUGMENTATION = "next obs: eval transform (centre crop, no jitter); posterior sampled per step"
# The config fields a cached latent depends on.
_MODEL_FIELDS = ("codec", "camera_keys", "image_shape", "resize_shape", "crop_shape",
                 "num_obs_frames", "action_len", "pixels_downsample")


def _strided_samples(tree) -> list:
  """Every k-th value of each leaf (k = size // 4096), as host numpy arrays. Leaves sharded
  over a mesh (the train state's codec params, possibly spread over several processes) are
  sampled on the devices into a replicated result, so nothing is gathered whole."""
  leaves = jax.tree.leaves(tree)
  sample = lambda x: x.reshape(-1)[::max(1, int(np.prod(x.shape)) // 4096)]
  if leaves and all(isinstance(x, jax.Array) and
                    isinstance(x.sharding, jax.sharding.NamedSharding) for x in leaves):
    replicated = jax.sharding.NamedSharding(leaves[0].sharding.mesh,
                                            jax.sharding.PartitionSpec())
    leaves = jax.jit(lambda xs: [sample(x) for x in xs], out_shardings=replicated)(leaves)
    return [np.asarray(x) for x in leaves]
  return [sample(np.asarray(x)) for x in leaves]


def params_fingerprint(frozen) -> str:
  """A short hash of the codec params (shapes and a strided sample of every leaf)."""
  digest = hashlib.sha1()
  flat = jax.tree_util.tree_flatten_with_path(frozen)[0]
  for (keypath, leaf), sample in zip(flat, _strided_samples(frozen)):
    digest.update(f"{jax.tree_util.keystr(keypath)}{tuple(leaf.shape)}"
                  f"{np.dtype(leaf.dtype)}".encode())
    digest.update(np.ascontiguousarray(sample).tobytes())
  return digest.hexdigest()[:16]


def model_meta(model_cfg) -> dict:
  return {f: (list(model_cfg[f]) if isinstance(model_cfg[f], (tuple, list)) else model_cfg[f])
          for f in _MODEL_FIELDS}


def first_cached_frame(model_cfg) -> int:
  """The first frame of an episode that can be a next observation."""
  return batch_lib.window_slices(model_cfg.num_obs_frames, model_cfg.action_len).next_obs.start


def cache_meta(source: EpisodeSource, model_cfg, frozen_fingerprint: str) -> dict:
  """The `meta-<process>.json` of a cache of `source` without its episodes (the writer adds
  `{episode: {"file", "frames"}}` under "episodes" as it writes them)."""
  return {"format": FORMAT_VERSION, "augmentation": AUGMENTATION, "source": source.name,
          "source_fingerprint": source.fingerprint(), "model": model_meta(model_cfg),
          "frozen_fingerprint": frozen_fingerprint, "first_frame": first_cached_frame(model_cfg),
          "latent_shape": list(model_dims(model_cfg).latent_shape), "episodes": {}}


def source_cache_dir(root: str, source_name: str) -> str:
  """The cache folder of one dataset under a cache root (one folder per source)."""
  return os.path.join(root, source_name)


def has_array(path: str, shape) -> bool:
  if not os.path.isfile(path):
    return False
  try:
    return tuple(np.load(path, mmap_mode="r").shape) == tuple(shape)
  except (ValueError, OSError):
    return False


def write_npy_atomic(path: str, array: np.ndarray) -> None:
  tmp = path + ".tmp.npy"
  np.save(tmp, array)
  os.replace(tmp, path)


def write_json_atomic(path: str, obj: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f)
  os.replace(tmp, path)


class LatentCache:
  """Read side: the cached next-obs moments of a window, memory-mapped.

  Raises FileNotFoundError when `cache_dir` holds no cache, ValueError naming the field when the
  cache was built for another model config, or (if given) with other codec params (`frozen`,
  or their `params_fingerprint` as `fingerprint`) or from another version of `source`.
  At most `max_open` episode files are kept open (least recently used closed first).
  """

  def __init__(self, cache_dir: str, model_cfg, frozen=None,
               source: Optional[EpisodeSource] = None, *, fingerprint: Optional[str] = None,
               max_open: int = 64):
    metas = sorted(f for f in os.listdir(cache_dir) if f.startswith("meta-")
                   and f.endswith(".json")) if os.path.isdir(cache_dir) else []
    if not metas:
      raise FileNotFoundError(f"No latent cache in {cache_dir!r} (no meta-*.json): build it "
                              f"with `python -m uwm_jax.import_weights latent_cache`.")
    self.cache_dir = cache_dir
    self.episodes: Dict[str, dict] = {}
    want = model_meta(model_cfg)
    if frozen is not None:
      fingerprint = params_fingerprint(frozen)
    for name in metas:
      with open(os.path.join(cache_dir, name)) as f:
        meta = json.load(f)
      if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"Latent cache {cache_dir} ({name}) has format {meta.get('format')}, "
                         f"this code reads format {FORMAT_VERSION}: rebuild it.")
      for field, value in want.items():
        if meta["model"].get(field) != value:
          raise ValueError(f"Latent cache {cache_dir} ({name}) was built with model.{field} = "
                           f"{meta['model'].get(field)!r}; this config has {value!r}.")
      if fingerprint is not None and meta["frozen_fingerprint"] != fingerprint:
        raise ValueError(f"Latent cache {cache_dir} ({name}) was built with other codec params "
                         f"(fingerprint {meta['frozen_fingerprint']} vs {fingerprint}).")
      if source is not None and (meta["source"], meta["source_fingerprint"]) != (
          source.name, source.fingerprint()):
        raise ValueError(f"Latent cache {cache_dir} ({name}) was built from {meta['source']!r} "
                         f"({meta['source_fingerprint']!r}), not from {source.name!r} "
                         f"({source.fingerprint()!r}): rebuild it.")
      self.first_frame = meta["first_frame"]
      self.episodes.update(meta["episodes"])
    self.slices = batch_lib.window_slices(model_cfg.num_obs_frames, model_cfg.action_len)
    self.max_open = max(1, int(max_open))
    self._arrays: "collections.OrderedDict[str, np.ndarray]" = collections.OrderedDict()
    self._lock = threading.Lock()

  def __getstate__(self):  # grain workers: reopen files lazily, no lock or mmaps pickled
    return {**self.__dict__, "_arrays": collections.OrderedDict(), "_lock": None}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def _array(self, episode: int) -> np.ndarray:
    key = str(episode)
    with self._lock:
      if key in self._arrays:
        self._arrays.move_to_end(key)
        return self._arrays[key]
    if key not in self.episodes:
      raise KeyError(f"Episode {episode} is not in the latent cache {self.cache_dir}.")
    array = np.load(os.path.join(self.cache_dir, self.episodes[key]["file"]), mmap_mode="r")
    with self._lock:
      self._arrays[key] = array
      while len(self._arrays) > self.max_open:
        self._arrays.popitem(last=False)
    return array

  def missing_episodes(self, source: EpisodeSource) -> List[int]:
    """Episodes of `source` that hold a window but are not in the cache."""
    return [e for e in range(source.num_episodes)
            if int(source.episode_lengths[e]) >= self.slices.window
            and str(e) not in self.episodes]

  def window_moments(self, episode: int, start: int) -> Tuple[np.ndarray, np.ndarray]:
    """Moments of the next obs of the window starting at frame `start` of `episode` (a
    `WindowRef`'s episode and start): (mean, std), each (V, C, T_o, h, w) float16."""
    array = self._array(episode)
    frames = self.episodes[str(episode)]["frames"]
    if not 0 <= start <= frames - self.slices.window:
      raise IndexError(f"Window start {start} is outside episode {episode} ({frames} frames, "
                       f"window {self.slices.window}) of the latent cache {self.cache_dir}.")
    lo = start + self.slices.next_obs.start - self.first_frame
    hi = start + self.slices.next_obs.stop - self.first_frame
    moments = np.asarray(array[:, lo:hi])  # (2, T_o, V, C, h, w)
    moments = moments.transpose(0, 2, 3, 1, 4, 5)  # (2, V, C, T_o, h, w)
    return moments[0], moments[1]


def open_latent_caches(root: str, names: Sequence[str], sources: Sequence[EpisodeSource],
                       model_cfg, frozen=None) -> List[LatentCache]:
  """The cache of every dataset under the cache root `root` (`data.latent_cache_dir`), checked
  against the model config, the datasets and (if given) the codec params `frozen`. A missing
  folder, a cache built for another config, codec or version of the data, or an episode
  missing from it raises one error naming the dataset and the cache folder."""
  fingerprint = params_fingerprint(frozen) if frozen is not None else None
  caches = []
  for name, source in zip(names, sources):
    cache_dir = source_cache_dir(root, name)
    try:
      cache = LatentCache(cache_dir, model_cfg, source=source, fingerprint=fingerprint)
    except (FileNotFoundError, ValueError) as e:
      raise type(e)(f"Dataset {name!r}, data.latent_cache_dir={root!r}: {e}") from None
    missing = cache.missing_episodes(source)
    if missing:
      raise ValueError(
          f"Dataset {name!r}, data.latent_cache_dir={root!r}: {len(missing)} of its "
          f"{source.num_episodes} episodes are not in the latent cache {cache_dir} (first: "
          f"{missing[:5]}); finish building it (`python -m uwm_jax.import_weights latent_cache`, every "
          f"--process_index of --process_count).")
    caches.append(cache)
  return caches
