"""Evaluation environments by name (`config.eval.env`).

  "tabletop_push"         the embedded MuJoCo pushing task (`tabletop.py`), no download
  "tabletop_reach"        the same scene, reach the goal pad with the pusher
  "tabletop_push_ood"     the out-of-distribution variant: the same task and seeded layouts,
                          with altered lighting, table colour, a distractor and moved cameras
                          (docs/embedded_task.md, "The out-of-distribution variant"); one shift
                          alone: "tabletop_push_ood_<shift>" (lighting, table, distractor,
                          camera); the same for tabletop_reach
  "libero/<task>"         a LIBERO task (optional extra `libero`): a paper name
                          (book_caddy, soup_cheese, bowl_drawer, moka_moka, mug_mug) or any
                          LIBERO task name / BDDL file stem, e.g. "libero/libero_10/<stem>"

`make_envs(name, n, config)` returns n environments (in a worker process, sharing what they
can) and a `close()` callable. Imports of MuJoCo/LIBERO happen only when an env is made.
"""

import sys
from typing import Callable, List, Tuple

TABLETOP_PREFIX = "tabletop_"
LIBERO_PREFIX = "libero/"
BASE_TASKS = ("tabletop_push", "tabletop_reach")
OOD_SUFFIX = "_ood"
# The visual shifts of the out-of-distribution variant (applied by uwm_jax.envs.tabletop; named
# here so that env names are known without importing MuJoCo).
OOD_SHIFTS = ("lighting", "table", "distractor", "camera")
EMBEDDED_TASKS = BASE_TASKS + tuple(
    f"{task}{OOD_SUFFIX}{suffix}" for task in BASE_TASKS
    for suffix in ("",) + tuple(f"_{shift}" for shift in OOD_SHIFTS))
# Low-dim observation keys of the embedded tasks, as their datasets store them
# (uwm_jax.data.demo_generation).
EMBEDDED_LOW_DIM_KEYS = ("pusher_pos",)


def known_env_names() -> str:
  return (f"{', '.join(BASE_TASKS)} (+ {OOD_SUFFIX}[_<shift>], shifts {', '.join(OOD_SHIFTS)}),"
          f" or {LIBERO_PREFIX}<task name>")


def embedded_task_shifts(name: str) -> Tuple[str, Tuple[str, ...]]:
  """An embedded task's env name -> (task, out-of-distribution shifts), e.g.
  "tabletop_push_ood" -> ("push", all shifts), "tabletop_push_ood_table" -> ("push",
  ("table",)), "tabletop_push" -> ("push", ())."""
  if name not in EMBEDDED_TASKS:
    raise ValueError(f"Unknown embedded task {name!r}: expected {known_env_names()}.")
  base, _, shift = name.partition(OOD_SUFFIX)
  shifts = () if base == name else ((shift[1:],) if shift else OOD_SHIFTS)
  return base[len(TABLETOP_PREFIX):], shifts


def check_no_tensorflow() -> None:
  """TensorFlow and MuJoCo's EGL (Mesa llvmpipe) rendering crash together in one process
  (a segfault in either import order). Renderers call this first; code that needs TF (the RLDS
  writer) keeps rendering in worker processes (`uwm_jax.data.demo_generation`)."""
  if "tensorflow" in sys.modules:
    raise RuntimeError("TensorFlow is loaded in this process: offscreen MuJoCo rendering with "
                       "EGL would crash it. Render in a separate process (see "
                       "uwm_jax.data.demo_generation), and install tensorboardX so that "
                       "TensorBoard logging does not load TensorFlow.")


def check_env_name(name: str) -> None:
  """Raise ValueError for an unknown env name, ImportError when LIBERO is needed but not
  installed (reads only LIBERO's task file names: nothing heavy is imported)."""
  if name in EMBEDDED_TASKS:
    return
  if name.startswith(LIBERO_PREFIX) and len(name) > len(LIBERO_PREFIX):
    from uwm_jax.envs import libero_env  # pylint: disable=import-outside-toplevel
    if not libero_env.libero_available():
      raise ImportError(f"Evaluation task {name!r} needs LIBERO. {libero_env.INSTALL_HINT}")
    libero_env.resolve_task(name[len(LIBERO_PREFIX):])
    return
  raise ValueError(f"Unknown evaluation task {name!r}: expected {known_env_names()}.")


def tabletop_spec(name: str, model_cfg):
  """The embedded task's spec for a model config (image size from model.image_shape)."""
  # Late: MuJoCo loads only where a simulator is used.
  from uwm_jax.envs import tabletop  # pylint: disable=import-outside-toplevel
  H, W = model_cfg.image_shape
  if H != W:
    raise ValueError(f"The embedded task renders square images; model.image_shape is {(H, W)}.")
  task, shifts = embedded_task_shifts(name)
  return tabletop.TabletopSpec(task=task, image_size=int(H), shifts=shifts)


def make_envs(name: str, n: int, config, images: bool = True) -> Tuple[List, Callable[[], None]]:
  """n environments of `name` in a worker process (`remote.py`: rendering must not share a
  process with TensorFlow); -> (env proxies, close). images=False: the embedded tasks render
  nothing (black camera images), for policies that never look; LIBERO renders anyway."""
  check_env_name(name)
  # Late: remote imports this package (a cycle at import time).
  from uwm_jax.envs import remote  # pylint: disable=import-outside-toplevel
  return remote.make_remote_envs(name, n, config, images)


def make_local_envs(name: str, n: int, config,
                    images: bool = True) -> Tuple[List, Callable[[], None]]:
  """n environments of `name` in this process; -> (envs, close). `images` as `make_envs`."""
  check_env_name(name)
  if name in EMBEDDED_TASKS:
    # Late: MuJoCo loads only where a simulator is used.
    from uwm_jax.envs import tabletop  # pylint: disable=import-outside-toplevel
    return tabletop.make_envs(n, tabletop_spec(name, config.model), bool(images))
  # Late: LIBERO is an optional extra.
  from uwm_jax.envs import libero_env  # pylint: disable=import-outside-toplevel
  envs = [libero_env.LiberoEnv.from_config(name[len(LIBERO_PREFIX):], config)
          for _ in range(n)]
  return envs, lambda: [e.close() for e in envs]


def low_dim_keys(name: str, config) -> Tuple[str, ...]:
  """Observation keys fed to the policy as low-dim features (model.low_dim_dim > 0), in the
  order the training data concatenated them; () when the model uses none."""
  if not config.model.get("low_dim_dim"):
    return ()
  if name in EMBEDDED_TASKS:
    return EMBEDDED_LOW_DIM_KEYS
  raise ValueError(f"model.low_dim_dim > 0: low-dim observations are only wired up for the "
                   f"embedded tasks ({', '.join(EMBEDDED_TASKS)}), not {name!r}.")


def default_max_steps(name: str, config) -> int:
  """The episode length limit when config.eval.max_steps is 0."""
  if name in EMBEDDED_TASKS:
    return tabletop_spec(name, config.model).max_episode_steps
  return 1000  # LIBERO (docs/evaluation.md, "Rollout protocol")
