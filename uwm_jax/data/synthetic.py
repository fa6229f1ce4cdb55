"""A deterministic synthetic source: moving shapes seen by every camera, no files.

Episode e (a pure function of (seed, e)) is a square and a disc moving over a coloured
background. The square's velocity is the action: position_{t+1} = position_t + a_t[:2], so both
policy and dynamics are learnable; further action dimensions are smooth signals with different
ranges (so normalisation statistics are not trivial). Low-dim observations are the square's
position followed by the same signals. Camera v sees the scene mirrored/transposed differently.
Frames are rendered on demand, one at a time.
"""

from typing import Optional, Sequence, Tuple

import numpy as np

from uwm_jax.data.episodes import EpisodeSource


class SyntheticSource(EpisodeSource):
  """Moving-shapes episodes of `episode_len` steps; a fraction can be action-free (video)."""

  def __init__(self, name: str, camera_keys: Sequence[str], image_shape: Tuple[int, int],
               action_dim: int, low_dim_dim: int = 0, num_episodes: int = 16,
               episode_len: int = 32, action_free_fraction: float = 0.0, seed: int = 0):
    if num_episodes < 1 or episode_len < 1:
      raise ValueError(f"{name}: synthetic source needs num_episodes >= 1 and episode_len >= 1, "
                       f"got {num_episodes} and {episode_len}.")
    if not 0.0 <= action_free_fraction <= 1.0:
      raise ValueError(f"{name}: action_free_fraction must be in [0, 1], got "
                       f"{action_free_fraction}.")
    self.name = name
    self.camera_keys = tuple(camera_keys)
    self.image_shape = tuple(image_shape)
    self.action_dim = int(action_dim)
    self.low_dim_dim = int(low_dim_dim)
    self.seed = int(seed)
    self.episode_len = int(episode_len)
    self.episode_lengths = np.full((num_episodes,), episode_len, np.int64)
    n_free = int(round(action_free_fraction * num_episodes))
    free = np.random.default_rng([self.seed, 1]).permutation(num_episodes)[:n_free]
    self.action_free = np.zeros((num_episodes,), bool)
    self.action_free[free] = True
    self._cache = {}

  def _trajectory(self, episode: int) -> dict:
    """Positions (L+1, 2) of square and disc, actions (L, A), colours; cached per episode."""
    if episode in self._cache:
      return self._cache[episode]
    if not 0 <= episode < self.num_episodes:
      raise IndexError(f"{self.name}: episode {episode} out of range [0, {self.num_episodes}).")
    rng = np.random.default_rng([self.seed, 0, episode])
    L = self.episode_len
    t = np.arange(L, dtype=np.float64)
    freq = rng.uniform(0.1, 0.4, size=(max(self.action_dim, 2) + 2,))
    phase = rng.uniform(0, 2 * np.pi, size=freq.shape)
    velocity = 0.04 * np.stack([np.cos(freq[0] * t + phase[0]), np.sin(freq[1] * t + phase[1])],
                               axis=1)
    pos = np.empty((L + 1, 2))
    pos[0] = rng.uniform(0.25, 0.75, size=2)
    for i in range(L):  # reflect at the borders so shapes stay visible
      nxt = pos[i] + velocity[i]
      out = (nxt < 0.1) | (nxt > 0.9)
      velocity[i] = np.where(out, -velocity[i], velocity[i])
      pos[i + 1] = pos[i] + velocity[i]
    extra = [(k + 1) * np.sin(freq[k + 2] * t + phase[k + 2]) for k in range(self.action_dim)]
    actions = np.concatenate([velocity, np.stack(extra, axis=1)], axis=1)[:, :self.action_dim]
    disc = 0.5 + 0.3 * np.stack([np.sin(0.2 * np.arange(L + 1) + phase[0]),
                                 np.cos(0.3 * np.arange(L + 1) + phase[1])], axis=1)
    traj = {
        "pos": pos, "disc": disc, "actions": actions.astype(np.float32),
        "signals": np.stack(extra, axis=1).astype(np.float32),
        "background": rng.integers(0, 120, size=3),
        "square_colour": rng.integers(150, 256, size=3),
        "disc_colour": rng.integers(60, 200, size=3),
    }
    if len(self._cache) > 64:
      self._cache.clear()
    self._cache[episode] = traj
    return traj

  def actions(self, episode: int) -> np.ndarray:
    return self._trajectory(episode)["actions"]

  def low_dim(self, episode: int) -> Optional[np.ndarray]:
    if not self.low_dim_dim:
      return None
    tr = self._trajectory(episode)
    feats = np.concatenate([tr["pos"][:-1], tr["signals"]], axis=1).astype(np.float32)
    if feats.shape[1] < self.low_dim_dim:
      feats = np.pad(feats, ((0, 0), (0, self.low_dim_dim - feats.shape[1])))
    return feats[:, :self.low_dim_dim]

  def frames(self, episode: int, indices: np.ndarray) -> np.ndarray:
    tr = self._trajectory(episode)
    H, W = self.image_shape
    out = np.empty((len(self.camera_keys), len(indices), H, W, 3), np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    half = max(1, min(H, W) // 8)
    for j, step in enumerate(np.asarray(indices)):
      if not 0 <= step < self.episode_len:
        raise IndexError(f"{self.episode_name(episode)}: step {step} out of range.")
      for v in range(len(self.camera_keys)):
        img = np.empty((H, W, 3), np.uint8)
        img[:] = (tr["background"] + 40 * v) % 256
        sq = self._view(tr["pos"][step], v)
        cy, cx = int(sq[0] * (H - 1)), int(sq[1] * (W - 1))
        img[max(cy - half, 0):cy + half + 1, max(cx - half, 0):cx + half + 1] = tr["square_colour"]
        dc = self._view(tr["disc"][step], v)
        dy, dx = dc[0] * (H - 1), dc[1] * (W - 1)
        img[(yy - dy) ** 2 + (xx - dx) ** 2 <= half ** 2] = tr["disc_colour"]
        out[v, j] = img
    return out

  @staticmethod
  def _view(p: np.ndarray, v: int) -> np.ndarray:
    """Camera v's (row, col) in [0, 1] of a scene point: identity, mirrored, transposed, ..."""
    y, x = p
    return np.array([(y, x), (y, 1 - x), (x, y), (1 - y, x)][v % 4])

  def fingerprint(self) -> str:
    return (f"synthetic:{self.seed}:{self.num_episodes}:{self.episode_len}:{self.action_dim}:"
            f"{self.low_dim_dim}")
