"""The embedded MuJoCo task: expert success, chance level, seeded resets, replay through the
rollout loop. Rendering runs in spawned worker processes (TensorFlow, which other tests load,
crashes EGL rendering in the same process), so every env-touching step goes through
`uwm_jax.envs.remote.Worker`."""

import numpy as np

from tests.helpers import skip_without
from uwm_jax.envs import remote
from uwm_jax.evaluation import rollout
from uwm_jax.evaluation.rollout_policies import RandomPolicy, ReplayPolicy

pytestmark = skip_without("mujoco")

NUM_SEEDS = 40
SEEDS = list(range(1000, 1000 + NUM_SEEDS))


def _expert_and_random(seeds, image_size):
  """Worker-side: expert success per seed, random-policy success on every other seed (in an env
  that renders nothing: success is the physics' alone), the rendered observations of reset
  twice with one seed and with another."""
  from uwm_jax.envs import demos, tabletop
  spec = tabletop.TabletopSpec(image_size=image_size)
  blind = tabletop.TabletopEnv(spec, images=False)
  rng = np.random.default_rng(0)
  expert, chance = [], []
  for i, seed in enumerate(seeds):
    expert.append(demos.expert_episode(blind, seed, hold_steps=0)["success"])
    if i % 2:  # the random policy on every other seed: chance is ~0
      continue
    blind.reset(seed)
    ok = False
    for _ in range(spec.max_episode_steps):
      if blind.step(rng.uniform(-1, 1, 2))[1]["success"]:
        ok = True
        break
    chance.append(ok)
  blind.close()
  env = tabletop.TabletopEnv(spec)
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
  finally:
    close()
  # Envs that render nothing (the random baseline's) play the same episodes: same outcomes and
  # lengths, black images of the same shape.
  blind, close_blind = envs_lib.make_envs("tabletop_push", 3, _Config, images=False)
  try:
    sightless = rollout.run_rollouts(blind, ReplayPolicy(actions, horizon=16), episodes,
                                     num_videos=1, **common)
    # The same seeds with zero actions fail (the replay, not the reset, solves the task); so
    # does chance. (Policies that never look: the envs render nothing.)
    zeros = rollout.run_rollouts(blind, ReplayPolicy([0 * a for a in actions], horizon=16),
                                 episodes, **common)
    assert zeros.success_rate == 0.0
    assert all(e.length == 100 for e in zeros.episodes)
    chance = rollout.run_rollouts(blind, RandomPolicy(2, 16, seed=1), episodes, **common)
    assert chance.success_rate < 0.5
  finally:
    close_blind()
  assert ([(e.success, e.length) for e in sightless.episodes]
          == [(e.success, e.length) for e in result.episodes])
  blind_frames = sightless.episodes[0].frames
  assert blind_frames[-1].shape == (32, 64, 3) and not np.any(blind_frames[-1])
  assert np.any(frames[-1])


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


# ---------------------------------------------------------------- out-of-distribution variant
def _id_and_ood(names, seeds, num_actions):
  """Worker-side, per env name: the initial state vectors per seed, (qpos, qvel) after the same
  random actions from each seed, the first observation's images, and the distractor's place."""
  from uwm_jax import envs as envs_lib
  from uwm_jax.envs import tabletop
  out = {}
  for name in names:
    task, shifts = envs_lib.embedded_task_shifts(name)
    env = tabletop.TabletopEnv(tabletop.TabletopSpec(task=task, shifts=shifts))
    rng = np.random.default_rng(0)
    states, physics, images, distractor = [], [], [], []
    for seed in seeds:
      obs = env.reset(seed)
      states.append(obs["state"])
      images.append({k: obs[k] for k in env.camera_keys})
      distractor.append(env.data.mocap_pos[-1, :2].copy() if "distractor" in shifts else None)
      for _ in range(num_actions):
        env.step(rng.uniform(-1, 1, 2))
      physics.append(np.concatenate([env.data.qpos, env.data.qvel, env.data.ctrl]))
    out[name] = (np.stack(states), np.stack(physics), images, distractor)
    env.close()
  return out


def test_ood_variant_changes_only_the_images():
  from uwm_jax import envs as envs_lib
  ood = [n for n in envs_lib.EMBEDDED_TASKS if n.startswith("tabletop_push_ood")]
  assert len(ood) == 1 + len(envs_lib.OOD_SHIFTS)
  seeds = SEEDS[:3]
  worker = remote.Worker()
  try:
    got = worker.call(_id_and_ood, ["tabletop_push"] + ood, seeds, 20)
    again = worker.call(_id_and_ood, ["tabletop_push_ood"], seeds, 0)["tabletop_push_ood"]
  finally:
    worker.close()
  states, physics, images, _ = got["tabletop_push"]
  for name in ood:
    o_states, o_physics, o_images, distractor = got[name]
    np.testing.assert_array_equal(o_states, states, err_msg=name)  # same placements
    np.testing.assert_array_equal(o_physics, physics, err_msg=name)  # same dynamics
    for seed_images, id_images in zip(o_images, images):
      assert any(not np.array_equal(seed_images[k], id_images[k]) for k in id_images), name
    if name == "tabletop_push_ood":
      for k in images[0]:  # the full variant changes both cameras
        assert not np.array_equal(o_images[0][k], images[0][k]), k
      for xy, state in zip(distractor, o_states):
        assert min(np.linalg.norm(xy - state[i:i + 2]) for i in (0, 2, 4)) > 0.08
      np.testing.assert_array_equal(again[3], distractor)  # seeded like the layout


def test_ood_variant_runs_through_the_rollout_loop_like_the_task():
  seeds = SEEDS[:3]
  worker = remote.Worker()
  try:
    actions = [a for a, _ in worker.call(_expert_actions, seeds)]
  finally:
    worker.close()
  from uwm_jax import envs as envs_lib
  results = {}
  for name in ("tabletop_push", "tabletop_push_ood"):
    envs, close = envs_lib.make_envs(name, 3, _Config)
    try:
      results[name] = rollout.run_rollouts(
          envs, ReplayPolicy(actions, horizon=16), [rollout.Episode(seed=s) for s in seeds],
          camera_keys=_Config.model.camera_keys, exec_steps=8, max_steps=100, num_videos=1,
          progress=False)
    finally:
      close()
  base, ood = results["tabletop_push"], results["tabletop_push_ood"]
  assert ood.success_rate == base.success_rate == 1.0
  assert [e.length for e in ood.episodes] == [e.length for e in base.episodes]
  assert not np.array_equal(ood.episodes[0].frames[0], base.episodes[0].frames[0])
