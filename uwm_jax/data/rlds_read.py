"""Read RLDS datasets through tfds, one input shard at a time, images left encoded.

`open_builder` finds a prepared TFDS dataset (`<data_dir>/<builder>[/<config>]/<version>`,
tfrecord or array_record) without any network access; `iter_shard_episodes` yields the
episodes of one input file as numpy dicts whose `tfds.features.Image` fields are the stored
JPEG/PNG bytes (tfds `SkipDecoding`), so the conversion never decodes or re-encodes an image.
"""

import os
import re
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np


def _import_tfds():
  """tfds (+ TF, hidden from GPUs so that JAX keeps them)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # Late: TensorFlow loads only where RLDS is read (seconds, GBs; it must not share a
  # process with MuJoCo's EGL rendering, see uwm_jax.envs.check_no_tensorflow).
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # already initialised
    pass
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return tf, tfds


def _version_key(v: str):
  return tuple(int(x) for x in re.findall(r"\d+", v))


def builder_dir(data_dir: str, builder: str, version: Optional[str] = None) -> str:
  """`<data_dir>/<builder>/<version>` (highest prepared version when None); clear errors."""
  if not data_dir or not os.path.isdir(data_dir):
    raise FileNotFoundError(f"TFDS data_dir {data_dir!r} does not exist (dataset "
                            f"{builder!r}).")
  root = os.path.join(data_dir, builder)
  if not os.path.isdir(root):
    found = sorted(d for d in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, d))
                   and d != "downloads")
    raise ValueError(f"Unknown builder {builder!r}: no folder {root!r}. Builders in "
                     f"{data_dir!r}: {found}.")
  versions = [v for v in os.listdir(root)
              if os.path.exists(os.path.join(root, v, "dataset_info.json"))]
  if version:
    if version not in versions:
      raise ValueError(f"Builder {builder!r} in {data_dir!r} has no prepared version "
                       f"{version!r}; found {sorted(versions)}.")
    return os.path.join(root, version)
  if not versions:
    raise ValueError(f"Builder {builder!r} in {data_dir!r} holds no prepared version "
                     f"(no <version>/dataset_info.json under {root!r}).")
  return os.path.join(root, max(versions, key=_version_key))


def open_builder(path: str):
  """A read-only tfds builder for a prepared dataset directory (<...>/<name>/<version>)."""
  if not os.path.exists(os.path.join(path, "dataset_info.json")):
    raise FileNotFoundError(f"{path!r} is not a prepared TFDS dataset (no dataset_info.json).")
  _, tfds = _import_tfds()
  return tfds.builder_from_directory(path)


def feature_paths(features, prefix: str = "") -> Dict[str, object]:
  """Flat 'steps/observation/key' -> feature connector, descending into steps' Dataset."""
  out = {}
  items = features.items() if hasattr(features, "items") else []
  for k, f in items:
    path = f"{prefix}{k}"
    inner = getattr(f, "feature", None)  # tfds.features.Dataset / Sequence
    if hasattr(f, "items"):
      out.update(feature_paths(f, path + "/"))
    elif inner is not None and hasattr(inner, "items"):
      out.update(feature_paths(inner, path + "/"))
    else:
      out[path] = f
  return out


def check_schema(builder, required: Sequence[str], dataset: str) -> Dict[str, object]:
  """Raise ValueError naming the dataset and key when a configured key is not in the schema."""
  paths = feature_paths(builder.info.features)
  missing = [k for k in required if k not in paths]
  if missing:
    raise ValueError(f"Dataset {dataset!r}: schema has no {missing} (configured keys); it has "
                     f"{sorted(paths)}.")
  return paths


def num_input_shards(builder, split: str) -> int:
  if split not in builder.info.splits:
    raise ValueError(f"Dataset {builder.name!r} has no split {split!r}; it has "
                     f"{sorted(builder.info.splits)}.")
  return int(builder.info.splits[split].num_shards)


# tfds.load's defaults for reading a split's files (tensorflow_datasets/core/reader.py,
# ReadConfig): files in order, interleaved 16 at a time in blocks of 16 examples, unless the
# dataset was written with disable_shuffling (then one file after the other).
TFDS_INTERLEAVE_CYCLE_LENGTH = 16
TFDS_INTERLEAVE_BLOCK_LENGTH = 16


def interleave_order(lengths: Sequence[int], cycle_length: int,
                     block_length: int) -> List[Tuple[int, int]]:
  """(file, index in file) in the order `tf.data.Dataset.interleave(cycle_length,
  block_length, deterministic=True)` yields the examples of files with these lengths: up to
  `cycle_length` files open, `block_length` examples from each in turn; an exhausted file's
  slot takes the next file when the cycle comes back to it."""
  slots: List[Optional[List[int]]] = [None] * cycle_length
  out, next_file, cycle, block, num_open, end_of_input = [], 0, 0, 0, 0, False

  def advance():
    nonlocal cycle, block
    cycle, block = (cycle + 1) % cycle_length, 0

  while not end_of_input or num_open:
    slot = slots[cycle]
    if slot is not None:
      if slot[1] < lengths[slot[0]]:
        out.append((slot[0], slot[1]))
        slot[1] += 1
        block += 1
        if block == block_length:
          advance()
      else:
        slots[cycle] = None
        num_open -= 1
        advance()
    elif not end_of_input:
      if next_file < len(lengths):
        slots[cycle] = [next_file, 0]
        next_file += 1
        num_open += 1
      else:
        end_of_input = True
    else:
      advance()
  return out


def tfds_load_order(shard_lengths: Sequence[int], disable_shuffling: bool
                    ) -> List[Tuple[int, int]]:
  """(input shard, episode index in it) in the order `tfds.load(name, split=...)` yields
  the split's episodes with default arguments (docs/data.md, "Episode order")."""
  if disable_shuffling:
    return [(s, i) for s, n in enumerate(shard_lengths) for i in range(int(n))]
  return interleave_order([int(n) for n in shard_lengths], TFDS_INTERLEAVE_CYCLE_LENGTH,
                          TFDS_INTERLEAVE_BLOCK_LENGTH)


def shard_lengths(builder, split: str) -> List[int]:
  """Episodes per input file of `split`."""
  num_input_shards(builder, split)  # a clear error for an unknown split
  return [int(n) for n in builder.info.splits[split].shard_lengths]


def _skip_decoding_tree(features):
  """A `decoders=` tree that leaves every Image field encoded."""
  _, tfds = _import_tfds()
  tree = {}
  items = features.items() if hasattr(features, "items") else []
  for k, f in items:
    inner = getattr(f, "feature", None)
    if isinstance(f, tfds.features.Image):
      tree[k] = tfds.decode.SkipDecoding()
    elif hasattr(f, "items"):
      sub = _skip_decoding_tree(f)
      if sub:
        tree[k] = sub
    elif inner is not None and hasattr(inner, "items"):
      sub = _skip_decoding_tree(inner)
      if sub:
        tree[k] = sub
  return tree


def iter_shard_episodes(builder, split: str, shard: int) -> Iterator[dict]:
  """Episodes of input file `shard` of `split`, in stored order, as nested numpy dicts.

  `steps` fields are stacked over the episode (L, ...); Image fields hold encoded bytes.
  """
  tf, tfds = _import_tfds()
  ds = builder.as_dataset(split=f"{split}[{shard}shard:{shard + 1}shard]", shuffle_files=False,
                          decoders=_skip_decoding_tree(builder.info.features))
  ds = ds.map(lambda ep: {**ep, "steps": ep["steps"].batch(1 << 30).get_single_element()},
              num_parallel_calls=1, deterministic=True)
  ds = ds.prefetch(2)
  del tf
  yield from tfds.as_numpy(ds)


def get_path(tree: dict, path: str):
  """tree['a']['b'] for 'a/b' (KeyError names the path)."""
  node = tree
  for part in path.split("/"):
    if not isinstance(node, dict) or part not in node:
      raise KeyError(path)
    node = node[part]
  return node


def as_text(value) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if isinstance(value, np.ndarray):
    return as_text(value.reshape(-1)[0]) if value.size else ""
  return str(value)

