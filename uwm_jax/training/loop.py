"""The training loop behind `python -m uwm_jax.train`: everything is importable and testable.

  train(config, workdir, make_evaluate=None)

1. Mesh from `train.mesh_shape`; state shardings from `train.partition_rules` (logged once).
2. Resume from the latest complete checkpoint in `<workdir>/checkpoints` (falls back past a
   corrupt one), else initialise the state directly sharded, loading `init_from`'s params
   for finetuning.
3. Loop: host batch -> global arrays -> jitted, donated train step; metrics every `log_every`
   steps (progress bar with ETA, metrics.jsonl, TensorBoard); asynchronous checkpoints every
   `save_every` steps and at the end; evaluation every `eval_every` steps and at the end, through
   the callback the caller passes (`make_evaluate`, see `EvalContext`: `python -m uwm_jax.train`
   passes the offline metrics of `uwm_jax.evaluation.offline_metrics`; training imports no
   evaluation code).
4. A non-finite loss or gradient norm stops training with FloatingPointError (with or without
   `train.nan_guard`, which also keeps the bad step from being applied); params are checked
   finite before every save, so no checkpoint holds non-finite params, and the error names
   the latest step whose checksums verify.
5. Preemption (SIGTERM to a process of a job joined through jax.distributed, e.g. SLURM or a
   Cloud TPU slice): every process saves a checkpoint at the same step, waits for it to be
   written, and `Preempted` (exit status 143) ends the program; rerunning resumes from it.
"""

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from uwm_jax.data import loader as loader_lib
from uwm_jax.data import sources as sources_lib
from uwm_jax.model.uwm import UnifiedWorldModel
from uwm_jax.runs import checkpoint as ckpt_lib
from uwm_jax.runs import metrics_writer as writer_lib
from uwm_jax.runs import phases
from uwm_jax.runs import storage
from uwm_jax.runs import workdir_lock
from uwm_jax.training import flops as flops_lib
from uwm_jax.training import global_batch as global_batch_lib
from uwm_jax.training import mesh as mesh_lib
from uwm_jax.training import optimizer as optim_lib
from uwm_jax.training import sharded_state

log = logging.getLogger(__name__)

_ETA_WARMUP_STEPS = 10  # steps after compilation left out of the ETA's timing
_ETA_AFTER_STEPS = 50  # steps timed for the ETA

STATS_FILENAME = "dataset_stats.json"
AVERAGED = ("loss", "action_loss", "dynamics_loss", "grad_norm")


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """What an evaluation callback is built from, once the run's state is known.

  `make_evaluate(context)` returns `evaluate(state, step) -> {metric: float}`, called by every
  process every `train.eval_every` steps (and at the end with `train.eval_at_end`); a result
  with "num_batches" 0 means nothing was evaluated.
  """
  config: ml_collections.ConfigDict  # the loader's config (stats_path set when resuming)
  model: Any  # the UnifiedWorldModel being trained
  mesh: jax.sharding.Mesh
  dataset_stats: dict  # the statistics the training batches are normalised with
  rng: jax.Array  # the evaluation's base key (fold in the step)


MakeEvaluate = Callable[[EvalContext], Callable[[Any, int], Dict[str, float]]]


class Preempted(SystemExit):
  """Training stopped after the preemption checkpoint of `step` (exit status 143 = 128 +
  SIGTERM, what schedulers expect of a terminated job)."""

  def __init__(self, step: int):
    super().__init__(143)
    self.step = step


@dataclasses.dataclass
class TrainResult:
  state: Any  # the final TrainState (sharded)
  step: int
  dataset_stats: dict
  last_train_metrics: Dict[str, float]
  last_eval_metrics: Dict[str, float]
  # Wall seconds of this call's phases: setup (state, data, evaluation callback), compilation
  # (the first step), training (every later step, checkpoints and evaluations included).
  phase_seconds: Dict[str, float] = dataclasses.field(default_factory=dict)
  steps_per_s: Optional[float] = None  # the training phase's rate (None: no step after the first)


def _check_batch_size(config, mesh) -> None:
  shards = mesh_lib.batch_shards(mesh)
  if config.batch_size % shards:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by the {shards} batch "
                     f"shards of the mesh {dict(mesh.shape)} (data x fsdp).")
  if config.batch_size % jax.process_count():
    raise ValueError(f"batch_size {config.batch_size} is not divisible by the "
                     f"{jax.process_count()} processes.")


def _init_from(config) -> Tuple[str, Optional[int]]:
  """(checkpoints folder, step or None) of `config.init_from`, a `checkpoints` folder or a
  step folder inside one; `config.init_from_step` (>= 0) names the step instead."""
  directory, step = ckpt_lib.split_step_folder(config.init_from)
  return directory, (config.init_from_step if config.init_from_step >= 0 else step)


def _write_stats(workdir: str, stats: dict) -> str:
  """The statistics the loader must use, as a JSON file in the workdir, written atomically
  (`storage.write_atomic`). On a filesystem every process writes the same content; on a bucket
  process 0 uploads it and the others wait for it (all processes call this): GCS takes about
  one update per second of an object, not one per host at once."""
  path = os.path.join(workdir, STATS_FILENAME)
  on_bucket = storage.is_url(workdir)
  if not on_bucket or jax.process_index() == 0:
    storage.write_atomic(path, json.dumps(stats))
  if on_bucket and jax.process_count() > 1:
    multihost_utils.sync_global_devices("dataset_stats_written")
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


class _EtaTimer:
  """Times `_ETA_AFTER_STEPS` steps after `_ETA_WARMUP_STEPS` warm-up ones (the first steps
  after compilation run slower while the input pipeline and allocator settle) and logs the ETA
  once. Created right after the compiling step; `tick` after each later step is dispatched."""

  def __init__(self, compiled_step: int, num_steps: int):
    left = num_steps - compiled_step
    self.num_steps = num_steps
    self.first = compiled_step + min(_ETA_WARMUP_STEPS, max(0, left // 20))
    self.last = self.first + min(_ETA_AFTER_STEPS, max(1, left // 10))
    self.t0 = time.perf_counter() if self.first == compiled_step else None

  def tick(self, step: int, device_metrics) -> None:
    if step not in (self.first, self.last):
      return
    jax.block_until_ready(device_metrics)
    if step == self.first:
      self.t0 = time.perf_counter()
    elif step < self.num_steps:
      log.info("%s", eta_line((step - self.first) / (time.perf_counter() - self.t0),
                              self.num_steps - step))


class _OneStepBehind:
  """Records each step's device metrics one step late, so that the host never waits for the
  step it has just dispatched: `push(step, metrics)` records the step pushed before (if any)
  and holds this one; `catch_up()` records the held step. Every pushed step is recorded exactly
  once, in order."""

  def __init__(self, record: Callable[[int, Any], None]):
    self._record = record
    self._held = None

  def push(self, step: int, device_metrics) -> None:
    self.catch_up()
    self._held = (step, device_metrics)

  def catch_up(self) -> None:
    held, self._held = self._held, None
    if held is not None:
      self._record(*held)


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
  abstract_params = {"params": abstract.params, "frozen": abstract.frozen}
  init_from = None
  if config.init_from:  # a checkpoint of another architecture fails before any compilation
    directory, step = _init_from(config)
    init_from = directory, ckpt_lib.check_init_params(directory, abstract_params, step)
  state = sharded_state.init_train_state(model, optimizer, jax.random.key(config.seed),
                                         shardings, ema, tc.compiler_options)
  stats = None
  if init_from is not None:
    loaded, init_stats = ckpt_lib.load_init_params(
        *init_from, abstract_params, {"params": shardings.params, "frozen": shardings.frozen})
    state = state.replace(params=loaded["params"], frozen=loaded["frozen"])
    if ema:
      state = state.replace(ema_params=jax.tree.map(lambda x: x.copy(), loaded["params"]))
    log.info("Initialised params from %s (step %d).", *init_from)
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
  params `frozen` (when given). The returned config (what checkpoints save) has the LeRobot
  sources' mappings filled in (`sources.resolved_config`)."""
  loader_config = sources_lib.resolved_config(config)
  if stats:
    loader_config = ml_collections.ConfigDict(loader_config.to_dict())
    loader_config.data.stats_path = _write_stats(workdir, stats)
  return loader_lib.make_train_loader(loader_config, frozen=frozen), loader_config


def metrics_are_finite(row: Dict[str, float]) -> bool:
  """Whether a step's host metrics are usable: the step's own guard flag (nan_guard) and a
  finite loss and gradient norm (checked with or without the guard)."""
  return bool(row.get("finite", 1.0)) and all(
      math.isfinite(row[k]) for k in ("loss", "grad_norm") if k in row)


@jax.jit
def params_are_finite(params) -> jax.Array:
  """One boolean: every float leaf of `params` is finite (checked before every save)."""
  leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(params)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def last_good_checkpoint(manager) -> str:
  """Where training can resume from (`checkpoint.last_good_step`), as a phrase."""
  good = ckpt_lib.last_good_step(manager)
  if good is None:
    return "no good checkpoint was saved yet"
  return (f"the last good checkpoint is step {good.step} in {manager.directory}"
          + ("" if good.verified else f" (unverified: no {ckpt_lib.checksums.MANIFEST_FILENAME})"))


def _non_finite_error(step: int, row: Dict[str, float], manager) -> FloatingPointError:
  return FloatingPointError(
      f"Non-finite training metrics at step {step}: loss={row.get('loss')}, "
      f"action_loss={row.get('action_loss')}, dynamics_loss={row.get('dynamics_loss')}, "
      f"grad_norm={row.get('grad_norm')}. Training stopped; {last_good_checkpoint(manager)}. "
      "Lower the learning rate, enable gradient clipping (optim.grad_clip_norm) or check the "
      "data.")


def _non_finite_params_error(step: int, manager) -> FloatingPointError:
  return FloatingPointError(
      f"The params after step {step} are not finite (although its loss and gradient norm "
      f"were); step {step} is not saved. Training stopped; {last_good_checkpoint(manager)}. "
      "Lower the learning rate or enable gradient clipping (optim.grad_clip_norm).")


def prepare_workdir(workdir: str) -> None:
  """Create the workdir (a filesystem path every host sees, or a gs:// URL); errors say plainly
  when it is another URL, a file or not writable."""
  storage.require_gcs_or_local(workdir, "--workdir")
  if storage.is_gcs(workdir):
    if not os.fspath(workdir)[len(storage.GCS_PREFIX):].strip("/"):
      raise ValueError(f"--workdir={workdir}: name a bucket, e.g. gs://my-bucket/runs/droid.")
    storage.check_bucket(workdir)
    return  # nothing to create on a bucket
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f"--workdir={workdir} is a file, not a folder.")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise PermissionError(f"--workdir={workdir} cannot be created ({e.strerror}).") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise PermissionError(f"--workdir={workdir} is not writable.")


def check_inputs(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Cheap checks of everything a run needs, before anything expensive (train state,
  compilation, dataset statistics) is built: the mesh fits the devices, the datasets exist,
  and `init_from` exists when the run starts from scratch."""
  mesh_lib.resolve_mesh_shape(config.train.mesh_shape, jax.device_count())
  sources_lib.check_sources(config)
  resuming = bool(ckpt_lib.finished_steps(ckpt_lib.checkpoint_dir(workdir)))
  if config.init_from and not resuming:
    directory, _ = ckpt_lib.split_step_folder(config.init_from)
    if not storage.isdir(directory):
      raise FileNotFoundError(f"init_from: checkpoint folder {directory} does not exist.")


def progress_fields(summary: Dict[str, float]) -> Dict[str, str]:
  """The progress bar's postfix: loss, samples/s and MFU (TFLOP/s per device when the
  device's peak is unknown)."""
  fields = {"loss": f"{summary['loss']:.4f}"}
  if "samples_per_s" in summary:
    fields["samples/s"] = f"{summary['samples_per_s']:.3g}"
  if "mfu" in summary:
    fields["MFU"] = f"{summary['mfu']:.1%}"
  elif "tflops_per_s_per_device" in summary:
    fields["TFLOP/s/dev"] = f"{summary['tflops_per_s_per_device']:.3g}"
  return fields


def closing_line(step: int, last_train: Dict[str, float], last_eval: Dict[str, float],
                 workdir: str, tensorboard: bool) -> str:
  """The last line of a run: final numbers and where its outputs are."""
  numbers = [f"loss {last_train['loss']:.7g}"] if "loss" in last_train else []
  numbers += [f"{k} {v:.3g}" for k, v in last_train.items() if k in ("samples_per_s", "mfu")]
  numbers += [f"eval {k} {v:.4g}" for k, v in last_eval.items() if k.endswith("mse")][:2]
  where = (f"checkpoints in {ckpt_lib.checkpoint_dir(workdir)}, metrics in "
           f"{os.path.join(workdir, writer_lib.METRICS_FILENAME)}")
  if tensorboard:
    where += f" (tensorboard --logdir {os.path.join(workdir, writer_lib.TENSORBOARD_DIRNAME)})"
  return (f"Training finished at step {step} (process {jax.process_index()} of "
          f"{jax.process_count()}): {', '.join(numbers) or 'no new step'}; {where}.")


def train(config: ml_collections.ConfigDict, workdir: str,
          make_evaluate: Optional[MakeEvaluate] = None) -> TrainResult:
  """Train (or resume training) `config` in `workdir`; returns the final state and metrics.

  make_evaluate: builds the evaluation callback (see `EvalContext`); None = no evaluation.
  Raises WorkdirLockedError when another live run holds the workdir.
  """
  prepare_workdir(workdir)
  check_inputs(config, workdir)
  # One writer per workdir (process 0 holds the lock for the whole multi-process run).
  lock = workdir_lock.WorkdirLock(workdir) if jax.process_index() == 0 else None
  if lock is not None:
    lock.acquire()
  try:
    return _train(config, workdir, make_evaluate)
  finally:
    if lock is not None:
      lock.release()


def eta_line(rate: float, remaining: int, now: Optional[float] = None) -> str:
  """The honest ETA, from the step rate measured after compilation."""
  seconds = remaining / max(rate, 1e-9)
  end = time.strftime("%H:%M", time.localtime((now or time.time()) + seconds))
  return (f"Measured {rate:.3g} steps/s after compilation: the remaining {remaining} steps take "
          f"~{phases.format_seconds(seconds)} (until ~{end}).")


def _train(config: ml_collections.ConfigDict, workdir: str,
           make_evaluate: Optional[MakeEvaluate]) -> TrainResult:
  t_setup = time.perf_counter()
  tc = config.train
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
  evaluate = None
  if make_evaluate is not None:
    evaluate = make_evaluate(EvalContext(config=loader_config, model=model, mesh=mesh,
                                         dataset_stats=stats,
                                         rng=jax.random.fold_in(base_rng, 2)))

  step_flops = flops_lib.train_step_flops(config.model, cached).per_sample * config.batch_size
  peak = flops_lib.peak_flops_per_device(jax.devices()[0].device_kind, tc.peak_tflops_per_device)
  log.info("Training %s steps from step %d; global batch %d; %.3g TFLOP per step (analytic%s); "
           "%d devices (%s).", config.num_steps, start, config.batch_size, step_flops / 1e12,
           ", next-obs latents from the latent cache" if cached else "", jax.device_count(),
           jax.devices()[0].device_kind)

  writer = writer_lib.MetricWriter(workdir, tensorboard=tc.tensorboard,
                                   wandb_project=tc.wandb_project, config=config,
                                   resume_step=start)
  saved_config = loader_config
  to_global = global_batch_lib.batch_placer(mesh)
  bar = None  # created once the first step is compiled, so that its ETA excludes compilation
  metrics, clock = _Metrics(), _Throughput()
  last_train: Dict[str, float] = {}
  last_eval: Dict[str, float] = {}

  def record(step, device_metrics):
    """Fetch one step's metrics, stop on non-finite values, log every `log_every` steps."""
    nonlocal last_train
    row = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    if not metrics_are_finite(row):
      raise _non_finite_error(step, row, manager)
    row.pop("finite", None)
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
      bar.set_postfix(progress_fields(summary), refresh=False)
      last_train = summary

  behind = _OneStepBehind(record)  # metrics are read a step behind the device
  data_iter_state = loader.get_state()
  preempted_at = None
  seconds = {"setup": time.perf_counter() - t_setup}
  t_train = eta = None  # set after the first (compiling) step
  try:
    for step in range(start + 1, config.num_steps + 1):
      batch = to_global(next(loader))
      data_iter_state = loader.get_state()
      if bar is None:
        log.info("Compiling the train step (the first step waits for it; minutes for large "
                 "models) ...")
        t_compile = time.perf_counter()
      state, device_metrics = step_fn(state, batch, train_rng)
      if bar is None:
        jax.block_until_ready(device_metrics)
        seconds["compilation"] = time.perf_counter() - t_compile
        log.info("Train step compiled in %.1f s.", seconds["compilation"])
        t_train = time.perf_counter()
        eta = _EtaTimer(step, config.num_steps)
        bar = tqdm.tqdm(total=config.num_steps, initial=step - 1, desc="train", unit="step",
                        disable=not tc.progress_bar or jax.process_index() != 0,
                        dynamic_ncols=True)
      else:
        eta.tick(step, device_metrics)
      behind.push(step, device_metrics)
      bar.update(1)
      last = step == config.num_steps
      if manager.should_save(step) or last:
        behind.catch_up()  # every step up to the checkpoint is recorded (and checked) first
        if not params_are_finite(state.params):  # never save non-finite params
          raise _non_finite_params_error(step, manager)
        writer.flush()  # the metrics up to a checkpoint reach the workdir before it does
        ckpt_lib.save_train_checkpoint(
            manager, step, state=state, inference_params=state.inference_params,
            dataset_stats=stats, config=saved_config, data_iter_state=data_iter_state,
            force=True)
        if manager.reached_preemption(step):  # SIGTERM seen by some process: all stop here
          preempted_at = step
          break
      if evaluate and ((tc.eval_every and step % tc.eval_every == 0) or
                       (last and tc.eval_at_end)):
        behind.catch_up()
        last_eval = evaluate(state, step)
        if last_eval.get("num_batches"):
          writer.write(step, last_eval, "eval")
          log.info("step %d eval: %s", step, {k: round(v, 5) for k, v in last_eval.items()})
        else:
          log.warning("step %d: the evaluation saw no validation batch.", step)
        clock.start()
    behind.catch_up()
  finally:
    if bar is not None:
      bar.close()
    manager.wait_until_finished()
    manager.close()
    writer.close()
    loader.close()
  if preempted_at is not None:
    log.warning("Preempted: stopped after saving the checkpoint of step %d; rerun the same "
                "command to resume.", preempted_at)
    raise Preempted(preempted_at)
  log.info("%s", closing_line(config.num_steps, last_train, last_eval, workdir, tc.tensorboard))
  rate = None
  if t_train is not None:
    seconds["training"] = time.perf_counter() - t_train
    trained = config.num_steps - start - 1  # after the compiling step
    rate = trained / seconds["training"] if trained > 0 else None
  return TrainResult(state=state, step=int(jax.device_get(state.step)), dataset_stats=stats,
                     last_train_metrics=last_train, last_eval_metrics=last_eval,
                     phase_seconds=seconds, steps_per_s=rate)
