"""Build the `EpisodeSource`s a config names (`config.data.sources`), in sorted-name order."""

import os
from typing import List, Tuple

from uwm_jax.data import source_configs
from uwm_jax.data.converted import ConvertedSource
from uwm_jax.data.episodes import EpisodeSource
from uwm_jax.data.synthetic import SyntheticSource
from uwm_jax.data.video_folder import VideoFolderSource, VideoIndexSource
from uwm_jax.runs import storage


def source_names(data_cfg) -> Tuple[str, ...]:
  """Dataset names in the fixed order used for source indices in batches."""
  return tuple(sorted(data_cfg.sources.keys()))


def build_source(name: str, src_cfg, model_cfg) -> EpisodeSource:
  """One source from its config entry; errors name the dataset and the bad field."""
  kind = src_cfg.get("kind", None)
  if kind not in source_configs.KINDS:
    raise ValueError(f"Dataset {name!r}: unknown kind {kind!r}; known: {source_configs.KINDS}.")
  if not float(src_cfg.weight) > 0:
    raise ValueError(f"Dataset {name!r}: weight must be > 0, got {src_cfg.weight}.")
  if kind == "synthetic":
    return SyntheticSource(
        name, model_cfg.camera_keys, model_cfg.image_shape, model_cfg.action_dim,
        model_cfg.low_dim_dim, num_episodes=src_cfg.num_episodes,
        episode_len=src_cfg.episode_len, action_free_fraction=src_cfg.action_free_fraction,
        seed=src_cfg.seed)
  if kind == "array_record":
    return ConvertedSource.from_config(name, src_cfg, model_cfg)
  if kind == "video_index":
    return VideoIndexSource.from_config(name, src_cfg, model_cfg)
  return VideoFolderSource.from_config(name, src_cfg, model_cfg)


def check_sources(config) -> None:
  """Cheap checks of `config.data.sources` before anything expensive is built: every dataset
  has a known kind and a positive weight, and its folder or index file exists (a converted
  dataset: its dataset.json; the episode index is read later, by the loader). Datasets and
  latent caches are read as local files (array_record readers, memory-mapped arrays): a URL
  there is one error line saying to mount the bucket."""
  names = source_names(config.data)
  if not names:
    build_sources(config)  # raises the "sources is empty" error
  storage.require_local(config.data.get("latent_cache_dir", ""), "config.data.latent_cache_dir")
  for name in names:
    src_cfg = config.data.sources[name]
    kind = src_cfg.get("kind", None)
    if kind not in source_configs.KINDS:
      raise ValueError(f"Dataset {name!r}: unknown kind {kind!r}; known: {source_configs.KINDS}.")
    storage.require_local(src_cfg.get("path", ""), f"config.data.sources.{name}.path")
    if kind == "array_record":
      from uwm_jax.data.converted import load_dataset_json  # pylint: disable=import-outside-toplevel
      load_dataset_json(src_cfg.path, name)
    elif kind == "video_index":
      if not os.path.isfile(src_cfg.get("path", "") or ""):
        raise FileNotFoundError(f"Dataset {name!r}: video index file {src_cfg.get('path')!r} "
                                f"does not exist (config.data.sources.{name}.path).")
    elif kind != "synthetic" and not os.path.isdir(src_cfg.get("path", "") or ""):
      raise FileNotFoundError(f"Dataset {name!r}: folder {src_cfg.get('path')!r} does not "
                              f"exist (config.data.sources.{name}.path).")


def build_sources(config) -> Tuple[Tuple[str, ...], List[EpisodeSource], List[float]]:
  """(names, sources, weights) for `config.data.sources`, sorted by name."""
  names = source_names(config.data)
  if not names:
    raise ValueError("config.data.sources is empty: name at least one dataset, e.g. "
                     "`config.data.sources.droid = source_configs.array_record(path)` "
                     "(see uwm_jax/data/source_configs.py).")
  sources = [build_source(n, config.data.sources[n], config.model) for n in names]
  weights = [float(config.data.sources[n].weight) for n in names]
  return names, sources, weights
