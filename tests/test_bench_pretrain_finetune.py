"""The pretrain -> finetune experiment (experiments.pretrain_finetune): every stage-2 row
finetunes the stage-1 run it names on the downstream task with one recipe, refuses to start
without it, and a changed recipe (of either stage) is an error instead of old numbers."""

import json
import os

import pytest

from tests.helpers import run_cli
from experiments import demo_runs
from experiments import pretrain_finetune as pf

ROOT = "/tmp/pf_root"


def _pretrain_cmd(row_name, seed=0, root=ROOT, steps=4000):
  row = demo_runs.select_rows([row_name])[0]
  return pf.pretrain_command(row, seed, root, steps=steps, labelled=100)


def _finish(workdir, cmd, pretrained=(), checkpoint=True):
  """What a finished run leaves: its record and (unless told) a checkpoint step folder."""
  os.makedirs(os.path.join(workdir, "checkpoints", "4000" if checkpoint else "tmp"))
  with open(os.path.join(workdir, demo_runs.TRAIN_JSON), "w") as f:
    json.dump({"train_s": 1.0, "command": cmd[1:], "pretrained": list(pretrained)}, f)


@pytest.mark.parametrize("row", pf.ROWS, ids=pf.ROW_NAMES)
def test_every_finetuned_row_loads_its_stage1_run_and_shares_one_recipe(row):
  c = demo_runs.config_of(pf.finetune_command(row, 2, ROOT, steps=321))
  assert list(c.data.sources) == [pf.DOWNSTREAM_TASK] and c.data.demo_task == pf.DOWNSTREAM_TASK
  assert c.eval.env == pf.DOWNSTREAM_TASK and not c.eval.after_training
  assert (c.seed, c.data.seed, c.num_steps) == (2, 2, 321)
  if row.pretrained:
    assert c.init_from == f"{ROOT}/stage1/{row.pretrained}_seed2/checkpoints"
    # init_from needs the same network: the stage-1 row's model config, field by field.
    pre = demo_runs.config_of(_pretrain_cmd(row.pretrained, seed=2))
    assert c.model.to_dict() == pre.model.to_dict()
    assert pre.num_steps == 4000 and pre.data.sources["tabletop_push"].max_episodes == 100
  else:
    assert not c.init_from
  # One stage-2 recipe for every row: only the model (UWM / DP) and init_from differ.
  ref = demo_runs.config_of(pf.finetune_command(pf.ROWS[-1], 2, ROOT, steps=321))
  assert (c.optim.to_dict(), c.data.to_dict()) == (ref.optim.to_dict(), ref.data.to_dict())
  assert c.model.predict_next_obs == row.name.startswith("uwm")


def test_the_video_row_pretrains_on_video_recorded_like_its_labelled_episodes():
  rows = {r.name: r for r in pf.ROWS}
  c = demo_runs.config_of(_pretrain_cmd(rows["uwm_pv_f"].pretrained))
  video = c.data.sources["tabletop_push_video"]
  assert video.action_free and c.data.demo_video_episodes > 0
  assert c.data.demo_video_action_noise == c.data.demo_action_noise == 0.5
  for name in ("uwm_p_f", "dp_p_f"):
    assert "tabletop_push_video" not in demo_runs.config_of(
        _pretrain_cmd(rows[name].pretrained)).data.sources


def test_stage2_refuses_to_start_without_its_finished_stage1_run(tmp_path):
  root = str(tmp_path)
  row = pf.select_rows(["uwm_pv_f"])[0]
  pre_cmd = _pretrain_cmd(row.pretrained, root=root)
  pre_dir = pf.run_dir(root, 1, row.pretrained, 0)
  with pytest.raises(FileNotFoundError, match="uwm_small_video_matched seed 0.*not finished"):
    pf.check_pretrained(row, 0, pre_cmd, pre_dir)  # nothing there
  _finish(pre_dir, pre_cmd, checkpoint=False)
  with pytest.raises(FileNotFoundError, match="not finished"):
    pf.check_pretrained(row, 0, pre_cmd, pre_dir)  # a record but no checkpoint step
  os.rmdir(os.path.join(pre_dir, "checkpoints", "tmp"))
  os.makedirs(os.path.join(pre_dir, "checkpoints", "4000"))
  pf.check_pretrained(row, 0, pre_cmd, pre_dir)  # finished: stage 2 may start
  # A stage-1 run of another recipe (here: other steps) is refused, not finetuned from.
  with pytest.raises(ValueError, match="another recipe.*asked: .*num_steps=2000"):
    pf.check_pretrained(row, 0, _pretrain_cmd(row.pretrained, root=root, steps=2000), pre_dir)


def test_the_cli_stops_a_stage2_row_without_its_stage1_run_in_one_error_line(tmp_path):
  proc = run_cli("experiments.pretrain_finetune", f"--workdir={tmp_path}", "--seeds=0",
                 "--stage=finetune", "--rows=uwm_p_f", timeout=120)
  assert proc.returncode == 2, proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "stage-1 run uwm_small seed 0" in errors[0], proc.stderr
  assert not os.path.exists(pf.run_dir(str(tmp_path), 2, "uwm_p_f", 0))  # nothing started


def test_a_finished_stage2_run_is_reused_only_for_the_same_recipe_of_both_stages(tmp_path):
  root = str(tmp_path)
  row = pf.select_rows(["uwm_p_f"])[0]
  cmd = pf.finetune_command(row, 0, root, steps=1500)
  pre = demo_runs.run_recipe(_pretrain_cmd(row.pretrained, root=root)[1:])
  workdir = pf.run_dir(root, 2, row.name, 0)
  _finish(workdir, cmd, pretrained=pre)
  done = demo_runs.read_json(os.path.join(workdir, demo_runs.TRAIN_JSON))
  assert demo_runs.is_same_run(done, cmd, workdir, pre)
  # The same runs under another root (init_from follows the root) are the same runs.
  moved = pf.finetune_command(row, 0, str(tmp_path / "elsewhere"), steps=1500)
  assert demo_runs.is_same_run(done, moved, workdir, pre)
  with pytest.raises(ValueError, match="asked: .*num_steps=1000"):  # other finetune steps
    demo_runs.is_same_run(done, pf.finetune_command(row, 0, root, steps=1000), workdir, pre)
  other_pre = demo_runs.run_recipe(_pretrain_cmd(row.pretrained, root=root, steps=2000)[1:])
  with pytest.raises(ValueError, match="asked: .*pretrained:--config.num_steps=2000"):
    demo_runs.is_same_run(done, cmd, workdir, other_pre)  # another stage-1 recipe
  with pytest.raises(ValueError, match="asked: .*init_from=stage1/uwm_small_video_matched"):
    demo_runs.is_same_run(done, pf.finetune_command(pf.select_rows(["uwm_pv_f"])[0], 0, root,
                                                    steps=1500), workdir, pre)


def test_the_table_is_rebuilt_from_every_run_on_disk(tmp_path):
  root = str(tmp_path)
  for stage, row, seed, rate in ((1, "uwm_small", 1, 0.5), (1, "uwm_small", 0, 0.3),
                                 (2, "uwm_f", 0, 0.9)):
    workdir = pf.run_dir(root, stage, row, seed)
    os.makedirs(workdir)
    pf.finish_run(row, seed, workdir, {"train_s": 60.0, "train_cpu_s": 120.0},
                  {"id_success": rate, "ood_success": 0.1, "fd_mse": None, "eval_s": 30.0,
                   "eval_cpu_s": 45.0}, {"id": "x", "ood": "y"})
  os.makedirs(pf.run_dir(root, 2, "uwm_p_f", 0))  # unfinished: not in the table
  results = pf.collect(root)
  assert [r["seed"] for r in results["uwm_small"]] == [0, 1] and "uwm_p_f" not in results
  table = demo_runs.summarize(results, pf.TABLE_ORDER)
  assert [t["row"] for t in table] == ["uwm_small", "uwm_f"]
  text = demo_runs.format_table(table)
  assert "| uwm_small | 40 +- 10 (30, 50) | 10 +- 0 (10, 10) | - | 1 +- 0 (1, 1) |" in text
  assert text.splitlines()[2].endswith("| 2 +- 0 (2, 2) | 0.75 +- 0 (0.75, 0.75) |")
