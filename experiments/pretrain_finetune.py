"""Does action-free video help a finetuned policy? The paper's two-stage protocol, embedded task.

  python -m experiments.pretrain_finetune --workdir=workdirs/pretrain_finetune --seeds=0,1,2

The paper never evaluates a cotrained model directly: it pretrains on labelled episodes, or
cotrains on those plus other episodes with the actions removed, then finetunes every model on a
downstream task's demonstrations and evaluates that (the reference's DROID pretrain / cotrain /
finetune scripts). Here, one run per row and seed, each a `python -m uwm_jax.train` subprocess:

Stage 1, pretraining on the push task (experiments.cotrain's rows and commands, `--pretrain_steps`
steps; in <workdir>/stage1, evaluated on tabletop_push in and out of distribution):
  dp_small                 DP on P: the demo's first `--labelled` push episodes
  uwm_small                UWM on P
  uwm_small_video_matched  UWM on P + V: the action-free push episodes of other seeds, recorded
                           exactly like P (the same executed-action noise), a third of each batch
Stage 2, the downstream task F (configs/demo_reach.py: reach in the same scene, a task stage 1
never saw; the same recipe for every row, `--finetune_steps` steps; in <workdir>/stage2,
evaluated on tabletop_reach in and out of distribution):
  dp_p_f     DP finetuned (`--config.init_from`) from dp_small of the same seed
  uwm_p_f    UWM finetuned from uwm_small
  uwm_pv_f   UWM finetuned from uwm_small_video_matched
  dp_f       DP trained on F alone (the same recipe from a random init)
  uwm_f      UWM trained on F alone

Columns (both stages): success on 50 seeded episodes (`--num_episodes`) in distribution and
with the visual shift `--ood_shift` (distractor: a yellow cube; "" = all four shifts), the
forward-dynamics MSE on the run's held-out episodes (UWM only), wall and CPU minutes of
training and of evaluation (CPU seconds of the training process and its children: on a
shared machine the comparable figure). Prints one table (mean +- half the range over seeds,
the per-seed values), every row's datasets (episodes, recording noise) and one JSON line;
writes <workdir>/results.json and the rollout / forward-dynamics videos into <workdir>/videos/.

Resumable: a run whose record and evaluations exist is read, not redone (rerun the same command
after a crash or in a later session); a finished run of another recipe in the same workdir is
refused with one error line; a stage-2 run also records its stage-1 run's recipe. A stage-2 row
whose stage-1 run has not finished fails before it starts, with one error line
(`--stage=finetune` runs stage 2 only; the default runs what each seed needs, stage 1 first).
Several invocations may share one workdir (e.g. one per seed, at most two at a time on two
cores): the table is rebuilt from every finished run's record on disk.
"""

import dataclasses
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

from absl import flags

from uwm_jax import cli_config
from uwm_jax import envs as envs_lib
from experiments import demo_runs as runs
from uwm_jax.data import array_record_format as fmt

PRETRAIN_TASK = runs.TASK
DOWNSTREAM_TASK = "tabletop_reach"  # configs/demo_reach.py's
DOWNSTREAM_CONFIG = "configs/demo_reach.py"
RUN_JSON = "pretrain_finetune_run.json"  # a finished and evaluated run's numbers
STAGES = ("both", "pretrain", "finetune")

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/pretrain_finetune",
                               "Root of every run's workdir (stage1/, stage2/), the results and "
                               "the videos.")
_ROWS = flags.DEFINE_list("rows", None, "Stage-2 rows to run (default: all, in table order); "
                          "their stage-1 rows come with them.")
_STAGE = flags.DEFINE_enum("stage", "both", STAGES, "both: each seed's stage-1 runs, then its "
                           "stage-2 runs; pretrain: stage 1 only; finetune: stage 2 only "
                           "(its stage-1 runs must have finished).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (config.seed and data.seed); a "
                           "stage-2 run starts from the stage-1 run of its own seed.")
_PRETRAIN_STEPS = flags.DEFINE_integer("pretrain_steps", None, "Stage-1 steps (default: "
                                       "configs/demo.py's num_steps).")
_FINETUNE_STEPS = flags.DEFINE_integer("finetune_steps", None, "Stage-2 steps (default: "
                                       f"{DOWNSTREAM_CONFIG}'s num_steps).")
_LABELLED = flags.DEFINE_integer("labelled", 100, "Labelled push episodes of P.")
_EPISODES = flags.DEFINE_integer("num_episodes", 50, "Rollout episodes per column.")
_OOD_SHIFT = flags.DEFINE_string("ood_shift", "distractor",
                                 f"The OOD column's visual shift ({', '.join(envs_lib.OOD_SHIFTS)}"
                                 "), or '' for all four at once.")


@dataclasses.dataclass(frozen=True)
class FinetuneRow:
  name: str
  config: str  # the downstream config file[:variant]
  pretrained: Optional[str]  # the stage-1 row (experiments.cotrain) it starts from; None = F alone


PRETRAIN_ROWS = ("dp_small", "uwm_small", "uwm_small_video_matched")
ROWS = (
    FinetuneRow("dp_p_f", f"{DOWNSTREAM_CONFIG}:dp", "dp_small"),
    FinetuneRow("uwm_p_f", DOWNSTREAM_CONFIG, "uwm_small"),
    FinetuneRow("uwm_pv_f", DOWNSTREAM_CONFIG, "uwm_small_video_matched"),
    FinetuneRow("dp_f", f"{DOWNSTREAM_CONFIG}:dp", None),
    FinetuneRow("uwm_f", DOWNSTREAM_CONFIG, None),
)
ROW_NAMES = tuple(r.name for r in ROWS)
TABLE_ORDER = PRETRAIN_ROWS + ROW_NAMES


def select_rows(names: Optional[Sequence[str]]) -> List[FinetuneRow]:
  return runs.select(ROWS, names)


def pretrain_rows(rows: Sequence[FinetuneRow]) -> List[runs.Row]:
  """The stage-1 rows (experiments.cotrain's) that `rows` start from, in table order."""
  wanted = {r.pretrained for r in rows if r.pretrained}
  return [r for r in runs.ROWS if r.name in wanted]


def run_dir(root: str, stage: int, row: str, seed: int) -> str:
  return os.path.join(root, f"stage{stage}", f"{row}_seed{seed}")


def ood_env(task: str, shift: str) -> str:
  """`tabletop_reach`, "distractor" -> "tabletop_reach_ood_distractor" ("" = every shift)."""
  return task + envs_lib.OOD_SUFFIX + (f"_{shift}" if shift else "")


def pretrain_command(row: runs.Row, seed: int, root: str, *, steps: int,
                     labelled: int) -> List[str]:
  """Stage 1: experiments.cotrain's command of the row (its config's own video weight)."""
  return runs.train_command(row, seed, run_dir(root, 1, row.name, seed), steps=steps,
                               labelled=labelled)


def finetune_command(row: FinetuneRow, seed: int, root: str, *, steps: int) -> List[str]:
  """Stage 2: the downstream config, the same for every row; init_from = the checkpoints of
  the row's stage-1 run of the same seed (none for the F-alone rows)."""
  cmd = [sys.executable, "-m", "uwm_jax.train", f"--config={row.config}",
         f"--workdir={run_dir(root, 2, row.name, seed)}", f"--config.seed={seed}",
         f"--config.data.seed={seed}", f"--config.num_steps={steps}",
         "--config.eval.after_training=False"]
  if row.pretrained:
    cmd.append(runs.INIT_FROM + os.path.join(run_dir(root, 1, row.pretrained, seed),
                                                "checkpoints"))
  return cmd


def has_checkpoint(workdir: str) -> bool:
  ckpts = os.path.join(workdir, "checkpoints")
  return os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts))


def check_pretrained(row: FinetuneRow, seed: int, pretrain_cmd: List[str],
                     workdir: str) -> None:
  """Raise FileNotFoundError unless the row's stage-1 run (in `workdir`) finished with
  `pretrain_cmd`'s recipe (ValueError when it finished with another one) and left a
  checkpoint."""
  done = runs.read_json(os.path.join(workdir, runs.TRAIN_JSON))
  if not runs.is_same_run(done, pretrain_cmd, workdir) or not has_checkpoint(workdir):
    raise FileNotFoundError(
        f"stage-2 row {row.name} seed {seed} starts from the stage-1 run {row.pretrained} seed "
        f"{seed} ({workdir}), which has not finished: run it first (--stage=pretrain, or the "
        "default --stage=both).")


def default_steps(config_spec: str) -> int:
  return int(cli_config.load_config(config_spec).num_steps)


def collect(root: str) -> Dict[str, List[dict]]:
  """Every finished run's numbers under `root` ({row: [run, ...]} sorted by seed): rebuilt from
  disk, so that invocations sharing the root (one per seed) all see every run."""
  results: Dict[str, List[dict]] = {}
  for stage in (1, 2):
    folder = os.path.join(root, f"stage{stage}")
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
      run = runs.read_json(os.path.join(folder, name, RUN_JSON))
      if run is not None:
        results.setdefault(run["row"], []).append(run)
  return {k: sorted(v, key=lambda r: r["seed"]) for k, v in results.items()}


def finish_run(row: str, seed: int, workdir: str, trained: dict, evaluated: dict,
               envs: Dict[str, str]) -> dict:
  run = dict(row=row, seed=seed, envs=envs, train_s=trained["train_s"],
             train_cpu_s=trained.get("train_cpu_s"), datasets=trained.get("datasets"),
             pretrained=trained.get("pretrained", []), **evaluated)
  fmt.write_json_atomic(os.path.join(workdir, RUN_JSON), run)
  return run


def recipe(pretrain_steps: int, finetune_steps: int) -> dict:
  """What every run of this invocation shares (results.json and the JSON line)."""
  return {"pretrain_steps": pretrain_steps, "finetune_steps": finetune_steps,
          "labelled": _LABELLED.value, "num_episodes": _EPISODES.value,
          "ood_shift": _OOD_SHIFT.value or "all", "downstream": DOWNSTREAM_CONFIG}


def main(argv):
  del argv
  rows = select_rows(_ROWS.value)
  if _OOD_SHIFT.value and _OOD_SHIFT.value not in envs_lib.OOD_SHIFTS:
    raise ValueError(f"--ood_shift={_OOD_SHIFT.value}: expected one of "
                     f"{', '.join(envs_lib.OOD_SHIFTS)} or ''.")
  seeds = [int(s) for s in _SEEDS.value]
  pre_steps = _PRETRAIN_STEPS.value or default_steps("configs/demo.py")
  ft_steps = _FINETUNE_STEPS.value or default_steps(DOWNSTREAM_CONFIG)
  root = os.path.abspath(_WORKDIR.value)
  videos_dir = os.path.join(root, "videos")
  os.makedirs(videos_dir, exist_ok=True)
  envs1 = {"id": PRETRAIN_TASK, "ood": ood_env(PRETRAIN_TASK, _OOD_SHIFT.value)}
  envs2 = {"id": DOWNSTREAM_TASK, "ood": ood_env(DOWNSTREAM_TASK, _OOD_SHIFT.value)}
  stage1 = pretrain_rows(rows) if _STAGE.value != "finetune" else []
  stage2 = rows if _STAGE.value != "pretrain" else []
  t_start = time.perf_counter()

  def write_results():
    results = collect(root)
    table = runs.summarize(results, TABLE_ORDER)
    fmt.write_json_atomic(os.path.join(root, "results.json"),
                          dict(recipe(pre_steps, ft_steps), table=table, runs=results))
    return results, table

  for seed in seeds:  # every row once before the next seed: a partial run is a full table
    for row in stage1:
      cmd = pretrain_command(row, seed, root, steps=pre_steps, labelled=_LABELLED.value)
      workdir = run_dir(root, 1, row.name, seed)
      trained = runs.run_training(cmd, workdir, f"stage 1 {row.name} seed {seed}")
      evaluated = runs.evaluate_checkpoint(f"{row.name}_seed{seed}", workdir, videos_dir,
                                           envs1, _EPISODES.value)
      finish_run(row.name, seed, workdir, trained, evaluated, envs1)
      write_results()
    for row in stage2:
      cmd = finetune_command(row, seed, root, steps=ft_steps)
      workdir = run_dir(root, 2, row.name, seed)
      pretrained: List[str] = []
      if row.pretrained:
        pre_cmd = pretrain_command(runs.select_rows([row.pretrained])[0], seed, root,
                                   steps=pre_steps, labelled=_LABELLED.value)
        check_pretrained(row, seed, pre_cmd, run_dir(root, 1, row.pretrained, seed))
        pretrained = runs.run_recipe(pre_cmd[1:])
      trained = runs.run_training(cmd, workdir, f"stage 2 {row.name} seed {seed}", pretrained)
      evaluated = runs.evaluate_checkpoint(f"{row.name}_seed{seed}", workdir, videos_dir,
                                           envs2, _EPISODES.value)
      finish_run(row.name, seed, workdir, trained, evaluated, envs2)
      write_results()
  results, table = write_results()
  runs.print_report(
      f"\nPretrain -> finetune on the embedded task: stage 1 (push, P = {_LABELLED.value} "
      f"labelled episodes, V = action-free episodes recorded like P) {pre_steps} steps; "
      f"stage 2 ({DOWNSTREAM_CONFIG}, reach) {ft_steps} steps; {_EPISODES.value} episodes "
      f"per rollout column, OOD = {envs1['ood']} / {envs2['ood']}; mean +- half the range "
      f"over seeds (per-seed values in brackets); this invocation "
      f"{(time.perf_counter() - t_start) / 60:.1f} min; videos in {videos_dir}",
      table, results, TABLE_ORDER, recipe(pre_steps, ft_steps))

if __name__ == "__main__":
  cli_config.run(main)
