"""Per-dimension min-max normalisation to [-1, 1] (docs/data.md, "Normalisation statistics").

Dataset statistics are a JSON-able dict shared by data, training, checkpoints and evaluation:

  {"action": {"min": [...], "max": [...]}, "low_dim": {"min": [...], "max": [...]}}

("low_dim" only when low-dim observations are used). For an entry, scale = (max - min) / 2 and
offset = (max + min) / 2 (the reference's normalizer objects store exactly these two arrays);
x_n = (x - offset) / scale. A dimension with zero range maps to 0 and back to its constant value,
never to NaN. `normalize` / `denormalize` work on numpy and jax arrays alike (the last axis is the
feature axis).
"""

from typing import Mapping, Sequence, Tuple

import numpy as np

ACTION = "action"
LOW_DIM = "low_dim"


def scale_offset(stats_entry: Mapping) -> Tuple[np.ndarray, np.ndarray]:
  """(scale, offset) float32 arrays of one entry; zero-range dimensions get scale 1 (map to 0)."""
  lo = np.asarray(stats_entry["min"], np.float32)
  hi = np.asarray(stats_entry["max"], np.float32)
  if lo.shape != hi.shape or lo.ndim != 1:
    raise ValueError(f"Statistics entry needs 1-d 'min' and 'max' of equal length; got shapes "
                     f"{lo.shape} and {hi.shape}.")
  scale = (hi - lo) / 2
  offset = (hi + lo) / 2
  scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
  return scale, offset.astype(np.float32)


def normalize(x, stats_entry: Mapping):
  """(..., D) raw values -> (..., D) normalised to [-1, 1] over the statistics' range."""
  return normalize_by(x, scale_offset(stats_entry))


def normalize_by(x, scale_and_offset: Tuple[np.ndarray, np.ndarray]):
  """`normalize` with the entry's `scale_offset` computed once (per-sample hot paths)."""
  scale, offset = scale_and_offset
  return (x - offset) / scale


def denormalize(x, stats_entry: Mapping):
  """Inverse of `normalize`: (..., D) normalised -> (..., D) raw values."""
  scale, offset = scale_offset(stats_entry)
  return x * scale + offset


def minmax_entry(lo: Sequence[float], hi: Sequence[float]) -> dict:
  """A JSON-able statistics entry from per-dimension min and max."""
  return {"min": [float(v) for v in lo], "max": [float(v) for v in hi]}


def identity_entry(dim: int) -> dict:
  """An entry whose normalisation is the identity (min -1, max 1): for data used unnormalised."""
  return minmax_entry([-1.0] * dim, [1.0] * dim)


class RunningMinMax:
  """Accumulates per-dimension min/max over chunks of (N, D) values without keeping them."""

  def __init__(self, name: str):
    self.name = name
    self.lo = None
    self.hi = None

  def update(self, x: np.ndarray) -> None:
    x = np.asarray(x, np.float64)
    if x.size == 0:
      return
    x = x.reshape(-1, x.shape[-1])
    lo, hi = x.min(axis=0), x.max(axis=0)
    if self.lo is None:
      self.lo, self.hi = lo, hi
    elif lo.shape != self.lo.shape:
      raise ValueError(f"{self.name}: feature width changed from {self.lo.shape[0]} to "
                       f"{lo.shape[0]} between episodes.")
    else:
      self.lo, self.hi = np.minimum(self.lo, lo), np.maximum(self.hi, hi)

  def entry(self) -> dict:
    if self.lo is None:
      raise ValueError(f"No values seen for {self.name!r}: cannot compute statistics.")
    return minmax_entry(self.lo, self.hi)


def check_stats(stats: Mapping, action_dim: int, low_dim_dim: int = 0) -> None:
  """Raise ValueError naming the key when statistics do not fit the model's widths."""
  for key, dim in ((ACTION, action_dim), (LOW_DIM, low_dim_dim)):
    if not dim:
      continue
    if key not in stats:
      raise ValueError(f"Dataset statistics have no {key!r} entry (keys: {sorted(stats)}).")
    n = len(stats[key]["min"])
    if n != dim or len(stats[key]["max"]) != dim:
      raise ValueError(f"Dataset statistics {key!r} have width {n}, the model expects {dim}.")
