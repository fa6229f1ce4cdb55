"""Write episodes (dicts of numpy arrays) as an RLDS dataset in TFDS format.

  from uwm_jax.data.rlds_writer import write_rlds_dataset
  episode = {
      "steps": {
          "observation": {"agentview_rgb": frames_uint8,          # (L, H, W, 3) -> Image
                          "state": np.zeros((L, 8), np.float32)}, # (L, ...) -> Tensor
          "action": actions,                                      # (L, A) -> Tensor
          "language_instruction": "pick up the cube",             # str -> Text per step
      },
      "episode_metadata": {"file_path": "demo_0"},                # str -> Text, numbers -> Tensor
  }
  builder_dir = write_rlds_dataset("/data/tfds", "my_demos", [episode, ...])
  # -> /data/tfds/my_demos/1.0.0, readable with tfds.builder_from_directory(builder_dir) or
  #    tfds.load("my_demos", data_dir="/data/tfds"), and convertible with
  #    `python -m uwm_jax.data.convert_rlds rlds --builder_dir=...`.

Features are inferred from the first episode: uint8 arrays of shape (L, H, W, 3|1) become
`tfds.features.Image` (`image_format` encoding), other arrays with leading axis L become
`Tensor`s of their dtype (bool / scalar per step -> `Scalar`), strings become `Text`. RLDS
fields `is_first`, `is_last`, `is_terminal` (bool), `reward` and `discount` (float32) are added
when missing. Every episode must have the same structure, shapes and dtypes.

tensorflow_datasets is imported inside the functions that use it: TensorFlow then loads only in
processes that write RLDS (it costs seconds and GBs, and must not share a process with MuJoCo's
EGL rendering, see `uwm_jax.envs.check_no_tensorflow`).
"""

import itertools
import os
from typing import Any, Dict, Iterable, Mapping

import numpy as np

RLDS_DEFAULTS = ("is_first", "is_last", "is_terminal", "reward", "discount")


def _is_text(v) -> bool:
  if isinstance(v, (str, bytes)):
    return True
  arr = np.asarray(v) if isinstance(v, (list, tuple, np.ndarray)) else None
  return arr is not None and arr.dtype.kind in "USO" and arr.size > 0 and isinstance(
      arr.reshape(-1)[0], (str, bytes))


def _step_feature(path: str, value, length: int, image_format: str):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  if isinstance(value, Mapping):
    return tfds.features.FeaturesDict(
        {k: _step_feature(f"{path}/{k}", v, length, image_format) for k, v in value.items()})
  if _is_text(value):
    return tfds.features.Text()
  arr = np.asarray(value)
  if arr.ndim == 0 or arr.shape[0] != length:
    raise ValueError(f"steps field {path!r} has shape {arr.shape}; every step field needs a "
                     f"leading axis of the episode length {length} (or be a string).")
  if arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[-1] in (1, 3):
    return tfds.features.Image(shape=arr.shape[1:], encoding_format=image_format)
  if arr.ndim == 1:
    return tfds.features.Scalar(dtype=arr.dtype)
  return tfds.features.Tensor(shape=arr.shape[1:], dtype=arr.dtype)


def _meta_feature(path: str, value):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  if isinstance(value, Mapping):
    return tfds.features.FeaturesDict({k: _meta_feature(f"{path}/{k}", v)
                                       for k, v in value.items()})
  if _is_text(value):
    return tfds.features.Text()
  arr = np.asarray(value)
  if arr.ndim == 0:
    return tfds.features.Scalar(dtype=arr.dtype)
  return tfds.features.Tensor(shape=arr.shape, dtype=arr.dtype)


def episode_length(episode: Mapping) -> int:
  """Number of steps: the leading axis of the first array field of `steps`."""
  def first(d):
    for v in d.values():
      if isinstance(v, Mapping):
        n = first(v)
        if n is not None:
          return n
      elif not _is_text(v):
        return int(np.asarray(v).shape[0])
    return None
  n = first(episode["steps"])
  if n is None:
    raise ValueError("An episode's steps hold no array field: cannot tell its length.")
  return n


def _with_rlds_defaults(steps: Mapping, length: int) -> dict:
  steps = dict(steps)
  idx = np.arange(length)
  defaults = {"is_first": idx == 0, "is_last": idx == length - 1,
              "is_terminal": idx == length - 1, "reward": (idx == length - 1).astype(np.float32),
              "discount": np.ones((length,), np.float32)}
  for k in RLDS_DEFAULTS:
    steps.setdefault(k, defaults[k])
  return steps


def _broadcast_text(steps: Mapping, length: int) -> dict:
  out = {}
  for k, v in steps.items():
    if isinstance(v, Mapping):
      out[k] = _broadcast_text(v, length)
    elif isinstance(v, (str, bytes)):
      out[k] = [v] * length
    else:
      out[k] = v
  return out


def prepare_episode(episode: Mapping) -> Dict[str, Any]:
  """An episode with RLDS defaults added and per-episode strings repeated per step."""
  length = episode_length(episode)
  out = {"steps": _broadcast_text(_with_rlds_defaults(episode["steps"], length), length)}
  if "episode_metadata" in episode:
    out["episode_metadata"] = dict(episode["episode_metadata"])
  return out


def rlds_features(episode: Mapping, image_format: str = "jpeg"):
  """The `tfds.features.FeaturesDict` of an RLDS dataset holding episodes like this one."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  ep = prepare_episode(episode)
  length = episode_length(ep)
  feats = {"steps": tfds.features.Dataset(
      {k: _step_feature(f"steps/{k}", v, length, image_format) for k, v in ep["steps"].items()})}
  if "episode_metadata" in ep:
    feats["episode_metadata"] = _meta_feature("episode_metadata", ep["episode_metadata"])
  return tfds.features.FeaturesDict(feats)


def write_rlds_dataset(data_dir: str, name: str, episodes: Iterable[Mapping], *,
                       version: str = "1.0.0", image_format: str = "jpeg", num_shards: int = 1,
                       file_format: str = "tfrecord", split: str = "train",
                       description: str = "", disable_shuffling: bool = True) -> str:
  """Write `episodes` as split `split` of TFDS dataset `name` under `data_dir`.

  Episodes keep their order (no shuffling) unless `disable_shuffling` is False: then tfds
  spreads them over the files by key hash and `tfds.load` interleaves the files, like a
  dataset built the usual way (published DROID). `num_shards` input files are written (the
  conversion to array_record parallelises over them); `file_format` "tfrecord" (like published
  DROID) or "array_record". Returns the builder directory `<data_dir>/<name>/<version>`.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  it = iter(episodes)
  try:
    first = next(it)
  except StopIteration:
    raise ValueError(f"write_rlds_dataset({name!r}): no episodes given.") from None
  features = rlds_features(first, image_format)

  def examples():
    for i, ep in enumerate(itertools.chain([first], it)):
      yield f"{i:08d}", prepare_episode(ep)

  tfds.dataset_builders.store_as_tfds_dataset(
      name=name, version=version, features=features, split_datasets={split: examples()},
      data_dir=data_dir, file_format=file_format, disable_shuffling=disable_shuffling,
      description=description or f"{name}: RLDS episodes written by uwm_jax.",
      download_config=tfds.download.DownloadConfig(num_shards=num_shards))
  return os.path.join(data_dir, name, version)
