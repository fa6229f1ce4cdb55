"""How a training run times itself and what it shows: one clock, the progress bar, the lines.

  TrainClock      the run's one clock: its phases (setup, compilation, training), the step
                  rate of each log window, and the ETA, measured once after warm-up
  progress_bar    tqdm over the run's steps (process 0, `train.progress_bar`)
  progress_fields the bar's postfix: loss, samples/s, MFU
  eta_line        "Measured R steps/s after compilation: the remaining N steps take ~T ..."
  closing_line    the run's last line: final numbers and where its outputs are
"""

import os
import time
from typing import Callable, Dict, Optional, Tuple

import jax
import tqdm

from uwm_jax.runs import checkpoint as ckpt_lib
from uwm_jax.runs import metrics_writer as writer_lib
from uwm_jax.runs import phases

ETA_WARMUP_STEPS = 10  # steps after compilation left out of the ETA's timing
ETA_STEPS = 50  # steps timed for the ETA


class TrainClock(phases.PhaseClock):
  """Every duration of a run, from one `time.perf_counter` mark (a `phases.PhaseClock`).

  phases  `lap(name)` closes the phase running since the previous lap: setup (until the train
          step is compiled), compilation, training (every step, checkpoints and evaluations,
          until `finish`)
  rate    `window_rate(step)`: steps per second since the window started (training start, the
          previous report, or `restart_window` after an evaluation, whose time is left out)
  ETA     `step_dispatched(step, metrics)` times the steps [first, last) that follow
          ETA_WARMUP_STEPS warm-up steps (the input pipeline and allocator settle first) and
          returns `eta_line` once, at `last`
  """

  def __init__(self, now: Callable[[], float] = time.perf_counter):
    super().__init__()
    self._now = now  # the clock's time source (seconds)
    self._mark = now()
    self._start_step = self._num_steps = 0
    self._window = (self._mark, 0)  # (time, step) the rate window starts after
    self._eta_steps = (0, 0)  # (first, last) step of the ETA's timing
    self._eta_t0: Optional[float] = None

  def lap(self, phase: str) -> float:
    """Add the time since the previous lap to `phase`; -> the phase's seconds."""
    now = self._now()
    self.add(phase, now - self._mark)
    self._mark = now
    return self.seconds[phase]

  def start_training(self, start_step: int, num_steps: int) -> None:
    """Training (steps start_step + 1 .. num_steps) starts now: the compiled step runs next."""
    self.lap("compilation")
    self._start_step, self._num_steps = start_step, num_steps
    left = num_steps - start_step
    first = start_step + min(ETA_WARMUP_STEPS, max(0, left // 20))
    self._eta_steps = (first, first + min(ETA_STEPS, max(1, left // 10)))
    self._eta_t0 = self._mark if first == start_step else None
    self.restart_window(start_step)

  def step_dispatched(self, step: int, device_metrics) -> Optional[str]:
    """After `step` is dispatched: at the ETA's first and last steps, wait for the step; at the
    last, -> `eta_line` (None otherwise)."""
    first, last = self._eta_steps
    if step not in (first, last):
      return None
    jax.block_until_ready(device_metrics)
    if step == first:
      self._eta_t0 = self._now()
    elif step < self._num_steps:
      rate = (step - first) / (self._now() - self._eta_t0)
      return eta_line(rate, self._num_steps - step)
    return None

  def restart_window(self, step: int) -> None:
    """The rate window restarts now, after `step` (its steps up to `step` are recorded)."""
    self._window = (self._now(), step)

  def window_rate(self, step: int) -> Optional[float]:
    """Steps per second from the window's start to `step` (None: no step); restarts it."""
    t0, first = self._window
    if step <= first:
      return None
    now = self._now()
    self._window = (now, step)
    return (step - first) / max(now - t0, 1e-9)

  def finish(self) -> Tuple[Dict[str, float], Optional[float]]:
    """Close the training phase, if training started; -> (phase seconds, the training phase's
    steps per second, None when no step ran)."""
    trained = self._num_steps - self._start_step
    if trained <= 0:
      return dict(self.seconds), None
    rate = trained / self.lap("training")
    return dict(self.seconds), rate


def progress_bar(config, start_step: int) -> tqdm.tqdm:
  """The run's progress bar (shown by process 0 with `train.progress_bar`)."""
  return tqdm.tqdm(total=config.num_steps, initial=start_step, desc="train", unit="step",
                   disable=not config.train.progress_bar or jax.process_index() != 0,
                   dynamic_ncols=True)


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


def eta_line(rate: float, remaining: int, now: Optional[float] = None) -> str:
  """The honest ETA, from the step rate measured after compilation."""
  seconds = remaining / max(rate, 1e-9)
  end = time.strftime("%H:%M", time.localtime((now or time.time()) + seconds))
  return (f"Measured {rate:.3g} steps/s after compilation: the remaining {remaining} steps take "
          f"~{phases.format_seconds(seconds)} (until ~{end}).")


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
