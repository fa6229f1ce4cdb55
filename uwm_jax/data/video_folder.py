"""Action-free clips from video files (mp4/webm): a folder, or an index file listing them
(docs/data.md, "Video corpora").

Every clip is an action-free episode whose frames are the video's frames taken every
`frame_stride` source frames (reference: 19 frames over a 38-frame span); a window may start at
any such frame. Each frame is resized to cover the camera shape keeping its aspect ratio and
centre-cropped to it. `padding="same"` puts the clip in every camera view (the model then draws
a different augmentation per view); "none" fills the other views with black.

  VideoFolderSource: every mp4/webm file under a folder (searched recursively), sorted.
  VideoIndexSource: the files an index file lists, one path per line (relative paths are
    resolved against the index file's folder; blank lines and `#` comments are ignored), in
    the listed order, as the reference's Kinetics / Something-Something lists.

Decoding: imageio with its ffmpeg plugin (imageio-ffmpeg ships the ffmpeg binary); only the
source frames a window shows are converted to arrays. Frame counts are probed once and cached in
`<root>/uwm_video_index.json` (root: the folder, or the index file's folder; keyed by path,
size and mtime). Files below `min_bytes`, above `max_bytes`, unreadable or too short for one
window are skipped with one logged count per source (naming the first unreadable files). A clip
that fails to decode later, at load time, is replaced by the same frames of the next readable
clip and counted (`unreadable`), so a corrupt file never stops training.
"""

import json
import logging
import os
import socket
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from uwm_jax.data.episodes import EpisodeSource
from uwm_jax.dims import model_dims

# Frame-count cache beside the clips (not an index file: it is written by the loader).
FRAME_COUNT_CACHE = "uwm_video_index.json"
PADDINGS = ("same", "none")
# Unreadable clips named in a log line (the count covers all of them).
NAMED_UNREADABLE = 5


def list_videos(folder: str, extensions: Sequence[str]) -> List[str]:
  """Absolute paths of the files under `folder` with these extensions, sorted."""
  exts = tuple("." + e.lower().lstrip(".") for e in extensions)
  out = []
  for root, _, files in os.walk(folder):
    out.extend(os.path.join(root, f) for f in files if f.lower().endswith(exts))
  return sorted(os.path.abspath(p) for p in out)


def read_index_file(path: str) -> List[str]:
  """Absolute paths listed in an index file, in order: one path per line, relative ones
  resolved against the index file's folder; blank lines and lines starting with `#` ignored."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Video index file {path!r} does not exist.")
  base = os.path.dirname(os.path.abspath(path))
  with open(path) as f:
    lines = [line.strip() for line in f]
  return [os.path.normpath(os.path.join(base, line)) for line in lines
          if line and not line.startswith("#")]


def check_decoder() -> None:
  """Import the video decoder: imageio and imageio-ffmpeg (its ffmpeg binary), optional (the
  `data` extra), so imported only here and in `video_reader`: the training core loads without
  them. A missing one raises ModuleNotFoundError (`VideoClipsSource` checks first, or every clip
  would count as unreadable)."""
  import imageio.v2  # pylint: disable=import-outside-toplevel,unused-import
  import imageio_ffmpeg  # pylint: disable=import-outside-toplevel,unused-import


def video_reader(path: str):
  """imageio's ffmpeg reader of `path` (a context manager; imageio: see `check_decoder`)."""
  import imageio.v2 as imageio  # pylint: disable=import-outside-toplevel  # optional
  return imageio.get_reader(path, format="ffmpeg")


def count_frames(path: str) -> int:
  with video_reader(path) as r:
    return int(r.count_frames())


def strided_length(num_source_frames: int, frame_stride: float) -> int:
  """Episode length of a clip of `num_source_frames` frames taken every `frame_stride`."""
  if num_source_frames <= 0:
    return 0
  return int(np.floor((num_source_frames - 1) / frame_stride)) + 1


def strided_source_indices(indices: np.ndarray, frame_stride: float,
                           num_source_frames: int) -> np.ndarray:
  """Episode frame indices -> indices into the video's frames."""
  src = np.round(np.asarray(indices, np.float64) * frame_stride).astype(np.int64)
  return np.minimum(src, num_source_frames - 1)


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


def place_in_views(clip: np.ndarray, num_views: int, padding: str) -> np.ndarray:
  """(T, H, W, 3) clip -> (V, T, H, W, 3): in every view ("same") or the first only ("none")."""
  out = np.zeros((num_views,) + clip.shape, np.uint8)
  if padding == "same":
    out[:] = clip
  else:
    out[0] = clip
  return out


def read_clip_frames(path: str, wanted: Sequence[int], image_shape: Tuple[int, int]
                     ) -> Dict[int, np.ndarray]:
  """{source frame index: (H, W, 3) uint8 resized frame} for the wanted source frames."""
  out = {}
  with video_reader(path) as r:
    for i in sorted(set(int(i) for i in wanted)):
      out[i] = resize_cover_crop(np.asarray(r.get_data(i))[..., :3], image_shape)
  return out


def unreadable_summary(name: str, names: Sequence[str], total: int, what: str) -> str:
  shown = ", ".join(names[:NAMED_UNREADABLE])
  more = f", ... ({len(names) - NAMED_UNREADABLE} more)" if len(names) > NAMED_UNREADABLE else ""
  return f"{name}: skipped {len(names)} of {total} {what} as unreadable ({shown}{more})."


class VideoClipsSource(EpisodeSource):
  """Each usable video file of a list = one action-free episode of strided frames."""

  def __init__(self, name: str, paths: Sequence[str], root: str, camera_keys: Sequence[str],
               image_shape: Tuple[int, int], window: int, frame_stride: float = 2.0,
               padding: str = "same", min_bytes: int = 1024, max_bytes: int = 2**30,
               where: str = ""):
    """paths: absolute clip paths; root: folder the clip names (and the frame-count cache)
    are relative to; where: the folder / index file, for messages."""
    if frame_stride <= 0:
      raise ValueError(f"Dataset {name!r}: frame_stride must be > 0, got {frame_stride}.")
    if padding not in PADDINGS:
      raise ValueError(f"Dataset {name!r}: padding must be 'same' or 'none', got {padding!r}.")
    check_decoder()
    self.name = name
    self.root = os.path.abspath(root)
    self.camera_keys = tuple(camera_keys)
    self.image_shape = tuple(image_shape)
    self.frame_stride = float(frame_stride)
    self.padding = padding
    self.unreadable: List[str] = []  # clips that failed to decode at load time (this process)
    sizes = {f: os.path.getsize(f) if os.path.isfile(f) else -1 for f in paths}
    missing = [f for f in paths if sizes[f] < 0]
    usable = [f for f in paths if min_bytes <= sizes[f] <= max_bytes]
    if len(usable) + len(missing) < len(paths):
      logging.info("%s: skipped %d of %d video files by size (< %d or > %d bytes).", name,
                   len(paths) - len(usable) - len(missing), len(paths), min_bytes, max_bytes)
    counts = self._frame_counts(usable)
    bad = missing + [f for f, n in zip(usable, counts) if n < 0]
    if bad:
      logging.warning(unreadable_summary(name, [self._rel(f) for f in bad], len(paths),
                                         "video files"))
    lengths = [strided_length(n, frame_stride) for n in counts]
    keep = [i for i, L in enumerate(lengths) if L >= window]
    short = sum(1 for n, L in zip(counts, lengths) if 0 <= n and L < window)
    if short:
      logging.info("%s: skipped %d video files shorter than a %d-frame window at stride %g.",
                   name, short, window, frame_stride)
    if not keep:
      raise ValueError(f"Dataset {name!r}: no usable video in {where or root!r} "
                       f"({len(paths)} files listed).")
    self.files = [self._rel(usable[i]) for i in keep]
    self.num_source_frames = np.asarray([counts[i] for i in keep], np.int64)
    self.episode_lengths = np.asarray([lengths[i] for i in keep], np.int64)
    self.action_free = np.ones((len(keep),), bool)

  def _rel(self, path: str) -> str:
    return os.path.relpath(path, self.root)

  def _frame_counts(self, files: Sequence[str]) -> List[int]:
    """Frames per file (-1: unreadable), from the cache or probed (and cached)."""
    cache_path = os.path.join(self.root, FRAME_COUNT_CACHE)
    cache = {}
    if os.path.exists(cache_path):
      try:
        with open(cache_path) as f:
          cache = json.load(f)
      except (OSError, ValueError) as e:
        logging.warning("%s: ignoring unreadable frame-count cache %s: %s", self.name,
                        cache_path, e)
    out, changed = [], False
    for path in files:
      st = os.stat(path)
      key = self._rel(path)
      entry = cache.get(key)
      if not entry or entry["size"] != st.st_size or entry["mtime"] != st.st_mtime:
        try:
          n = count_frames(path)
        except Exception:  # pylint: disable=broad-except  # counted and named once, above
          n = -1
        entry = {"size": st.st_size, "mtime": st.st_mtime, "frames": n}
        cache[key] = entry
        changed = True
      out.append(int(entry["frames"]))
    if changed:
      try:
        tmp = f"{cache_path}.tmp-{socket.gethostname()}-{os.getpid()}"  # hosts share it
        with open(tmp, "w") as f:
          json.dump(cache, f)
        os.replace(tmp, cache_path)
      except OSError as e:
        logging.warning("%s: could not cache frame counts in %s: %s", self.name, cache_path, e)
    return out

  def episode_name(self, episode: int) -> str:
    return f"dataset {self.name!r}, video {self.files[episode]!r}"

  def actions(self, episode: int) -> Optional[np.ndarray]:
    return None

  def source_frame_indices(self, episode: int, indices: np.ndarray) -> np.ndarray:
    """Window frame indices -> indices into the video's frames."""
    return strided_source_indices(indices, self.frame_stride,
                                  int(self.num_source_frames[episode]))

  def _decode(self, episode: int, indices: np.ndarray) -> np.ndarray:
    wanted = self.source_frame_indices(episode, indices)
    decoded = read_clip_frames(os.path.join(self.root, self.files[episode]), wanted,
                               self.image_shape)
    clip = np.stack([decoded[i] for i in wanted.tolist()])
    return place_in_views(clip, len(self.camera_keys), self.padding)

  def _note_unreadable(self, episode: int, error: Exception) -> None:
    name = self.files[episode]
    if name in self.unreadable:
      return
    self.unreadable.append(name)
    n = len(self.unreadable)
    if n <= NAMED_UNREADABLE or n in (10, 100, 1000, 10000):
      logging.warning("%s: %d clips unreadable at load time so far; %s replaced by the next "
                      "readable clip (%s: %s).", self.name, n, name, type(error).__name__,
                      (str(error).strip().splitlines() or [""])[0][:200])

  def frames(self, episode: int, indices: np.ndarray) -> np.ndarray:
    """(V, len(indices), H, W, 3); a clip that fails to decode is replaced by the same
    relative frames from the start of the next readable clip (every clip holds a window)."""
    indices = np.asarray(indices, np.int64)
    if indices.min(initial=0) < 0 or indices.max(initial=0) >= self.episode_lengths[episode]:
      raise IndexError(f"{self.episode_name(episode)}: frames {indices} out of range.")
    first = int(indices.min()) if len(indices) else 0
    first_error = None
    for k in range(self.num_episodes):
      ep = (episode + k) % self.num_episodes
      if self.files[ep] in self.unreadable:
        continue
      try:
        return self._decode(ep, indices if k == 0 else indices - first)
      except Exception as e:  # pylint: disable=broad-except
        first_error = first_error or e
        self._note_unreadable(ep, e)
    raise ValueError(f"Dataset {self.name!r}: no clip could be decoded ({len(self.unreadable)} "
                     f"unreadable; first error: {first_error}).")

  def fingerprint(self) -> str:
    return json.dumps([self.files, self.num_source_frames.tolist(), self.frame_stride])


def _clip_options(cfg, model_cfg) -> dict:
  """The keyword arguments every clip source takes from its config entry and the model."""
  return dict(camera_keys=model_cfg.camera_keys, image_shape=model_cfg.image_shape,
              window=model_dims(model_cfg).window, frame_stride=cfg.frame_stride,
              padding=cfg.padding, min_bytes=cfg.min_bytes, max_bytes=cfg.max_bytes)


class VideoFolderSource(VideoClipsSource):
  """Every file with one of `extensions` under `folder` (recursively), sorted by path."""

  def __init__(self, name: str, folder: str, camera_keys: Sequence[str],
               image_shape: Tuple[int, int], window: int, frame_stride: float = 2.0,
               padding: str = "same", extensions: Sequence[str] = ("mp4", "webm"),
               min_bytes: int = 1024, max_bytes: int = 2**30):
    if not folder or not os.path.isdir(folder):
      raise FileNotFoundError(f"Dataset {name!r}: video folder {folder!r} does not exist.")
    files = list_videos(folder, extensions)
    if not files:
      raise ValueError(f"Dataset {name!r}: no usable video in {folder!r} (0 files with "
                       f"extensions {tuple(extensions)}).")
    super().__init__(name, files, folder, camera_keys, image_shape, window, frame_stride,
                     padding, min_bytes, max_bytes, where=folder)

  @classmethod
  def from_config(cls, name: str, cfg, model_cfg) -> "VideoFolderSource":
    return cls(name, cfg.path, extensions=cfg.extensions, **_clip_options(cfg, model_cfg))


class VideoIndexSource(VideoClipsSource):
  """The clips an index file lists (`read_index_file`), in order."""

  def __init__(self, name: str, index_file: str, camera_keys: Sequence[str],
               image_shape: Tuple[int, int], window: int, frame_stride: float = 2.0,
               padding: str = "same", min_bytes: int = 1024, max_bytes: int = 2**30):
    if not index_file or not os.path.isfile(index_file):
      raise FileNotFoundError(f"Dataset {name!r}: video index file {index_file!r} does not "
                              f"exist.")
    files = read_index_file(index_file)
    if not files:
      raise ValueError(f"Dataset {name!r}: no usable video in {index_file!r} (it lists none).")
    super().__init__(name, files, os.path.dirname(os.path.abspath(index_file)), camera_keys,
                     image_shape, window, frame_stride, padding, min_bytes, max_bytes,
                     where=index_file)

  @classmethod
  def from_config(cls, name: str, cfg, model_cfg) -> "VideoIndexSource":
    return cls(name, cfg.path, **_clip_options(cfg, model_cfg))
