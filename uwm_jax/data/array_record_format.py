"""The converted training format: array_record frames + image-free numpy arrays, per shard.

  <out>/
    conversion.json                parameters of the conversion (written first; a rerun with
                                   other parameters into the same folder is refused)
    shard-00003-of-00031/          one per INPUT shard, renamed into place when complete
      frames.array_record          one record per step: the step's encoded images (JPEG/PNG
                                   bytes as stored in the source, never re-encoded), one per
                                   camera in `camera_keys` order; group_size 1 = random access
      actions.npy                  (N, A) float32 raw actions (absent for action-free data)
      low_dim.npy                  (N, D) float32 raw low-dim observations (absent if none)
      episodes.json                lengths, first-step offsets and metadata of its episodes
    dataset.json                   written last: format, camera keys, image shape, widths, the
                                   ordered list of complete shards, episode/step counts

A converted video corpus (`uwm_jax.data.convert_video`) stores one view per step under the
camera key CLIP_CAMERA, and conversion.json's `clip_padding` says how the reader places it in
the model's views ("same": every view, "none": the first, others black), as the
decode-at-load video sources do.

A window reads the 2 * T_o records it shows and slices the memory-mapped action rows, so only
those frames are decoded; actions and low-dim values are read without touching any image
(the statistics pass reads only the .npy files).
"""

import io
import json
import os
import shutil
import struct
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from array_record.python import array_record_module
from PIL import Image

FORMAT = "uwm_array_record_v1"
DATASET_JSON = "dataset.json"
CONVERSION_JSON = "conversion.json"
FRAMES = "frames.array_record"
ACTIONS = "actions.npy"
LOW_DIM = "low_dim.npy"
EPISODES = "episodes.json"
WRITER_OPTIONS = "group_size:1"
CLIP_CAMERA = "clip"


def shard_dirname(index: int, count: int) -> str:
  return f"shard-{index:05d}-of-{count:05d}"


def encode_step(images: Sequence[bytes]) -> bytes:
  """One record: uint32 count, uint32 length per image, then the image bytes."""
  header = struct.pack(f"<I{len(images)}I", len(images), *(len(b) for b in images))
  return header + b"".join(images)


def decode_step(record: bytes, which: Sequence[int]) -> List[bytes]:
  """The encoded images at positions `which` of one record (no decoding of the others)."""
  (n,) = struct.unpack_from("<I", record, 0)
  lengths = struct.unpack_from(f"<{n}I", record, 4)
  starts = np.concatenate([[4 + 4 * n], 4 + 4 * n + np.cumsum(lengths)])
  return [record[starts[i]:starts[i] + lengths[i]] for i in which]


def encode_image(image: np.ndarray, image_format: str = "png") -> bytes:
  """(H, W, 3) uint8 -> PNG/JPEG bytes (used when a source holds raw pixels)."""
  buf = io.BytesIO()
  fmt = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG"}[image_format.lower()]
  kwargs = {"quality": 95} if fmt == "JPEG" else {"compress_level": 1}
  Image.fromarray(np.asarray(image, np.uint8)).save(buf, format=fmt, **kwargs)
  return buf.getvalue()


def resize_image(image: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
  """(h, w, 3) uint8 -> (H, W, 3) uint8 (bilinear, no crop; unchanged when already that size).
  The LeRobot conversion and the policy server's request images both go through it."""
  H, W = int(shape[0]), int(shape[1])
  if image.shape[:2] == (H, W):
    return image
  return np.asarray(Image.fromarray(image).resize((W, H), Image.BILINEAR))


def decode_image(data: bytes) -> np.ndarray:
  """PNG/JPEG bytes -> (H, W, 3) uint8."""
  with Image.open(io.BytesIO(data)) as im:
    if im.mode != "RGB":
      im = im.convert("RGB")
    return np.asarray(im)


class ShardWriter:
  """Writes one output shard into a temporary folder; `close()` moves it into place."""

  def __init__(self, out_dir: str, index: int, count: int, camera_keys: Sequence[str]):
    self.final = os.path.join(out_dir, shard_dirname(index, count))
    self.tmp = f"{self.final}.tmp-{os.getpid()}"
    shutil.rmtree(self.tmp, ignore_errors=True)
    os.makedirs(self.tmp)
    self.camera_keys = tuple(camera_keys)
    self._writer = array_record_module.ArrayRecordWriter(os.path.join(self.tmp, FRAMES),
                                                         WRITER_OPTIONS)
    self._actions: List[np.ndarray] = []
    self._low_dim: List[np.ndarray] = []
    self.episodes: Dict[str, list] = {"length": [], "offset": [], "metadata": [],
                                      "input_index": []}
    self.num_steps = 0

  def add_episode(self, images: Mapping[str, Sequence[bytes]], actions: Optional[np.ndarray],
                  low_dim: Optional[np.ndarray], metadata: Mapping[str, str],
                  input_index: int = -1) -> None:
    """images: camera -> L encoded frames; actions (L, A) / low_dim (L, D) or None;
    input_index: the episode's position in its input file (for the read order)."""
    length = len(images[self.camera_keys[0]])
    for k in self.camera_keys:
      if len(images[k]) != length:
        raise ValueError(f"{metadata}: camera {k!r} has {len(images[k])} frames, "
                         f"{self.camera_keys[0]!r} has {length}.")
    for t in range(length):
      self._writer.write(encode_step([bytes(images[k][t]) for k in self.camera_keys]))
    if actions is not None:
      self._actions.append(np.asarray(actions, np.float32).reshape(length, -1))
    if low_dim is not None:
      self._low_dim.append(np.asarray(low_dim, np.float32).reshape(length, -1))
    self.episodes["length"].append(int(length))
    self.episodes["offset"].append(int(self.num_steps))
    self.episodes["metadata"].append({k: str(v) for k, v in metadata.items()})
    self.episodes["input_index"].append(int(input_index))
    self.num_steps += length

  def close(self, **counts) -> dict:
    """Finish the files and rename the folder into place; returns the shard's summary
    (episodes and steps written, plus `counts`, e.g. episodes read and skipped)."""
    self._writer.close()
    if self._actions:
      np.save(os.path.join(self.tmp, ACTIONS), np.concatenate(self._actions))
    if self._low_dim:
      np.save(os.path.join(self.tmp, LOW_DIM), np.concatenate(self._low_dim))
    summary = {"num_episodes": len(self.episodes["length"]), "num_steps": self.num_steps,
               **counts}
    with open(os.path.join(self.tmp, EPISODES), "w") as f:
      json.dump({**self.episodes, **summary}, f)
    shutil.rmtree(self.final, ignore_errors=True)
    os.replace(self.tmp, self.final)
    return summary

  def abort(self) -> None:
    try:
      self._writer.close()
    finally:
      shutil.rmtree(self.tmp, ignore_errors=True)


def shard_done(out_dir: str, index: int, count: int) -> bool:
  return os.path.exists(os.path.join(out_dir, shard_dirname(index, count), EPISODES))


def read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def write_json_atomic(path: str, obj) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  os.replace(tmp, path)
