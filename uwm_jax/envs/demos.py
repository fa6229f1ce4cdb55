"""Scripted-expert demonstrations of the embedded task, as episodes of numpy arrays.

An episode is a dict (one entry per step, RLDS-style: step t holds observation o_t and the
action a_t issued at o_t; the last step repeats a hold action of zeros):

  "observation": {camera_key: (T, S, S, 3) uint8, "pusher_pos": (T, 2), "state": (T, 6)}
  "action":      (T, 2) float32 in [-1, 1]
  "success":     bool, "seed": int

The expert runs until success, then `hold_steps` more steps (it settles the puck and holds),
so that the last windows of an episode show the goal being reached. Action-free videos are the
same episodes with `with_actions=False` (no "action" entry).

Recovery data (`action_noise` > 0, DART: Laskey et al., 2017): the executed action is the
expert's plus temporally correlated Gaussian noise (AR(1), correlation `NOISE_CORRELATION`,
stationary std `action_noise` in action units), clipped to [-1, 1]; the *recorded* action is
the expert's own. The episode then visits states off the expert's path (the puck pushed past
or beside the goal) together with the expert's corrections there, which a cloned policy needs
to recover from its own errors.
"""

import concurrent.futures
from typing import Iterator, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from uwm_jax.envs import remote, tabletop


NOISE_CORRELATION = 0.8  # AR(1) coefficient per control step of the injected action noise
NOISE_SEED_OFFSET = 7_919  # noise generator seed = episode seed + this (not the layout's stream)


def expert_episode(env: tabletop.TabletopEnv, seed: int, *, hold_steps: int = 16,
                   max_steps: Optional[int] = None, with_actions: bool = True,
                   action_noise: float = 0.0, wait_steps: int = 0) -> dict:
  """Run the scripted expert from the seeded reset; returns one episode dict.

  action_noise: std of the noise added to the executed (not the recorded) actions; noise
  stops once the task succeeds, so the hold steps are clean.
  wait_steps: zero actions executed (and recorded) before the expert starts, so the episode
  opens with a still scene. A rollout pads its first observation history with the reset
  observation; with wait_steps = T_o - 1 the training windows include that history (measured:
  without it a cloned policy can read the still start as the still end and never move).
  """
  max_steps = max_steps or env.spec.max_episode_steps
  noise_rng = np.random.default_rng(seed + NOISE_SEED_OFFSET)
  innovation = action_noise * np.sqrt(1.0 - NOISE_CORRELATION**2)
  noise = np.zeros(env.action_dim)
  obs = env.reset(seed)
  observations, actions = [obs], []
  for _ in range(wait_steps):
    actions.append(np.zeros(env.action_dim, np.float32))
    obs, _ = env.step(actions[-1])
    observations.append(obs)
  success, remaining = False, None
  for _ in range(max_steps + hold_steps):
    action = env.expert_action().astype(np.float32)
    executed = action
    if action_noise > 0 and not success:
      noise = NOISE_CORRELATION * noise + innovation * noise_rng.standard_normal(env.action_dim)
      executed = np.clip(action + noise, -1.0, 1.0)
    obs, info = env.step(executed)
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
                      *, only_successes: bool = True, progress: bool = True,
                      desc: str = "expert demos", **episode_options) -> Iterator[dict]:
  """Yields one expert episode per seed (failed ones skipped when `only_successes`);
  `episode_options` are `expert_episode`'s (hold_steps, with_actions, action_noise, ...)."""
  env = tabletop.TabletopEnv(spec)
  try:
    for seed in tqdm(seeds, desc=desc, disable=not progress):
      episode = expert_episode(env, seed, **episode_options)
      if episode["success"] or not only_successes:
        yield episode
  finally:
    env.close()


def _episode_list(seeds, spec, only_successes, progress, desc, episode_options):
  return list(generate_episodes(seeds, spec, only_successes=only_successes, progress=progress,
                                desc=desc, **episode_options))


def generate_in_workers(seeds: Sequence[int],
                        spec: tabletop.TabletopSpec = tabletop.TabletopSpec(), *,
                        num_workers: int = 2, only_successes: bool = True,
                        progress: bool = True, desc: str = "expert demos",
                        **episode_options) -> List[dict]:
  """`generate_episodes` split over `num_workers` spawned processes (rendering must not share a
  process with TensorFlow, see `remote.py`); episodes come back in seed order."""
  seeds = list(seeds)
  num_workers = max(1, min(num_workers, len(seeds)))
  parts = [seeds[i::num_workers] for i in range(num_workers)]
  workers = [remote.Worker() for _ in parts]
  try:
    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
      futures = [pool.submit(w.call, _episode_list, part, spec, only_successes,
                             progress and i == 0, f"{desc} (worker 0)", episode_options)
                 for i, (w, part) in enumerate(zip(workers, parts))]
      results = [f.result() for f in futures]
  finally:
    for w in workers:
      w.close()
  episodes = [ep for part in results for ep in part]
  return sorted(episodes, key=lambda ep: seeds.index(ep["seed"]))
