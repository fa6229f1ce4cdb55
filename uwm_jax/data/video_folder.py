"""Action-free clips from a folder of video files (mp4/webm), as docs/data.md describes.

Every file is an action-free episode whose frames are the video's frames taken every
`frame_stride` source frames (reference: 19 frames over a 38-frame span); a window may start at
any such frame. Each frame is resized to cover the camera shape keeping its aspect ratio and
centre-cropped to it. `padding="same"` puts the clip in every camera view (the model then draws
a different augmentation per view); "none" fills the other views with black.

Decoding: imageio with its ffmpeg plugin (imageio-ffmpeg ships the ffmpeg binary); only the
source frames a window shows are converted to arrays. Frame counts are probed once and cached in
`<folder>/uwm_video_index.json` (keyed by path, size and mtime). Files below `min_bytes`, above
`max_bytes` or too short for one window are skipped with a logged count.
"""

import json
import logging
import os
from typing import List, Optional, Sequence, Tuple

import imageio.v2 as imageio
import numpy as np
from PIL import Image

from uwm_jax.data.episodes import EpisodeSource
from uwm_jax.dims import model_dims

INDEX_FILE = "uwm_video_index.json"


def list_videos(folder: str, extensions: Sequence[str]) -> List[str]:
  exts = tuple("." + e.lower().lstrip(".") for e in extensions)
  out = []
  for root, _, files in os.walk(folder):
    out.extend(os.path.join(root, f) for f in files if f.lower().endswith(exts))
  return sorted(out)


def count_frames(path: str) -> int:
  with imageio.get_reader(path, format="ffmpeg") as r:
    return int(r.count_frames())


def resize_cover_crop(frame: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
  """(h, w, 3) -> (H, W, 3): scale to cover (H, W) keeping aspect ratio, centre crop."""
  H, W = shape
  h, w = frame.shape[:2]
  if (h, w) == (H, W):
    return frame
  scale = max(H / h, W / w)
  nh, nw = max(H, int(round(h * scale))), max(W, int(round(w * scale)))
  im = np.asarray(Image.fromarray(frame).resize((nw, nh), Image.BILINEAR))
  top, left = (nh - H) // 2, (nw - W) // 2
  return im[top:top + H, left:left + W]


class VideoFolderSource(EpisodeSource):
  """Each usable video file = one action-free episode of strided frames."""

  def __init__(self, name: str, folder: str, camera_keys: Sequence[str],
               image_shape: Tuple[int, int], window: int, frame_stride: float = 2.0,
               padding: str = "same", extensions: Sequence[str] = ("mp4", "webm"),
               min_bytes: int = 1024, max_bytes: int = 2**30):
    if not folder or not os.path.isdir(folder):
      raise FileNotFoundError(f"Dataset {name!r}: video folder {folder!r} does not exist.")
    if frame_stride <= 0:
      raise ValueError(f"Dataset {name!r}: frame_stride must be > 0, got {frame_stride}.")
    if padding not in ("same", "none"):
      raise ValueError(f"Dataset {name!r}: padding must be 'same' or 'none', got {padding!r}.")
    self.name = name
    self.folder = os.path.abspath(folder)
    self.camera_keys = tuple(camera_keys)
    self.image_shape = tuple(image_shape)
    self.frame_stride = float(frame_stride)
    self.padding = padding
    files = list_videos(folder, extensions)
    sizes = {f: os.path.getsize(f) for f in files}
    usable = [f for f in files if min_bytes <= sizes[f] <= max_bytes]
    if len(usable) < len(files):
      logging.info("%s: skipped %d of %d video files by size (< %d or > %d bytes).", name,
                   len(files) - len(usable), len(files), min_bytes, max_bytes)
    counts = self._frame_counts(usable)
    lengths = [self._out_len(n) for n in counts]
    keep = [i for i, L in enumerate(lengths) if L >= window]
    if len(keep) < len(usable):
      logging.info("%s: skipped %d video files shorter than a %d-frame window at stride %g.",
                   name, len(usable) - len(keep), window, frame_stride)
    if not keep:
      raise ValueError(f"Dataset {name!r}: no usable video in {folder!r} ({len(files)} files "
                       f"with extensions {tuple(extensions)}).")
    self.files = [os.path.relpath(usable[i], self.folder) for i in keep]
    self.num_source_frames = np.asarray([counts[i] for i in keep], np.int64)
    self.episode_lengths = np.asarray([lengths[i] for i in keep], np.int64)
    self.action_free = np.ones((len(keep),), bool)

  @classmethod
  def from_config(cls, name: str, cfg, model_cfg) -> "VideoFolderSource":
    return cls(name, cfg.path, model_cfg.camera_keys, model_cfg.image_shape,
               model_dims(model_cfg).window, cfg.frame_stride, cfg.padding, cfg.extensions,
               cfg.min_bytes, cfg.max_bytes)

  def _out_len(self, n: int) -> int:
    return int(np.floor((n - 1) / self.frame_stride)) + 1 if n > 0 else 0

  def _frame_counts(self, files: Sequence[str]) -> List[int]:
    index_path = os.path.join(self.folder, INDEX_FILE)
    index = {}
    if os.path.exists(index_path):
      with open(index_path) as f:
        index = json.load(f)
    out, changed = [], False
    for path in files:
      st = os.stat(path)
      key = os.path.relpath(path, self.folder)
      entry = index.get(key)
      if not entry or entry["size"] != st.st_size or entry["mtime"] != st.st_mtime:
        try:
          n = count_frames(path)
        except Exception as e:  # pylint: disable=broad-except
          logging.warning("%s: cannot read video %s (%s); skipped.", self.name, path, e)
          n = 0
        entry = {"size": st.st_size, "mtime": st.st_mtime, "frames": n}
        index[key] = entry
        changed = True
      out.append(int(entry["frames"]))
    if changed:
      try:
        tmp = f"{index_path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
          json.dump(index, f)
        os.replace(tmp, index_path)
      except OSError as e:
        logging.warning("%s: could not cache frame counts in %s: %s", self.name, index_path, e)
    return out

  def episode_name(self, episode: int) -> str:
    return f"dataset {self.name!r}, video {self.files[episode]!r}"

  def actions(self, episode: int) -> Optional[np.ndarray]:
    return None

  def source_frame_indices(self, episode: int, indices: np.ndarray) -> np.ndarray:
    """Window frame indices -> indices into the video's frames."""
    src = np.round(np.asarray(indices, np.float64) * self.frame_stride).astype(np.int64)
    return np.minimum(src, self.num_source_frames[episode] - 1)

  def frames(self, episode: int, indices: np.ndarray) -> np.ndarray:
    indices = np.asarray(indices, np.int64)
    if indices.min(initial=0) < 0 or indices.max(initial=0) >= self.episode_lengths[episode]:
      raise IndexError(f"{self.episode_name(episode)}: frames {indices} out of range.")
    wanted = self.source_frame_indices(episode, indices)
    decoded = {}
    path = os.path.join(self.folder, self.files[episode])
    try:
      with imageio.get_reader(path, format="ffmpeg") as r:
        for i in sorted(set(wanted.tolist())):
          decoded[i] = resize_cover_crop(np.asarray(r.get_data(i))[..., :3], self.image_shape)
    except Exception as e:
      raise ValueError(f"{self.episode_name(episode)}: decoding source frames "
                       f"{sorted(set(wanted.tolist()))} failed: {e}") from e
    clip = np.stack([decoded[i] for i in wanted.tolist()])
    out = np.zeros((len(self.camera_keys),) + clip.shape, np.uint8)
    if self.padding == "same":
      out[:] = clip
    else:
      out[0] = clip
    return out

  def fingerprint(self) -> str:
    return json.dumps([self.files, self.num_source_frames.tolist(), self.frame_stride])
