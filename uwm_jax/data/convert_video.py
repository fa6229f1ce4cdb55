"""Convert a video corpus (a folder of clips or an index file) into the array_record training
format once, for hosts where decoding video at load time cannot keep up (docs/data.md,
"Video corpora").

  # A filtered Kinetics-400 list (one clip path per line, relative to the list's folder), at
  # DROID's image shape, by 8 local processes:
  python -m uwm_jax.data.convert_video --index=/data/k400/train_filtered.txt \\
      --out=/data/uwm/k400 --image_shape=180,320 --num_processes=8
  # A folder of mp4/webm clips (searched recursively):
  python -m uwm_jax.data.convert_video --folder=/data/clips --out=/data/uwm/clips \\
      --image_shape=128,128
  # then: config.data.sources.k400 = source_configs.array_record("/data/uwm/k400",
  #                                                                action_free=True)

Every readable clip becomes one action-free episode, exactly as the decode-at-load sources
(`uwm_jax.data.video_folder`) read it: frames taken every `--frame_stride` source frames,
resized to cover `--image_shape` and centre-cropped, stored once per step as JPEG under the
camera key "clip"; `--padding` (recorded in conversion.json) makes the reader place it in every
camera view ("same", the reference's convention) or the first only ("none"). No actions are
stored. The clips (listed in sorted / index order) are cut into input shards of
`--clips_per_shard`; each becomes one output shard, written to `<shard>.tmp-<PID>` and renamed
when complete, split over `--num_processes` local processes and hosts
(`--process_index/--process_count`), resumed by rerunning the same command: the machinery of
`uwm_jax.data.shard_conversion`. Clips outside [--min_bytes, --max_bytes] or that fail to decode
are skipped and counted; the last line names the first few.
"""

import hashlib
import logging
import os
from typing import List, Sequence, Tuple

import imageio.v2 as imageio
import numpy as np
from absl import flags

from uwm_jax import cli_config
from uwm_jax.data import array_record_format as fmt
from uwm_jax.data import shard_conversion
from uwm_jax.data import video_folder

SKIPPED_COUNTS = ("skipped_size", "skipped_unreadable", "skipped_empty")
JPEG = "jpeg"


def clip_list(folder: str = "", index_file: str = "",
              extensions: Sequence[str] = ("mp4", "webm")) -> Tuple[str, List[str]]:
  """(root, absolute clip paths) of a folder (sorted) or an index file (listed order); clip
  names are relative to root (the folder, or the index file's folder)."""
  if bool(folder) == bool(index_file):
    raise ValueError("give one of --folder or --index.")
  if folder:
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"Video folder {folder!r} does not exist.")
    return os.path.abspath(folder), video_folder.list_videos(folder, extensions)
  return os.path.dirname(os.path.abspath(index_file)), video_folder.read_index_file(index_file)


def strided_clip(path: str, frame_stride: float, image_shape: Tuple[int, int]) -> np.ndarray:
  """(L, H, W, 3) uint8: the clip's frames taken every `frame_stride` source frames, resized
  and cropped as at load time (`video_folder.VideoClipsSource`), decoded in one pass that keeps
  only the resized frames it needs (a long clip does not fill the memory)."""
  kept, n = [], 0
  with imageio.get_reader(path, format="ffmpeg") as r:
    for n, frame in enumerate(r, start=1):
      # Stored frame i shows source frame round(i * stride) (`strided_source_indices`).
      while round(len(kept) * frame_stride) == n - 1:
        kept.append(video_folder.resize_cover_crop(np.asarray(frame)[..., :3], image_shape))
  kept = kept[:video_folder.strided_length(n, frame_stride)]  # the loader's episode length
  if not kept:
    return np.zeros((0,) + tuple(image_shape) + (3,), np.uint8)
  return np.stack(kept)


def convert_clip_shard(paths: Sequence[str], names: Sequence[str], shard: int, num_shards: int,
                       out_dir: str, params: dict) -> dict:
  """Convert the clips of input shard `shard`; returns its summary (episodes, steps, counts of
  clips read and skipped, the first skipped names)."""
  writer = fmt.ShardWriter(out_dir, shard, num_shards, [fmt.CLIP_CAMERA])
  counts = {"num_read": 0, **{k: 0 for k in SKIPPED_COUNTS}}
  skipped = []
  try:
    for i, (path, name) in enumerate(zip(paths, names)):
      counts["num_read"] += 1
      size = os.path.getsize(path) if os.path.isfile(path) else -1
      if 0 <= size and not params["min_bytes"] <= size <= params["max_bytes"]:
        counts["skipped_size"] += 1
        continue
      try:
        frames = strided_clip(path, params["frame_stride"], tuple(params["image_shape"]))
      except Exception as e:  # pylint: disable=broad-except  # counted, named in the summary
        logging.info("%s: unreadable (%s: %s)", name, type(e).__name__,
                     (str(e).strip().splitlines() or [""])[0][:200])
        counts["skipped_unreadable"] += 1
        skipped.append(name)
        continue
      if not len(frames):
        counts["skipped_empty"] += 1
        continue
      images = {fmt.CLIP_CAMERA: [fmt.encode_image(f, JPEG) for f in frames]}
      writer.add_episode(images, None, None, {"file_path": name}, input_index=i)
    summary = writer.close(**counts, **{
        shard_conversion.SKIPPED_EXAMPLES: skipped[:video_folder.NAMED_UNREADABLE]})
  except BaseException:
    writer.abort()
    raise
  return summary


def conversion_params(root: str, paths: Sequence[str], names: Sequence[str], *,
                      image_shape: Tuple[int, int], frame_stride: float, padding: str,
                      clips_per_shard: int, min_bytes: int, max_bytes: int,
                      dataset: str) -> dict:
  """conversion.json: what `shard_conversion.finalize` / `conversion_summary` read, plus the clip
  settings and a hash of the clip list (a rerun over another list is refused)."""
  if padding not in video_folder.PADDINGS:
    raise ValueError(f"--padding must be one of {video_folder.PADDINGS}, got {padding!r}.")
  if frame_stride <= 0:
    raise ValueError(f"--frame_stride must be > 0, got {frame_stride}.")
  if clips_per_shard <= 0:
    raise ValueError(f"--clips_per_shard must be > 0, got {clips_per_shard}.")
  if not paths:
    raise ValueError(f"No video clip found in {root!r}.")
  num_shards = -(-len(paths) // clips_per_shard)
  lengths = [min(clips_per_shard, len(paths) - k * clips_per_shard) for k in range(num_shards)]
  return {"dataset": dataset, "root": root, "num_clips": len(paths),
          "clips_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(),
          "num_input_shards": num_shards, "shard_lengths": lengths, "disable_shuffling": True,
          "camera_keys": [fmt.CLIP_CAMERA],
          "image_shapes": {fmt.CLIP_CAMERA: [int(s) for s in image_shape]},
          "image_shape": [int(s) for s in image_shape], "image_format": JPEG,
          "frame_stride": float(frame_stride), "clip_padding": padding,
          "min_bytes": int(min_bytes), "max_bytes": int(max_bytes), "action_free": True,
          "max_episodes": 0, "clips_per_shard": int(clips_per_shard),
          "skipped_counts": list(SKIPPED_COUNTS)}


def convert_video(out_dir: str, *, folder: str = "", index_file: str = "",
                  image_shape: Tuple[int, int], frame_stride: float = 2.0,
                  padding: str = "same", clips_per_shard: int = 256,
                  extensions: Sequence[str] = ("mp4", "webm"), min_bytes: int = 1024,
                  max_bytes: int = 2**30, process_index: int = 0, process_count: int = 1,
                  dataset: str = "", progress: bool = True) -> bool:
  """Convert this process's share of input shards; True when the whole dataset is ready."""
  root, paths = clip_list(folder, index_file, extensions)
  names = [os.path.relpath(p, root) for p in paths]
  dataset = dataset or os.path.basename(os.path.normpath(folder or index_file))
  params = conversion_params(root, paths, names, image_shape=image_shape,
                             frame_stride=frame_stride, padding=padding,
                             clips_per_shard=clips_per_shard, min_bytes=min_bytes,
                             max_bytes=max_bytes, dataset=dataset)
  n = params["num_input_shards"]

  def convert_one(k: int) -> dict:
    part = slice(k * clips_per_shard, (k + 1) * clips_per_shard)
    return convert_clip_shard(paths[part], names[part], k, n, out_dir, params)

  return shard_conversion.convert_shards(out_dir, params, convert_one,
                                         process_index=process_index,
                                         process_count=process_count, progress=progress)


def parse_shape(text: str) -> Tuple[int, int]:
  try:
    h, w = (int(x) for x in text.split(","))
  except ValueError:
    raise ValueError(f"--image_shape must be H,W (two integers), got {text!r}.") from None
  if h <= 0 or w <= 0:
    raise ValueError(f"--image_shape must be positive, got {text!r}.")
  return h, w


def _worker(args_and_index):
  args, index, count = args_and_index
  return convert_video(
      args.out, folder=args.folder, index_file=args.index,
      image_shape=parse_shape(args.image_shape), frame_stride=args.frame_stride,
      padding=args.padding, clips_per_shard=args.clips_per_shard,
      extensions=[e for e in args.extensions.split(",") if e], min_bytes=args.min_bytes,
      max_bytes=args.max_bytes, process_index=index, process_count=count,
      dataset=args.dataset)


FLAG_NAMES = ("folder", "index", "out", "image_shape", "frame_stride", "padding",
              "clips_per_shard", "extensions", "min_bytes", "max_bytes", "dataset",
              "num_processes", "process_index", "process_count")


def define_flags() -> None:
  """The command line's flags (defined only when this module runs as a program)."""
  flags.DEFINE_string("folder", "", "folder of clips (searched recursively).")
  flags.DEFINE_string("index", "", "index file: one clip path per line (relative to its "
                      "folder; blank lines and # comments ignored).")
  flags.DEFINE_string("out", None, "output folder of the converted dataset.", required=True)
  flags.DEFINE_string("image_shape", None, "H,W of the stored frames (the model's "
                      "model.image_shape), e.g. 180,320.", required=True)
  flags.DEFINE_float("frame_stride", 2.0, "source frames per stored frame.")
  flags.DEFINE_enum("padding", "same", list(video_folder.PADDINGS),
                    "the clip in every camera view (same) or the first only (none).")
  flags.DEFINE_integer("clips_per_shard", 256, "clips per input (and output) shard.")
  flags.DEFINE_string("extensions", "mp4,webm", "--folder: file extensions, comma-separated.")
  flags.DEFINE_integer("min_bytes", 1024, "skip smaller files.")
  flags.DEFINE_integer("max_bytes", 2**30, "skip larger files.")
  flags.DEFINE_string("dataset", "", "name in messages (default: the folder / index name).")
  shard_conversion.define_process_flags()


def main(argv: Sequence[str]) -> None:
  args = shard_conversion.parsed_flags(argv, FLAG_NAMES)
  parse_shape(args.image_shape)  # a bad value is one error line, before any worker starts
  clip_list(args.folder, args.index)
  logging.basicConfig(level=logging.INFO)
  shard_conversion.convert_in_processes(_worker, args)


if __name__ == "__main__":
  define_flags()
  cli_config.run(main)
