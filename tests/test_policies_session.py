"""The policy session shared by rollouts and the server: temporal ensembling, the padded
history rule, the executed horizon (no model, no environment)."""

import numpy as np
import pytest

from uwm_jax.policies import tabletop
from uwm_jax.policies.session import ChunkEnsemble, ObservationHistory, PolicySession
from uwm_jax.policies.transforms import Frame, InvalidObservation
from tests.helpers import tiny_push_config


def test_temporal_ensemble_averages_every_prediction_for_a_step():
  ensemble = ChunkEnsemble(decay=0.0)
  # Call k predicts the constant k for its 4 steps; step s sees calls max(0, s - 3) .. s.
  outs = [ensemble(step, np.full((4, 1), float(step), np.float32)) for step in range(6)]
  for step, out in enumerate(outs):
    np.testing.assert_allclose(out[0, 0], np.mean(np.arange(max(0, step - 3), step + 1)))
    np.testing.assert_allclose(out[3, 0], float(step))  # only its own prediction reaches it
  ensemble.reset()  # a new episode forgets the old chunks
  np.testing.assert_allclose(ensemble(0, np.full((4, 1), 6.0, np.float32)), 6.0)


def test_temporal_ensemble_decay_weighs_older_predictions_more():
  ensemble = ChunkEnsemble(decay=1.0)
  ensemble(0, np.zeros((4, 1), np.float32))
  out = ensemble(1, np.ones((4, 1), np.float32))
  w = np.exp(-np.arange(2.0))  # predictions 0 (older) and 1 for step 1
  np.testing.assert_allclose(out[0, 0], (w @ np.array([0.0, 1.0])) / w.sum(), rtol=1e-6)


def test_history_pads_the_first_observation_and_then_slides():
  history = ObservationHistory(3)
  frame = lambda v: Frame(np.full((1, 2, 2, 3), v, np.uint8), np.full(2, v, np.float32))
  history.push(frame(1))
  images, low = history.stacked()
  assert images.shape == (1, 3, 2, 2, 3) and images[0, :, 0, 0, 0].tolist() == [1, 1, 1]
  history.push(frame(2))
  history.push(frame(3))
  history.push(frame(4))
  images, low = history.stacked()
  assert images[0, :, 0, 0, 0].tolist() == [2, 3, 4] and low[:, 0].tolist() == [2, 3, 4]


def _obs(size=32, pusher=(0.1, -0.1)):
  return {"front_rgb": np.zeros((size, size, 3), np.uint8),
          "top_rgb": np.full((size, size, 3), 255, np.uint8),
          "pusher_pos": np.asarray(pusher, np.float32)}


def test_session_transforms_normalises_and_returns_the_executed_horizon():
  config = tiny_push_config()
  config.model.low_dim_dim = 2
  stats = {"action": {"min": [0.0, -2.0], "max": [2.0, 2.0]},
           "low_dim": {"min": [-0.2, -0.2], "max": [0.2, 0.2]}}
  session = PolicySession(tabletop.make(config, stats), 2, exec_steps=3)
  frame = session.observe(_obs())
  np.testing.assert_allclose(frame.low_dim, [0.5, -0.5], rtol=1e-6)
  inputs = session.model_inputs()
  assert inputs["obs"].shape == (2, 2, 32, 32, 3) and inputs["low_dim"].shape == (2, 2)
  assert session.next_key() == (0, 0) and session.next_key() == (0, 1)
  actions = session.actions(np.zeros((4, 2), np.float32))  # normalised 0 = the range's middle
  np.testing.assert_allclose(actions, [[1.0, 0.0]] * 3)
  assert session.step == 3
  # Another size is resized; a bad observation leaves the history untouched.
  assert session.observe(_obs(size=64)).images.shape == (2, 32, 32, 3)
  with pytest.raises(InvalidObservation, match="pusher_pos"):
    session.observe(dict(_obs(), pusher_pos=np.array([np.nan, 0.0])))
  with pytest.raises(InvalidObservation, match="missing key 'top_rgb'"):
    session.observe({"front_rgb": _obs()["front_rgb"], "pusher_pos": np.zeros(2)})
  assert len(session.history) == 2
  session.reset(seed=9)
  assert len(session.history) == 0 and session.next_key() == (9, 0) and session.step == 0
