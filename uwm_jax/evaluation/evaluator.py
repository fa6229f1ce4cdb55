"""Evaluate one checkpoint: offline metrics, rollouts, tracking, videos, JSON + TensorBoard.

`evaluate_checkpoint(checkpoints_dir, step)` loads only the inference params, dataset
statistics and config of a checkpoint (`uwm_jax.policies.inference_checkpoint`, as the policy
server does) and, as `config.eval` asks (the protocol: docs/evaluation.md, "Protocol"):
  - offline metrics on the validation split (`uwm_jax.evaluation.offline_metrics`);
  - closed-loop rollouts with their success rate and a few rollout videos;
  - inverse-dynamics trajectory tracking beside the policy on the same budget;
  - forward-dynamics videos: single predictions and a held-out trajectory (UWM only).
Outputs go to `<workdir>/eval/` (workdir = the folder holding `checkpoints/`):
  eval/metrics.jsonl, eval/tensorboard/   one record per evaluated step (MetricWriter)
  eval/step_<N>/metrics.json              this step's metrics
  eval/step_<N>/videos/*.mp4|gif          rollout and prediction videos
  eval/step_<N>_<env>/                    the same with the environment overridden
                                          (eval_overrides["env"]): beside, never over, step_<N>
and `summary_line(...)` is the one line printed on stdout.
"""

import dataclasses
import json
import logging
import os
import re
import time
from typing import Dict, List, Optional

import jax
import numpy as np

from uwm_jax import sampling
from uwm_jax import envs as envs_lib
from uwm_jax import policies as policies_lib
from uwm_jax.data import loader as loader_lib
from uwm_jax.data import normalization
from uwm_jax.evaluation import offline_metrics, prediction_videos, rollout, tracking, videos
from uwm_jax.evaluation.rollout_policies import LocalPolicy, RandomPolicy
from uwm_jax.model.uwm import UnifiedWorldModel
from uwm_jax.policies import inference_checkpoint
from uwm_jax.runs import checkpoint as ckpt
from uwm_jax.runs import storage
from uwm_jax.runs.metrics_writer import MetricWriter

log = logging.getLogger(__name__)

EVAL_DIRNAME = "eval"
SERVED_SUFFIX = "_policy_server"  # eval/step_<N>_policy_server: rollouts through a server


@dataclasses.dataclass
class EvalResult:
  step: int
  metrics: Dict[str, float]
  output_dir: str
  videos: List[str]


# ----------------------------------------------------------------------------- locations
def list_steps(checkpoints_dir: str) -> List[int]:
  """Finished checkpoint steps (committed step folders holding a `params` item), ascending."""
  return [step for step in ckpt.finished_steps(checkpoints_dir)
          if storage.isdir(os.path.join(checkpoints_dir, str(step), "params"))]


def eval_dir(checkpoints_dir: str) -> str:
  return os.path.join(os.path.dirname(storage.abspath(checkpoints_dir)), EVAL_DIRNAME)


def env_tag(eval_overrides: Optional[dict] = None) -> str:
  """"" for the checkpoint's own environment, else the overridden env name as a folder-name
  part ("libero/book_caddy" -> "libero_book_caddy")."""
  env = (eval_overrides or {}).get("env") or ""
  return env.replace("/", "_")


def run_name(step: int, eval_overrides: Optional[dict] = None, served: bool = False) -> str:
  """The folder of one evaluation under eval/: step_<N>[_<env tag>][_policy_server]."""
  tag = env_tag(eval_overrides)
  return f"step_{step}" + (f"_{tag}" if tag else "") + (SERVED_SUFFIX if served else "")


def metrics_split(eval_overrides: Optional[dict] = None) -> str:
  """The split name in eval/metrics.jsonl and TensorBoard: "eval", or "eval_<env tag>"."""
  tag = env_tag(eval_overrides)
  return "eval" + (f"_{tag}" if tag else "")


def evaluated_steps(checkpoints_dir: str, eval_overrides: Optional[dict] = None) -> List[int]:
  """Steps with a finished evaluation (metrics.json) under the run name these overrides give."""
  root = eval_dir(checkpoints_dir)
  steps = []
  for name in storage.listdir(root):
    match = re.match(r"step_(\d+)", name)
    step = int(match.group(1)) if match else None
    if (step is not None and name == run_name(step, eval_overrides)
        and storage.exists(os.path.join(root, name, "metrics.json"))):
      steps.append(step)
  return sorted(steps)


# ----------------------------------------------------------------------------- parts
def _offline_metrics(model, config, params, frozen, stats, rng, eval_loader) -> Dict[str, float]:
  out = offline_metrics.compute_offline_metrics(
      model, config.diffusion, params, frozen, eval_loader, rng, dataset_stats=stats,
      max_batches=config.eval.offline_num_batches)
  return {f"offline/{k}": float(v) for k, v in out.items()}


def _held_out_trajectory(config, stats, eval_loader) -> Optional[tuple]:
  """(frames (L, V, H, W, 3) uint8, normalised actions (L, A), normalised low-dim (L, D) or
  None) of one held-out trajectory: an expert episode (embedded task) or the first validation
  episode of the first source (of `eval_loader`, None when the config has no data)."""
  keys = tuple(config.model.camera_keys)
  if config.eval.env in envs_lib.EMBEDDED_TASKS:
    spec = envs_lib.tabletop_spec(config.eval.env, config.model)
    demo = tracking.embedded_demos(spec, [config.eval.first_seed + 10**6], keys, hold_steps=0,
                                   with_actions=True,
                                   low_dim_keys=envs_lib.low_dim_keys(config.eval.env, config))[0]
    frames, actions, low_dim = demo.frames, demo.actions, demo.low_dim
  else:
    if eval_loader is None:
      return None
    src, val = eval_loader.sources[0], eval_loader.split.val_episodes[0]
    if not len(val):
      return None
    ep = int(val[0])
    n = int(src.episode_lengths[ep])
    frames = src.frames(ep, np.arange(n)).transpose(1, 0, 2, 3, 4)
    actions = src.actions(ep)
    low_dim = src.low_dim(ep) if config.model.get("low_dim_dim") else None
  if stats and stats.get("action") is not None:
    actions = normalization.normalize(np.asarray(actions, np.float32), stats["action"])
  if low_dim is not None and stats and stats.get("low_dim") is not None:
    low_dim = normalization.normalize(np.asarray(low_dim, np.float32), stats["low_dim"])
  return frames, np.asarray(actions, np.float32), low_dim


def _prediction_videos(model, config, params, frozen, stats, rng, out_dir,
                       eval_loader) -> List[str]:
  fd = sampling.make_sampler(model, config.diffusion, sampling.FORWARD_DYNAMICS)
  ext = config.eval.video_format
  paths = []
  k1, k2 = jax.random.split(rng)
  batch = next(iter(eval_loader), None) if eval_loader is not None else None
  if batch is not None:
    frames = prediction_videos.single_prediction_frames(
        model, fd, params, frozen, batch, k1, max_samples=config.eval.prediction_samples)
    paths.append(videos.write_video(os.path.join(out_dir, f"forward_dynamics_single.{ext}"),
                                    frames, fps=2))
  trajectory = _held_out_trajectory(config, stats, eval_loader)
  if trajectory is not None:
    frames, actions, low_dim = trajectory
    frames = prediction_videos.trajectory_prediction_frames(
        model, fd, params, frozen, frames, actions, k2, low_dim,
        chunk=config.eval.prediction_samples)  # the batch of the single video: one compile
    paths.append(videos.write_video(
        os.path.join(out_dir, f"forward_dynamics_trajectory.{ext}"), frames, fps=4))
  return paths


def _tracking_demos(config) -> List[tracking.Demo]:
  e = config.eval
  keys = tuple(config.model.camera_keys)
  if e.env in envs_lib.EMBEDDED_TASKS:
    seeds = [e.first_seed + 2 * 10**6 + i for i in range(e.tracking_episodes)]
    return tracking.embedded_demos(envs_lib.tabletop_spec(e.env, config.model), seeds, keys,
                                   hold_steps=config.model.action_len)
  if not e.tracking_demos:
    raise ValueError(f"Trajectory tracking on {e.env!r} needs config.eval.tracking_demos (a "
                     "LIBERO *_demo.hdf5 file).")
  return tracking.libero_hdf5_demos(e.tracking_demos, keys, max_demos=e.tracking_episodes)


def _random_baseline(config, env_list, episodes, horizon: int, max_steps: int,
                     progress: bool) -> float:
  """Success rate of uniform random actions on the same seeded episodes. The embedded tasks
  play them in envs that render nothing (the policy never looks: the same outcomes, without
  ~5 ms of rendering per image); LIBERO, which renders anyway, reuses `env_list`."""
  e = config.eval
  if e.env in envs_lib.EMBEDDED_TASKS:
    envs, close = envs_lib.make_envs(e.env, len(env_list), config, images=False)
  else:
    envs, close = env_list, lambda: None
  try:
    chance = rollout.run_rollouts(
        envs, RandomPolicy(envs[0].action_dim, horizon, seed=e.seed), episodes,
        camera_keys=tuple(config.model.camera_keys), exec_steps=e.exec_steps,
        max_steps=max_steps, progress=progress, desc="rollouts random policy")
  finally:
    close()
  return chance.success_rate


# ----------------------------------------------------------------------------- main entry
def evaluate_loaded(params, frozen, config, stats, *, step: int, out_dir: str,
                    progress: bool = True, policy_factory=None) -> EvalResult:
  """Every evaluation `config.eval` asks for, on already loaded params; writes
  `out_dir/metrics.json` and videos. Returns the metrics. `policy_factory(num_envs, config)`:
  the rollouts' policy instead of the checkpoint in this process (a policy server's client,
  `uwm_jax.serving.client.RemotePolicy`)."""
  e = config.eval
  if e.env:
    envs_lib.check_env_name(e.env)
  model = UnifiedWorldModel(config.model)
  rng = jax.random.PRNGKey(e.seed)
  k_offline, k_videos = jax.random.split(rng)
  video_dir = os.path.join(out_dir, "videos")
  metrics: Dict[str, float] = {}
  paths: List[str] = []
  episode_outcomes: List[dict] = []  # per rollout episode, in metrics.json
  t0 = time.time()
  videos_on = e.prediction_videos and model.predicts_next_obs
  eval_loader = None  # the validation split, built once for metrics and videos
  if config.data.get("sources") and (e.offline_metrics or videos_on):
    eval_loader = loader_lib.make_eval_loader(config)
  if e.offline_metrics and eval_loader is not None:
    metrics.update(_offline_metrics(model, config, params, frozen, stats, k_offline,
                                    eval_loader))
  if e.env:
    num_envs = max(1, min(e.num_envs, e.num_episodes))
    env_list, close = envs_lib.make_envs(e.env, num_envs, config)
    try:
      keys = tuple(config.model.camera_keys)
      missing = [k for k in keys if k not in env_list[0].camera_keys]
      if missing:
        raise ValueError(f"Env {e.env!r} has cameras {tuple(env_list[0].camera_keys)}; the "
                         f"checkpoint's model.camera_keys asks for {missing}.")
      max_steps = e.max_steps or envs_lib.default_max_steps(e.env, config)
      transforms = policies_lib.make_transforms(policies_lib.robot_for_config(config), config,
                                                stats)
      episodes = rollout.seeded_episodes(e.num_episodes, e.first_seed)
      if policy_factory is not None:  # e.g. a policy server's client (evaluate --policy_server)
        policy = policy_factory(len(env_list), config)
      else:
        policy = LocalPolicy(model, config.diffusion, params, frozen, transforms,
                             num_slots=len(env_list), seed=e.seed,
                             temporal_ensemble=e.temporal_ensemble,
                             ensemble_decay=e.ensemble_decay, exec_steps=e.exec_steps)
      try:
        result = rollout.run_rollouts(
            env_list, policy, episodes, camera_keys=keys, exec_steps=e.exec_steps,
            max_steps=max_steps, num_videos=e.num_videos, progress=progress,
            desc=f"rollouts {e.env}")
      finally:
        getattr(policy, "close", lambda: None)()
      metrics.update(result.metrics())
      episode_outcomes = [{"seed": ep.seed, "success": e.success, "length": e.length}
                          for ep, e in zip(episodes, result.episodes)]
      if e.random_baseline:
        metrics["rollout/random_policy_success_rate"] = _random_baseline(
            config, env_list, episodes, model.dims.action_len, max_steps, progress)
      for ep in result.episodes:
        if ep.frames:
          tag = "success" if ep.success else "failure"
          paths.append(videos.write_video(
              os.path.join(video_dir, f"rollout_{ep.index:03d}_{tag}.{e.video_format}"),
              ep.frames, fps=e.video_fps))
      if e.tracking_episodes and model.predicts_next_obs:
        metrics.update(tracking.run_tracking(
            env_list, model, config.diffusion, params, frozen, transforms,
            _tracking_demos(config), camera_keys=keys, exec_steps=e.exec_steps, seed=e.seed,
            progress=progress))
    finally:
      close()
  if videos_on:
    paths.extend(_prediction_videos(model, config, params, frozen, stats, k_videos, video_dir,
                                    eval_loader))
  metrics["eval_seconds"] = time.time() - t0
  storage.makedirs(out_dir)
  storage.write_atomic(os.path.join(out_dir, "metrics.json"), json.dumps(
      {"step": step, "env": e.env, "metrics": metrics, "videos": paths,
       "rollout_episodes": episode_outcomes}, indent=2))
  return EvalResult(step, metrics, out_dir, paths)


def evaluate_checkpoint(checkpoint_dir: str, step: Optional[int] = None, *, config=None,
                        eval_overrides: Optional[dict] = None, progress: bool = True,
                        policy_factory=None) -> EvalResult:
  """Load a checkpoint (latest step when None) and evaluate it; also appends the metrics to
  `<workdir>/eval/metrics.jsonl` and TensorBoard (not with `policy_factory`, whose results go
  to eval/step_<N>_policy_server/ only). `config`: a config the checkpoint must
  match (model and diffusion), whose `eval` section is used instead of the checkpoint's."""
  eval_env = (eval_overrides or {}).get("env") or (config.eval.env if config is not None else "")
  if eval_env:
    envs_lib.check_env_name(eval_env)  # fail before loading anything
  loaded = inference_checkpoint.load_checkpoint(checkpoint_dir, step, config=config,
                                                eval_overrides=eval_overrides)
  directory, step = loaded.directory, loaded.step
  params, frozen, full, stats = loaded.params, loaded.frozen, loaded.config, loaded.stats
  root = eval_dir(directory)
  # Rollouts through a policy server, or in another environment, go beside the checkpoint's
  # own in-process results, not over them.
  name = run_name(step, eval_overrides, served=policy_factory is not None)
  result = evaluate_loaded(params, frozen, full, stats, step=step,
                           out_dir=os.path.join(root, name), progress=progress,
                           policy_factory=policy_factory)
  if policy_factory is not None:
    return result
  writer = MetricWriter(root, tensorboard=True, enabled=True)
  try:
    writer.write(step, result.metrics, metrics_split(eval_overrides))
  finally:
    writer.close()
  return result


def summary_line(result: EvalResult, env: str = "") -> str:
  """One line: step, success rate, main offline metrics, output folder."""
  m = result.metrics
  parts = [f"eval step {result.step}:"]
  if "rollout/success_rate" in m:
    n = int(m["rollout/num_episodes"])
    parts.append(f"{env} success {m['rollout/success_rate']:.2f} "
                 f"({int(round(m['rollout/success_rate'] * n))}/{n})")
    if "rollout/random_policy_success_rate" in m:
      parts.append(f"[random policy {m['rollout/random_policy_success_rate']:.2f}]")
  if "tracking/inverse_dynamics_success_rate" in m:
    parts.append(f"tracking inverse-dynamics {m['tracking/inverse_dynamics_success_rate']:.2f} "
                 f"vs policy {m['tracking/policy_success_rate']:.2f}")
  for key in ("offline/action_mse_marginal", "offline/image_mse_forward"):
    if key in m:
      parts.append(f"{key.split('/')[1]} {m[key]:.4g}")
  parts.append(f"({len(result.videos)} videos, {m.get('eval_seconds', 0):.0f} s) -> "
               f"{result.output_dir}")
  return " ".join(parts)


def watch(checkpoint_dir: str, *, config=None, eval_overrides=None, interval_s: float = 60.0,
          progress: bool = True, max_evaluations: int = 0, printer=print) -> None:
  """Evaluate every checkpoint step not evaluated yet, then keep looking for new ones (a
  corrupt step is skipped with one warning line)."""
  done, unreadable = 0, set()
  while True:
    directory = ckpt.resolve_checkpoints_dir(checkpoint_dir)
    done_steps = evaluated_steps(directory, eval_overrides)
    todo = [s for s in list_steps(directory) if s not in done_steps]
    for step in todo:
      if step in unreadable:
        continue
      try:
        result = evaluate_checkpoint(directory, step, config=config,
                                     eval_overrides=eval_overrides, progress=progress)
      except ValueError as e:  # corrupt or unreadable (checksums, truncated files)
        if not isinstance(e, (ckpt.checksums.CorruptCheckpointError,
                              ckpt.UnreadableCheckpointError)):
          raise
        log.warning("Skipping checkpoint step %d: %s", step, e)
        unreadable.add(step)
        continue
      printer(summary_line(result, result_env(result)))
      done += 1
      if max_evaluations and done >= max_evaluations:
        return
    time.sleep(interval_s)


def result_env(result: EvalResult) -> str:
  path = os.path.join(result.output_dir, "metrics.json")
  if storage.exists(path):
    return json.loads(storage.read_text(path)).get("env", "")
  return ""
