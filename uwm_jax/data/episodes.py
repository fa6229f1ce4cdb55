"""The interface every data source implements, and the episode -> window index.

A source is a random-access collection of episodes. It never hands out whole episodes: the
loader asks for the raw actions / low-dim values of one episode (cheap, no images) and for a few
frames of it (`frames(episode, indices)`), so a window decodes only the frames it uses (the
current and next observations, 2 * T_o of the 2 * T_o + H_a - 1 frames it spans).

Sources are pickled into grain worker processes: open files lazily (see `_lazy` attributes in
the implementations), never in `__init__`.
"""

import abc
import logging
from typing import List, NamedTuple, Optional, Sequence

import numpy as np


class EpisodeSource(abc.ABC):
  """Random access to the episodes of one dataset.

  Attributes set by implementations:
    name: the dataset's name (config key), used in every error message.
    camera_keys: views returned by `frames`, in order.
    episode_lengths: (E,) int64 number of steps of each episode.
    action_free: (E,) bool, True where the episode is used without actions (video).
  """

  name: str
  camera_keys: Sequence[str]
  episode_lengths: np.ndarray
  action_free: np.ndarray

  @property
  def num_episodes(self) -> int:
    return int(len(self.episode_lengths))

  @abc.abstractmethod
  def actions(self, episode: int) -> Optional[np.ndarray]:
    """(L, A) float32 raw (unnormalised) actions, or None for a source without actions."""

  def low_dim(self, episode: int) -> Optional[np.ndarray]:
    """(L, D) float32 raw low-dim observations, or None when the source has none."""
    return None

  @abc.abstractmethod
  def frames(self, episode: int, indices: np.ndarray) -> np.ndarray:
    """(V, len(indices), H, W, 3) uint8 frames of `episode` at step `indices`."""

  def episode_name(self, episode: int) -> str:
    """A human-readable id of the episode for error messages."""
    return f"{self.name}/episode {episode}"

  def fingerprint(self) -> str:
    """A string that changes whenever the stored data changes (statistics cache key)."""
    return ""

  def stats_cache_dir(self) -> Optional[str]:
    """Folder beside the data where statistics are cached; None = do not cache."""
    return None


class WindowRef(NamedTuple):
  """One training/eval sample: `window` frames of `episode` from `start` in source `source`."""
  source: int
  episode: int
  start: int


def window_starts(lengths: np.ndarray, episodes: np.ndarray, window: int, stride: int = 1,
                  name: str = "") -> np.ndarray:
  """(N, 2) int64 (episode, start) of every window fully inside the given episodes.

  No padding (docs/data.md, "Windows and the validation split"): an episode of length L holds
  the L - window + 1 windows starting at 0..L-window; shorter episodes hold none and are counted in a log line.
  """
  rows = []
  short = 0
  for ep in np.asarray(episodes, np.int64):
    n = int(lengths[ep]) - window + 1
    if n <= 0:
      short += 1
      continue
    starts = np.arange(0, n, stride, dtype=np.int64)
    rows.append(np.stack([np.full_like(starts, ep), starts], axis=1))
  if short:
    logging.info("%s: skipped %d of %d episodes shorter than the %d-frame window.", name or
                 "dataset", short, len(episodes), window)
  if not rows:
    return np.zeros((0, 2), np.int64)
  return np.concatenate(rows, axis=0)


def split_episodes(action_free: np.ndarray, val_fraction: float,
                   seed: int) -> tuple:
  """(train_episodes, val_episodes) int64 arrays; validation holds robot episodes only.

  The reference's rule (docs/data.md, "Windows and the validation split"): round(val_fraction * N)
  of the N robot episodes, clamped to [1, N - 1] when val_fraction > 0 and N >= 2, chosen by
  `np.random.default_rng(seed).choice(N, k, replace=False)` (seed 0 by default, as the
  reference), so the same data gives the same validation episodes. Action-free episodes
  always train.
  """
  action_free = np.asarray(action_free, bool)
  robot = np.flatnonzero(~action_free)
  n = len(robot)
  n_val = 0
  if val_fraction > 0 and n >= 2:
    n_val = int(min(max(round(val_fraction * n), 1), n - 1))
  chosen = np.random.default_rng(seed).choice(n, n_val, replace=False) if n_val else []
  val = np.sort(robot[np.asarray(chosen, np.int64)])
  train = np.setdiff1d(np.arange(len(action_free)), val)
  return train.astype(np.int64), val.astype(np.int64)


def robot_episodes(source: EpisodeSource) -> np.ndarray:
  """Episodes whose actions are used (not action-free)."""
  return np.flatnonzero(~np.asarray(source.action_free, bool))


def check_finite(values: np.ndarray, source: EpisodeSource, episode: int, field: str,
                 steps: Optional[Sequence[int]] = None) -> None:
  """Raise ValueError naming dataset, episode, field and episode step when `values` hold NaN
  or inf. values: (N, ...) rows of the episode; steps: the episode step of each row (default:
  row i is step i, i.e. `values` is the whole episode)."""
  bad = ~np.isfinite(values)
  if bad.any():
    row = int(np.argwhere(bad)[0][0])
    step = int(steps[row]) if steps is not None else row
    raise ValueError(f"{source.episode_name(episode)}: field {field!r} holds NaN/inf "
                     f"(first at step {step}).")


def concat_sources_windows(tables: List[np.ndarray]) -> np.ndarray:
  """(N, 3) (source, episode, start) from one (N_s, 2) table per source."""
  out = [np.concatenate([np.full((len(t), 1), s, np.int64), t], axis=1)
         for s, t in enumerate(tables)]
  return np.concatenate(out, axis=0) if out else np.zeros((0, 3), np.int64)
