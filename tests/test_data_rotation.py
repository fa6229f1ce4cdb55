"""One Euler convention for DROID actions: encode, decode for deployment, round trip."""

import numpy as np
import pytest

from uwm_jax.data import droid_actions, rotation


def _rx(a):
  c, s = np.cos(a), np.sin(a)
  return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(b):
  c, s = np.cos(b), np.sin(b)
  return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(g):
  c, s = np.cos(g), np.sin(g)
  return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def test_matrix_is_rx_ry_rz_and_rot6d_is_its_first_two_rows():
  e = np.array([0.3, -0.2, 0.25])
  R = _rx(e[0]) @ _ry(e[1]) @ _rz(e[2])
  np.testing.assert_allclose(rotation.euler_to_matrix(e), R, atol=1e-12)
  np.testing.assert_allclose(rotation.euler_to_rot6d(e), R[:2].reshape(6), atol=1e-12)


def test_round_trip_is_the_identity():
  rng = np.random.default_rng(0)
  e = rng.uniform([-np.pi, -np.pi / 2 + 1e-3, -np.pi], [np.pi, np.pi / 2 - 1e-3, np.pi],
                  size=(1000, 3))
  np.testing.assert_allclose(rotation.rot6d_to_euler(rotation.euler_to_rot6d(e)), e, atol=1e-9)
  # The example the reference's mixed conventions get wrong (docs/data.md "Action encodings").
  e0 = np.array([0.3, -0.2, 0.25])
  np.testing.assert_allclose(rotation.rot6d_to_euler(rotation.euler_to_rot6d(e0)), e0,
                             atol=1e-12)


def test_decoding_orthonormalises_a_perturbed_rot6d():
  rng = np.random.default_rng(1)
  e = rng.uniform(-1, 1, size=(50, 3))
  r6 = rotation.euler_to_rot6d(e) + 1e-3 * rng.standard_normal((50, 6))
  R = rotation.rot6d_to_matrix(r6)
  np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape),
                             atol=1e-9)
  np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-9)
  assert np.abs(rotation.matrix_to_euler(R) - e).max() < 1e-2


def test_gimbal_lock_still_reproduces_the_rotation():
  e = np.array([[0.4, np.pi / 2, 0.3], [0.1, -np.pi / 2, -0.7]])
  back = rotation.rot6d_to_euler(rotation.euler_to_rot6d(e))
  np.testing.assert_allclose(rotation.euler_to_matrix(back), rotation.euler_to_matrix(e),
                             atol=1e-7)


def test_matches_scipy_upper_case_xyz():
  transform = pytest.importorskip("scipy.spatial.transform")
  e = np.random.default_rng(2).uniform(-1.2, 1.2, size=(20, 3))
  R = transform.Rotation.from_euler("XYZ", e).as_matrix()
  np.testing.assert_allclose(rotation.euler_to_matrix(e), R, atol=1e-12)
  np.testing.assert_allclose(rotation.matrix_to_euler(R),
                             transform.Rotation.from_matrix(R).as_euler("XYZ"), atol=1e-9)


def test_droid_10d_action_round_trip():
  rng = np.random.default_rng(3)
  vel = np.concatenate([rng.uniform(-1, 1, (30, 3)), rng.uniform(-1.4, 1.4, (30, 3))], axis=1)
  grip = rng.uniform(0, 1, (30, 1))
  a10 = droid_actions.droid_action_10d(vel, grip)
  assert a10.shape == (30, 10) and a10.dtype == np.float32
  vel2, grip2 = droid_actions.droid_action_from_10d(a10)
  np.testing.assert_allclose(vel2, vel, atol=1e-5)
  np.testing.assert_allclose(grip2, grip, atol=1e-7)
