"""The closed-loop rollout loop (docs/evaluation.md, "Rollout protocol"), shared by every
environment and policy.

Several env instances run in lockstep so that one batched policy call serves all of them; the
batch size is always `len(envs)` (finished slots repeat their last observation), so a jitted
policy compiles once.

Per episode: reset (seeded, or to a given initial state), then repeatedly: query the policy
for an action sequence, execute its first `exec_steps` actions open loop, checking success after
every env step; the episode ends on success or after `max_steps` env steps.

Env protocol (duck-typed): `camera_keys`, `reset(seed=None, init_state=None) -> obs`,
`step(action) -> (obs, info)` with `info["success"]`; obs maps each camera key to an
(H, W, 3) uint8 image (plus optional low-dim keys) — what a robot client would send.
Policy protocol: `policy(observations, context) -> (B, n, A)` actions in environment units,
where `observations[b]` lists slot b's env observations since the previous call (the reset
observation first in an episode; empty for idle slots). Observation history, input/output
transforms and ensembling belong to the policy: `uwm_jax.evaluation.rollout_policies.LocalPolicy`
(in-process, through `uwm_jax.policies`) or `uwm_jax.serving.client.RemotePolicy` (a policy
server, the same transforms on the server side).
"""

import collections
import dataclasses
from typing import Any, Callable, List, Optional, Sequence

import numpy as np
from tqdm import tqdm



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


def video_frame(obs: dict, camera_keys: Sequence[str]) -> np.ndarray:
  """Views side by side: (H, V*W, 3) uint8."""
  return np.concatenate([np.asarray(obs[k], np.uint8) for k in camera_keys], axis=1)


class _Slot:

  def __init__(self, env):
    self.env = env
    self.pending: List[dict] = []  # observations the policy has not seen yet
    self.episode = -1
    self.steps = 0
    self.max_steps = 0
    self.frames = None

  def start(self, index: int, episode: Episode, max_steps: int, record: bool, camera_keys):
    obs = self.env.reset(seed=episode.seed, init_state=episode.init_state)
    self.pending = [obs]
    self.episode, self.steps = index, 0
    self.max_steps = episode.max_steps or max_steps
    self.frames = [video_frame(obs, camera_keys)] if record else None

  @property
  def active(self) -> bool:
    return self.episode >= 0


def run_rollouts(envs: Sequence[Any], policy: Callable, episodes: Sequence[Episode], *,
                 camera_keys: Sequence[str], exec_steps: int, max_steps: int,
                 num_videos: int = 0,
                 progress: bool = True, desc: str = "rollouts") -> RolloutResult:
  """Play `episodes` with `policy` on `envs` (lockstep, batched policy calls).

  Episodes are assigned to free env slots in order; the first `num_videos` episodes are
  recorded as frames (views `camera_keys` side by side). Returns per-episode success and
  length.
  """
  if not envs:
    raise ValueError("run_rollouts needs at least one environment.")
  if exec_steps < 1:
    raise ValueError(f"exec_steps must be >= 1, got {exec_steps}.")
  slots = [_Slot(env) for env in envs]
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
    observations = []
    for slot in slots:
      observations.append(slot.pending if slot.active else [])
      slot.pending = []
    actions = np.asarray(policy(observations, context))
    if actions.ndim != 3 or actions.shape[0] != len(slots):
      raise ValueError(f"Policy returned actions of shape {actions.shape}; expected "
                       f"(num_envs={len(slots)}, H_a, A).")
    for slot, chunk in zip(slots, actions):
      if not slot.active:
        continue
      for action in chunk[:exec_steps]:
        obs, info = slot.env.step(action)
        slot.steps += 1
        slot.pending.append(obs)
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
