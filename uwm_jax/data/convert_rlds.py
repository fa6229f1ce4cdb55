"""Convert an RLDS/TFDS dataset into the array_record training format, shard by shard.

  # DROID as published (tfrecord), the reference's robot split: 2000 episodes from "WEIRD".
  python -m uwm_jax.data.convert_rlds droid --data_dir=/data/tfds --builder=droid \\
      --out=/data/uwm/droid_weird --include=WEIRD --max_episodes=2000 --num_processes=8
  # ... and its action-free video split.
  python -m uwm_jax.data.convert_rlds droid --data_dir=/data/tfds --builder=droid \\
      --out=/data/uwm/droid_video --exclude=WEIRD --max_episodes=2000 --action_free
  # Any RLDS dataset (e.g. LIBERO written by `python -m uwm_jax.data.convert_libero`).
  python -m uwm_jax.data.convert_rlds rlds --data_dir=/data/tfds --builder=libero_90 \\
      --out=/data/uwm/libero_90 --camera_keys=agentview_rgb,eye_in_hand_rgb --action_key=action

Each input file (tfds shard) becomes one output shard, written to a temporary folder
(`<shard>.tmp-<PID>`) and renamed when complete. Work is split by input shard over
`--num_processes` local processes (spawned; they log to stderr and stop when the parent dies,
even on SIGKILL) and over hosts (`--process_index/--process_count`, each host running the same
command); a rerun skips finished shards and deletes the temporary folders of killed writers.
Episodes are taken in the order `tfds.load(split=...)` yields them (files interleaved 16 at a
time, docs/data.md "Episode order"); the filters (`uwm_jax.data.filters`) and
`--max_episodes` (the first N matches in that order, as the reference) are applied here and
recorded, and `dataset.json` is written by whichever process finds the needed shards
complete (the driver every converter shares: `uwm_jax.data.shard_conversion`). A truncated
or corrupt input file is named (file and shard index) in the error. The last line summarises
episodes read, kept, skipped (and why) and steps written.
"""

import logging
import os
import types
from typing import Sequence

import numpy as np
from absl import app, flags

from uwm_jax import cli_config
from uwm_jax.data import array_record_format as fmt
from uwm_jax.data import filters as filters_lib
from uwm_jax.data import profiles as profiles_lib
from uwm_jax.data import rlds_read, shard_conversion



def _episode_id(meta: dict, dataset: str, shard: int, index: int) -> str:
  ident = meta.get("file_path") or meta.get("recording_folderpath") or ""
  return f"dataset {dataset!r}, episode {index} of input shard {shard}" + (
      f" ({ident})" if ident else "")


def _encoded_frames(value, image_format: str) -> list:
  """Stored frames of one camera -> list of encoded bytes (raw uint8 arrays get encoded)."""
  arr = np.asarray(value)
  if arr.dtype == np.uint8 and arr.ndim == 4:
    return [fmt.encode_image(im, image_format) for im in arr]
  return [bytes(b) for b in arr]


def _checked(ep: dict, path: str, ident: str) -> np.ndarray:
  value = np.asarray(rlds_read.get_path(ep, path))
  if value.dtype.kind == "f" and not np.isfinite(value).all():
    step = int(np.argwhere(~np.isfinite(value))[0][0])
    raise ValueError(f"{ident}: field {path!r} holds NaN/inf (first at step {step}).")
  return value


def input_file(builder, split: str, shard: int) -> str:
  """The file name of input shard `shard` (for error messages)."""
  try:
    return os.fspath(builder.info.splits[split].filepaths[shard])
  except Exception:  # pylint: disable=broad-except
    return f"{builder.data_dir} ({split} shard {shard})"


def _episodes_of_input_file(builder, split: str, shard: int, num_shards: int, dataset: str):
  """The episodes of one input file; a read error (truncated or corrupt file: TensorFlow's
  DataLossError, ...) names the file and shard instead of TensorFlow's bare message."""
  it = iter(rlds_read.iter_shard_episodes(builder, split, shard))
  while True:
    try:
      ep = next(it)
    except StopIteration:
      return
    except Exception as e:  # pylint: disable=broad-except
      first = (str(e).strip().splitlines() or [""])[0][:300]
      raise ValueError(f"Dataset {dataset!r}: input shard {shard} of {num_shards} "
                       f"({input_file(builder, split, shard)}) is unreadable (truncated or "
                       f"corrupt?): {type(e).__name__}: {first}") from None
    yield ep


def convert_shard(builder, split: str, shard: int, num_shards: int, out_dir: str,
                  profile: profiles_lib.RldsProfile, filt: filters_lib.EpisodeFilter,
                  dataset: str, image_format: str = "png") -> dict:
  """Convert input file `shard`; returns its summary: episodes written (`num_episodes`) and
  steps, and `num_read`, `skipped_filter`, `skipped_empty`."""
  writer = fmt.ShardWriter(out_dir, shard, num_shards, profile.camera_keys)
  counts = {"num_read": 0, "skipped_filter": 0, "skipped_empty": 0}
  try:
    for i, ep in enumerate(_episodes_of_input_file(builder, split, shard, num_shards, dataset)):
      counts["num_read"] += 1
      meta = profile.metadata(ep)
      if not filt.matches(meta):
        counts["skipped_filter"] += 1
        continue
      ident = _episode_id(meta, dataset, shard, i)
      obs = ep["steps"]["observation"]
      images = {k: _encoded_frames(obs[k], image_format) for k in profile.camera_keys}
      if not len(images[profile.camera_keys[0]]):
        logging.info("%s: empty episode skipped.", ident)
        counts["skipped_empty"] += 1
        continue
      actions = low_dim = None
      if not profile.action_free:
        actions = profile.action_fn(*(_checked(ep, p, ident) for p in profile.action_fields))
      if profile.low_dim_fields:
        low_dim = profiles_lib.concat_fields(*(_checked(ep, p, ident)
                                               for p in profile.low_dim_fields))
      writer.add_episode(images, actions, low_dim, meta, input_index=i)
    summary = writer.close(**counts)
  except BaseException:
    writer.abort()
    raise
  return summary


def _shard_needed(out_dir: str, params: dict, shard: int) -> bool:
  """False once the finished shards already hold every selected episode and `shard` is not
  among those the selection visits."""
  if not params["max_episodes"]:
    return True
  selected, visited = shard_conversion.select_episodes(out_dir, params)
  return selected is None or shard in visited


def _conversion_params(builder, builder_path: str, split: str, profile, filt,
                       max_episodes: int, dataset: str) -> dict:
  paths = rlds_read.check_schema(builder, profile.required_keys(), dataset)
  shapes = {}
  for k in profile.camera_keys:
    shape = getattr(paths[f"steps/observation/{k}"], "shape", None)
    shapes[k] = [int(s) for s in shape[:2]] if shape is not None else None
  return {"dataset": dataset, "builder_dir": os.path.abspath(builder_path), "split": split,
          "num_input_shards": rlds_read.num_input_shards(builder, split),
          "shard_lengths": rlds_read.shard_lengths(builder, split),
          "disable_shuffling": bool(getattr(builder.info, "disable_shuffling", False)),
          **profile.describe(), "action_free": profile.action_free,
          "include": list(filt.include), "exclude": list(filt.exclude),
          "success_only": filt.success_only, "max_episodes": int(max_episodes),
          "image_shapes": shapes}


def convert_rlds(builder_path: str, out_dir: str, profile: profiles_lib.RldsProfile, *,
                 split: str = "train", episode_filter: filters_lib.EpisodeFilter = (
                     filters_lib.EpisodeFilter()), max_episodes: int = 0,
                 process_index: int = 0, process_count: int = 1, dataset: str = "",
                 image_format: str = "png", progress: bool = True) -> bool:
  """Convert this process's share of input shards; True when the whole dataset is ready."""
  dataset = dataset or os.path.basename(os.path.dirname(os.path.normpath(builder_path)))
  builder = rlds_read.open_builder(builder_path)
  params = _conversion_params(builder, builder_path, split, profile, episode_filter,
                              max_episodes, dataset)
  n = params["num_input_shards"]
  return shard_conversion.convert_shards(
      out_dir, params,
      lambda k: convert_shard(builder, split, k, n, out_dir, profile, episode_filter, dataset,
                              image_format),
      # False when the first max_episodes matches lie in other, finished shards.
      needed=lambda k: _shard_needed(out_dir, params, k),
      process_index=process_index, process_count=process_count, progress=progress)


def _worker(args_and_index):
  args, index, count = args_and_index
  return _run(args, index, count)


def _profile(args) -> profiles_lib.RldsProfile:
  if args.command == "droid":
    prof = profiles_lib.droid_profile()
    if args.action_free:
      prof = profiles_lib.RldsProfile(name="droid", camera_keys=prof.camera_keys,
                                      low_dim_fields=prof.low_dim_fields,
                                      metadata_fields=prof.metadata_fields)
    return prof
  cams = [k for k in args.camera_keys.split(",") if k]
  if not cams:
    raise ValueError("--camera_keys is required for the rlds command.")
  low = [k for k in args.low_dim_keys.split(",") if k]
  return profiles_lib.rlds_profile(cams, args.action_key, low, args.action_free)


def _run(args, index: int, count: int) -> bool:
  path = args.builder_dir or rlds_read.builder_dir(args.data_dir, args.builder, args.version)
  return convert_rlds(
      path, args.out, _profile(args), split=args.split,
      episode_filter=filters_lib.EpisodeFilter.from_args(args.include, args.exclude,
                                                         args.success_only),
      max_episodes=args.max_episodes, process_index=index, process_count=count,
      dataset=args.builder or "", image_format=args.image_format)


def define_flags() -> None:
  """The command line's flags. Defined only when this module runs as a program: it is also a
  library (demo generation, benchmarks), and flags defined at import would collide with those
  of the entry point importing it."""
  flags.DEFINE_string("data_dir", "", "TFDS data_dir holding the builder.")
  flags.DEFINE_string("builder", "", "builder name, e.g. droid or droid_100.")
  flags.DEFINE_string("version", "", "builder version (default: highest).")
  flags.DEFINE_string("builder_dir", "", "<data_dir>/<builder>/<version> directly.")
  flags.DEFINE_string("split", "train", "TFDS split to convert.")
  flags.DEFINE_string("out", None, "output folder of the converted dataset.", required=True)
  flags.DEFINE_multi_string("include", [], "keep episodes whose recording_folderpath contains "
                            "this (repeatable).")
  flags.DEFINE_multi_string("exclude", [], "drop episodes whose recording_folderpath contains "
                            "this (repeatable).")
  flags.DEFINE_bool("success_only", False, "keep successful episodes only.")
  flags.DEFINE_integer("max_episodes", 0, "first N matches (0 = all).")
  flags.DEFINE_bool("action_free", False, "store no actions (video).")
  flags.DEFINE_string("camera_keys", "", "rlds: comma-separated observation keys.")
  flags.DEFINE_string("action_key", "action", "rlds: steps/<key> holds the action.")
  flags.DEFINE_string("low_dim_keys", "", "rlds: comma-separated observation keys.")
  flags.DEFINE_enum("image_format", "png", ["png", "jpeg"],
                    "encoding for sources that store raw pixels.")
  shard_conversion.define_process_flags()


COMMANDS = ("droid", "rlds")


def main(argv: Sequence[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"give one command, {' | '.join(COMMANDS)} (got {argv[1:]}).")
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if not FLAGS.builder_dir and not (FLAGS.data_dir and FLAGS.builder):
    raise app.UsageError("give --data_dir and --builder, or --builder_dir.")
  logging.basicConfig(level=logging.INFO)
  args = types.SimpleNamespace(command=argv[1], **{
      name: FLAGS[name].value for name in (
          "data_dir", "builder", "version", "builder_dir", "split", "out", "include", "exclude",
          "success_only", "max_episodes", "action_free", "camera_keys", "action_key",
          "low_dim_keys", "image_format", "num_processes", "process_index", "process_count")})
  shard_conversion.convert_in_processes(_worker, args)


if __name__ == "__main__":
  define_flags()
  cli_config.run(main)
