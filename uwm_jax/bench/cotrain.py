"""Does action-free video help, and how do UWM and DP hold up out of distribution?

  python -m uwm_jax.bench.cotrain --workdir=workdirs/cotrain --steps=2000 --seeds=0,1

Trains, on the embedded task (configs/demo.py's model and recipe, `--steps` steps), one run per
row and seed, each a `python -m uwm_jax.train` subprocess:
  dp_small         DP baseline on the first `--labelled` expert episodes  (configs/demo.py:dp)
  uwm_small        UWM on the same episodes                                (configs/demo.py)
  uwm_small_video  UWM on them plus the action-free video episodes  (configs/demo_cotrain.py)
  dp_full, uwm_full, uwm_full_video: the same with all 600 labelled episodes (the ceiling).
Then evaluates each final checkpoint in this process: 50 seeded in-distribution episodes
(`tabletop_push`), the same 50 seeds under the documented visual shift (`tabletop_push_ood`:
warm light, wood table, distractor, moved cameras; docs/evaluation.md; one shift alone with
--ood_env=tabletop_push_ood_<shift>), and the forward-dynamics
latent MSE on the run's held-out validation episodes (`offline/image_mse_forward`). Prints one
table (mean +- half the range over seeds, the per-seed values, wall times) and one JSON line;
writes <workdir>/results.json and every row's rollout and forward-dynamics videos into
<workdir>/videos/. Resumable: a run whose checkpoint and evaluations exist is read, not redone
(rerun the same command after a crash); a finished run of another recipe (steps, video weight,
--train_flag) in the same workdir is refused with one error line. Data: the demo's dataset
(workdirs/data, generated on first use, shared with configs/demo.py) and the video episodes of
configs/demo_cotrain.py.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from absl import flags
import numpy as np

from uwm_jax import cli_config
from uwm_jax import envs as envs_lib
from uwm_jax.data import array_record_format as fmt

TASK = "tabletop_push"  # configs/demo.py's embedded task and its labelled source
VIDEO_SOURCE = f"{TASK}_video"  # the action-free source (data.demo_generation's name)
ID_ENV = TASK
FD_METRIC = "offline/image_mse_forward"

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
_OOD_ENV = flags.DEFINE_string("ood_env", TASK + envs_lib.OOD_SUFFIX,
                               "The out-of-distribution column's env: all four shifts, or one "
                               "(e.g. tabletop_push_ood_lighting).")
_OVERRIDES = flags.DEFINE_multi_string("train_flag", [], "Extra flag for every training run, "
                                       "e.g. --train_flag=--config.batch_size=16.")


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  config: str  # config file[:variant]
  small: bool  # labelled set = the first --labelled episodes (else all of them)
  video: bool  # + the action-free video source


ROWS = (
    Row("dp_small", "configs/demo.py:dp", True, False),
    Row("uwm_small", "configs/demo.py", True, False),
    Row("uwm_small_video", "configs/demo_cotrain.py", True, True),
    Row("dp_full", "configs/demo.py:dp", False, False),
    Row("uwm_full", "configs/demo.py", False, False),
    Row("uwm_full_video", "configs/demo_cotrain.py", False, True),
)
ROW_NAMES = tuple(r.name for r in ROWS)


def select_rows(names: Optional[Sequence[str]]) -> List[Row]:
  if not names:
    return list(ROWS)
  unknown = [n for n in names if n not in ROW_NAMES]
  if unknown:
    raise ValueError(f"Unknown rows {unknown}; known: {', '.join(ROW_NAMES)}.")
  return [r for r in ROWS if r.name in names]


def train_command(row: Row, seed: int, workdir: str, *, steps: int, labelled: int,
                  video_weight: Optional[float] = None, extra: Sequence[str] = ()) -> List[str]:
  """The `python -m uwm_jax.train` command of one run. The labelled source is the demo's
  dataset read with max_episodes (0 = all); evaluation happens in the benchmark instead."""
  cmd = [sys.executable, "-m", "uwm_jax.train", f"--config={row.config}", f"--workdir={workdir}",
         f"--config.seed={seed}", f"--config.data.seed={seed}", f"--config.num_steps={steps}",
         f"--config.data.sources.{TASK}.max_episodes={labelled if row.small else 0}",
         "--config.eval.after_training=False"]
  if row.video and video_weight is not None:
    cmd.append(f"--config.data.sources.{VIDEO_SOURCE}.weight={video_weight}")
  return cmd + list(extra)


def eval_overrides(env: str, num_episodes: int) -> dict:
  """In distribution: rollouts, offline metrics (the forward-dynamics MSE) and prediction
  videos; out of distribution: rollouts only. No random-policy baseline (the demo's: 0%)."""
  common = {"env": env, "num_episodes": num_episodes, "random_baseline": False,
            "tracking_episodes": 0, "num_videos": 2}
  if env == ID_ENV:
    return dict(common, offline_metrics=True, prediction_videos=True)
  return dict(common, offline_metrics=False, prediction_videos=False)


def is_current(found: Optional[dict], env: str, num_episodes: int) -> bool:
  """Whether a stored evaluation (cotrain_eval_<id|ood>.json) is the one asked for: the same
  env and number of episodes (another --ood_env or --num_episodes evaluates again)."""
  return (found is not None and found.get("env") == env
          and found.get("num_episodes") == num_episodes)


def spread(values: Sequence[float]) -> str:
  """'mean +- half-range (v1, v2, ...)' of per-seed values (percent for rates)."""
  v = np.asarray(values, float)
  if not len(v):
    return "-"
  return f"{v.mean():.3g} +- {(v.max() - v.min()) / 2:.2g} ({', '.join(f'{x:.3g}' for x in v)})"


def summarize(results: Dict[str, List[dict]]) -> List[dict]:
  """Per row: the per-seed values of each column, in table order."""
  table = []
  for row in ROWS:
    runs = results.get(row.name, [])
    if not runs:
      continue
    col = lambda key: [r[key] for r in runs if r.get(key) is not None]  # noqa: E731
    table.append({"row": row.name, "seeds": [r["seed"] for r in runs],
                  "id_success_pct": [100 * x for x in col("id_success")],
                  "ood_success_pct": [100 * x for x in col("ood_success")],
                  "fd_latent_mse": col("fd_mse"),
                  "train_min": [x / 60 for x in col("train_s")],
                  "eval_min": [x / 60 for x in col("eval_s")]})
  return table


def format_table(table: List[dict]) -> str:
  head = ["row", "ID success %", "OOD success %", "FD latent MSE", "train min", "eval min"]
  keys = ["id_success_pct", "ood_success_pct", "fd_latent_mse", "train_min", "eval_min"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for t in table:
    lines.append("| " + " | ".join([t["row"]] + [spread(t[k]) for k in keys]) + " |")
  return "\n".join(lines)


def _read_json(path: str) -> Optional[dict]:
  return fmt.read_json(path) if os.path.exists(path) else None


def run_recipe(args: Sequence[str]) -> List[str]:
  """The arguments of a training command (without the interpreter) that decide what the run
  computes: all but `--workdir` (a finished run linked into another root is the same run)."""
  return [a for a in args if not a.startswith("--workdir=")]


def is_same_run(done: Optional[dict], cmd: Sequence[str], workdir: str) -> bool:
  """Whether a finished run (its cotrain_train.json) is the one `cmd` asks for. None: not
  finished. Another recipe (steps, video weight, --train_flag, ...) in the same workdir is an
  error: resuming it would mix two recipes, and reusing it would put its numbers in this table."""
  if done is None:
    return False
  stored, wanted = run_recipe(done.get("command", ["?"])), run_recipe(cmd[1:])
  if stored != wanted:
    had = " ".join(a for a in stored if a not in wanted) or "-"
    asked = " ".join(a for a in wanted if a not in stored) or "-"
    raise ValueError(f"{workdir} holds a finished run of another recipe (it had: {had}; "
                     f"asked: {asked}); give this one another --workdir.")
  return True


def train_run(row: Row, seed: int, workdir: str) -> float:
  """Train (or finish training) one run; returns the seconds this call spent."""
  cmd = train_command(row, seed, workdir, steps=_STEPS.value, labelled=_LABELLED.value,
                      video_weight=_VIDEO_WEIGHT.value, extra=_OVERRIDES.value)
  done = _read_json(os.path.join(workdir, "cotrain_train.json"))
  if is_same_run(done, cmd, workdir):
    return done["train_s"]
  print(f"[cotrain] {row.name} seed {seed}: {' '.join(cmd[1:])}", flush=True)
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"training {row.name} seed {seed} failed (exit {proc.returncode}); its "
                       f"log is above, its workdir {workdir}. Rerun the same command to resume.")
  seconds = time.perf_counter() - t0
  fmt.write_json_atomic(os.path.join(workdir, "cotrain_train.json"),
              {"steps": _STEPS.value, "train_s": seconds, "command": cmd[1:]})
  return seconds


def evaluate_run(row: Row, seed: int, workdir: str, videos_dir: str) -> dict:
  """ID and OOD evaluations of the run's final checkpoint (each kept in <workdir>/eval/)."""
  # pylint: disable=import-outside-toplevel
  from uwm_jax.evaluation import evaluator
  from uwm_jax.policies import inference_checkpoint
  # pylint: enable=import-outside-toplevel
  out, loaded = {}, None
  for tag, env in (("id", ID_ENV), ("ood", _OOD_ENV.value)):
    path = os.path.join(workdir, f"cotrain_eval_{tag}.json")
    found = _read_json(path)
    if not is_current(found, env, _EPISODES.value):
      if loaded is None:  # one load serves both evaluations
        loaded = inference_checkpoint.load_checkpoint(os.path.join(workdir, "checkpoints"))
      config = inference_checkpoint.merged_config(
          loaded.config, eval_overrides=eval_overrides(env, _EPISODES.value))
      out_dir = os.path.join(workdir, "eval", evaluator.run_name(loaded.step, {"env": env}))
      t0 = time.perf_counter()
      result = evaluator.evaluate_loaded(loaded.params, loaded.frozen, config,
                                         loaded.stats, step=loaded.step, out_dir=out_dir)
      m = result.metrics
      found = {"num_episodes": _EPISODES.value, "step": loaded.step, "env": env,
               "success": m.get("rollout/success_rate"), "fd_mse": m.get(FD_METRIC),
               "eval_s": time.perf_counter() - t0, "videos": result.videos}
      fmt.write_json_atomic(path, found)
      print(f"[cotrain] {row.name} seed {seed} {tag}: "
            + evaluator.summary_line(result, env), flush=True)
    for video in found["videos"]:
      if os.path.exists(video):
        shutil.copy(video, os.path.join(
            videos_dir, f"{row.name}_seed{seed}_{tag}_{os.path.basename(video)}"))
    out[tag] = found
  return {"id_success": out["id"]["success"], "ood_success": out["ood"]["success"],
          "fd_mse": out["id"]["fd_mse"], "eval_s": out["id"]["eval_s"] + out["ood"]["eval_s"]}


def recipe() -> dict:
  """What every run of this invocation shares (results.json and the JSON line)."""
  return {"steps": _STEPS.value, "labelled": _LABELLED.value, "ood_env": _OOD_ENV.value,
          "video_weight": _VIDEO_WEIGHT.value, "train_flags": list(_OVERRIDES.value)}


def main(argv):
  del argv
  rows = select_rows(_ROWS.value)
  envs_lib.check_env_name(_OOD_ENV.value)  # before any training
  seeds = [int(s) for s in _SEEDS.value]
  root = os.path.abspath(_WORKDIR.value)
  videos_dir = os.path.join(root, "videos")
  os.makedirs(videos_dir, exist_ok=True)
  t_start = time.perf_counter()
  results_path = os.path.join(root, "results.json")
  # Runs of earlier invocations (other rows or seeds) stay in the table.
  results: Dict[str, List[dict]] = (_read_json(results_path) or {}).get("runs", {})
  for seed in seeds:  # every row once before the next seed: a partial run is a full table
    for row in rows:
      workdir = os.path.join(root, f"{row.name}_seed{seed}")
      train_s = train_run(row, seed, workdir)
      run = dict(seed=seed, train_s=train_s, **evaluate_run(row, seed, workdir, videos_dir))
      results[row.name] = sorted([r for r in results.get(row.name, []) if r["seed"] != seed]
                                 + [run], key=lambda r: r["seed"])
      table = summarize(results)
      fmt.write_json_atomic(results_path, dict(recipe(), table=table, runs=results))
  table = summarize(results)
  print(f"\nUWM cotraining on the embedded task: {_STEPS.value} steps per run, small labelled "
        f"set {_LABELLED.value} episodes, {_EPISODES.value} episodes per rollout column, "
        f"OOD = {_OOD_ENV.value}, video weight "
        f"{_VIDEO_WEIGHT.value if _VIDEO_WEIGHT.value is not None else 'of the config'}; "
        f"mean +- half the range over seeds {seeds} (per-seed values in brackets); "
        f"wall time {(time.perf_counter() - t_start) / 60:.1f} min; videos in {videos_dir}")
  print(format_table(table))
  print(json.dumps(dict(recipe(), table=table)))


if __name__ == "__main__":
  cli_config.run(main)
