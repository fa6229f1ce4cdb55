"""Inverse-dynamics trajectory tracking (docs/evaluation.md, "Inverse-dynamics tracking").

For each demonstration: reset the env to the demo's first state, then repeatedly give the
demo frames [k, k + T_o) with k = t + H_a (t = env steps so far: 16, 32, ... for H_a = 16) as
the goal next observation, sample an inverse-dynamics action chunk, execute `exec_steps` of it;
stop on success or when the demo has no frames left for another goal. The "policy
(trajectory length)" row runs the marginal policy on the same episodes with the same budget.

Demos come from the embedded task's expert (`embedded_demos`) or from a LIBERO demo HDF5 file
(`libero_hdf5_demos`, frames flipped vertically like the training data — the reference's
ablation script forgets the flip).
"""

import dataclasses
from typing import List, Optional, Sequence

import numpy as np

from uwm_jax import sampling
from uwm_jax.data.profiles import concat_fields
from uwm_jax.evaluation import rollout
from uwm_jax.evaluation.rollout_policies import LocalPolicy


@dataclasses.dataclass
class Demo:
  episode: rollout.Episode  # how to reset to the demo's first state
  frames: np.ndarray  # (L, V, H, W, 3) uint8, views in camera_keys order
  actions: Optional[np.ndarray] = None  # (L, A) raw actions when known
  low_dim: Optional[np.ndarray] = None  # (L, D) raw low-dim observations when asked for


def num_goal_chunks(length: int, num_obs_frames: int, action_len: int) -> int:
  """Chunks n with goals [k, k + T_o) inside the demo, k = i * H_a for i = 1..n."""
  return max(0, (length - num_obs_frames) // action_len)


class GoalFrames:
  """goal_fn for `LocalPolicy` in inverse-dynamics mode: the demo frames after the chunk."""

  def __init__(self, demos: Sequence[Demo], num_obs_frames: int, action_len: int):
    self.demos = list(demos)
    self.num_obs_frames = num_obs_frames
    self.action_len = action_len

  def __call__(self, context: rollout.RolloutContext) -> np.ndarray:
    shape = self.demos[0].frames.shape[1:]  # (V, H, W, 3)
    out = np.zeros((len(context.episode_index), shape[0], self.num_obs_frames) + shape[1:],
                   np.uint8)
    for b, (episode, step) in enumerate(zip(context.episode_index, context.step)):
      if episode < 0:
        continue
      frames = self.demos[episode].frames
      idx = np.clip(np.arange(self.num_obs_frames) + step + self.action_len, 0, len(frames) - 1)
      out[b] = frames[idx].transpose(1, 0, 2, 3, 4)
    return out


def tracking_episodes(demos: Sequence[Demo], num_obs_frames: int, action_len: int,
                      exec_steps: int) -> List[rollout.Episode]:
  """The demos' resets with a step budget of one chunk per available goal."""
  out = []
  for d in demos:
    n = num_goal_chunks(len(d.frames), num_obs_frames, action_len)
    out.append(dataclasses.replace(d.episode, max_steps=max(1, n * exec_steps)))
  return out


def run_tracking(envs, model, diffusion_cfg, params, frozen, transforms, demos: Sequence[Demo],
                 *, camera_keys, exec_steps: int, seed: int = 0, progress: bool = True) -> dict:
  """Inverse-dynamics tracking and the policy on the same budget -> metrics dict.
  `transforms`: the robot's `uwm_jax.policies.transforms.RobotTransforms`."""
  d = model.dims
  episodes = tracking_episodes(demos, d.num_obs_frames, d.action_len, exec_steps)
  common = dict(camera_keys=camera_keys, exec_steps=exec_steps,
                max_steps=max(e.max_steps for e in episodes), progress=progress)
  make = lambda **kw: LocalPolicy(model, diffusion_cfg, params, frozen, transforms,
                                  num_slots=len(envs), seed=seed, **kw)
  inverse = make(mode=sampling.INVERSE_DYNAMICS,
                 goal_fn=GoalFrames(demos, d.num_obs_frames, d.action_len))
  tracked = rollout.run_rollouts(envs, inverse, episodes, desc="tracking (inverse dynamics)",
                                 **common)
  baseline = rollout.run_rollouts(envs, make(), episodes, desc="tracking (policy)", **common)
  return {"tracking/inverse_dynamics_success_rate": tracked.success_rate,
          "tracking/policy_success_rate": baseline.success_rate,
          "tracking/num_demos": len(demos)}


def embedded_demos(spec, seeds: Sequence[int], camera_keys: Sequence[str],
                   hold_steps: int, with_actions: bool = False,
                   low_dim_keys: Sequence[str] = ()) -> List[Demo]:
  """Expert demos of the embedded task from `seeds` (each resets with its seed); with
  `with_actions` the demo's raw actions (L, A) are kept in `Demo.actions`, with `low_dim_keys`
  those observations (concatenated) in `Demo.low_dim`."""
  # MuJoCo loads only when demos are generated (rendering happens in a worker process).
  from uwm_jax.envs import demos as demos_lib  # pylint: disable=import-outside-toplevel
  out = []
  for ep in demos_lib.generate_in_workers(seeds, spec, hold_steps=hold_steps, progress=False,
                                         num_workers=1):
    frames = np.stack([ep["observation"][k] for k in camera_keys], axis=1)
    low_dim = None
    if low_dim_keys:  # concatenated as the dataset conversion does
      low_dim = concat_fields(*(ep["observation"][k] for k in low_dim_keys))
    out.append(Demo(rollout.Episode(seed=ep["seed"]), frames,
                    ep.get("action") if with_actions else None, low_dim))
  return out


def libero_hdf5_demos(path: str, camera_keys: Sequence[str], max_demos: int = 0,
                      flip: bool = True) -> List[Demo]:
  """Demos of a LIBERO `*_demo.hdf5` file: data/demo_i/obs/<camera key> frames and
  data/demo_i/states[0] as the initial simulator state, in demo index order."""
  import h5py  # pylint: disable=import-outside-toplevel  # optional: LIBERO demo files only
  out = []
  with h5py.File(path, "r") as f:
    if "data" not in f:
      raise ValueError(f"{path}: not a LIBERO demo file (no 'data' group).")
    names = sorted(f["data"].keys(), key=lambda n: int(n.split("_")[-1]))
    for name in names[:max_demos or None]:
      demo = f["data"][name]
      missing = [k for k in camera_keys if k not in demo["obs"]]
      if missing:
        raise KeyError(f"{path}: {name}/obs has no {missing}; it has {sorted(demo['obs'])}.")
      views = [np.asarray(demo["obs"][k]) for k in camera_keys]
      if flip:
        views = [v[:, ::-1] for v in views]
      frames = np.ascontiguousarray(np.stack(views, axis=1))
      out.append(Demo(rollout.Episode(init_state=np.asarray(demo["states"][0])), frames))
  return out
