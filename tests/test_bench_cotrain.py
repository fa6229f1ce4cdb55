"""The cotraining experiment's runs (uwm_jax.bench.cotrain): each row trains the config it
names on the data it names, and the table reports what the runs measured."""

import pytest

from uwm_jax import cli_config
from uwm_jax.bench import cotrain


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
