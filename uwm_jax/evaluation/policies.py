"""Policies for the rollout loop (`uwm_jax.evaluation.rollout`).

Each is a callable `policy(obs_batch, context) -> (B, H_a, A)` numpy actions in environment
units (de-normalised).

  DiffusionPolicy   a UWM checkpoint through `uwm_jax.sampling.make_sampler`: the marginal
                    policy, or inverse dynamics towards goal frames given by `goal_fn`
  ReplayPolicy      recorded action sequences, chunk by chunk (tests, trajectory replay)
  RandomPolicy      uniform actions in [low, high] (the chance-level baseline)
  TemporalEnsemble  wraps a chunk policy: each executed action is the weighted mean of every
                    chunk's prediction for that step (ACT's temporal ensembling)
"""

from typing import Callable, Optional, Sequence

import jax
import numpy as np

from uwm_jax import batch as B_
from uwm_jax import sampling
from uwm_jax.data import normalization
from uwm_jax.evaluation.rollout import RolloutContext


def _stats_entry(dataset_stats: Optional[dict], key: str) -> Optional[dict]:
  if not dataset_stats:
    return None
  return dataset_stats.get(key)


class DiffusionPolicy:
  """Samples action chunks from a UWM (or DP) model.

  mode "policy": the marginal action distribution given the observation history.
  mode "inverse_dynamics": actions that lead from the history to the goal frames that
    `goal_fn(context) -> (B, V, T_o, H, W, 3) uint8` returns (trajectory tracking).
  Low-dim observations are normalised and actions de-normalised with the checkpoint's
  dataset statistics (`uwm_jax.data.normalization`); no statistics = identity.
  """

  def __init__(self, model, diffusion_cfg, params, frozen, dataset_stats: Optional[dict], *,
               seed: int = 0, mode: str = sampling.POLICY,
               goal_fn: Optional[Callable[[RolloutContext], np.ndarray]] = None):
    if mode not in (sampling.POLICY, sampling.INVERSE_DYNAMICS):
      raise ValueError(f"DiffusionPolicy samples actions with mode 'policy' or "
                       f"'inverse_dynamics', not {mode!r}.")
    if mode == sampling.INVERSE_DYNAMICS and goal_fn is None:
      raise ValueError("Inverse-dynamics control needs goal_fn (the goal frames per slot).")
    self.model = model
    self.mode = mode
    self.goal_fn = goal_fn
    self.params, self.frozen = params, frozen
    self.action_stats = _stats_entry(dataset_stats, "action")
    self.low_dim_stats = _stats_entry(dataset_stats, "low_dim")
    self._sample = sampling.make_sampler(model, diffusion_cfg, mode)
    self._rng = jax.random.PRNGKey(seed)

  def __call__(self, obs_batch: dict, context: Optional[RolloutContext] = None) -> np.ndarray:
    batch = {B_.OBS: obs_batch[B_.OBS]}
    if B_.LOW_DIM in obs_batch:
      low_dim = obs_batch[B_.LOW_DIM]
      if self.low_dim_stats is not None:
        low_dim = normalization.normalize(low_dim, self.low_dim_stats)
      batch[B_.LOW_DIM] = np.asarray(low_dim, np.float32)
    if self.mode == sampling.INVERSE_DYNAMICS:
      batch[B_.NEXT_OBS] = self.goal_fn(context)
    self._rng, key = jax.random.split(self._rng)
    actions = np.asarray(self._sample(self.params, self.frozen, batch, key)["action"])
    if self.action_stats is not None:
      actions = np.asarray(normalization.denormalize(actions, self.action_stats))
    return actions


class ReplayPolicy:
  """Plays back `actions[episode]` ((T, A) each) from the slot's current step; zero-padded."""

  def __init__(self, actions: Sequence[np.ndarray], horizon: int):
    self.actions = [np.asarray(a, np.float32) for a in actions]
    self.horizon = horizon

  def __call__(self, obs_batch: dict, context: RolloutContext) -> np.ndarray:
    A = self.actions[0].shape[-1]
    out = np.zeros((len(context.episode_index), self.horizon, A), np.float32)
    for b, (episode, step) in enumerate(zip(context.episode_index, context.step)):
      if episode >= 0:
        chunk = self.actions[episode][step:step + self.horizon]
        out[b, :len(chunk)] = chunk
    return out


class RandomPolicy:
  """Uniform random actions in [low, high] per dimension."""

  def __init__(self, action_dim: int, horizon: int, *, low=-1.0, high=1.0, seed: int = 0):
    self.shape = (horizon, action_dim)
    self.low, self.high = low, high
    self.rng = np.random.default_rng(seed)

  def __call__(self, obs_batch: dict, context: RolloutContext) -> np.ndarray:
    B = obs_batch[B_.OBS].shape[0]
    return self.rng.uniform(self.low, self.high, (B,) + self.shape).astype(np.float32)


class TemporalEnsemble:
  """Temporal ensembling of action chunks (ACT, Zhao et al. 2023) around any chunk policy.

  Every call's chunk (B, H_a, A) is remembered per slot by the env step it starts at; the
  action returned for step s + j is the weighted mean of every remembered prediction for that
  step, weight exp(-decay * i) for the i-th oldest (so older predictions weigh a little more
  with decay > 0). A slot's memory is dropped when it starts another episode. Use it with
  small `exec_steps` (1: every executed action is an ensemble of up to H_a predictions).
  """

  def __init__(self, policy: Callable, decay: float = 0.01):
    self.policy = policy
    self.decay = float(decay)
    self._memory = {}  # slot -> (episode index, [(start step, (H_a, A) chunk), ...])

  def __call__(self, obs_batch: dict, context: RolloutContext) -> np.ndarray:
    chunks = np.asarray(self.policy(obs_batch, context))
    out = chunks.copy()
    H = chunks.shape[1]
    for b, (episode, step) in enumerate(zip(context.episode_index, context.step)):
      if episode < 0:
        continue
      owner, remembered = self._memory.get(b, (None, []))
      if owner != episode:
        remembered = []
      remembered = [(s, c) for s, c in remembered if s + H > step] + [(int(step), chunks[b])]
      self._memory[b] = (episode, remembered)
      for j in range(H):
        preds = [c[step + j - s] for s, c in remembered if step + j - s < H]
        weights = np.exp(-self.decay * np.arange(len(preds)))
        out[b, j] = np.tensordot(weights / weights.sum(), np.stack(preds), axes=1)
    return out
