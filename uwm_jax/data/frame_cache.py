"""Decoded frames kept in memory, filled on first use (docs/data.md, "Decoded-frame cache").

A small dataset read for many epochs (the embedded demo: 4000 steps of batch 32 are ~6 epochs)
spends most of its input-pipeline time decoding the same PNGs again. The cache holds every step
of a source decoded once: one uint8 array (V, steps, H, W, 3) allocated empty (pages are only
touched as steps are filled) and a filled flag per step. It lives in one process; a lock makes
the reader threads decode each step once (reads of filled steps take no lock).
"""

import logging
import threading
from typing import Callable, Tuple

import numpy as np


class DecodedFrameCache:
  """`get(rows, decode)`: (V, len(rows), H, W, 3) uint8 frames of global step rows; the rows
  not filled yet are decoded by `decode(missing_rows)` -> (V, len(missing_rows), H, W, 3)."""

  def __init__(self, num_steps: int, num_views: int, image_shape: Tuple[int, int], name: str):
    self.frames = np.empty((num_views, num_steps) + tuple(image_shape) + (3,), np.uint8)
    self.filled = np.zeros((num_steps,), bool)
    self._lock = threading.Lock()
    logging.info("Dataset %r: decoded frames are cached in memory as they are read (up to "
                 "%.0f MiB for %d steps x %d views).", name, self.frames.nbytes / 2**20,
                 num_steps, num_views)

  def get(self, rows: np.ndarray, decode: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    rows = np.asarray(rows, np.int64)
    if not self.filled[rows].all():
      with self._lock:
        missing = np.unique(rows[~self.filled[rows]])
        if len(missing):
          self.frames[:, missing] = decode(missing)
          self.filled[missing] = True
    return self.frames[:, rows]
