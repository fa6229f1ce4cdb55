"""The embedded task as a data source: expert episodes -> RLDS -> array_record, read back by
the training loader in the batch format; the demo config's wiring."""

import numpy as np
import pytest

from tests.helpers import skip_without, tiny_push_config
from uwm_jax import batch as B_
from uwm_jax.data import demo_generation
from uwm_jax.data import loader as loader_lib
from uwm_jax.data import source_configs
from uwm_jax.envs import remote

pytestmark = skip_without("mujoco")


def test_generated_demos_feed_the_training_loader(tmp_path):
  config = tiny_push_config()
  path = str(tmp_path / "tabletop_push")
  config.data.sources = {"tabletop_push": source_configs.array_record(path)}
  config.data.val_fraction = 0.2
  config.data.demo_task = "tabletop_push"
  config.data.demo_episodes = 5
  made = demo_generation.prepare(config)
  assert made == {"tabletop_push": path} and demo_generation.dataset_ready(path)
  assert demo_generation.prepare(config) == {}  # generated once, then reused
  loader = loader_lib.make_train_loader(config)
  batch = next(iter(loader))
  B_.validate_batch(batch, config.model)
  assert batch[B_.ACTION_MASK].all()
  assert np.abs(batch[B_.ACTION]).max() <= 1.0 + 1e-6
  stats = loader.dataset_stats["action"]
  assert len(stats["min"]) == 2 and min(stats["min"]) >= -1.0 and max(stats["max"]) <= 1.0
  # Frames are the task's renders: the table (bright) fills most of the top view.
  assert batch[B_.OBS][:, 1].mean() > 100
  loader.close()
  # The dataset remembers how it was made: other generation settings are one clear error,
  # not a silent reuse of the old episodes.
  config.data.demo_action_noise = 0.5
  with pytest.raises(ValueError, match="action_noise: 0.0 \\(dataset\\) vs 0.5 \\(config\\)"):
    demo_generation.prepare(config)


def _clean_and_noisy_episodes(seeds, noise):
  """Worker-side (rendering): expert episodes without and with action noise, and the expert's
  action recomputed from every recorded state of the noisy ones."""
  from uwm_jax.envs import demos, tabletop
  env = tabletop.TabletopEnv(tabletop.TabletopSpec())
  out = []
  for seed in seeds:
    clean = demos.expert_episode(env, seed, hold_steps=0)
    noisy = demos.expert_episode(env, seed, hold_steps=0, action_noise=noise)
    states = noisy["observation"]["state"]
    relabel = np.stack([tabletop.scripted_expert(s[:2], s[2:4], s[4:6], env.spec)
                        for s in states[:-1]])
    out.append((clean["observation"]["state"], clean["success"], states, noisy["success"],
                noisy["action"][:-1], relabel))
  env.close()
  return out


def test_noisy_expert_visits_other_states_and_records_the_experts_actions():
  worker = remote.Worker()
  try:
    episodes = worker.call(_clean_and_noisy_episodes, [3, 4, 5, 6], 0.5)
  finally:
    worker.close()
  moved_off = 0
  for clean_states, clean_ok, states, ok, recorded, relabel in episodes:
    assert clean_ok and ok
    # The recorded action is the clean expert's at the state it was issued in ...
    np.testing.assert_allclose(recorded, relabel, atol=1e-4)  # states are stored as float32
    # ... while the executed one was perturbed: the trajectory leaves the clean expert's.
    n = min(len(clean_states), len(states))
    moved_off += np.abs(clean_states[:n, :4] - states[:n, :4]).max() > 0.01
  assert moved_off == len(episodes)


def test_demo_config_and_default_workdir():
  import importlib.util
  spec = importlib.util.spec_from_file_location("demo_config", "configs/demo.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for variant in ("", "dp"):
    c = module.get_config(variant)
    assert c.eval.env == "tabletop_push" and c.eval.after_training
    assert "tabletop_push" in c.data.sources and c.data.demo_episodes > 0
    assert c.data.demo_task == c.eval.env
  from uwm_jax.cli_config import default_workdir
  assert default_workdir("configs/demo.py") == "workdirs/demo"
  assert default_workdir("configs/demo.py:dp") == "workdirs/demo_dp"


def _waiting_episode(seed):
  from uwm_jax.envs import demos, tabletop
  env = tabletop.TabletopEnv(tabletop.TabletopSpec())
  plain = demos.expert_episode(env, seed, hold_steps=0)
  waited = demos.expert_episode(env, seed, hold_steps=0, wait_steps=1)
  env.close()
  return plain, waited


def test_wait_steps_open_the_episode_with_the_rollouts_padded_history():
  worker = remote.Worker()
  try:
    plain, waited = worker.call(_waiting_episode, 11)
  finally:
    worker.close()
  obs = waited["observation"]
  assert waited["success"]
  assert not waited["action"][0].any()  # the wait is a recorded zero action ...
  for key in ("front_rgb", "top_rgb", "state"):  # ... after which nothing has moved
    np.testing.assert_array_equal(obs[key][0], obs[key][1])
  # Then the expert does what it does without the wait.
  np.testing.assert_allclose(waited["action"][1:], plain["action"], atol=1e-6)


def _recipes():
  """Worker-side (MuJoCo): the recipes of the in-distribution and the OOD task."""
  from uwm_jax import envs as envs_lib
  from uwm_jax.envs import tabletop
  out = {}
  for name in ("tabletop_push", "tabletop_push_ood"):
    task, shifts = envs_lib.embedded_task_shifts(name)
    spec = tabletop.TabletopSpec(task=task, shifts=shifts)
    out[name] = demo_generation.recipe(spec, ("front_rgb",), 4, {"hold_steps": 2})
  return out


def test_recipe_survives_json_and_names_the_ood_shifts_only_when_there_are_some():
  import json
  worker = remote.Worker()
  try:
    got = worker.call(_recipes)
  finally:
    worker.close()
  for recipe in got.values():
    assert json.loads(json.dumps(recipe)) == recipe  # a stored recipe matches a new one
  # Datasets generated before the OOD variant existed keep matching their recipe.
  assert "shifts" not in got["tabletop_push"]["spec"]
  assert got["tabletop_push_ood"]["spec"]["shifts"] == ["lighting", "table", "distractor",
                                                         "camera"]
  # ... and the shifts' settings (colours, distractor, camera moves) through the scene hash.
  assert got["tabletop_push_ood"]["scene_sha1"].startswith(got["tabletop_push"]["scene_sha1"] +
                                                           "+ood")
