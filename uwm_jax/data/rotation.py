"""Euler angles <-> rotation matrix <-> 6-d rotation, with ONE Euler convention.

Convention (used for encoding the training data AND for decoding at deployment): intrinsic
x-y'-z'' rotations, R = Rx(a) @ Ry(b) @ Rz(c) for angles (a, b, c) — the reference's
conversion (PyTorch3D `euler_angles_to_matrix(..., "XYZ")`) and scipy's upper-case "XYZ"
(`Rotation.from_euler("XYZ", ...)`). The reference's deployment decodes with scipy's lower-case
"xyz" (extrinsic), which does not invert the encoding (docs/data.md, "Action encodings");
deployment must use
`rot6d_to_euler` below (or scipy "XYZ").

6-d rotation: the first two ROWS of R, flattened (r00 r01 r02 r10 r11 r12); decoding
Gram-Schmidts the two 3-vectors and stacks (b1, b2, b1 x b2) as rows.

Every function takes arrays with any leading batch axes; numpy only (host side).
"""

import numpy as np


def euler_to_matrix(euler: np.ndarray) -> np.ndarray:
  """(..., 3) angles (a, b, c) in radians -> (..., 3, 3) R = Rx(a) Ry(b) Rz(c)."""
  euler = np.asarray(euler, np.float64)
  a, b, c = euler[..., 0], euler[..., 1], euler[..., 2]
  ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
  one, zero = np.ones_like(a), np.zeros_like(a)
  rx = np.stack([one, zero, zero, zero, ca, -sa, zero, sa, ca], -1).reshape(a.shape + (3, 3))
  ry = np.stack([cb, zero, sb, zero, one, zero, -sb, zero, cb], -1).reshape(a.shape + (3, 3))
  rz = np.stack([cc, -sc, zero, sc, cc, zero, zero, zero, one], -1).reshape(a.shape + (3, 3))
  return rx @ ry @ rz


def matrix_to_euler(mat: np.ndarray) -> np.ndarray:
  """(..., 3, 3) rotation -> (..., 3) angles (a, b, c) with R = Rx(a) Ry(b) Rz(c).

  b in [-pi/2, pi/2]; a, c in (-pi, pi]. At gimbal lock (|b| = pi/2) c is set to 0.
  """
  mat = np.asarray(mat, np.float64)
  # R[0, 2] = sin b; R[1, 2] = -sin a cos b; R[2, 2] = cos a cos b;
  # R[0, 1] = -cos b sin c; R[0, 0] = cos b cos c.
  sb = np.clip(mat[..., 0, 2], -1.0, 1.0)
  b = np.arcsin(sb)
  lock = np.abs(sb) > 1 - 1e-9
  a = np.arctan2(-mat[..., 1, 2], mat[..., 2, 2])
  c = np.arctan2(-mat[..., 0, 1], mat[..., 0, 0])
  # Gimbal lock: only a + c (b = pi/2) or c - a (b = -pi/2) is determined:
  # R[1, 0] = sin(a + c) resp. sin(c - a), R[1, 1] = the cosine; take c = 0.
  a_lock = np.sign(sb) * np.arctan2(mat[..., 1, 0], mat[..., 1, 1])
  a = np.where(lock, a_lock, a)
  c = np.where(lock, 0.0, c)
  return np.stack([a, b, c], axis=-1)


def matrix_to_rot6d(mat: np.ndarray) -> np.ndarray:
  """(..., 3, 3) -> (..., 6): the first two rows, flattened."""
  mat = np.asarray(mat)
  return mat[..., :2, :].reshape(mat.shape[:-2] + (6,))


def rot6d_to_matrix(rot6d: np.ndarray) -> np.ndarray:
  """(..., 6) -> (..., 3, 3): Gram-Schmidt of the two rows, third row = b1 x b2."""
  rot6d = np.asarray(rot6d, np.float64)
  a1, a2 = rot6d[..., :3], rot6d[..., 3:]
  b1 = a1 / np.maximum(np.linalg.norm(a1, axis=-1, keepdims=True), 1e-12)
  a2 = a2 - np.sum(b1 * a2, axis=-1, keepdims=True) * b1
  b2 = a2 / np.maximum(np.linalg.norm(a2, axis=-1, keepdims=True), 1e-12)
  b3 = np.cross(b1, b2)
  return np.stack([b1, b2, b3], axis=-2)


def euler_to_rot6d(euler: np.ndarray) -> np.ndarray:
  """(..., 3) Euler (convention above) -> (..., 6)."""
  return matrix_to_rot6d(euler_to_matrix(euler))


def rot6d_to_euler(rot6d: np.ndarray) -> np.ndarray:
  """(..., 6) -> (..., 3) Euler (convention above): the inverse deployment uses."""
  return matrix_to_euler(rot6d_to_matrix(rot6d))
