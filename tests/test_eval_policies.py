"""Policy wrappers of the rollout loop (no environment needed)."""

import numpy as np

from uwm_jax import batch as B_
from uwm_jax import sampling
from uwm_jax.data import normalization
from uwm_jax.evaluation.policies import DiffusionPolicy, TemporalEnsemble
from uwm_jax.evaluation.rollout import RolloutContext


class _CountingPolicy:
  """Call k returns chunks whose every action is k (2 slots, H_a = 4, A = 1)."""

  def __init__(self):
    self.calls = 0

  def __call__(self, obs_batch, context):
    out = np.full((2, 4, 1), float(self.calls), np.float32)
    self.calls += 1
    return out


def _context(episodes, steps):
  episodes = np.asarray(episodes)
  return RolloutContext(episode_index=episodes, step=np.asarray(steps), active=episodes >= 0)


def test_diffusion_policy_normalises_low_dim_and_denormalises_actions(monkeypatch):
  """The model sees low-dim observations in [-1, 1] and returns normalised actions; the
  environment gets actions in its own units (the checkpoint's statistics)."""
  seen = {}

  def make_sampler(model, diffusion_cfg, mode):
    def sample(params, frozen, batch, key):
      seen.update(batch)
      return {"action": np.tile(np.float32([0.5, -1.0]), (2, 3, 1))}  # (B, H_a, A)
    return sample

  monkeypatch.setattr(sampling, "make_sampler", make_sampler)
  stats = {"action": normalization.minmax_entry([0.0, -10.0], [4.0, 10.0]),
           "low_dim": normalization.minmax_entry([-2.0, 0.0], [2.0, 1.0])}
  obs = {B_.OBS: np.zeros((2, 1, 2, 4, 4, 3), np.uint8),
         B_.LOW_DIM: np.float32([[[2.0, 1.0], [0.0, 0.5]], [[-2.0, 0.0], [1.0, 0.25]]])}
  actions = DiffusionPolicy(None, None, None, None, stats)(obs)
  np.testing.assert_allclose(seen[B_.LOW_DIM], [[[1, 1], [0, 0]], [[-1, -1], [0.5, -0.5]]])
  np.testing.assert_allclose(actions, np.tile(np.float32([3.0, -10.0]), (2, 3, 1)))
  # Without statistics (LIBERO: actions used as stored) both pass through unchanged.
  actions = DiffusionPolicy(None, None, None, None, None)(obs)
  np.testing.assert_allclose(seen[B_.LOW_DIM], obs[B_.LOW_DIM])
  np.testing.assert_allclose(actions, np.tile(np.float32([0.5, -1.0]), (2, 3, 1)))


def test_temporal_ensemble_averages_every_prediction_for_a_step():
  obs = {B_.OBS: np.zeros((2, 1, 1, 2, 2, 3), np.uint8)}
  policy = TemporalEnsemble(_CountingPolicy(), decay=0.0)
  outs = [policy(obs, _context([0, -1], [step, 0])) for step in range(6)]
  # Step s sees the chunks of calls max(0, s - 3) .. s, each predicting the value of its call.
  for step, out in enumerate(outs):
    np.testing.assert_allclose(out[0, 0, 0], np.mean(np.arange(max(0, step - 3), step + 1)))
    # Later steps of the chunk average the predictions that reach them.
    np.testing.assert_allclose(out[0, 3, 0], float(step))
  # The idle slot is passed through untouched.
  np.testing.assert_allclose(outs[5][1], 5.0)
  # A new episode in the slot forgets the old chunks.
  fresh = policy(obs, _context([1, -1], [0, 0]))
  np.testing.assert_allclose(fresh[0], 6.0)


def test_temporal_ensemble_decay_weighs_older_predictions_more():
  obs = {B_.OBS: np.zeros((2, 1, 1, 2, 2, 3), np.uint8)}
  policy = TemporalEnsemble(_CountingPolicy(), decay=1.0)
  policy(obs, _context([0, 0], [0, 0]))
  out = policy(obs, _context([0, 0], [1, 1]))
  w = np.exp(-np.arange(2.0))  # predictions 0 (older) and 1 for step 1
  np.testing.assert_allclose(out[0, 0, 0], (w @ np.array([0.0, 1.0])) / w.sum(), rtol=1e-6)
