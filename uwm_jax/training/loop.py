"""The training loop behind `python -m uwm_jax.train`: everything is importable and testable.

  train(config, workdir, make_evaluate=None) -> TrainResult

`_train` reads top to bottom in the three phases its clock reports (`training.progress`):
  setup        the mesh, the state resumed from the newest usable checkpoint of
               `<workdir>/checkpoints` or initialised (with `init_from`'s params for
               finetuning; `training.resume`), the loader, and the evaluation callback the
               caller passes (`make_evaluate`, see `EvalContext`: `python -m uwm_jax.train`
               passes the offline metrics of `uwm_jax.evaluation.offline_metrics`; training
               imports no evaluation code)
  compilation  the jitted, donated train step compiled ahead of the loop, for the run's state
               and the config's batch shapes (`jit(...).lower(...).compile()`)
  training     host batch -> global arrays -> compiled step; each step's metrics are read a
               step behind the device and written every `log_every` steps (metrics.jsonl,
               TensorBoard, progress bar); asynchronous checkpoints every `save_every` steps and
               at the end; evaluation every `eval_every` steps and at the end
Bad input fails before any of it (`training.preflight`). A non-finite loss or gradient norm
stops training with FloatingPointError (with or without `train.nan_guard`, which also keeps the
bad step from being applied); params are checked finite before every save, so no checkpoint
holds non-finite params, and the error names the last good checkpoint. Preemption (SIGTERM to a
process of a job joined through jax.distributed, e.g. SLURM or a Cloud TPU slice): every
process saves a checkpoint at the same step, waits for it to be written, and `Preempted` (exit
status 143) ends the program; rerunning resumes from it.
"""

import dataclasses
import logging
import math
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections

from uwm_jax.model.uwm import UnifiedWorldModel
from uwm_jax.runs import checkpoint as ckpt_lib
from uwm_jax.runs import checksums
from uwm_jax.runs import metrics_writer as writer_lib
from uwm_jax.runs import workdir_lock
from uwm_jax.training import flops as flops_lib
from uwm_jax.training import global_batch as global_batch_lib
from uwm_jax.training import mesh as mesh_lib
from uwm_jax.training import optimizer as optim_lib
from uwm_jax.training import preflight, progress, resume, sharded_state, step_metrics

log = logging.getLogger(__name__)


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
  # (of the train step, ahead of the loop), training (every step, checkpoints and evaluations).
  phase_seconds: Dict[str, float] = dataclasses.field(default_factory=dict)
  steps_per_s: Optional[float] = None  # the training phase's rate (None: no step ran)


# ---------------------------------------------------------------------------- non-finite values
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
          + ("" if good.verified else f" (unverified: no {checksums.MANIFEST_FILENAME})"))


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


# ------------------------------------------------------------------------------ the run
def train(config: ml_collections.ConfigDict, workdir: str,
          make_evaluate: Optional[MakeEvaluate] = None) -> TrainResult:
  """Train (or resume training) `config` in `workdir`; returns the final state and metrics.

  make_evaluate: builds the evaluation callback (see `EvalContext`); None = no evaluation.
  Raises WorkdirLockedError when another live run holds the workdir.
  """
  preflight.prepare_workdir(workdir)
  preflight.check_inputs(config, workdir)
  # One writer per workdir (process 0 holds the lock for the whole multi-process run).
  lock = workdir_lock.WorkdirLock(workdir) if jax.process_index() == 0 else None
  if lock is not None:
    lock.acquire()
  try:
    return _train(config, workdir, make_evaluate)
  finally:
    if lock is not None:
      lock.release()


def _train(config: ml_collections.ConfigDict, workdir: str,
           make_evaluate: Optional[MakeEvaluate]) -> TrainResult:
  # ---------------------------------------------------------------------------- setup
  clock = progress.TrainClock()
  tc = config.train
  mesh = mesh_lib.make_mesh(tc.mesh_shape)
  preflight.check_batch_size(config, mesh)
  model = UnifiedWorldModel(config.model)
  optimizer = optim_lib.make_optimizer(config.optim, config.num_steps)
  manager = ckpt_lib.make_manager(
      ckpt_lib.checkpoint_dir(workdir), keep_last=tc.keep_last or None,
      keep_every=tc.keep_every, save_every=tc.save_every, async_save=tc.async_checkpointing)
  start, state, shardings, stats, data_iter = resume.build_state(config, model, optimizer, mesh,
                                                                 manager)
  loader, saved_config = resume.make_run_loader(config, stats, workdir, state.frozen)
  stats = loader.dataset_stats
  cached = loader.latent_caches is not None
  local_iter_state = ckpt_lib.local_process_state(data_iter)
  if local_iter_state is not None:
    loader.set_state(local_iter_state)
  base_rng = jax.random.key(config.seed)
  train_rng = sharded_state.replicate(jax.random.fold_in(base_rng, 1), mesh)
  evaluate = None
  if make_evaluate is not None:
    evaluate = make_evaluate(EvalContext(config=saved_config, model=model, mesh=mesh,
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
  to_global = global_batch_lib.batch_placer(mesh)
  metrics = step_metrics.LogWindow()
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
    if step % tc.log_every == 0 or step == config.num_steps:
      summary = metrics.summary()
      rate = clock.window_rate(step)
      if rate is not None:
        summary.update(step_metrics.throughput(rate, config.batch_size, step_flops, peak))
      writer.write(step, summary, "train")
      bar.set_postfix(progress.progress_fields(summary), refresh=False)
      last_train = summary

  behind = step_metrics.OneStepBehind(record)  # metrics are read a step behind the device
  data_iter_state = loader.get_state()
  preempted_at = None
  try:
    # -------------------------------------------------------------------------- compilation
    clock.lap("setup")
    batch_shapes = sharded_state.abstract_batch(config.model, config.batch_size, cached,
                                                mesh_lib.batch_sharding(mesh))
    if start < config.num_steps:  # (a finished run, rerun, compiles nothing)
      log.info("Compiling the train step (minutes for large models) ...")
      step_fn = sharded_state.make_jitted_train_step(config, model, optimizer, shardings, mesh)
      step_fn = step_fn.lower(state, batch_shapes, train_rng).compile()
      clock.start_training(start, config.num_steps)
      log.info("Train step compiled in %.1f s.", clock.seconds["compilation"])

    # -------------------------------------------------------------------------- training
    with progress.progress_bar(config, start) as bar:
      for step in range(start + 1, config.num_steps + 1):
        host_batch = next(loader)  # also carries keys the step does not take (the source)
        batch = to_global({k: host_batch[k] for k in batch_shapes})
        data_iter_state = loader.get_state()
        state, device_metrics = step_fn(state, batch, train_rng)
        eta = clock.step_dispatched(step, device_metrics)
        if eta is not None:
          log.info("%s", eta)
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
          clock.restart_window(step)  # the evaluation's time is not training throughput
      behind.catch_up()
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.close()
    loader.close()
  if preempted_at is not None:
    log.warning("Preempted: stopped after saving the checkpoint of step %d; rerun the same "
                "command to resume.", preempted_at)
    raise Preempted(preempted_at)
  log.info("%s", progress.closing_line(config.num_steps, last_train, last_eval, workdir,
                                       tc.tensorboard))
  seconds, rate = clock.finish()
  return TrainResult(state=state, step=int(jax.device_get(state.step)), dataset_stats=stats,
                     last_train_metrics=last_train, last_eval_metrics=last_eval,
                     phase_seconds=seconds, steps_per_s=rate)
