"""The closed-loop rollout loop (docs/evaluation.md, "Rollout protocol"), shared by every
environment and policy.

Several env instances run in lockstep so that one batched policy call serves all of them; the
batch size is always `len(envs)` (finished slots repeat their last observation), so a jitted
policy compiles once.

Per episode: reset (seeded, or to a given initial state), an observation history of the last
T_o observations padded with the reset observation, then repeatedly: query the policy for an
action chunk (H_a, A), execute its first `exec_steps` actions open loop, checking success
after every env step; the episode ends on success or after `max_steps` env steps.

Env protocol (duck-typed): `camera_keys`, `reset(seed=None, init_state=None) -> obs`,
`step(action) -> (obs, info)` with `info["success"]`; obs maps each camera key to an
(H, W, 3) uint8 image (plus optional low-dim keys).
Policy protocol: `policy(obs_batch: dict, context: RolloutContext) -> (B, H_a, A)` actions in
environment units, where obs_batch = {"obs": (B, V, T_o, H, W, 3) uint8 [, "low_dim":
(B, T_o, D)]} (the `uwm_jax.batch` keys).
"""

import collections
import dataclasses
from typing import Any, Callable, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from uwm_jax import batch as B_


@dataclasses.dataclass(frozen=True)
class Episode:
  """What to reset to: a seed, or an explicit initial state (LIBERO init state, a layout)."""
  seed: Optional[int] = None
  init_state: Any = None
  max_steps: Optional[int] = None  # overrides the loop's max_steps (trajectory tracking)


@dataclasses.dataclass
class RolloutContext:
  """Per-slot facts a policy may use: which episode each slot plays and its env step count."""
  episode_index: np.ndarray  # (B,) int, -1 for idle slots
  step: np.ndarray  # (B,) int env steps taken so far in that episode
  active: np.ndarray  # (B,) bool


@dataclasses.dataclass
class EpisodeResult:
  index: int
  success: bool
  length: int
  frames: Optional[List[np.ndarray]] = None  # video frames (H, V*W, 3) uint8 when recorded


@dataclasses.dataclass
class RolloutResult:
  episodes: List[EpisodeResult]

  @property
  def success_rate(self) -> float:
    return float(np.mean([e.success for e in self.episodes])) if self.episodes else 0.0

  @property
  def mean_length(self) -> float:
    return float(np.mean([e.length for e in self.episodes])) if self.episodes else 0.0

  def metrics(self, prefix: str = "rollout") -> dict:
    return {f"{prefix}/success_rate": self.success_rate,
            f"{prefix}/mean_length": self.mean_length,
            f"{prefix}/num_episodes": len(self.episodes)}


def seeded_episodes(num_episodes: int, first_seed: int = 0) -> List[Episode]:
  return [Episode(seed=first_seed + i) for i in range(num_episodes)]


def stack_views(obs: dict, camera_keys: Sequence[str]) -> np.ndarray:
  """obs dict -> (V, H, W, 3) uint8 in `camera_keys` order (names the missing key)."""
  missing = [k for k in camera_keys if k not in obs]
  if missing:
    raise KeyError(f"Observation has no camera {missing}; it has {sorted(obs)}.")
  return np.stack([np.asarray(obs[k], np.uint8) for k in camera_keys])


def video_frame(obs: dict, camera_keys: Sequence[str]) -> np.ndarray:
  """Views side by side: (H, V*W, 3) uint8."""
  return np.concatenate([np.asarray(obs[k], np.uint8) for k in camera_keys], axis=1)


class _Slot:

  def __init__(self, env, num_obs_frames: int):
    self.env = env
    self.history = collections.deque(maxlen=num_obs_frames)
    self.episode = -1
    self.steps = 0
    self.max_steps = 0
    self.frames = None

  def start(self, index: int, episode: Episode, max_steps: int, record: bool, camera_keys):
    obs = self.env.reset(seed=episode.seed, init_state=episode.init_state)
    self.history.clear()
    for _ in range(self.history.maxlen):  # pad the history with the reset observation
      self.history.append(obs)
    self.episode, self.steps = index, 0
    self.max_steps = episode.max_steps or max_steps
    self.frames = [video_frame(obs, camera_keys)] if record else None

  @property
  def active(self) -> bool:
    return self.episode >= 0


def _obs_batch(slots: Sequence[_Slot], camera_keys, low_dim_keys) -> dict:
  """(B, V, T_o, H, W, 3) observations [+ (B, T_o, D) low-dim]; slots that never started an
  episode repeat another slot's history (the batch size stays len(slots))."""
  filler = next(s.history for s in slots if s.history)
  histories = [s.history if s.history else filler for s in slots]
  obs = np.stack([np.stack([stack_views(o, camera_keys) for o in h], axis=1)
                  for h in histories])
  out = {B_.OBS: obs}
  if low_dim_keys:
    out[B_.LOW_DIM] = np.stack([
        np.stack([np.concatenate([np.ravel(o[k]) for k in low_dim_keys]) for o in h])
        for h in histories]).astype(np.float32)
  return out


def run_rollouts(envs: Sequence[Any], policy: Callable, episodes: Sequence[Episode], *,
                 camera_keys: Sequence[str], num_obs_frames: int, exec_steps: int,
                 max_steps: int, low_dim_keys: Sequence[str] = (), num_videos: int = 0,
                 progress: bool = True, desc: str = "rollouts") -> RolloutResult:
  """Play `episodes` with `policy` on `envs` (lockstep, batched policy calls).

  Episodes are assigned to free env slots in order; the first `num_videos` episodes are
  recorded as frames (views side by side). Returns per-episode success and length.
  """
  if not envs:
    raise ValueError("run_rollouts needs at least one environment.")
  if exec_steps < 1:
    raise ValueError(f"exec_steps must be >= 1, got {exec_steps}.")
  slots = [_Slot(env, num_obs_frames) for env in envs]
  pending = collections.deque(enumerate(episodes))
  results = {}
  bar = tqdm(total=len(episodes), desc=desc, disable=not progress, leave=False)

  def fill():
    for slot in slots:
      if not slot.active and pending:
        index, episode = pending.popleft()
        slot.start(index, episode, max_steps, index < num_videos, camera_keys)

  def finish(slot, success):
    results[slot.episode] = EpisodeResult(slot.episode, bool(success), slot.steps, slot.frames)
    slot.episode = -1
    bar.update(1)

  fill()
  while any(s.active for s in slots):
    context = RolloutContext(
        episode_index=np.array([s.episode for s in slots]),
        step=np.array([s.steps for s in slots]),
        active=np.array([s.active for s in slots]))
    actions = np.asarray(policy(_obs_batch(slots, camera_keys, low_dim_keys), context))
    if actions.ndim != 3 or actions.shape[0] != len(slots):
      raise ValueError(f"Policy returned actions of shape {actions.shape}; expected "
                       f"(num_envs={len(slots)}, H_a, A).")
    for slot, chunk in zip(slots, actions):
      if not slot.active:
        continue
      for action in chunk[:exec_steps]:
        obs, info = slot.env.step(action)
        slot.steps += 1
        slot.history.append(obs)
        if slot.frames is not None:
          slot.frames.append(video_frame(obs, camera_keys))
        if info.get("success", False):
          finish(slot, True)
          break
        if slot.steps >= slot.max_steps:
          finish(slot, False)
          break
    fill()
  bar.close()
  return RolloutResult([results[i] for i in range(len(episodes))])
