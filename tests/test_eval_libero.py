"""LIBERO wrapper: BDDL OOD rewrite and observation mapping (always), and with the `libero`
extra installed (scripts/install_libero.sh; CI installs it) env creation, reset, observation
mapping and one short rollout, in a worker process."""

import numpy as np
import pytest

from uwm_jax import config_base
from uwm_jax.evaluation import rollout
from uwm_jax.envs import libero_env
from uwm_jax.evaluation.rollout_policies import RandomPolicy

BDDL = """(define (problem LIBERO_Study_Tabletop_Manipulation)
  (:domain robosuite)
  (:language pick up the book)
    (:regions
      (black_book_init_region (:target study_table) (:ranges ((-0.025 0.125 0.025 0.175))))
      (mug_init_region (:target study_table) (:ranges ((0.075 -0.025 0.125 0.025))))
      (back_contain_region (:target desk_caddy_1))
    )
  (:fixtures study_table - study_table desk_caddy_1 - desk_caddy)
  (:objects black_book_1 - black_book white_yellow_mug_1 - white_yellow_mug)
  (:obj_of_interest black_book_1 desk_caddy_1)
  (:init (On black_book_1 study_table_black_book_init_region)
         (On white_yellow_mug_1 study_table_mug_init_region))
  (:goal (And (In black_book_1 desk_caddy_1_back_contain_region)))
)
"""


def test_ood_bddl_widens_object_ranges_and_removes_background_objects():
  out = libero_env.ood_bddl(BDDL)
  assert "white_yellow_mug_1" not in out
  assert "black_book_1 - black_book" in out
  problem = libero_env._parse_sexpr(out)[0]  # pylint: disable=protected-access
  regions = {r[0]: r for r in libero_env._section(problem, ":regions")[1:]}  # pylint: disable=protected-access
  book = [float(v) for v in regions["black_book_init_region"][2][1][0]]
  np.testing.assert_allclose(book, [-0.055, 0.095, 0.055, 0.205])
  mug = [float(v) for v in regions["mug_init_region"][2][1][0]]
  np.testing.assert_allclose(mug, [0.075, -0.025, 0.125, 0.025])  # background: untouched
  assert "(In black_book_1 desk_caddy_1_back_contain_region)" in out


def test_observation_mapping_renames_and_flips():
  env = libero_env.LiberoEnv.__new__(libero_env.LiberoEnv)
  env.camera_keys = ("agentview_rgb", "eye_in_hand_rgb")
  env._libero_keys = ["agentview_image", "robot0_eye_in_hand_image"]  # pylint: disable=protected-access
  env.flip = True
  raw = {"agentview_image": np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3),
         "robot0_eye_in_hand_image": np.zeros((2, 3, 3), np.uint8),
         "robot0_eef_pos": np.ones(3)}
  obs = env.observation(raw)
  np.testing.assert_array_equal(obs["agentview_rgb"], raw["agentview_image"][::-1])
  assert obs["eye_in_hand_rgb"].shape == (2, 3, 3)
  assert obs["robot0_eef_pos"].dtype == np.float32


def test_paper_task_names_resolve_and_unknown_names_fail():
  if not libero_env.libero_available():
    pytest.skip("libero extra not installed")
  for name in libero_env.PAPER_TASKS:
    assert libero_env.resolve_task(name).startswith("libero_10/")
  stem = libero_env.PAPER_TASKS["mug_mug"].split("/")[1]
  assert libero_env.resolve_task(stem) == libero_env.PAPER_TASKS["mug_mug"]
  with pytest.raises(ValueError, match="Unknown LIBERO task 'no_such_task'"):
    libero_env.resolve_task("no_such_task")


def test_libero_env_creation_reset_mapping_and_short_rollout():
  if not libero_env.libero_available():
    pytest.skip("libero extra not installed")
  from uwm_jax import envs as envs_lib
  config = config_base.base_config()
  config.model.camera_keys = config_base.LIBERO_CAMERA_KEYS
  config.model.image_shape = (64, 64)
  config.eval.libero_ood = True
  envs, close = envs_lib.make_envs("libero/book_caddy", 1, config)
  try:
    env = envs[0]
    assert env.camera_keys == config_base.LIBERO_CAMERA_KEYS and env.action_dim == 7
    obs = env.reset(seed=0)
    for key in config_base.LIBERO_CAMERA_KEYS:
      assert obs[key].shape == (64, 64, 3) and obs[key].dtype == np.uint8
    assert obs["robot0_eef_pos"].shape == (3,)
    result = rollout.run_rollouts(
        envs, RandomPolicy(7, 4, low=-0.1, high=0.1), [rollout.Episode(seed=0)],
        camera_keys=config_base.LIBERO_CAMERA_KEYS, exec_steps=4, max_steps=4, num_videos=1,
        progress=False)
    episode = result.episodes[0]
    assert episode.length == 4 and not episode.success
    assert episode.frames[0].shape == (64, 128, 3)
  finally:
    close()
