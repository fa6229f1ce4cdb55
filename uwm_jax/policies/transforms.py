"""A robot's observation dict -> model inputs, and model actions -> the robot's actions.

`RobotTransforms` is what every per-robot module (`droid.py`, `libero.py`, `tabletop.py`)
builds from a checkpoint's config and dataset statistics; the evaluator's in-process rollouts
and the policy server both go through it, so the two cannot drift apart.

Input, one observation (one time step) -> `Frame`:
  images   (V, H, W, 3) uint8 in `model.camera_keys` order at the checkpoint's
           `model.image_shape`: each camera is read from the first of its accepted request keys
           that is present, brought to the training orientation (e.g. LIBERO's vertical flip)
           and resized (bilinear) when its size differs. The model itself then resizes and
           centre-crops as in training (`UnifiedWorldModel.transform`, eval mode).
  low_dim  (D,) float32 normalised with the statistics' "low_dim" entry (models with
           model.low_dim_dim > 0): the state fields concatenated in the training order
           (zero-padded to `low_dim_width` when the robot's state is narrower).
Output: normalised model actions (..., H_a, A) -> de-normalised with the "action" entry ->
the robot's decoder (identity, or DROID's 10-d -> 7-d) -> (..., H_a, A_robot) float32.
`encode_actions` is the inverse (robot actions -> normalised model actions). A world-model
query's own inputs: `action_chunk` (forward dynamics: the (H_a, A_robot) robot actions to
predict the outcome of) and `goal_frames` (inverse dynamics: one goal image, or T_o of them,
per camera).

Bad input raises `InvalidObservation` with a message that names the key and the problem.
"""

import dataclasses
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from uwm_jax.data import normalization
# The one resize of camera images (bilinear), shared with the LeRobot conversion.
from uwm_jax.data.array_record_format import resize_image

# Orientation fixes that bring a camera image to the training data's orientation.
NO_FLIP = ""
FLIP_VERTICAL = "vertical"  # image[::-1]
FLIP_HORIZONTAL = "horizontal"  # image[:, ::-1]


class InvalidObservation(ValueError):
  """A request's observation cannot be turned into model inputs (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Source:
  """One accepted request key of a camera or state field, and its orientation fix."""
  key: str
  flip: str = NO_FLIP


@dataclasses.dataclass
class Frame:
  """Model inputs of one time step."""
  images: np.ndarray  # (V, H, W, 3) uint8
  low_dim: Optional[np.ndarray] = None  # (D,) float32, normalised


def orient(image: np.ndarray, flip: str) -> np.ndarray:
  """(H, W, 3) -> the same image with `flip` applied (contiguous)."""
  if flip == FLIP_VERTICAL:
    image = image[::-1]
  elif flip == FLIP_HORIZONTAL:
    image = image[:, ::-1]
  elif flip != NO_FLIP:
    raise ValueError(f"Unknown flip {flip!r}.")
  return np.ascontiguousarray(image)


def _find(obs: Mapping, name: str, sources: Sequence[Source]) -> Tuple[Source, object]:
  for source in sources:
    if source.key in obs:
      return source, obs[source.key]
  keys = " or ".join(repr(s.key) for s in sources)
  raise InvalidObservation(f"missing key {keys} ({name}); the request has "
                           f"{sorted(map(str, obs))}")


def check_image(key: str, image) -> np.ndarray:
  """A camera image must be an (H, W, 3) uint8 array."""
  if not isinstance(image, np.ndarray):
    raise InvalidObservation(f"{key!r} must be an (H, W, 3) uint8 array, got "
                             f"{type(image).__name__}")
  if image.dtype != np.uint8:
    raise InvalidObservation(f"{key!r} must have dtype uint8, got {image.dtype}")
  if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape) == 0:
    raise InvalidObservation(f"{key!r} must have shape (H, W, 3), got {image.shape}")
  return image


def check_state(key: str, value, width: int) -> np.ndarray:
  """A state field: `width` finite numbers."""
  try:
    x = np.asarray(value, np.float64).reshape(-1)
  except (TypeError, ValueError):
    raise InvalidObservation(f"{key!r} must be numeric, got {type(value).__name__}") from None
  if x.shape != (width,):
    raise InvalidObservation(f"{key!r} must hold {width} numbers, got {x.size}")
  if not np.all(np.isfinite(x)):
    raise InvalidObservation(f"{key!r} holds NaN or inf: {x.tolist()}")
  return x


@dataclasses.dataclass(frozen=True)
class StateField:
  """A low-dim field: its accepted request keys and width (concatenated in field order)."""
  name: str
  sources: Tuple[Source, ...]
  width: int


@dataclasses.dataclass
class RobotTransforms:
  """Input/output transforms of one robot for one checkpoint (see the module docstring)."""
  camera_keys: Tuple[str, ...]  # model order (model.camera_keys)
  camera_sources: Dict[str, Tuple[Source, ...]]  # model camera key -> accepted request keys
  image_shape: Tuple[int, int]  # model.image_shape
  state_fields: Tuple[StateField, ...]  # () when the model uses no low-dim input
  action_stats: Optional[dict]  # statistics entries (None = identity)
  low_dim_stats: Optional[dict]
  robot_action_dim: int
  decode: Callable[[np.ndarray], np.ndarray] = lambda a: a  # (..., A) -> (..., A_robot)
  encode: Callable[[np.ndarray], np.ndarray] = lambda a: a  # inverse of decode
  low_dim_width: int = 0  # the state zero-padded to this width (0: as concatenated)

  def images(self, obs: Mapping) -> np.ndarray:
    """obs -> (V, H, W, 3) uint8 at image_shape, training orientation."""
    views = []
    for key in self.camera_keys:
      source, image = _find(obs, f"camera {key}", self.camera_sources[key])
      image = check_image(source.key, image)
      views.append(resize_image(orient(image, source.flip), self.image_shape))
    return np.stack(views)

  def low_dim(self, obs: Mapping) -> Optional[np.ndarray]:
    """obs -> (D,) float32 normalised state, or None without state fields."""
    if not self.state_fields:
      return None
    parts = []
    for field in self.state_fields:
      source, value = _find(obs, f"state {field.name}", field.sources)
      parts.append(check_state(source.key, value, field.width))
    x = np.concatenate(parts).astype(np.float32)
    if self.low_dim_width > len(x):
      x = np.pad(x, (0, self.low_dim_width - len(x)))
    if self.low_dim_stats is not None:
      x = np.asarray(normalization.normalize(x, self.low_dim_stats), np.float32)
    return x

  def inputs(self, obs: Mapping) -> Frame:
    """One observation dict -> model inputs (raises InvalidObservation)."""
    if not isinstance(obs, Mapping):
      raise InvalidObservation(f"an observation must be a dict, got {type(obs).__name__}")
    return Frame(self.images(obs), self.low_dim(obs))

  def outputs(self, actions: np.ndarray) -> np.ndarray:
    """Normalised model actions (..., A) -> robot actions (..., A_robot) float32."""
    a = np.asarray(actions, np.float32)
    if self.action_stats is not None:
      a = np.asarray(normalization.denormalize(a, self.action_stats), np.float32)
    return np.asarray(self.decode(a), np.float32)

  def encode_actions(self, actions) -> np.ndarray:
    """Robot actions (..., A_robot) -> normalised model actions (..., A) float32."""
    a = np.asarray(actions, np.float64)
    if a.ndim < 1 or a.shape[-1] != self.robot_action_dim:
      raise InvalidObservation(f"actions must have shape (H, {self.robot_action_dim}), got "
                               f"{a.shape}")
    if not np.all(np.isfinite(a)):
      raise InvalidObservation("actions hold NaN or inf")
    a = np.asarray(self.encode(a), np.float32)
    if self.action_stats is not None:
      a = np.asarray(normalization.normalize(a, self.action_stats), np.float32)
    return a

  def action_chunk(self, actions, shape: Tuple[int, int]) -> np.ndarray:
    """A forward-dynamics query's robot action chunk -> normalised model actions of `shape`,
    the model's (H_a, A)."""
    if actions is None:
      raise InvalidObservation("forward_dynamics needs 'actions': the (H_a, A) robot action "
                               "chunk")
    a = self.encode_actions(actions)
    if a.shape != tuple(shape):
      raise InvalidObservation(f"'actions' must have {shape[0]} rows (the model's action "
                               f"horizon), got shape {np.shape(actions)}")
    return a

  def goal_frames(self, goal, num_frames: int) -> np.ndarray:
    """An inverse-dynamics query's goal: {camera key: (H, W, 3) or (T_o, H, W, 3) uint8} ->
    (V, T_o, H, W, 3) at image_shape (one image per camera fills every time step)."""
    if not isinstance(goal, Mapping):
      raise InvalidObservation("inverse_dynamics needs 'goal': a dict of goal camera images")
    stacks = {k: np.asarray(v) for k, v in goal.items() if isinstance(v, np.ndarray)}
    frames = []
    for t in range(num_frames):
      frame = {k: (v[t] if v.ndim == 4 and len(v) == num_frames else v)
               for k, v in stacks.items()}
      frame.update({k: v for k, v in goal.items() if k not in stacks})
      frames.append(self.images(frame))
    return np.stack(frames, axis=1)

  def describe(self) -> dict:
    """JSON-able summary for the server's metadata."""
    return {"camera_keys": list(self.camera_keys),
            "request_camera_keys": {k: [s.key for s in v] for k, v in
                                    self.camera_sources.items()},
            "state_keys": {f.name: [s.key for s in f.sources] for f in self.state_fields},
            "image_size": list(self.image_shape),
            "action_dim": self.robot_action_dim}


def stats_entry(dataset_stats: Optional[Mapping], key: str) -> Optional[dict]:
  """One entry of a checkpoint's dataset statistics (None when absent: identity)."""
  if not dataset_stats:
    return None
  return dataset_stats.get(key)


def same_key_sources(keys: Sequence[str], prefixes: Sequence[str] = ("",),
                     flip: str = NO_FLIP) -> Dict[str, Tuple[Source, ...]]:
  """Each key accepted as itself under every prefix (e.g. "" and "observation/")."""
  return {k: tuple(Source(p + k, flip) for p in prefixes) for k in keys}
