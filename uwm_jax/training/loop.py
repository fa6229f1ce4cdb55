"""The training loop behind `python -m uwm_jax.train`: everything is importable and testable.

  train(config, workdir)

1. Mesh from `train.mesh_shape`; state shardings from `train.partition_rules` (logged once).
2. Resume from the latest complete checkpoint in `<workdir>/checkpoints` (falls back past a
   corrupt one), else initialise the state directly sharded, loading `init_from`'s params
   for finetuning.
3. Loop: host batch -> global arrays -> jitted, donated train step; metrics every `log_every`
   steps (progress bar with ETA, metrics.jsonl, TensorBoard); asynchronous checkpoints every
   `save_every` steps and at the end; offline evaluation every `eval_every` steps and at the end.
4. A non-finite loss or gradient stops training with FloatingPointError; the step is not
   applied and nothing after the last good checkpoint is saved.
"""

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Dict, List, Optional

import jax
import ml_collections
import numpy as np
import tqdm

from uwm_jax.data import global_batch as global_batch_lib
from uwm_jax.data import loader as loader_lib
from uwm_jax.evaluation import offline_metrics
from uwm_jax.model.uwm import UnifiedWorldModel
from uwm_jax.runs import checkpoint as ckpt_lib
from uwm_jax.training import flops as flops_lib
from uwm_jax.training import mesh as mesh_lib
from uwm_jax.runs import metrics_writer as writer_lib
from uwm_jax.training import optimizer as optim_lib
from uwm_jax.training import sharded_state

log = logging.getLogger(__name__)

STATS_FILENAME = "dataset_stats.json"
AVERAGED = ("loss", "action_loss", "dynamics_loss", "grad_norm")


@dataclasses.dataclass
class TrainResult:
  state: Any  # the final TrainState (sharded)
  step: int
  dataset_stats: dict
  last_train_metrics: Dict[str, float]
  last_eval_metrics: Dict[str, float]


def _check_batch_size(config, mesh) -> None:
  shards = mesh_lib.batch_shards(mesh)
  if config.batch_size % shards:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by the {shards} batch "
                     f"shards of the mesh {dict(mesh.shape)} (data x fsdp).")
  if config.batch_size % jax.process_count():
    raise ValueError(f"batch_size {config.batch_size} is not divisible by the "
                     f"{jax.process_count()} processes.")


def _init_from_dir(path: str):
  """init_from may name a `checkpoints` folder or a step folder inside one."""
  path = os.fspath(path).rstrip("/")
  if os.path.basename(path).isdigit():
    return os.path.dirname(path), int(os.path.basename(path))
  return path, None


def _write_stats(workdir: str, stats: dict) -> str:
  """The statistics the loader must use, as a JSON file (every process writes its own copy)."""
  path = os.path.join(workdir, STATS_FILENAME)
  tmp = f"{path}.tmp{os.getpid()}.{jax.process_index()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(stats, f)
  os.replace(tmp, path)
  return path


class _Throughput:
  """Steps and wall time since the last report (excluding the first step's compilation)."""

  def __init__(self):
    self.t0 = None
    self.steps = 0

  def start(self):
    self.t0, self.steps = time.perf_counter(), 0

  def report(self) -> Optional[float]:
    """Steps per second since start(); restarts the window."""
    if self.t0 is None or not self.steps:
      return None
    rate = self.steps / max(time.perf_counter() - self.t0, 1e-9)
    self.start()
    return rate


class _Metrics:
  """Per-step host metrics accumulated between log points."""

  def __init__(self):
    self.rows: List[Dict[str, float]] = []

  def add(self, row: Dict[str, float]):
    self.rows.append(row)

  def summary(self) -> Dict[str, float]:
    out = {k: float(np.mean([r[k] for r in self.rows])) for k in AVERAGED if k in self.rows[0]}
    out["lr"] = self.rows[-1]["lr"]
    self.rows = []
    return out


def build_state(config, model, optimizer, mesh, manager, workdir):
  """(start_step, state, state_shardings, dataset_stats or None, data_iter item or None)."""
  tc = config.train
  ema = tc.ema_decay > 0
  abstract = sharded_state.abstract_train_state(model, optimizer, ema)
  shardings = sharded_state.train_state_shardings(abstract, mesh, tc.partition_rules,
                                                  tc.fsdp_min_size)
  restored = ckpt_lib.restore_train_checkpoint(manager, abstract, shardings)
  if restored is not None:
    step, state, stats, data_iter = restored
    log.info("Resumed from %s at step %d.", manager.directory, step)
    return step, state, shardings, stats or None, data_iter
  state = sharded_state.init_train_state(model, optimizer, jax.random.key(config.seed),
                                         shardings, ema, tc.compiler_options)
  stats = None
  if config.init_from:
    directory, step = _init_from_dir(config.init_from)
    if config.init_from_step >= 0:
      step = config.init_from_step
    loaded, init_stats, init_step = ckpt_lib.load_init_params(
        directory, {"params": abstract.params, "frozen": abstract.frozen},
        {"params": shardings.params, "frozen": shardings.frozen}, step)
    state = state.replace(params=loaded["params"], frozen=loaded["frozen"])
    if ema:
      state = state.replace(ema_params=jax.tree.map(lambda x: x.copy(), loaded["params"]))
    log.info("Initialised params from %s (step %d).", directory, init_step)
    if not tc.recompute_dataset_stats:
      stats = init_stats or None
      log.info("Keeping the pretraining run's normalisation statistics "
               "(train.recompute_dataset_stats=False).")
  elif config.model.codec == "sdxl_vae":
    log.warning("Training from scratch with a randomly initialised SDXL VAE: set "
                "init_from to a checkpoint holding the imported VAE (and ImageNet "
                "ResNet-18) weights for a real run.")
  return 0, state, shardings, stats, None


def make_train_loader(config, stats: Optional[dict], workdir: str, frozen=None):
  """The training loader, normalising with `stats` when given (resume / finetuning); with
  `data.latent_cache_dir` its batches carry cached next-obs latents, checked against the codec
  params `frozen` (when given)."""
  loader_config = config
  if stats:
    loader_config = ml_collections.ConfigDict(config.to_dict())
    loader_config.data.stats_path = _write_stats(workdir, stats)
  return loader_lib.make_train_loader(loader_config, frozen=frozen), loader_config


def run_eval(config, model, eval_step, state, mesh, rng) -> Dict[str, float]:
  """Offline metrics on the validation split (every process takes part)."""
  batches = loader_lib.make_eval_loader(config)
  to_global = lambda b: global_batch_lib.host_batch_to_global(b, mesh, mesh_lib.batch_spec())
  return offline_metrics.compute_offline_metrics(
      model, config.diffusion, state.inference_params, state.frozen, batches, rng,
      max_batches=config.train.eval_num_batches, to_device=to_global, eval_step=eval_step)


def _non_finite_error(step: int, row: Dict[str, float], manager) -> FloatingPointError:
  last = manager.latest_step()
  where = (f"the last good checkpoint is step {last} in {manager.directory}" if last is not None
           else "no checkpoint was saved yet")
  return FloatingPointError(
      f"Non-finite training metrics at step {step}: loss={row.get('loss')}, "
      f"action_loss={row.get('action_loss')}, dynamics_loss={row.get('dynamics_loss')}, "
      f"grad_norm={row.get('grad_norm')}. Training stopped; {where}. Lower the learning rate, "
      "enable gradient clipping (optim.grad_clip_norm) or check the data.")


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
  """Train (or resume training) `config` in `workdir`; returns the final state and metrics."""
  tc = config.train
  if "://" in os.fspath(workdir):
    raise ValueError(f"--workdir={workdir}: use a filesystem path that every host sees (NFS, "
                     "Filestore, or a bucket mounted with gcsfuse), not a URL.")
  os.makedirs(workdir, exist_ok=True)
  mesh = mesh_lib.make_mesh(tc.mesh_shape)
  _check_batch_size(config, mesh)
  model = UnifiedWorldModel(config.model)
  optimizer = optim_lib.make_optimizer(config.optim, config.num_steps)
  manager = ckpt_lib.make_manager(
      ckpt_lib.checkpoint_dir(workdir), keep_last=tc.keep_last or None,
      keep_every=tc.keep_every, save_every=tc.save_every, async_save=tc.async_checkpointing)

  start, state, shardings, stats, data_iter = build_state(config, model, optimizer, mesh,
                                                          manager, workdir)
  loader, loader_config = make_train_loader(config, stats, workdir, state.frozen)
  stats = loader.dataset_stats
  cached = loader.latent_caches is not None
  local_iter_state = ckpt_lib.local_process_state(data_iter)
  if local_iter_state is not None:
    loader.set_state(local_iter_state)

  step_fn = sharded_state.make_jitted_train_step(config, model, optimizer, shardings, mesh)
  base_rng = jax.random.key(config.seed)
  train_rng = sharded_state.replicate(jax.random.fold_in(base_rng, 1), mesh)
  eval_rng = jax.random.fold_in(base_rng, 2)
  eval_step = offline_metrics.make_eval_step(model, config.diffusion, stats, mesh,
                                             tc.compiler_options)

  step_flops = flops_lib.train_step_flops(config.model, cached).per_sample * config.batch_size
  peak = flops_lib.peak_flops_per_device(jax.devices()[0].device_kind, tc.peak_tflops_per_device)
  log.info("Training %s steps from step %d; global batch %d; %.3g TFLOP per step (analytic%s); "
           "%d devices (%s).", config.num_steps, start, config.batch_size, step_flops / 1e12,
           ", next-obs latents from the latent cache" if cached else "", jax.device_count(),
           jax.devices()[0].device_kind)

  writer = writer_lib.MetricWriter(workdir, tensorboard=tc.tensorboard,
                                   wandb_project=tc.wandb_project, config=config)
  saved_config = loader_config
  to_global = lambda b: global_batch_lib.host_batch_to_global(b, mesh, mesh_lib.batch_spec())
  bar = tqdm.tqdm(total=config.num_steps, initial=start, desc="train", unit="step",
                  disable=not tc.progress_bar or jax.process_index() != 0, dynamic_ncols=True)
  metrics, clock = _Metrics(), _Throughput()
  last_train: Dict[str, float] = {}
  last_eval: Dict[str, float] = {}
  pending = None  # (step, device metrics) of the step dispatched last

  def settle(step, device_metrics):
    """Fetch one step's metrics (a step behind the device), stop on non-finite values."""
    nonlocal last_train
    row = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    finite = row.pop("finite", 1.0) and math.isfinite(row["loss"])
    if not finite:
      manager.wait_until_finished()
      raise _non_finite_error(step, row, manager)
    metrics.add(row)
    clock.steps += 1
    if step == start + 1:
      clock.start()  # exclude compilation from the throughput
    if step % tc.log_every == 0 or step == config.num_steps:
      summary = metrics.summary()
      rate = clock.report()
      if rate is not None:
        summary["steps_per_s"] = rate
        summary["samples_per_s"] = rate * config.batch_size
        summary["tflops_per_s_per_device"] = step_flops * rate / jax.device_count() / 1e12
        if peak:
          summary["mfu"] = flops_lib.mfu(step_flops, rate, jax.device_count(), peak)
      writer.write(step, summary, "train")
      bar.set_postfix(loss=f"{summary['loss']:.4f}", refresh=False)
      last_train = summary

  data_iter_state = loader.get_state()
  try:
    for step in range(start + 1, config.num_steps + 1):
      batch = to_global(next(loader))
      data_iter_state = loader.get_state()
      state, device_metrics = step_fn(state, batch, train_rng)
      if pending is not None:
        settle(*pending)
      pending = (step, device_metrics)
      bar.update(1)
      last = step == config.num_steps
      if manager.should_save(step) or last:
        settle(*pending)
        pending = None
        ckpt_lib.save_train_checkpoint(
            manager, step, state=state, inference_params=state.inference_params,
            dataset_stats=stats, config=saved_config, data_iter_state=data_iter_state,
            force=True)
      if (tc.eval_every and step % tc.eval_every == 0) or (last and tc.eval_at_end):
        if pending is not None:
          settle(*pending)
          pending = None
        last_eval = run_eval(loader_config, model, eval_step, state, mesh,
                             sharded_state.replicate(jax.random.fold_in(eval_rng, step), mesh))
        if last_eval.get("num_batches"):
          writer.write(step, last_eval, "eval")
          log.info("step %d eval: %s", step, {k: round(v, 5) for k, v in last_eval.items()})
        else:
          log.warning("step %d: the validation split has no batch; no offline evaluation.", step)
        clock.start()
    if pending is not None:
      settle(*pending)
  finally:
    bar.close()
    manager.wait_until_finished()
    manager.close()
    writer.close()
    loader.close()
  return TrainResult(state=state, step=int(jax.device_get(state.step)), dataset_stats=stats,
                     last_train_metrics=last_train, last_eval_metrics=last_eval)
