"""Policies for the rollout loop (`uwm_jax.evaluation.rollout`).

Each is a callable `policy(observations, context) -> (B, n, A)` numpy actions in environment
units; `observations[b]` lists slot b's env observations since the previous call.

  LocalPolicy       a UWM checkpoint in this process: one `uwm_jax.policies.PolicySession` per
                    slot (the robot's input/output transforms, padded history, temporal
                    ensembling, executed horizon) and one batch of sampler calls per step — the
                    same path as the policy server (`uwm_jax.serving`), which runs the same
                    sessions per connection. Marginal policy, or inverse dynamics towards the
                    goal frames `goal_fn` gives.
  ReplayPolicy      recorded action sequences, chunk by chunk (tests, trajectory replay)
  RandomPolicy      uniform actions in [low, high] (the chance-level baseline)
"""

from typing import Callable, Optional, Sequence

import numpy as np

from uwm_jax import sampling
from uwm_jax.data import normalization
from uwm_jax.evaluation.rollout import RolloutContext
from uwm_jax.policies.sampler import BatchedSampler, default_parallel_calls, part_size
from uwm_jax.policies.session import PolicySession, episode_seed


class LocalPolicy:
  """A checkpoint sampled in this process for `num_slots` env slots (see the module docstring).

  mode "policy": the marginal action distribution given the observation history.
  mode "inverse_dynamics": actions that lead from the history to the goal frames that
    `goal_fn(context) -> (B, V, T_o, H, W, 3) uint8` returns (trajectory tracking).
  Each episode's samples come from the RNG stream `episode_seed(seed, episode index)`.
  """

  def __init__(self, model, diffusion_cfg, params, frozen, transforms, *, num_slots: int,
               seed: int = 0, mode: str = sampling.POLICY,
               goal_fn: Optional[Callable[[RolloutContext], np.ndarray]] = None,
               temporal_ensemble: bool = False, ensemble_decay: float = 0.01,
               exec_steps: int = 0):
    if mode not in (sampling.POLICY, sampling.INVERSE_DYNAMICS):
      raise ValueError(f"LocalPolicy samples actions with mode 'policy' or "
                       f"'inverse_dynamics', not {mode!r}.")
    if mode == sampling.INVERSE_DYNAMICS and goal_fn is None:
      raise ValueError("Inverse-dynamics control needs goal_fn (the goal frames per slot).")
    self.mode, self.goal_fn, self.seed = mode, goal_fn, int(seed)
    self.sessions = [PolicySession(transforms, model.dims.num_obs_frames,
                                   temporal_ensemble=temporal_ensemble,
                                   ensemble_decay=ensemble_decay, exec_steps=exec_steps)
                     for _ in range(num_slots)]
    # The rollout loop's batch is at most the number of slots, run as `calls` concurrent calls
    # (policies.sampler.default_parallel_calls) of one compiled size; a policy server with
    # --max_batch=num_slots splits a full batch the same way, so served rollouts see the same
    # executables.
    calls = default_parallel_calls(num_slots)
    self.sampler = BatchedSampler(model, diffusion_cfg, params, frozen, mode,
                                  (part_size(num_slots, calls),), parallel_calls=calls)

  def __call__(self, observations: Sequence[Sequence[dict]],
               context: RolloutContext) -> np.ndarray:
    goals = self.goal_fn(context) if self.goal_fn is not None else None
    active = [b for b in range(len(observations)) if context.active[b]]
    requests, keys = [], []
    for b in active:
      session = self.sessions[b]
      if context.step[b] == 0:
        session.reset(episode_seed(self.seed, context.episode_index[b]))
      for obs in observations[b]:
        session.observe(obs)
      request = session.model_inputs()
      if goals is not None:
        request["next_obs"] = goals[b]
      requests.append(request)
      keys.append(session.next_key())
    answers = self.sampler(requests, keys)
    chunks = {b: self.sessions[b].actions(a["action"]) for b, a in zip(active, answers)}
    shape = next(iter(chunks.values())).shape
    return np.stack([chunks.get(b, np.zeros(shape, np.float32))
                     for b in range(len(observations))])


class ReplayPolicy:
  """Plays back `actions[episode]` ((T, A) each) from the slot's current step; zero-padded."""

  def __init__(self, actions: Sequence[np.ndarray], horizon: int):
    self.actions = [np.asarray(a, np.float32) for a in actions]
    self.horizon = horizon

  def __call__(self, observations, context: RolloutContext) -> np.ndarray:
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

  def __call__(self, observations, context: RolloutContext) -> np.ndarray:
    B = len(observations)
    return self.rng.uniform(self.low, self.high, (B,) + self.shape).astype(np.float32)
