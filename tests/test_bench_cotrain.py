"""The cotraining experiment's runs (experiments.cotrain, experiments.demo_runs): each row
trains the config it names on the data it names, every dataset's recording noise is in its
recipe and in the table, and the table reports what the runs measured."""

import json
import os

import pytest

from tests.helpers import skip_without
from uwm_jax import cli_config
from uwm_jax import envs as envs_lib
from experiments import demo_runs as cotrain
from uwm_jax.data import demo_generation


def _config_of(row, seed=3, steps=123, labelled=40, video_weight=None):
  cmd = cotrain.train_command(row, seed, "/tmp/unused", steps=steps, labelled=labelled,
                              video_weight=video_weight)
  spec = next(a.split("=", 1)[1] for a in cmd if a.startswith("--config="))
  overrides = [a for a in cmd if a.startswith("--config.")]
  return cli_config.load_config(spec, overrides)


@pytest.mark.parametrize("row", cotrain.ROWS, ids=cotrain.ROW_NAMES)
def test_every_row_trains_on_the_data_it_names(row):
  c = _config_of(row, video_weight=0.25)
  labelled = c.data.sources["tabletop_push"]
  assert labelled.max_episodes == (40 if row.small else 0)
  assert not labelled.action_free
  assert c.model.predict_next_obs == (not row.name.startswith("dp"))
  assert (c.seed, c.data.seed, c.num_steps) == (3, 3, 123)
  assert not c.eval.after_training  # the benchmark evaluates, in and out of distribution
  video = c.data.sources.get("tabletop_push_video")
  if row.video:
    assert video.action_free and video.weight == 0.25 and c.data.demo_video_episodes > 0
    # The video is recorded by the clean expert, or (matched) exactly like the labelled
    # episodes; the two recordings live in different folders.
    matched = row.name.endswith("_matched")
    assert c.data.demo_video_action_noise == (c.data.demo_action_noise if matched else 0.0)
    assert video.path.endswith("_noise0.5") == matched
  else:
    assert video is None and not c.data.demo_video_episodes
  # Every row shares the demo's generated dataset (same recipe: 600 episodes, same path).
  assert c.data.demo_episodes == 600 and labelled.path == "workdirs/data/tabletop_push"


def test_the_cotraining_config_refuses_the_dp_baseline():
  with pytest.raises(ValueError, match="cannot use"):
    cli_config.load_config("configs/demo_cotrain.py:dp")


def test_unknown_rows_are_refused():
  with pytest.raises(ValueError, match="uwm_small_video"):
    cotrain.select_rows(["uwm_small", "uwm_tiny"])
  assert [r.name for r in cotrain.select_rows(["uwm_full", "dp_small"])] == ["dp_small",
                                                                            "uwm_full"]


def test_table_gives_mean_half_range_and_every_seed():
  runs = {"uwm_small": [dict(seed=0, id_success=0.4, ood_success=0.1, fd_mse=0.02,
                             train_s=600, eval_s=120),
                        dict(seed=1, id_success=0.5, ood_success=0.3, fd_mse=0.04,
                             train_s=660, eval_s=60)],
          "dp_small": [dict(seed=0, id_success=0.2, ood_success=0.0, fd_mse=None,
                            train_s=500, eval_s=100)]}
  table = cotrain.summarize(runs)
  assert [t["row"] for t in table] == ["dp_small", "uwm_small"]  # table order, not dict order
  assert table[0]["fd_latent_mse"] == []  # DP predicts no frames
  text = cotrain.format_table(table)
  assert "| uwm_small | 45 +- 5 (40, 50) | 20 +- 10 (10, 30) | 0.03 +- 0.01 (0.02, 0.04) |" in text
  assert "| dp_small | 20 +- 0 (20) | 0 +- 0 (0) | - |" in text
  assert text.splitlines()[0].endswith("| train CPU min | eval CPU min |")
  assert text.splitlines()[2].endswith("| - | - |")  # runs recorded before CPU seconds were


def test_a_stored_evaluation_is_reused_only_for_the_same_env_and_episode_count():
  found = {"env": "tabletop_push_ood", "num_episodes": 50, "success": 0.1}
  assert cotrain.is_current(found, "tabletop_push_ood", 50)
  assert not cotrain.is_current(found, "tabletop_push_ood_camera", 50)  # another --ood_env
  assert not cotrain.is_current(found, "tabletop_push_ood", 4)
  assert not cotrain.is_current(None, "tabletop_push_ood", 50)


def test_a_finished_run_is_reused_only_for_the_same_recipe(tmp_path):
  row = cotrain.select_rows(["uwm_small_video"])[0]
  cmd = cotrain.train_command(row, 0, str(tmp_path / "a"), steps=4000, labelled=100,
                              video_weight=0.5)
  done = {"steps": 4000, "train_s": 900.0, "command": cmd[1:]}
  assert not cotrain.is_same_run(None, cmd, "w")  # not finished: train
  assert cotrain.is_same_run(done, cmd, "w")
  # The same run linked into another root (another --workdir) is the same run.
  moved = cotrain.train_command(row, 0, str(tmp_path / "b"), steps=4000, labelled=100,
                                video_weight=0.5)
  assert cotrain.is_same_run(done, moved, "w")
  # Another video weight or step count in the same workdir: one clear error, not old numbers.
  for other in (dict(steps=4000, video_weight=0.2), dict(steps=2000, video_weight=0.5)):
    cmd2 = cotrain.train_command(row, 0, str(tmp_path / "a"), labelled=100, **other)
    with pytest.raises(ValueError, match="asked: .*(weight=0.2|steps=2000)"):
      cotrain.is_same_run(done, cmd2, "w")


@pytest.mark.parametrize("spec,noise", [("configs/demo_cotrain.py", 0.0),
                                        ("configs/demo_cotrain.py:matched", 0.5)])
def test_the_video_dataset_recipe_records_its_recording_noise(spec, noise):
  jobs = {j.name: j for j in demo_generation.generation_jobs(cli_config.load_config(spec))}
  assert jobs["tabletop_push"].options["action_noise"] == 0.5
  video = jobs["tabletop_push_video"]
  assert video.action_free and video.options["action_noise"] == noise
  assert not video.options["with_actions"] and video.seeds[0] == demo_generation.VIDEO_SEED_OFFSET


@skip_without("mujoco")
def test_a_runs_record_reports_the_noise_its_datasets_were_recorded_with(tmp_path):
  config = cli_config.load_config("configs/demo_cotrain.py:matched")
  spec = envs_lib.tabletop_spec("tabletop_push", config.model)
  keys = tuple(config.model.camera_keys)
  for job in demo_generation.generation_jobs(config):  # what prepare() writes beside the data
    path = str(tmp_path / job.name)
    config.data.sources[job.name].path = path
    os.makedirs(path)
    with open(os.path.join(path, demo_generation.RECIPE_JSON), "w") as f:
      json.dump(demo_generation.recipe(spec, keys, len(job.seeds), job.options), f)
  datasets = cotrain.dataset_recipes(config)
  assert datasets["tabletop_push_video"] == {
      "path": str(tmp_path / "tabletop_push_video"), "max_episodes": 0, "weight": 0.5,
      "action_free": True, "episodes": 500, "action_noise": 0.5}
  assert datasets["tabletop_push"]["action_noise"] == 0.5
  assert cotrain.describe_datasets(datasets) == (
      "tabletop_push 100 of 600 episodes, noise 0.5, weight 1; "
      "tabletop_push_video 500 episodes action-free, noise 0.5, weight 0.5")
  # The clean-expert recording asked for in the same folder: one clear error, no reuse.
  config.data.demo_video_action_noise = 0.0
  video = next(j for j in demo_generation.generation_jobs(config) if j.action_free)
  with pytest.raises(ValueError, match="action_noise: 0.5 \\(dataset\\) vs 0.0 \\(config\\)"):
    demo_generation.check_recipe(video.path, demo_generation.recipe(spec, keys, 500,
                                                                    video.options))
