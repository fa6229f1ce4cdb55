"""Does action-free video help, and how do UWM and DP hold up out of distribution?

  python -m experiments.cotrain --workdir=workdirs/cotrain --steps=2000 --seeds=0,1

Trains, on the embedded task (configs/demo.py's model and recipe, `--steps` steps), one run per
row and seed, each a `python -m uwm_jax.train` subprocess:
  dp_small         DP baseline on the first `--labelled` expert episodes  (configs/demo.py:dp)
  uwm_small        UWM on the same episodes                                (configs/demo.py)
  uwm_small_video  UWM on them plus the action-free video episodes  (configs/demo_cotrain.py)
  uwm_small_video_matched  the same, the video recorded with the labelled episodes' action
                   noise (configs/demo_cotrain.py:matched; the row above: the clean expert's)
  dp_full, uwm_full, uwm_full_video: the same with all 600 labelled episodes (the ceiling).
Then evaluates each final checkpoint in this process: 50 seeded in-distribution episodes
(`tabletop_push`), the same 50 seeds under the documented visual shift (`tabletop_push_ood`:
warm light, wood table, distractor, moved cameras; docs/evaluation.md; one shift alone with
--ood_env=tabletop_push_ood_<shift>), and the forward-dynamics
latent MSE on the run's held-out validation episodes (`offline/image_mse_forward`). Prints one
table (mean +- half the range over seeds, the per-seed values, wall times and the CPU seconds
of the training process and of the evaluation: on a shared machine the comparable figure) and
one JSON line (with every run's datasets: episodes and recording noise, from each dataset's
generation.json);
writes <workdir>/results.json and every row's rollout and forward-dynamics videos into
<workdir>/videos/. Resumable: a run whose checkpoint and evaluations exist is read, not redone
(rerun the same command after a crash); a finished run of another recipe (steps, video weight,
--train_flag) in the same workdir is refused with one error line. Data: the demo's dataset
(workdirs/data, generated on first use, shared with configs/demo.py) and the video episodes of
configs/demo_cotrain.py.
"""

import os
import time
from typing import Dict, List

from absl import flags

from uwm_jax import cli_config
from uwm_jax import envs as envs_lib
from experiments import demo_runs as runs
from uwm_jax.data import array_record_format as fmt

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/cotrain", "Root of every run's workdir, the "
                               "results and the videos.")
_ROWS = flags.DEFINE_list("rows", None, "Rows to run (default: all, in table order).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "Training seeds (config.seed and data.seed).")
_STEPS = flags.DEFINE_integer("steps", 2000, "Training steps of every run.")
_LABELLED = flags.DEFINE_integer("labelled", 100, "Labelled episodes of the small rows.")
_EPISODES = flags.DEFINE_integer("num_episodes", 50, "Rollout episodes, in and out of "
                                 "distribution.")
_VIDEO_WEIGHT = flags.DEFINE_float("video_weight", None, "Mixture weight of the video source "
                                   "(default: configs/demo_cotrain.py's).")
_OOD_ENV = flags.DEFINE_string("ood_env", runs.TASK + envs_lib.OOD_SUFFIX,
                               "The out-of-distribution column's env: all four shifts, or one "
                               "(e.g. tabletop_push_ood_lighting).")
_OVERRIDES = flags.DEFINE_multi_string("train_flag", [], "Extra flag for every training run, "
                                       "e.g. --train_flag=--config.batch_size=16.")


def train_run(row: runs.Row, seed: int, workdir: str) -> dict:
  """Train (or finish training) one run of a row; -> its record (`runs.run_training`)."""
  cmd = runs.train_command(row, seed, workdir, steps=_STEPS.value, labelled=_LABELLED.value,
                           video_weight=_VIDEO_WEIGHT.value, extra=_OVERRIDES.value)
  return runs.run_training(cmd, workdir, f"{row.name} seed {seed}")


def evaluate_run(row: runs.Row, seed: int, workdir: str, videos_dir: str) -> dict:
  """ID and OOD evaluations of the run's final checkpoint (each kept in <workdir>/eval/)."""
  return runs.evaluate_checkpoint(f"{row.name}_seed{seed}", workdir, videos_dir,
                                  {"id": runs.ID_ENV, "ood": _OOD_ENV.value}, _EPISODES.value)


def recipe() -> dict:
  """What every run of this invocation shares (results.json and the JSON line)."""
  return {"steps": _STEPS.value, "labelled": _LABELLED.value, "ood_env": _OOD_ENV.value,
          "video_weight": _VIDEO_WEIGHT.value, "train_flags": list(_OVERRIDES.value)}


def main(argv):
  del argv
  rows = runs.select_rows(_ROWS.value)
  envs_lib.check_env_name(_OOD_ENV.value)  # before any training
  seeds = [int(s) for s in _SEEDS.value]
  root = os.path.abspath(_WORKDIR.value)
  videos_dir = os.path.join(root, "videos")
  os.makedirs(videos_dir, exist_ok=True)
  t_start = time.perf_counter()
  results_path = os.path.join(root, "results.json")
  # Runs of earlier invocations (other rows or seeds) stay in the table.
  results: Dict[str, List[dict]] = (runs.read_json(results_path) or {}).get("runs", {})
  for seed in seeds:  # every row once before the next seed: a partial run is a full table
    for row in rows:
      workdir = os.path.join(root, f"{row.name}_seed{seed}")
      trained = train_run(row, seed, workdir)
      run = dict(seed=seed, train_s=trained["train_s"],
                 train_cpu_s=trained.get("train_cpu_s"), datasets=trained.get("datasets"),
                 **evaluate_run(row, seed, workdir, videos_dir))
      results[row.name] = sorted([r for r in results.get(row.name, []) if r["seed"] != seed]
                                 + [run], key=lambda r: r["seed"])
      table = runs.summarize(results)
      fmt.write_json_atomic(results_path, dict(recipe(), table=table, runs=results))
  table = runs.summarize(results)
  runs.print_report(
      f"\nUWM cotraining on the embedded task: {_STEPS.value} steps per run, small labelled "
      f"set {_LABELLED.value} episodes, {_EPISODES.value} episodes per rollout column, "
      f"OOD = {_OOD_ENV.value}, video weight "
      f"{_VIDEO_WEIGHT.value if _VIDEO_WEIGHT.value is not None else 'of the config'}; "
      f"mean +- half the range over seeds {seeds} (per-seed values in brackets); "
      f"wall time {(time.perf_counter() - t_start) / 60:.1f} min; videos in {videos_dir}",
      table, results, runs.ROW_NAMES, recipe())

if __name__ == "__main__":
  cli_config.run(main)
