"""Per-robot input/output transforms and the policy session shared by rollouts and serving.

A pipeline stage after training and before evaluation and serving (it imports data, model,
sampling and runs; evaluation and serving import it):

  transforms.py   RobotTransforms: observation dict -> model inputs, model actions -> robot
  droid.py        DROID: three cameras, 10-d actions decoded to cartesian velocity + gripper
  libero.py       LIBERO: agentview + wrist with the LIBERO flip, 7-d actions
  tabletop.py     the embedded MuJoCo tasks
  lerobot.py      a robot recorded as a LeRobot dataset: the dataset's own keys and action space
  session.py      one stream of observations (a rollout slot, a server connection): padded
                  history, per-request RNG keys, temporal ensembling, executed horizon
  sampler.py      BatchedSampler: per-request keys, batches padded to compiled sizes
  inference_checkpoint.py
                  load_checkpoint: a checkpoint's inference params, config and statistics,
                  what the evaluator and the server load

`make_transforms(robot, config, stats)`; `robot_for_config(config)` guesses the robot.
"""

from uwm_jax import envs as envs_lib
from uwm_jax.config_base import DROID_CAMERA_KEYS
from uwm_jax.data import source_configs

ROBOTS = ("droid", "libero", "tabletop", "lerobot")


def make_transforms(robot: str, config, dataset_stats):
  """The `RobotTransforms` of `robot` for a checkpoint's config and statistics."""
  # pylint: disable=import-outside-toplevel
  if robot == "droid":
    from uwm_jax.policies import droid as module
  elif robot == "libero":
    from uwm_jax.policies import libero as module
  elif robot == "tabletop":
    from uwm_jax.policies import tabletop as module
  elif robot == "lerobot":
    from uwm_jax.policies import lerobot as module
  else:
    raise ValueError(f"Unknown robot {robot!r}; known: {', '.join(ROBOTS)}.")
  return module.make(config, dataset_stats)


def robot_for_config(config) -> str:
  """The robot a checkpoint was trained for: a LeRobot source, else config.eval.env, else its
  cameras."""
  sources = config.get("data", {}).get("sources", {})
  if any(sources[n].get("kind") == source_configs.LEROBOT for n in sources):
    return "lerobot"
  env = config.get("eval", {}).get("env", "")
  if env in envs_lib.EMBEDDED_TASKS:
    return "tabletop"
  if env.startswith(envs_lib.LIBERO_PREFIX):
    return "libero"
  keys = tuple(config.model.camera_keys)
  if keys and all(k in DROID_CAMERA_KEYS for k in keys):
    return "droid"
  if set(keys) <= {"agentview_rgb", "eye_in_hand_rgb"}:
    return "libero"
  if set(keys) <= {"front_rgb", "top_rgb"}:
    return "tabletop"
  raise ValueError(f"Cannot tell the robot of a checkpoint with cameras {keys}: pass --robot "
                   f"({', '.join(ROBOTS)}).")
