"""Small video clips in the formats of web video corpora (mp4 / H.264, webm / VP9), written locally.

  write_video_clip("/tmp/clips/a.mp4", num_frames=48)      # codec from the extension
  write_video_clip("/tmp/clips/b.webm", num_frames=48)

It lives with the benchmarks because `python -m benchmarks.data --video_fixture=mp4`
benchmarks the video paths on such clips; the tests use it through tests/fixtures.py. Frames are
moving shapes (`benchmarks.droid_sample.moving_shapes`), deterministic given `seed`.
"""

import os
from typing import Tuple

import imageio.v2 as imageio
import numpy as np

from benchmarks.droid_sample import moving_shapes

# imageio-ffmpeg encoder per file extension.
CODECS = {"mp4": "libx264", "webm": "libvpx-vp9"}


def write_video_clip(path: str, num_frames: int = 48, image_shape: Tuple[int, int] = (64, 96),
                     fps: int = 15, seed: int = 0) -> np.ndarray:
  """An mp4 (H.264) or webm (VP9) clip of moving shapes, by the extension of `path`; returns
  the frames written, (L, H, W, 3) uint8."""
  ext = os.path.splitext(path)[1].lower().lstrip(".")
  if ext not in CODECS:
    raise ValueError(f"{path}: write .mp4 or .webm (known: {sorted(CODECS)}).")
  frames = moving_shapes(num_frames, image_shape, 1, seed=seed)[0]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with imageio.get_writer(path, fps=fps, codec=CODECS[ext], quality=8, macro_block_size=1,
                          ffmpeg_log_level="error") as w:
    for im in frames:
      w.append_data(im)
  return frames
