"""The runs of the embedded-task experiments (experiments.cotrain, experiments.pretrain_finetune).

A run is one `python -m uwm_jax.train` subprocess in its own workdir, then rollouts of its final
checkpoint in and out of distribution in this process. This module holds what both benchmarks
share, without flags: the from-scratch rows and their commands, the record of a finished run
(`cotrain_train.json`: command, wall and CPU seconds, the datasets it read with their recording
noise) and the check that refuses a finished run of another recipe, the evaluations
(`cotrain_eval_<tag>.json`, reused while env and episode count stay), and the table.
"""

import dataclasses
import fcntl
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from uwm_jax import cli_config
from uwm_jax.data import array_record_format as fmt
from uwm_jax.data import demo_generation

TASK = "tabletop_push"  # configs/demo.py's embedded task and its labelled source
VIDEO_SOURCE = f"{TASK}_video"  # the action-free source (data.demo_generation's name)
ID_ENV = TASK
FD_METRIC = "offline/image_mse_forward"
TRAIN_JSON = "cotrain_train.json"  # a finished training run's record (in its workdir)


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
    Row("uwm_small_video_matched", "configs/demo_cotrain.py:matched", True, True),
    Row("dp_full", "configs/demo.py:dp", False, False),
    Row("uwm_full", "configs/demo.py", False, False),
    Row("uwm_full_video", "configs/demo_cotrain.py", False, True),
)
ROW_NAMES = tuple(r.name for r in ROWS)


def select(rows: Sequence, names: Optional[Sequence[str]]) -> list:
  """The rows (anything with a `.name`) named in `names`, in table order; all when empty."""
  if not names:
    return list(rows)
  known = [r.name for r in rows]
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"Unknown rows {unknown}; known: {', '.join(known)}.")
  return [r for r in rows if r.name in names]


def select_rows(names: Optional[Sequence[str]]) -> List[Row]:
  return select(ROWS, names)


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


def eval_overrides(env: str, num_episodes: int, in_distribution: bool) -> dict:
  """In distribution: rollouts, offline metrics (the forward-dynamics MSE) and prediction
  videos; out of distribution: rollouts only. No random-policy baseline (the demo's: 0%)."""
  common = {"env": env, "num_episodes": num_episodes, "random_baseline": False,
            "tracking_episodes": 0, "num_videos": 2}
  if in_distribution:
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


def summarize(results: Dict[str, List[dict]],
              row_names: Sequence[str] = ROW_NAMES) -> List[dict]:
  """Per row (in the order of `row_names`): the per-seed values of each column. CPU minutes:
  the training process's (user + system, all its threads and children) and the evaluation's."""
  table = []
  for name in row_names:
    runs = results.get(name, [])
    if not runs:
      continue
    col = lambda key: [r[key] for r in runs if r.get(key) is not None]  # noqa: E731
    table.append({"row": name, "seeds": [r["seed"] for r in runs],
                  "id_success_pct": [100 * x for x in col("id_success")],
                  "ood_success_pct": [100 * x for x in col("ood_success")],
                  "fd_latent_mse": col("fd_mse"),
                  "train_min": [x / 60 for x in col("train_s")],
                  "eval_min": [x / 60 for x in col("eval_s")],
                  "train_cpu_min": [x / 60 for x in col("train_cpu_s")],
                  "eval_cpu_min": [x / 60 for x in col("eval_cpu_s")]})
  return table


TABLE_COLUMNS = (("ID success %", "id_success_pct"), ("OOD success %", "ood_success_pct"),
                 ("FD latent MSE", "fd_latent_mse"), ("train min", "train_min"),
                 ("eval min", "eval_min"), ("train CPU min", "train_cpu_min"),
                 ("eval CPU min", "eval_cpu_min"))


def format_table(table: List[dict]) -> str:
  head = ["row"] + [h for h, _ in TABLE_COLUMNS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for t in table:
    lines.append("| " + " | ".join([t["row"]] + [spread(t.get(k, [])) for _, k in TABLE_COLUMNS])
                 + " |")
  return "\n".join(lines)


def dataset_lines(results: Dict[str, List[dict]], row_names: Sequence[str]) -> List[str]:
  """Per row: its datasets (`describe_datasets` of its first run that recorded them)."""
  lines = []
  for name in row_names:
    found = [r["datasets"] for r in results.get(name, []) if r.get("datasets")]
    if found:
      lines.append(f"{name}: {describe_datasets(found[0])}")
  return lines


def print_report(header: str, table: List[dict], results: Dict[str, List[dict]],
                 row_names: Sequence[str], recipe: dict) -> None:
  """The header line, the table, every row's datasets and one JSON line (recipe + table)."""
  print(header)
  print(format_table(table))
  print("\n".join(["Data (episodes; executed-action noise of the recording):"]
                  + dataset_lines(results, row_names)))
  print(json.dumps(dict(recipe, table=table)))


def config_of(cmd: Sequence[str]):
  """The config a training command trains (its `--config=` file and `--config.*` overrides)."""
  spec = next(a.split("=", 1)[1] for a in cmd if a.startswith("--config="))
  return cli_config.load_config(spec, [a for a in cmd if a.startswith("--config.")])


def dataset_recipes(config) -> Dict[str, dict]:
  """Per data source of a run: how the run reads it (episodes kept, mixture weight, action-free)
  and how its dataset was recorded (the episode count and the executed-action noise of its
  generation.json; None for a dataset not generated here)."""
  out = {}
  for name, src in sorted(config.data.sources.items()):
    made = read_json(os.path.join(src.path, demo_generation.RECIPE_JSON)) or {}
    out[name] = {"path": src.path, "max_episodes": int(src.get("max_episodes", 0)),
                 "weight": float(src.weight), "action_free": bool(src.action_free),
                 "episodes": made.get("episodes"), "action_noise": made.get("action_noise")}
  return out


def describe_datasets(datasets: Dict[str, dict]) -> str:
  """One line: 'tabletop_push 100 of 600 episodes, noise 0.5; tabletop_push_video 500
  episodes action-free, noise 0.5, weight 0.5'."""
  parts = []
  for name, d in datasets.items():
    count = (f"{d['max_episodes']} of {d['episodes']}" if d["max_episodes"]
             and d["episodes"] and d["max_episodes"] < d["episodes"] else f"{d['episodes']}")
    parts.append(f"{name} {count} episodes" + (" action-free" if d["action_free"] else "")
                 + f", noise {d['action_noise']}"
                 + (f", weight {d['weight']:g}" if len(datasets) > 1 else ""))
  return "; ".join(parts)


def read_json(path: str) -> Optional[dict]:
  """A JSON file's contents; None when it does not exist."""
  return fmt.read_json(path) if os.path.exists(path) else None


INIT_FROM = "--config.init_from="


def run_recipe(args: Sequence[str]) -> List[str]:
  """The arguments of a training command (without the interpreter) that decide what the run
  computes: all but `--workdir` (a finished run linked into another root is the same run);
  an init_from checkpoint is named by its last three path parts (<stage>/<run>/checkpoints)."""
  out = []
  for a in args:
    if a.startswith(INIT_FROM):
      parts = os.path.normpath(a[len(INIT_FROM):]).split(os.sep)
      a = INIT_FROM + "/".join(parts[-3:])
    if not a.startswith("--workdir="):
      out.append(a)
  return out


def is_same_run(done: Optional[dict], cmd: Sequence[str], workdir: str,
                pretrained: Sequence[str] = ()) -> bool:
  """Whether a finished run (its cotrain_train.json) is the one `cmd` asks for. None: not
  finished. Another recipe (steps, video weight, --train_flag, ...; for a finetuned run also
  its pretraining run's recipe, `pretrained`) in the same workdir is an error: resuming it
  would mix two recipes, and reusing it would put its numbers in this table."""
  if done is None:
    return False
  stored = run_recipe(done.get("command", ["?"])) + [
      f"pretrained:{a}" for a in done.get("pretrained", [])]
  wanted = run_recipe(cmd[1:]) + [f"pretrained:{a}" for a in pretrained]
  if stored != wanted:
    had = " ".join(a for a in stored if a not in wanted) or "-"
    asked = " ".join(a for a in wanted if a not in stored) or "-"
    raise ValueError(f"{workdir} holds a finished run of another recipe (it had: {had}; "
                     f"asked: {asked}); give this one another --workdir.")
  return True


def cpu_seconds() -> float:
  """User + system CPU seconds of this process (all threads) and of its waited-for children."""
  me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
      resource.RUSAGE_CHILDREN)
  return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def prepare_data(cmd: Sequence[str]) -> Tuple[float, float]:
  """Generate the embedded-task datasets of a training command that are missing, in a
  subprocess (its MuJoCo rendering must not share this process with TensorFlow), holding a
  lock beside them: two runners started together would otherwise write the same folder.
  -> (wall, CPU) seconds."""
  jobs = demo_generation.generation_jobs(config_of(cmd))
  if not jobs:
    return 0.0, 0.0
  root = os.path.dirname(os.path.abspath(jobs[0].path))
  os.makedirs(root, exist_ok=True)
  t0, c0 = time.perf_counter(), cpu_seconds()
  with open(os.path.join(root, ".generate.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    code = ("import sys; from uwm_jax import cli_config; from uwm_jax.data import "
            "demo_generation; demo_generation.prepare(cli_config.load_config(sys.argv[1], "
            "sys.argv[2:]))")
    spec = next(a.split("=", 1)[1] for a in cmd if a.startswith("--config="))
    proc = subprocess.run([sys.executable, "-c", code, spec]
                          + [a for a in cmd if a.startswith("--config.")], check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"generating the datasets of {spec} failed (exit {proc.returncode}); "
                       "its log is above.")
  return time.perf_counter() - t0, cpu_seconds() - c0


def run_training(cmd: List[str], workdir: str, label: str,
                 pretrained: Sequence[str] = ()) -> dict:
  """Train (or finish training) one run; -> its record (cotrain_train.json): wall and CPU
  seconds of this call's training (and of generating missing data, apart), the command, the
  datasets it read. A finished run of the same recipe is read, not redone."""
  done = read_json(os.path.join(workdir, TRAIN_JSON))
  if is_same_run(done, cmd, workdir, pretrained):
    return done
  data_s, data_cpu_s = prepare_data(cmd)
  print(f"[cotrain] {label}: {' '.join(cmd[1:])}", flush=True)
  t0, c0 = time.perf_counter(), cpu_seconds()
  proc = subprocess.run(cmd, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"training {label} failed (exit {proc.returncode}); its log is above, "
                       f"its workdir {workdir}. Rerun the same command to resume.")
  record = {"train_s": time.perf_counter() - t0, "train_cpu_s": cpu_seconds() - c0,
            "data_s": data_s, "data_cpu_s": data_cpu_s, "command": cmd[1:],
            "pretrained": list(pretrained), "datasets": dataset_recipes(config_of(cmd))}
  fmt.write_json_atomic(os.path.join(workdir, TRAIN_JSON), record)
  return record


def evaluate_checkpoint(label: str, workdir: str, videos_dir: str, envs: Dict[str, str],
                        num_episodes: int) -> dict:
  """Rollouts of a run's final checkpoint on each of `envs` ({"id": env, "ood": env}; offline
  metrics and prediction videos with "id"), each kept in <workdir>/cotrain_eval_<tag>.json and
  reused while env and episode count stay; its videos copied into `videos_dir` as
  <label>_<tag>_<name>. -> success per tag, the FD MSE, wall and CPU seconds."""
  # pylint: disable=import-outside-toplevel
  from uwm_jax.evaluation import evaluator
  from uwm_jax.policies import inference_checkpoint
  # pylint: enable=import-outside-toplevel
  out, loaded = {}, None
  for tag, env in envs.items():
    path = os.path.join(workdir, f"cotrain_eval_{tag}.json")
    found = read_json(path)
    if not is_current(found, env, num_episodes):
      if loaded is None:  # one load serves every evaluation
        loaded = inference_checkpoint.load_checkpoint(os.path.join(workdir, "checkpoints"))
      config = inference_checkpoint.merged_config(
          loaded.config, eval_overrides=eval_overrides(env, num_episodes, tag == "id"))
      out_dir = os.path.join(workdir, "eval", evaluator.run_name(loaded.step, {"env": env}))
      t0, c0 = time.perf_counter(), cpu_seconds()
      result = evaluator.evaluate_loaded(loaded.params, loaded.frozen, config,
                                         loaded.stats, step=loaded.step, out_dir=out_dir)
      m = result.metrics
      found = {"num_episodes": num_episodes, "step": loaded.step, "env": env,
               "success": m.get("rollout/success_rate"), "fd_mse": m.get(FD_METRIC),
               "eval_s": time.perf_counter() - t0, "eval_cpu_s": cpu_seconds() - c0,
               "videos": result.videos}
      fmt.write_json_atomic(path, found)
      print(f"[cotrain] {label} {tag}: " + evaluator.summary_line(result, env), flush=True)
    for video in found["videos"]:
      if os.path.exists(video):
        shutil.copy(video, os.path.join(videos_dir, f"{label}_{tag}_{os.path.basename(video)}"))
    out[tag] = found
  total = lambda key: (None if any(f.get(key) is None for f in out.values())  # noqa: E731
                       else sum(f[key] for f in out.values()))
  return {"id_success": out["id"]["success"], "ood_success": out["ood"]["success"],
          "fd_mse": out["id"]["fd_mse"], "eval_s": total("eval_s"),
          "eval_cpu_s": total("eval_cpu_s")}
