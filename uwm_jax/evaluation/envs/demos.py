"""Scripted-expert demonstrations of the embedded task, as episodes of numpy arrays.

An episode is a dict (one entry per step, RLDS-style: step t holds observation o_t and the
action a_t issued at o_t; the last step repeats a hold action of zeros):

  "observation": {camera_key: (T, S, S, 3) uint8, "pusher_pos": (T, 2), "state": (T, 6)}
  "action":      (T, 2) float32 in [-1, 1]
  "success":     bool, "seed": int

The expert runs until success, then `hold_steps` more steps (it settles the puck and holds),
so that the last windows of an episode show the goal being reached. Action-free videos are the
same episodes with `with_actions=False` (no "action" entry).
"""

import concurrent.futures
from typing import Iterator, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from uwm_jax.evaluation.envs import tabletop


def expert_episode(env: tabletop.TabletopEnv, seed: int, *, hold_steps: int = 16,
                   max_steps: Optional[int] = None, with_actions: bool = True) -> dict:
  """Run the scripted expert from the seeded reset; returns one episode dict."""
  max_steps = max_steps or env.spec.max_episode_steps
  obs = env.reset(seed)
  observations, actions = [obs], []
  success, remaining = False, None
  for _ in range(max_steps + hold_steps):
    action = env.expert_action().astype(np.float32)
    obs, info = env.step(action)
    actions.append(action)
    observations.append(obs)
    if info["success"] and not success:
      success, remaining = True, hold_steps
    if remaining is not None:
      if remaining == 0:
        break
      remaining -= 1
    elif len(actions) >= max_steps:
      break
  actions.append(np.zeros(env.action_dim, np.float32))  # the last step's (unused) action
  episode = {
      "observation": {k: np.stack([o[k] for o in observations]) for k in observations[0]},
      "success": success,
      "seed": int(seed),
  }
  if with_actions:
    episode["action"] = np.stack(actions)
  return episode


def generate_episodes(seeds: Sequence[int], spec: tabletop.TabletopSpec = tabletop.TabletopSpec(),
                      *, hold_steps: int = 16, with_actions: bool = True,
                      only_successes: bool = True, progress: bool = True,
                      desc: str = "expert demos") -> Iterator[dict]:
  """Yields one expert episode per seed (failed ones skipped when `only_successes`)."""
  env = tabletop.TabletopEnv(spec)
  try:
    for seed in tqdm(seeds, desc=desc, disable=not progress):
      episode = expert_episode(env, seed, hold_steps=hold_steps, with_actions=with_actions)
      if episode["success"] or not only_successes:
        yield episode
  finally:
    env.close()


def _episode_list(seeds, spec, hold_steps, with_actions, only_successes, progress, desc):
  return list(generate_episodes(seeds, spec, hold_steps=hold_steps, with_actions=with_actions,
                                only_successes=only_successes, progress=progress, desc=desc))


def generate_in_workers(seeds: Sequence[int],
                        spec: tabletop.TabletopSpec = tabletop.TabletopSpec(), *,
                        num_workers: int = 2, hold_steps: int = 16, with_actions: bool = True,
                        only_successes: bool = True, progress: bool = True,
                        desc: str = "expert demos") -> List[dict]:
  """`generate_episodes` split over `num_workers` spawned processes (rendering must not share a
  process with TensorFlow, see `remote.py`); episodes come back in seed order."""
  from uwm_jax.evaluation.envs import remote  # pylint: disable=import-outside-toplevel
  seeds = list(seeds)
  num_workers = max(1, min(num_workers, len(seeds)))
  parts = [seeds[i::num_workers] for i in range(num_workers)]
  workers = [remote.Worker() for _ in parts]
  try:
    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
      futures = [pool.submit(w.call, _episode_list, part, spec, hold_steps, with_actions,
                             only_successes, progress and i == 0, f"{desc} (worker 0)")
                 for i, (w, part) in enumerate(zip(workers, parts))]
      results = [f.result() for f in futures]
  finally:
    for w in workers:
      w.close()
  episodes = [ep for part in results for ep in part]
  return sorted(episodes, key=lambda ep: seeds.index(ep["seed"]))
