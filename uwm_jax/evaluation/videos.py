"""Writing rollout and prediction videos (mp4 through imageio-ffmpeg, or gif through Pillow).

Frames are (H, W, 3) uint8. Small frames (the embedded task renders 32x32 views) are upscaled
by an integer factor with nearest-neighbour sampling so that videos are watchable.
"""

import os
from typing import Sequence

import numpy as np
from PIL import Image

from uwm_jax.runs import storage

VIDEO_FORMATS = ("mp4", "gif")


def upscale(frame: np.ndarray, min_height: int = 128) -> np.ndarray:
  """Nearest-neighbour integer upscaling until the frame is at least `min_height` rows."""
  factor = max(1, int(np.ceil(min_height / frame.shape[0])))
  if factor == 1:
    return frame
  return np.repeat(np.repeat(frame, factor, axis=0), factor, axis=1)


def pad_to_multiple(frame: np.ndarray, multiple: int = 16) -> np.ndarray:
  """Pad H and W with black up to a multiple (H.264 encoders want even/16-aligned sizes)."""
  H, W = frame.shape[:2]
  ph, pw = (-H) % multiple, (-W) % multiple
  if not (ph or pw):
    return frame
  return np.pad(frame, ((0, ph), (0, pw), (0, 0)))


def to_uint8(images) -> np.ndarray:
  """float [0, 1] or uint8 -> uint8."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def grid(rows: Sequence[Sequence[np.ndarray]], gap: int = 1) -> np.ndarray:
  """Tile equally sized (H, W, 3) images into rows x cols with a white gap."""
  out_rows = []
  for row in rows:
    cells = []
    for i, img in enumerate(row):
      if i:
        cells.append(np.full((img.shape[0], gap, 3), 255, np.uint8))
      cells.append(to_uint8(img))
    out_rows.append(np.concatenate(cells, axis=1))
  width = max(r.shape[1] for r in out_rows)
  out = []
  for i, r in enumerate(out_rows):
    if i:
      out.append(np.full((gap, width, 3), 255, np.uint8))
    out.append(np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255))
  return np.concatenate(out, axis=0)


LABEL_HEIGHT = 12  # px: PIL's default bitmap font is 11 px tall


def label_strip(labels: Sequence[str], widths: Sequence[int], height: int = LABEL_HEIGHT
                ) -> np.ndarray:
  """(height, sum(widths), 3) uint8: black labels on white, each centred in its width."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  image = Image.new("RGB", (int(sum(widths)), height), "white")
  draw = ImageDraw.Draw(image)
  x = 0
  for text, w in zip(labels, widths):
    draw.text((x + max(0.0, (w - draw.textlength(text)) / 2), 0), text, fill="black")
    x += w
  return np.asarray(image)


def label_columns(frame: np.ndarray, labels: Sequence[str], gap: int = 1) -> np.ndarray:
  """A `grid` frame whose columns fall into len(labels) equal groups -> the frame with a label
  strip on top naming each group (e.g. "now | real | pred")."""
  frame = to_uint8(frame)
  width = frame.shape[1] + gap  # every group ends with one gap column (the last one virtually)
  group = width // len(labels)
  strip = label_strip(labels, [group] * len(labels))[:, :frame.shape[1]]
  if strip.shape[1] < frame.shape[1]:
    strip = np.pad(strip, ((0, 0), (0, frame.shape[1] - strip.shape[1]), (0, 0)),
                   constant_values=255)
  return np.concatenate([strip, frame], axis=0)


def label_rows(frame: np.ndarray, labels: Sequence[str], gap: int = 1,
               width: int = 30) -> np.ndarray:
  """A `grid` frame of len(labels) equal rows -> the frame with each row's label on its left."""
  frame = to_uint8(frame)
  group = (frame.shape[0] + gap) // len(labels)
  column = np.full((frame.shape[0], width, 3), 255, np.uint8)
  for i, text in enumerate(labels):
    top = i * group + max(0, (group - gap - LABEL_HEIGHT) // 2)
    cell = label_strip([text], [width])[:max(0, min(LABEL_HEIGHT, frame.shape[0] - top))]
    column[top:top + len(cell)] = cell
  return np.concatenate([column, frame], axis=1)


def write_video(path: str, frames: Sequence[np.ndarray], fps: float = 10.0,
                min_height: int = 128) -> str:
  """Write frames to `path` (.mp4 or .gif, chosen by the extension; a local path or gs://);
  returns the path."""
  ext = os.path.splitext(path)[1].lstrip(".").lower()
  if ext not in VIDEO_FORMATS:
    raise ValueError(f"Unknown video format {ext!r} for {path}; use one of {VIDEO_FORMATS}.")
  if not len(frames):
    raise ValueError(f"No frames to write to {path}.")
  frames = [upscale(to_uint8(f), min_height) for f in frames]
  with storage.local_file(path) as local:  # a gs:// path: written locally, then uploaded
    _write_frames(local, ext, frames, fps)
  return path


def _write_frames(path: str, ext: str, frames: Sequence[np.ndarray], fps: float) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if ext == "gif":
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                   duration=max(1, int(round(1000 / fps))))
    return
  # imageio-ffmpeg starts ffmpeg with preexec_fn=os.setpgrp: Python code run in a child forked
  # from this multithreaded (JAX) process, which can deadlock (JAX warns "os.fork() was
  # called"). Without it ffmpeg is exec'ed directly; it then shares our Ctrl-C, which is fine. (Read by imageio-ffmpeg at each call.)
  os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")
  import imageio.v2 as imageio  # pylint: disable=import-outside-toplevel  # optional: mp4 only
  with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1,
                          pixelformat="yuv420p") as writer:
    for f in frames:
      writer.append_data(pad_to_multiple(f))
