"""Convert a LeRobot dataset (v3.0 or v2.1 folder) into the array_record training format once.

  # An SO-101 dataset recorded with `lerobot-record` (v3.0), at the image shape of the model it
  # will finetune (configs/lerobot_finetune.py: 180,320 for the DROID-pretrained model):
  python -m uwm_jax.data.convert_lerobot --src=/data/lerobot/so101_pick_place \\
      --out=/data/uwm/so101_pick_place --image_shape=180,320 --num_processes=4
  # Name the features when the layout is not the common one (defaults: the cameras
  # observation.images.*, the state observation.state, the action action):
  python -m uwm_jax.data.convert_lerobot --src=/data/lerobot/aloha_cups --out=/data/uwm/aloha \\
      --cameras=observation.images.cam_high,observation.images.cam_left_wrist \\
      --state=observation.state --action=action --image_shape=180,320
  # then train: configs/lerobot_finetune.py, --config.data.sources.lerobot.path=/data/uwm/...

Every episode becomes one episode of the converted dataset, step for step: the cameras'
frames exactly as `LeRobotDataset.__getitem__` returns them (`uwm_jax.data.lerobot_read`:
the frame at the step's timestamp, decoded with PyAV), resized (bilinear) to `--image_shape`
when given and stored as JPEG (`--image_format`); the action and the state features
(concatenated in the order named) as float32 arrays. conversion.json records the mapping under
"lerobot" (camera keys, state keys and widths, action key and width, fps, robot type): the
training source and the policy server take the dataset's keys from there. Episodes are cut
into input shards of `--episodes_per_shard`, each written to `<shard>.tmp-<PID>` and renamed
when complete, split over `--num_processes` local processes and hosts
(`--process_index/--process_count`) and resumed by rerunning the same command: the machinery of
`uwm_jax.data.shard_conversion`. Bad input (a missing video, a feature the dataset lacks, a
truncated parquet file, NaN in an action) stops with one line naming the file and field.
"""

import hashlib
import logging
import os
from typing import Optional, Sequence, Tuple

import numpy as np
from absl import flags

from uwm_jax import cli_config
from uwm_jax.data import array_record_format as fmt
from uwm_jax.data import convert_video, shard_conversion
from uwm_jax.data import lerobot_read as lr
# conversion.json's key of the dataset mapping (see `conversion_params`).
from uwm_jax.data.lerobot_source import MAPPING_KEY as LEROBOT

IMAGE_FORMATS = ("jpeg", "png")


def episode_images(folder: lr.LeRobotFolder, ep: lr.Episode, camera: str, rows: dict,
                   image_shape: Optional[Tuple[int, int]], image_format: str,
                   tolerance_s: float) -> list:
  """The episode's frames of one camera as encoded bytes (L of them)."""
  if folder.features[camera]["dtype"] == "video":
    frames = lr.decode_video_frames(ep.videos[camera], rows["timestamp"], camera, tolerance_s)
  else:
    frames = (lr.decode_image(b) for b in rows[camera])
  out = []
  for frame in frames:
    if image_shape is not None:
      frame = fmt.resize_image(frame, image_shape)
    out.append(fmt.encode_image(frame, image_format))
  return out


def convert_episode_shard(folder: lr.LeRobotFolder, episodes: Sequence[lr.Episode], shard: int,
                          num_shards: int, out_dir: str, params: dict) -> dict:
  """Convert the episodes of input shard `shard`; returns its summary."""
  m = params[LEROBOT]
  cameras, state, action = m["cameras"], m["state"], m["action"]
  image_cameras = [c for c in cameras if folder.features[c]["dtype"] == "image"]
  shape = tuple(params["image_shape"]) if params["image_shape"] else None
  writer = fmt.ShardWriter(out_dir, shard, num_shards, cameras)
  rows_reader = lr.RowReader(folder)
  empty = 0
  try:
    for i, ep in enumerate(episodes):
      if not ep.length:
        empty += 1
        continue
      rows = rows_reader.episode(ep, list(state) + [action], image_cameras)
      images = {c: episode_images(folder, ep, c, rows, shape, params["image_format"],
                                  params["tolerance_s"]) for c in cameras}
      low_dim = (np.concatenate([rows[k] for k in state], axis=1).astype(np.float32)
                 if state else None)
      meta = {"file_path": f"episode_{ep.index:06d}", "episode_index": ep.index,
              "language_instruction": ep.tasks[0] if ep.tasks else ""}
      writer.add_episode(images, rows[action].astype(np.float32), low_dim, meta, input_index=i)
    summary = writer.close(num_read=len(episodes), skipped_empty=empty)
  except BaseException:
    writer.abort()
    raise
  return summary


def conversion_params(folder: lr.LeRobotFolder, mapping: lr.FeatureMapping, *,
                      image_shape: Optional[Tuple[int, int]], image_format: str,
                      episodes_per_shard: int, tolerance_s: float, dataset: str) -> dict:
  """conversion.json: what `shard_conversion.finalize` reads, the mapping (LEROBOT) and the
  settings; a hash of the episode list makes a rerun over another dataset version refused."""
  if image_format not in IMAGE_FORMATS:
    raise ValueError(f"--image_format must be one of {IMAGE_FORMATS}, got {image_format!r}.")
  if episodes_per_shard <= 0:
    raise ValueError(f"--episodes_per_shard must be > 0, got {episodes_per_shard}.")
  n = len(folder.episodes)
  num_shards = -(-n // episodes_per_shard)
  lengths = [min(episodes_per_shard, n - k * episodes_per_shard) for k in range(num_shards)]
  listing = "\n".join(f"{ep.index}:{ep.length}" for ep in folder.episodes)
  shapes = {c: list(image_shape) if image_shape else list(folder.image_shape(c))
            for c in mapping.cameras}
  return {
      "dataset": dataset, "source": folder.root, "source_format": "lerobot",
      "episodes_sha256": hashlib.sha256(listing.encode()).hexdigest(),
      "num_input_shards": num_shards, "shard_lengths": lengths, "disable_shuffling": True,
      "camera_keys": list(mapping.cameras), "image_shapes": shapes,
      "image_shape": list(image_shape) if image_shape else None, "image_format": image_format,
      "episodes_per_shard": int(episodes_per_shard), "tolerance_s": float(tolerance_s),
      "action_free": False, "max_episodes": 0,
      "skipped_counts": ["skipped_empty"],
      LEROBOT: {"codebase_version": folder.version, "fps": folder.fps,
                "robot_type": folder.info.get("robot_type"), "cameras": list(mapping.cameras),
                "state": list(mapping.state),
                "state_widths": [folder.width(k) for k in mapping.state],
                "action": mapping.action, "action_width": folder.width(mapping.action)}}


def convert_lerobot(src: str, out_dir: str, *, cameras: Sequence[str] = (),
                    state: Optional[Sequence[str]] = None, action: str = "",
                    image_shape: Optional[Tuple[int, int]] = None, image_format: str = "jpeg",
                    episodes_per_shard: int = 50, tolerance_s: float = lr.TOLERANCE_S,
                    process_index: int = 0, process_count: int = 1, dataset: str = "",
                    progress: bool = True) -> bool:
  """Convert this process's share of input shards; True when the whole dataset is ready."""
  folder = lr.read_dataset(src)
  mapping = lr.resolve_mapping(folder, cameras, state, action)
  params = conversion_params(
      folder, mapping, image_shape=image_shape, image_format=image_format,
      episodes_per_shard=episodes_per_shard, tolerance_s=tolerance_s,
      dataset=dataset or os.path.basename(os.path.normpath(src)))
  n = params["num_input_shards"]

  def convert_one(k: int) -> dict:
    part = folder.episodes[k * episodes_per_shard:(k + 1) * episodes_per_shard]
    return convert_episode_shard(folder, part, k, n, out_dir, params)

  return shard_conversion.convert_shards(out_dir, params, convert_one,
                                         process_index=process_index,
                                         process_count=process_count, progress=progress)


def parse_shape(text: str) -> Optional[Tuple[int, int]]:
  """"H,W" -> (H, W); "" -> None (each camera's own size)."""
  return convert_video.parse_shape(text) if text else None


def _keys(text: str) -> Tuple[str, ...]:
  return tuple(k.strip() for k in text.split(",") if k.strip())


def _worker(args_and_index):
  args, index, count = args_and_index
  return convert_lerobot(
      args.src, args.out, cameras=_keys(args.cameras), state=_keys(args.state) or None,
      action=args.action, image_shape=parse_shape(args.image_shape),
      image_format=args.image_format, episodes_per_shard=args.episodes_per_shard,
      tolerance_s=args.tolerance_s, process_index=index, process_count=count,
      dataset=args.dataset)


FLAG_NAMES = ("src", "out", "cameras", "state", "action", "image_shape", "image_format",
              "episodes_per_shard", "tolerance_s", "dataset", "num_processes", "process_index",
              "process_count")


def define_flags() -> None:
  """The command line's flags (defined only when this module runs as a program)."""
  flags.DEFINE_string("src", None, "the LeRobot dataset folder (holding meta/info.json).",
                      required=True)
  flags.DEFINE_string("out", None, "output folder of the converted dataset.", required=True)
  flags.DEFINE_string("cameras", "", "camera features, comma-separated (default: every "
                      "observation.images.* of dtype video or image, in meta/info.json order).")
  flags.DEFINE_string("state", "", "state features concatenated into the low-dim input, "
                      "comma-separated (default: observation.state when present).")
  flags.DEFINE_string("action", "", "the action feature (default: action).")
  flags.DEFINE_string("image_shape", "", "H,W of the stored frames (the model's "
                      "model.image_shape; default: each camera's own size).")
  flags.DEFINE_enum("image_format", "jpeg", list(IMAGE_FORMATS), "encoding of stored frames.")
  flags.DEFINE_integer("episodes_per_shard", 50, "episodes per input (and output) shard.")
  flags.DEFINE_float("tolerance_s", lr.TOLERANCE_S, "largest distance between a step's "
                     "timestamp and its video frame (LeRobotDataset's tolerance_s).")
  flags.DEFINE_string("dataset", "", "name in messages (default: the folder name).")
  shard_conversion.define_process_flags()


def main(argv: Sequence[str]) -> None:
  args = shard_conversion.parsed_flags(argv, FLAG_NAMES)
  parse_shape(args.image_shape)  # bad values are one error line, before any worker starts
  lr.resolve_mapping(lr.read_dataset(args.src), _keys(args.cameras), _keys(args.state) or None,
                     args.action)
  logging.basicConfig(level=logging.INFO)
  shard_conversion.convert_in_processes(_worker, args)


if __name__ == "__main__":
  define_flags()
  cli_config.run(main)
