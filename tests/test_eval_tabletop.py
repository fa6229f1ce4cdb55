"""The embedded MuJoCo task: expert success, chance level, seeded resets, replay through the
rollout loop. Rendering runs in spawned worker processes (TensorFlow, which other tests load,
crashes EGL rendering in the same process), so every env-touching step goes through
`uwm_jax.envs.remote.Worker`."""

import numpy as np

from tests.helpers import skip_without
from uwm_jax.envs import remote
from uwm_jax.evaluation import rollout
from uwm_jax.evaluation.policies import RandomPolicy, ReplayPolicy

pytestmark = skip_without("mujoco")

NUM_SEEDS = 40
SEEDS = list(range(1000, 1000 + NUM_SEEDS))


def _expert_and_random(seeds, image_size):
  """Worker-side: expert success per seed, random-policy success per seed, an expert episode."""
  from uwm_jax.envs import demos, tabletop
  spec = tabletop.TabletopSpec(image_size=image_size)
  env = tabletop.TabletopEnv(spec)
  rng = np.random.default_rng(0)
  expert, chance = [], []
  for seed in seeds:
    expert.append(demos.expert_episode(env, seed, hold_steps=0)["success"])
    env.reset(seed)
    ok = False
    for _ in range(spec.max_episode_steps):
      if env.step(rng.uniform(-1, 1, 2))[1]["success"]:
        ok = True
        break
    chance.append(ok)
  a, b = env.reset(seeds[0]), env.reset(seeds[0])
  c = env.reset(seeds[1])
  same = all(np.array_equal(a[k], b[k]) for k in a)
  differ = not np.array_equal(a["state"], c["state"])
  env.close()
  return expert, chance, same, differ, {k: (v.shape, str(v.dtype)) for k, v in a.items()}


def test_expert_succeeds_random_policy_does_not():
  worker = remote.Worker()
  try:
    expert, chance, same, differ, spaces = worker.call(_expert_and_random, SEEDS, 32)
  finally:
    worker.close()
  assert np.mean(expert) >= 0.95, f"expert success {np.mean(expert)}"
  assert np.mean(chance) < 0.10, f"random policy success {np.mean(chance)}"
  assert same, "the same seed must give the same initial observation"
  assert differ, "different seeds must give different layouts"
  assert spaces["front_rgb"] == ((32, 32, 3), "uint8")
  assert spaces["top_rgb"] == ((32, 32, 3), "uint8")


def _expert_actions(seeds):
  from uwm_jax.envs import demos
  return [(ep["action"], ep["success"]) for ep in
          demos.generate_episodes(seeds, hold_steps=0, only_successes=False, progress=False)]


class _Config:
  """The few fields the env factory reads (a stand-in for a full ConfigDict)."""

  class model:  # pylint: disable=invalid-name
    image_shape = (32, 32)
    camera_keys = ("front_rgb", "top_rgb")

  class eval:  # pylint: disable=invalid-name
    pass


def test_replayed_expert_actions_succeed_through_the_rollout_loop():
  seeds = SEEDS[:6]
  worker = remote.Worker()
  try:
    recorded = worker.call(_expert_actions, seeds)
  finally:
    worker.close()
  assert all(ok for _, ok in recorded)
  actions = [a for a, _ in recorded]
  from uwm_jax import envs as envs_lib
  envs, close = envs_lib.make_envs("tabletop_push", 3, _Config)
  try:
    episodes = [rollout.Episode(seed=s) for s in seeds]
    common = dict(camera_keys=_Config.model.camera_keys, exec_steps=8, max_steps=100,
                  progress=False)
    result = rollout.run_rollouts(envs, ReplayPolicy(actions, horizon=16), episodes,
                                  num_videos=1, **common)
    assert result.success_rate == 1.0
    assert [e.length for e in result.episodes] == [len(a) - 1 for a in actions]
    frames = result.episodes[0].frames
    assert frames[0].shape == (32, 64, 3) and len(frames) == result.episodes[0].length + 1
    assert result.episodes[1].frames is None
    # The same seeds with zero actions fail (the replay, not the reset, solves the task).
    zeros = rollout.run_rollouts(envs, ReplayPolicy([0 * a for a in actions], horizon=16),
                                 episodes, **common)
    assert zeros.success_rate == 0.0
    assert all(e.length == 100 for e in zeros.episodes)
    chance = rollout.run_rollouts(envs, RandomPolicy(2, 16, seed=1), episodes, **common)
    assert chance.success_rate < 0.5
  finally:
    close()


def test_unknown_task_name_is_one_clear_error():
  import pytest
  from uwm_jax import envs as envs_lib
  with pytest.raises(ValueError, match="Unknown evaluation task 'tabletop_fly'"):
    envs_lib.make_envs("tabletop_fly", 1, _Config)


def _layout_angles(seeds, start_arc):
  """Worker-side: the angle between (pusher - puck) and (puck - goal) of seeded push layouts,
  and the pusher-puck distances."""
  from uwm_jax.envs import tabletop
  angles, gaps = [], []
  for seed in seeds:
    lay = tabletop.sample_layout(np.random.default_rng(seed), "push", start_arc)
    behind, back = lay["pusher"] - lay["puck"], lay["puck"] - lay["goal"]
    cos = behind @ back / (np.linalg.norm(behind) * np.linalg.norm(back))
    angles.append(np.arccos(np.clip(cos, -1, 1)))
    gaps.append(np.linalg.norm(behind))
  return np.array(angles), np.array(gaps)


def test_push_layouts_start_the_pusher_within_the_arc_behind_the_puck():
  worker = remote.Worker()
  try:
    narrow, gaps = worker.call(_layout_angles, range(200), np.deg2rad(60))
    wide, _ = worker.call(_layout_angles, range(200), np.pi)
  finally:
    worker.close()
  assert narrow.max() <= np.deg2rad(60) + 1e-9 and gaps.min() >= 0.09
  assert wide.max() > np.deg2rad(120)  # the full circle is still available
