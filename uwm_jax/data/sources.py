"""Build the `EpisodeSource`s a config names (`config.data.sources`), in sorted-name order."""

import os
from typing import List, Tuple

import ml_collections

from uwm_jax.data import lerobot_source, source_configs
from uwm_jax.data.array_record_source import ArrayRecordSource, load_dataset_json
from uwm_jax.data.episodes import EpisodeSource
from uwm_jax.data.synthetic import SyntheticSource
from uwm_jax.data.video_folder import VideoFolderSource, VideoIndexSource, check_decoder
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
  check_source_data(name, src_cfg)
  if kind == "synthetic":
    return SyntheticSource(
        name, model_cfg.camera_keys, model_cfg.image_shape, model_cfg.action_dim,
        model_cfg.low_dim_dim, num_episodes=src_cfg.num_episodes,
        episode_len=src_cfg.episode_len, action_free_fraction=src_cfg.action_free_fraction,
        seed=src_cfg.seed)
  if kind == "array_record":
    return ArrayRecordSource.from_config(name, src_cfg, model_cfg)
  if kind == source_configs.LEROBOT:
    return lerobot_source.LeRobotSource.from_config(name, src_cfg, model_cfg)
  if kind == "video_index":
    return VideoIndexSource.from_config(name, src_cfg, model_cfg)
  return VideoFolderSource.from_config(name, src_cfg, model_cfg)


# What the data of each kind of source is, as a missing one is named, and how to give it.
_MISSING = {  # kind -> (what, placeholder of the path, what the placeholder is)
    "array_record": ("converted data folder", "DIR", "a folder written by"),
    source_configs.LEROBOT: ("converted LeRobot folder", "DIR", "a folder written by "
                             "`python -m uwm_jax.data.convert_lerobot --src=LEROBOT_DATASET "
                             "--out=DIR` (docs/lerobot.md)"),
    "video_folder": ("video folder", "DIR", "a folder of video files (searched recursively)"),
    "video_index": ("video index file", "FILE", "a text file listing one video path per line"),
}


def missing_data_message(name: str, src_cfg) -> str:
  """The error for a dataset whose data is not where its config says: the field to set
  (`--config.data.sources.<name>.path=DIR`) and the command that writes the data (the source's
  `write_command`, e.g. the DROID conversion, or the kind's usual converter), e.g.

    Dataset 'droid': config.data.sources.droid.path is not set; give
    --config.data.sources.droid.path=DIR, a folder written by `python -m
    uwm_jax.data.convert_rlds droid --data_dir=/data/tfds --builder=droid --out=DIR ...`.
  """
  kind = src_cfg.get("kind", None)
  what, placeholder, description = _MISSING[kind]
  path = src_cfg.get("path", "") or ""
  field = f"config.data.sources.{name}.path"
  where = (f"{field} is not set" if not path else
           f"{what} {path!r} ({field}) does not exist")
  if kind == "array_record":
    command = src_cfg.get("write_command", "") or source_configs.CONVERSION_COMMANDS
    description = f"{description} `{command}` (docs/data.md)"
  return f"Dataset {name!r}: {where}; give --{field}={placeholder}, {description}."


def check_source_data(name: str, src_cfg) -> None:
  """Raise FileNotFoundError (`missing_data_message`) when the folder or index file that a
  dataset's config names does not exist (synthetic data needs none)."""
  kind = src_cfg.get("kind", None)
  if kind not in _MISSING:
    return
  path = src_cfg.get("path", "") or ""
  exists = os.path.isfile(path) if kind == "video_index" else os.path.isdir(path)
  if not exists:
    raise FileNotFoundError(missing_data_message(name, src_cfg))


def check_sources(config) -> None:
  """Cheap checks of `config.data.sources` before anything expensive is built: every dataset
  has a known kind and a positive weight, and its folder or index file exists (a converted
  dataset: its dataset.json; the episode index is read later, by the loader); video clips need
  the optional video decoder (`check_decoder`). Datasets and latent caches are read as local
  files (array_record readers, memory-mapped arrays): a URL there is one error line saying to
  mount the bucket."""
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
    check_source_data(name, src_cfg)
    if kind == "array_record":
      load_dataset_json(src_cfg.path, name)
    elif kind == source_configs.LEROBOT:
      lerobot_source.resolve_fields(name, src_cfg)
    if kind in ("video_folder", "video_index"):
      check_decoder()


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


def resolved_config(config) -> ml_collections.ConfigDict:
  """`config` with every LeRobot source's mapping filled from its converted dataset
  (`lerobot_source.resolve_fields`): a copy, or `config` itself when it has no such source.
  Training saves this config in its checkpoints, so the policy server knows the dataset's keys
  and widths without the data."""
  names = [n for n in source_names(config.data)
           if config.data.sources[n].get("kind") == source_configs.LEROBOT]
  if not names:
    return config
  out = ml_collections.ConfigDict(config.to_dict())
  for name in names:
    out.data.sources[name].update(lerobot_source.resolve_fields(name, out.data.sources[name]))
  return out
