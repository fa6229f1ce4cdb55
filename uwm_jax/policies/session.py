"""One stream of observations: a rollout slot in-process, or a client connection of the server.

History rule (the same in both): the model sees the last T_o observations pushed into the
stream; the first observation after a reset fills all T_o places (rollouts pad with the reset
observation, and a new client's first request is padded the same way). Every observation a
client sends is pushed, also those sent only to be remembered (`observe`), so a client that
executes n > 1 actions between queries keeps consecutive frames by sending the skipped ones.

Randomness: request i after a reset with seed s samples with key fold_in(PRNGKey(s), i): a
request's answer depends only on the stream's seed and how many requests it made, never on
which other requests shared its batch. An evaluation episode's stream has the seed
`episode_seed(seed, episode index)`, in-process or through a policy server.

Temporal ensembling (ACT, Zhao et al. 2023) and the executed horizon: every chunk (H_a, A) is
remembered by the step it starts at (the stream's step advances by the actions returned); the
action for step s + j is the weighted mean of every remembered prediction for that step
(weight exp(-decay * i) for the i-th oldest). `exec_steps` > 0 returns only the first
`exec_steps` actions of a chunk (the executed horizon).
"""

import collections
from typing import List, Optional, Tuple

import numpy as np

from uwm_jax.policies.transforms import Frame, RobotTransforms


def episode_seed(seed: int, episode_index: int) -> int:
  """The RNG stream of an evaluation episode (a served rollout sends it with `reset`)."""
  return int(seed) + int(episode_index)


class ObservationHistory:
  """The last `num_frames` frames; the first push after `clear` fills every place."""

  def __init__(self, num_frames: int):
    self.frames = collections.deque(maxlen=int(num_frames))

  def clear(self) -> None:
    self.frames.clear()

  def push(self, frame: Frame) -> None:
    for _ in range(1 if self.frames else self.frames.maxlen):
      self.frames.append(frame)

  def __len__(self) -> int:
    return len(self.frames)

  def stacked(self) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """-> images (V, T_o, H, W, 3) uint8, low_dim (T_o, D) float32 or None."""
    if not self.frames:
      raise ValueError("No observation in the history yet.")
    images = np.stack([f.images for f in self.frames], axis=1)
    if self.frames[0].low_dim is None:
      return images, None
    return images, np.stack([f.low_dim for f in self.frames])


class ChunkEnsemble:
  """Temporal ensembling of the chunks of one stream (see the module docstring)."""

  def __init__(self, decay: float = 0.01):
    self.decay = float(decay)
    self.remembered: List[Tuple[int, np.ndarray]] = []

  def reset(self) -> None:
    self.remembered = []

  def __call__(self, step: int, chunk: np.ndarray) -> np.ndarray:
    """chunk (H, A) predicted at `step` -> (H, A) ensembled."""
    chunk = np.asarray(chunk)
    H = chunk.shape[0]
    self.remembered = [(s, c) for s, c in self.remembered if s + H > step]
    self.remembered.append((int(step), chunk))
    out = np.empty_like(chunk)
    for j in range(H):
      preds = [c[step + j - s] for s, c in self.remembered if step + j - s < H]
      weights = np.exp(-self.decay * np.arange(len(preds)))
      out[j] = np.tensordot(weights / weights.sum(), np.stack(preds), axes=1)
    return out


class PolicySession:
  """History, RNG stream, ensemble and step clock of one stream; see the module docstring."""

  def __init__(self, transforms: RobotTransforms, num_obs_frames: int, *, seed: int = 0,
               temporal_ensemble: bool = False, ensemble_decay: float = 0.01,
               exec_steps: int = 0):
    self.transforms = transforms
    self.history = ObservationHistory(num_obs_frames)
    self.ensemble = ChunkEnsemble(ensemble_decay) if temporal_ensemble else None
    self.exec_steps = int(exec_steps)
    self.seed = int(seed)
    self.requests = 0  # sampler requests since the reset (the RNG counter)
    self.step = 0  # robot steps since the reset (actions returned)

  def reset(self, seed: Optional[int] = None) -> None:
    self.history.clear()
    if self.ensemble is not None:
      self.ensemble.reset()
    if seed is not None:
      self.seed = int(seed)
    self.requests = 0
    self.step = 0

  def observe(self, obs) -> Frame:
    """Transform one observation dict and push it (history untouched when it is invalid)."""
    frame = self.transforms.inputs(obs)
    self.history.push(frame)
    return frame

  def model_inputs(self) -> dict:
    """The sampler inputs of the current history: obs (V, T_o, H, W, 3) [+ low_dim]."""
    images, low_dim = self.history.stacked()
    out = {"obs": images}
    if low_dim is not None:
      out["low_dim"] = low_dim
    return out

  def next_key(self) -> Tuple[int, int]:
    """(seed, counter) of the next request's RNG key; advances the counter."""
    key = (self.seed, self.requests)
    self.requests += 1
    return key

  def actions(self, chunk: np.ndarray) -> np.ndarray:
    """Normalised model chunk (H_a, A) -> the robot actions to execute (n, A_robot)."""
    chunk = np.asarray(chunk, np.float32)
    if self.ensemble is not None:
      chunk = self.ensemble(self.step, chunk)
    if self.exec_steps:
      chunk = chunk[:self.exec_steps]
    self.step += len(chunk)
    return self.transforms.outputs(chunk)
