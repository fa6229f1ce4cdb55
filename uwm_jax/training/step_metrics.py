"""A training step's metrics on the host: read a step behind the device, averaged between log
points, and the throughput they are logged with.

  OneStepBehind  records each step's device metrics one step late, so that the host never waits
                 for the step it has just dispatched
  LogWindow      the per-step host metrics of one log window, averaged at its log point
  throughput     a measured step rate as samples/s, TFLOP/s per device and MFU
"""

from typing import Any, Callable, Dict, List, Optional

import jax
import numpy as np

from uwm_jax.training import flops as flops_lib

AVERAGED = ("loss", "action_loss", "dynamics_loss", "grad_norm")  # the learning rate: the last


class OneStepBehind:
  """`push(step, metrics)` records the step pushed before (if any) and holds this one;
  `catch_up()` records the held step. Every pushed step is recorded exactly once, in order."""

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


class LogWindow:
  """Per-step host metrics accumulated between log points."""

  def __init__(self):
    self.rows: List[Dict[str, float]] = []

  def add(self, row: Dict[str, float]):
    self.rows.append(row)

  def summary(self) -> Dict[str, float]:
    """The window's means (AVERAGED) and last learning rate; starts the next window."""
    out = {k: float(np.mean([r[k] for r in self.rows])) for k in AVERAGED if k in self.rows[0]}
    out["lr"] = self.rows[-1]["lr"]
    self.rows = []
    return out


def throughput(steps_per_s: float, batch_size: int, step_flops: float,
               peak_flops: Optional[float]) -> Dict[str, float]:
  """steps/s -> {steps_per_s, samples_per_s, tflops_per_s_per_device[, mfu]} (MFU only when the
  device's peak is known)."""
  devices = jax.device_count()
  out = {"steps_per_s": steps_per_s, "samples_per_s": steps_per_s * batch_size,
         "tflops_per_s_per_device": step_flops * steps_per_s / devices / 1e12}
  if peak_flops:
    out["mfu"] = flops_lib.mfu(step_flops, steps_per_s, devices, peak_flops)
  return out
