"""Normalisation statistics: a pass over actions / low-dim values that decodes no images.

Per source, the min/max over every step of every robot (not action-free) episode — training and
validation episodes alike, as the reference does (docs/data.md) — is cached beside the data
as `<data>/uwm_stats/<key>.json`, where the key hashes the source's fingerprint (its stored
files and their conversion parameters), the statistics version and the widths used. A
mixture's statistics are the elementwise min/max over its robot sources.
"""

import hashlib
import json
import logging
import os
from typing import List, Mapping, Optional, Sequence

import numpy as np
import tqdm

from uwm_jax.data import normalization
from uwm_jax.data.episodes import EpisodeSource, check_finite, robot_episodes
from uwm_jax.runs import storage

STATS_VERSION = "minmax-v1"
CACHE_DIR = "uwm_stats"


def stats_key(source: EpisodeSource, use_low_dim: bool) -> str:
  """Changes whenever the data (fingerprint) or what is computed (version, fields) changes."""
  text = json.dumps([STATS_VERSION, source.fingerprint(), bool(use_low_dim)])
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _compute_source_stats(source: EpisodeSource, use_low_dim: bool) -> Optional[dict]:
  episodes = robot_episodes(source)
  if not len(episodes):
    return None
  acts = normalization.RunningMinMax(f"{source.name}/action")
  low = normalization.RunningMinMax(f"{source.name}/low_dim")
  for ep in tqdm.tqdm(episodes, desc=f"statistics {source.name}", leave=False,
                      disable=len(episodes) < 100):
    a = source.actions(int(ep))
    if a is None:
      raise ValueError(f"{source.episode_name(int(ep))}: a robot episode has no actions.")
    check_finite(a, source, int(ep), "action")
    acts.update(a)
    if use_low_dim:
      ld = source.low_dim(int(ep))
      if ld is None:
        raise ValueError(f"{source.episode_name(int(ep))}: the model uses low-dim observations "
                         f"but the source stores none.")
      check_finite(ld, source, int(ep), "low_dim")
      low.update(ld)
  out = {normalization.ACTION: acts.entry()}
  if use_low_dim:
    out[normalization.LOW_DIM] = low.entry()
  return out


def source_stats(source: EpisodeSource, use_low_dim: bool) -> Optional[dict]:
  """Statistics of one source (None when it has no robot episodes), cached when it can be."""
  cache_dir = source.stats_cache_dir()
  path = None
  if cache_dir:
    path = os.path.join(cache_dir, CACHE_DIR, stats_key(source, use_low_dim) + ".json")
    if os.path.exists(path):
      with open(path) as f:
        return json.load(f)["stats"]
  stats = _compute_source_stats(source, use_low_dim)
  if path and stats is not None:
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      tmp = f"{path}.tmp{os.getpid()}"
      with open(tmp, "w") as f:
        json.dump({"source": source.name, "fingerprint": source.fingerprint(),
                   "version": STATS_VERSION, "stats": stats}, f)
      os.replace(tmp, path)
    except OSError as e:  # read-only data: compute every time.
      logging.warning("Could not cache statistics of %s at %s: %s", source.name, path, e)
  return stats


def merge_stats(per_source: Sequence[Optional[Mapping]]) -> dict:
  """Elementwise min/max over sources (None entries = sources without robot episodes)."""
  merged = {}
  for stats in per_source:
    if stats is None:
      continue
    for key, entry in stats.items():
      lo, hi = np.asarray(entry["min"]), np.asarray(entry["max"])
      if key in merged:
        if len(merged[key][0]) != len(lo):
          raise ValueError(f"Sources disagree on the width of {key!r}: {len(merged[key][0])} "
                           f"vs {len(lo)}.")
        lo, hi = np.minimum(merged[key][0], lo), np.maximum(merged[key][1], hi)
      merged[key] = (lo, hi)
  return {k: normalization.minmax_entry(lo, hi) for k, (lo, hi) in merged.items()}


def dataset_stats(data_cfg, model_cfg, sources: List[EpisodeSource]) -> dict:
  """The statistics the loader normalises with and checkpoints carry.

  `data.stats_path` set: read from that JSON (a file holding the dict, or a checkpoint's
  `dataset_stats` item). `data.normalize` False: identity entries (min -1, max 1), i.e. data
  used as stored (LIBERO). Otherwise computed/cached per source and merged.
  """
  use_low = bool(model_cfg.low_dim_dim)
  if data_cfg.stats_path:  # a local path or a gs:// URL (a run's dataset_stats.json)
    if not storage.exists(data_cfg.stats_path):
      raise FileNotFoundError(f"data.stats_path {data_cfg.stats_path!r} does not exist.")
    stats = json.loads(storage.read_text(data_cfg.stats_path))
  elif not data_cfg.normalize:
    stats = {normalization.ACTION: normalization.identity_entry(model_cfg.action_dim)}
    if use_low:
      stats[normalization.LOW_DIM] = normalization.identity_entry(model_cfg.low_dim_dim)
  else:
    stats = merge_stats([source_stats(s, use_low) for s in sources])
    if normalization.ACTION not in stats:
      raise ValueError("No source has robot episodes with actions: cannot compute action "
                       "statistics (set data.stats_path or add a robot dataset).")
  normalization.check_stats(stats, model_cfg.action_dim, model_cfg.low_dim_dim)
  return stats
