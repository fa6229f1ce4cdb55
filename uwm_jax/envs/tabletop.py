"""The embedded MuJoCo task: push a puck onto a goal pad, seen by two cameras.

A blue pusher moves in the table plane (two slide joints under position control); a red puck
slides under it; a green goal pad lies on the table. The puck and goal positions are drawn per
episode from a seeded generator, so a policy has to read them from the images.

  task "push":  success when the puck centre is within `success_radius` of the goal centre.
  task "reach": the puck is an obstacle; success when the pusher is on the goal.

Action: (2,) in [-1, 1], the pusher's displacement per control step in units of `max_delta`
metres (the position target is the current position + action * max_delta).
Observation: {camera_key: (S, S, 3) uint8 for each camera, "pusher_pos": (2,), "state": (6,)
float32 = pusher xy, puck xy, goal xy}. Control runs at 1 / (substeps * timestep) = 10 Hz.

`scripted_expert` is a closed-loop state-based expert (>= 95% success).

Out-of-distribution variant (docs/embedded_task.md, "The out-of-distribution variant"):
`TabletopSpec.shifts` names visual changes from OOD_SHIFTS, applied to the scene when the model
is built (`load_model`): "lighting" (a dimmer, warm headlight plus a directional light from the
side), "table" (a wood-brown table top instead of the light beige one), "distractor" (a yellow
cube, visual only, placed per episode clear of pusher, puck and goal) and "camera" (the front
camera moved 2 cm to the right, the top camera turned 5 degrees about its axis). Physics,
actions, success test and the seeded pusher / puck / goal placements are those of the
in-distribution task: only the rendered images differ.
"""

import dataclasses
import os
from typing import Dict, Optional, Sequence, Tuple

os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen rendering without a display

import mujoco  # noqa: E402  (MUJOCO_GL must be set before the import)
import numpy as np  # noqa: E402

from uwm_jax import envs as envs_lib  # noqa: E402
from uwm_jax.envs import check_no_tensorflow  # noqa: E402

XML_PATH = os.path.join(os.path.dirname(__file__), "push.xml")
TASKS = ("push", "reach")
CAMERAS = ("front", "top")  # MJCF camera names; observation keys are f"{name}_rgb".
PUSHER_RADIUS = 0.022
PUCK_RADIUS = 0.03
POSITION_LIMIT = 0.24  # pusher joint range (m)
# The expert's distances (m) beyond pusher-puck contact: paths pass the puck no closer than
# EXPERT_MARGIN and circle it at EXPERT_CIRCLE_MARGIN. Wide margins make the expert easy to
# imitate: measured, a cloned policy that copied a 5 mm / 2 cm expert failed mostly by
# bumping the puck sideways while going round it.
EXPERT_MARGIN = 0.02
EXPERT_CIRCLE_MARGIN = 0.035

# The out-of-distribution shifts (see the module docstring); their names: uwm_jax.envs.
OOD_SHIFTS = envs_lib.OOD_SHIFTS
OOD_HEADLIGHT = {"ambient": (0.3, 0.26, 0.2), "diffuse": (0.35, 0.3, 0.22)}
OOD_SIDE_LIGHT = {"dir": (-0.7, 0.3, -0.5), "diffuse": (0.55, 0.45, 0.3)}
OOD_TABLE_RGBA = (0.62, 0.47, 0.3, 1.0)
DISTRACTOR = "distractor"
DISTRACTOR_HALF_SIZE = 0.02  # m (a 4 cm cube)
DISTRACTOR_RGBA = (0.95, 0.8, 0.1, 1.0)
DISTRACTOR_CLEARANCE = 0.08  # m from pusher, puck, goal and the puck-goal segment
DISTRACTOR_RANGE = 0.2  # |x|, |y| of its centre (m)
OOD_FRONT_CAMERA_SHIFT = (0.02, 0.0, 0.0)  # m
OOD_TOP_CAMERA_ROLL = np.deg2rad(5.0)


@dataclasses.dataclass(frozen=True)
class TabletopSpec:
  task: str = "push"
  image_size: int = 32  # square camera images (S, S)
  max_delta: float = 0.012  # metres per control step at |action| = 1
  substeps: int = 20  # physics steps per control step (timestep 5 ms -> 10 Hz)
  success_radius: float = 0.03
  max_episode_steps: int = 120  # suggested rollout length
  # push: how far (radians) the pusher's start may be off the goal->puck line (see sample_layout;
  # pi = anywhere around the puck). 60 degrees (no circling needed) made the cloned demo policy
  # far worse (docs/results/demo-recipe-rounds.md), so the default keeps the full circle.
  start_arc: float = float(np.pi)
  # Visual out-of-distribution shifts (names from OOD_SHIFTS; () = the in-distribution task).
  shifts: Tuple[str, ...] = ()


def camera_keys(cameras: Sequence[str] = CAMERAS):
  return tuple(f"{c}_rgb" for c in cameras)


def sample_layout(rng: np.random.Generator, task: str,
                  start_arc: float = np.pi) -> Dict[str, np.ndarray]:
  """Initial pusher, puck and goal xy positions (m) for one episode.

  push: the pusher starts 9-16 cm from the puck, at most `start_arc` radians off the line
  from the goal through the puck (pi: anywhere around it; smaller: behind the puck, so the
  episode needs less or no circling round it). reach: anywhere clear of puck and goal.
  """
  puck = rng.uniform(-0.12, 0.12, size=2)
  while True:
    angle = rng.uniform(0, 2 * np.pi)
    dist = rng.uniform(0.10, 0.18)
    goal = puck + dist * np.array([np.cos(angle), np.sin(angle)])
    if np.all(np.abs(goal) <= 0.17):
      break
  if task == "push":
    while True:
      offset = angle + np.pi + rng.uniform(-start_arc, start_arc)
      pusher = puck + rng.uniform(0.09, 0.16) * np.array([np.cos(offset), np.sin(offset)])
      if np.all(np.abs(pusher) <= 0.2) and np.linalg.norm(pusher - goal) > 0.09:
        return {"pusher": pusher, "puck": puck, "goal": goal}
  while True:
    pusher = rng.uniform(-0.2, 0.2, size=2)
    if np.linalg.norm(pusher - puck) > 0.12 and np.linalg.norm(pusher - goal) > 0.12:
      return {"pusher": pusher, "puck": puck, "goal": goal}


def ood_settings() -> dict:
  """The values the out-of-distribution shifts use (a generated OOD dataset records them)."""
  return {"headlight": OOD_HEADLIGHT, "side_light": OOD_SIDE_LIGHT, "table_rgba": OOD_TABLE_RGBA,
          "distractor": [DISTRACTOR_HALF_SIZE, DISTRACTOR_RGBA, DISTRACTOR_CLEARANCE,
                         DISTRACTOR_RANGE],
          "cameras": [OOD_FRONT_CAMERA_SHIFT, float(OOD_TOP_CAMERA_ROLL)]}


def load_model(spec: "TabletopSpec") -> mujoco.MjModel:
  """push.xml compiled, with the spec's out-of-distribution shifts applied."""
  unknown = [x for x in spec.shifts if x not in OOD_SHIFTS]
  if unknown:
    raise ValueError(f"Unknown out-of-distribution shift {unknown}; known: {OOD_SHIFTS}.")
  if not spec.shifts:
    return mujoco.MjModel.from_xml_path(XML_PATH)
  scene = mujoco.MjSpec.from_file(XML_PATH)
  if "lighting" in spec.shifts:
    scene.visual.headlight.ambient = OOD_HEADLIGHT["ambient"]
    scene.visual.headlight.diffuse = OOD_HEADLIGHT["diffuse"]
    scene.worldbody.add_light(name="ood_side", pos=[0.5, -0.2, 0.6], castshadow=False,
                              type=mujoco.mjtLightType.mjLIGHT_DIRECTIONAL,
                              dir=OOD_SIDE_LIGHT["dir"], diffuse=OOD_SIDE_LIGHT["diffuse"])
  if "table" in spec.shifts:
    scene.geom("table").rgba = OOD_TABLE_RGBA
  if "distractor" in spec.shifts:
    body = scene.worldbody.add_body(name=DISTRACTOR, mocap=True,
                                    pos=[DISTRACTOR_RANGE, DISTRACTOR_RANGE,
                                         DISTRACTOR_HALF_SIZE])
    body.add_geom(name=DISTRACTOR, type=mujoco.mjtGeom.mjGEOM_BOX,
                  size=[DISTRACTOR_HALF_SIZE] * 3, rgba=DISTRACTOR_RGBA, contype=0,
                  conaffinity=0)
  model = scene.compile()
  if "camera" in spec.shifts:
    model.cam_pos[model.camera("front").id] += OOD_FRONT_CAMERA_SHIFT
    top = model.camera("top").id
    roll = np.array([np.cos(OOD_TOP_CAMERA_ROLL / 2), 0, 0, np.sin(OOD_TOP_CAMERA_ROLL / 2)])
    quat = np.zeros(4)
    mujoco.mju_mulQuat(quat, model.cam_quat[top].copy(), roll)
    model.cam_quat[top] = quat
  return model


def sample_distractor(rng: np.random.Generator, layout: Dict[str, np.ndarray]) -> np.ndarray:
  """xy (m) of the distractor: uniform in the table square, DISTRACTOR_CLEARANCE away from the
  pusher, the puck, the goal and the puck's straight path to the goal."""
  puck, goal = np.asarray(layout["puck"]), np.asarray(layout["goal"])
  seg = goal - puck
  while True:
    xy = rng.uniform(-DISTRACTOR_RANGE, DISTRACTOR_RANGE, size=2)
    s = float(np.clip((xy - puck) @ seg / max(float(seg @ seg), 1e-12), 0.0, 1.0))
    near = [layout["pusher"], puck, goal, puck + s * seg]
    if min(np.linalg.norm(xy - np.asarray(p)) for p in near) > DISTRACTOR_CLEARANCE:
      return xy


class TabletopEnv:
  """One episode at a time. Several envs can share one `mujoco.Renderer` (see `make_envs`).

  images=False: nothing is rendered and the camera observations are black images of the same
  shape, for policies that never look (the random baseline; software rendering costs ~5 ms per
  image on a CPU host)."""

  def __init__(self, spec: TabletopSpec = TabletopSpec(), *, model=None, renderer=None,
               images: bool = True):
    if spec.task not in TASKS:
      raise ValueError(f"Unknown embedded task {spec.task!r}; known: {TASKS}.")
    self.spec = spec
    check_no_tensorflow()
    self.model = model if model is not None else load_model(spec)
    self.data = mujoco.MjData(self.model)
    self.images = bool(images)
    self._own_renderer = renderer is None and self.images
    self.renderer = renderer if renderer is not None or not self.images else mujoco.Renderer(
        self.model, spec.image_size, spec.image_size)
    self.camera_keys = camera_keys()
    self.action_dim = 2
    j = lambda name: self.model.joint(name).qposadr[0]
    self._pusher_adr = np.array([j("pusher_x"), j("pusher_y")])
    self._puck_adr = np.array([j("puck_x"), j("puck_y")])
    self._goal_mocap = self.model.body("goal").mocapid[0]
    self._puck_body = self.model.body("puck").id
    self._pusher_body = self.model.body("pusher").id
    self._distractor_mocap = (self.model.body(DISTRACTOR).mocapid[0]
                              if "distractor" in spec.shifts else None)

  # ------------------------------------------------------------------ state
  @property
  def pusher(self) -> np.ndarray:
    return self.data.qpos[self._pusher_adr] + self.model.body_pos[self._pusher_body, :2]

  @property
  def puck(self) -> np.ndarray:
    return self.data.qpos[self._puck_adr] + self.model.body_pos[self._puck_body, :2]

  @property
  def goal(self) -> np.ndarray:
    return self.data.mocap_pos[self._goal_mocap, :2].copy()

  def is_success(self) -> bool:
    obj = self.puck if self.spec.task == "push" else self.pusher
    return bool(np.linalg.norm(obj - self.goal) < self.spec.success_radius)

  # ------------------------------------------------------------------ episode
  def reset(self, seed: Optional[int] = None, init_state: Optional[dict] = None) -> dict:
    """Seeded reset (`sample_layout`) or an explicit layout {"pusher", "puck", "goal"}; with
    the "distractor" shift, its place is drawn from the same generator after the layout."""
    rng = np.random.default_rng(seed)
    layout = init_state
    if layout is None:
      layout = sample_layout(rng, self.spec.task, self.spec.start_arc)
    mujoco.mj_resetData(self.model, self.data)
    self.data.qpos[self._pusher_adr] = np.asarray(layout["pusher"]) - self.model.body_pos[
        self._pusher_body, :2]
    self.data.qpos[self._puck_adr] = np.asarray(layout["puck"]) - self.model.body_pos[
        self._puck_body, :2]
    self.data.mocap_pos[self._goal_mocap, :2] = layout["goal"]
    self.data.ctrl[:] = self.data.qpos[self._pusher_adr]
    if self._distractor_mocap is not None:  # drawn after the layout: the layout is unchanged
      self.data.mocap_pos[self._distractor_mocap, :2] = sample_distractor(rng, layout)
    mujoco.mj_forward(self.model, self.data)
    self.initial_layout = {k: np.asarray(v, np.float64).copy() for k, v in layout.items()}
    return self.observation()

  def step(self, action: np.ndarray):
    """-> (obs, info {"success": bool})."""
    action = np.clip(np.asarray(action, np.float64).reshape(2), -1.0, 1.0)
    target = self.data.qpos[self._pusher_adr] + action * self.spec.max_delta
    self.data.ctrl[:] = np.clip(target, -POSITION_LIMIT, POSITION_LIMIT)
    mujoco.mj_step(self.model, self.data, nstep=self.spec.substeps)
    return self.observation(), {"success": self.is_success()}

  def observation(self) -> dict:
    obs = {key: self.render(cam) for key, cam in zip(self.camera_keys, CAMERAS)}
    obs["pusher_pos"] = self.pusher.astype(np.float32)
    obs["state"] = np.concatenate([self.pusher, self.puck, self.goal]).astype(np.float32)
    return obs

  def render(self, camera: str) -> np.ndarray:
    if not self.images:
      return np.zeros((self.spec.image_size, self.spec.image_size, 3), np.uint8)
    self.renderer.update_scene(self.data, camera)
    return self.renderer.render().copy()

  def expert_action(self) -> np.ndarray:
    return scripted_expert(self.pusher, self.puck, self.goal, self.spec)

  def close(self):
    if self._own_renderer and self.renderer is not None:
      self.renderer.close()
    self.renderer = None


def make_envs(n: int, spec: TabletopSpec = TabletopSpec(), images: bool = True):
  """`n` envs sharing one model and one offscreen renderer (one GL context; none when `images`
  is False); -> (envs, close)."""
  check_no_tensorflow()
  model = load_model(spec)
  renderer = mujoco.Renderer(model, spec.image_size, spec.image_size) if images else None
  envs = [TabletopEnv(spec, model=model, renderer=renderer, images=images) for _ in range(n)]
  return envs, (renderer.close if renderer is not None else lambda: None)


# ---------------------------------------------------------------------- expert
def _unit(v: np.ndarray) -> np.ndarray:
  n = np.linalg.norm(v)
  return v / n if n > 1e-9 else np.zeros_like(v)


def _move_to(pusher: np.ndarray, target: np.ndarray, max_delta: float) -> np.ndarray:
  return np.clip((target - pusher) / max_delta, -1.0, 1.0)


def scripted_expert(pusher: np.ndarray, puck: np.ndarray, goal: np.ndarray,
                    spec: TabletopSpec) -> np.ndarray:
  """Closed-loop expert: (2,) action in [-1, 1] from the true positions.

  push: circle around the puck (clear of it) to the point behind it on the goal line, then
  push along that line, steering back onto it and slowing near the goal.
  reach: go straight to the goal, detouring around the puck.
  """
  contact = PUSHER_RADIUS + PUCK_RADIUS
  keep_out = contact + EXPERT_MARGIN
  clearance = contact + EXPERT_CIRCLE_MARGIN
  if spec.task == "reach":
    return _move_to(pusher, _detour(pusher, goal, puck, keep_out, clearance), spec.max_delta)

  to_goal = goal - puck
  dist = np.linalg.norm(to_goal)
  if dist < 0.4 * spec.success_radius:
    return np.zeros(2)  # done: hold still
  direction = _unit(to_goal)
  rel = pusher - puck
  along = float(rel @ direction)
  lateral = rel - along * direction
  behind = along < -0.6 * contact and np.linalg.norm(lateral) < 0.012
  if behind:
    # Push along the goal line, steering back onto it, slowing down near the goal.
    speed = np.clip(dist / spec.max_delta, 0.25, 1.0)
    return np.clip(direction * speed - 0.8 * lateral / spec.max_delta, -1.0, 1.0)
  pre_push = puck - direction * (contact + 0.012)
  return _move_to(pusher, _detour(pusher, pre_push, puck, keep_out, clearance), spec.max_delta)


def _detour(pusher: np.ndarray, target: np.ndarray, obstacle: np.ndarray, keep_out: float,
            clearance: float) -> np.ndarray:
  """The target if the straight path stays `keep_out` away from the obstacle (or no closer
  than the target itself), else a point on the circle of radius `clearance` around it, a step
  further round towards the target."""
  seg = target - pusher
  seg_len2 = float(seg @ seg)
  s = 0.0 if seg_len2 < 1e-12 else float(np.clip((obstacle - pusher) @ seg / seg_len2, 0, 1))
  allowed = min(keep_out, float(np.linalg.norm(target - obstacle)) - 1e-4)
  if np.linalg.norm(pusher + s * seg - obstacle) >= allowed:
    return target
  rel = pusher - obstacle
  theta = np.arctan2(rel[1], rel[0])
  goal_theta = np.arctan2(target[1] - obstacle[1], target[0] - obstacle[0])
  diff = (goal_theta - theta + np.pi) % (2 * np.pi) - np.pi
  theta_next = theta + np.sign(diff) * min(abs(diff), 0.6)
  return obstacle + clearance * np.array([np.cos(theta_next), np.sin(theta_next)])
