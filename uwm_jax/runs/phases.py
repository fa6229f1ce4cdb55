"""Wall time of a run's phases (data generation, setup, compilation, training, evaluation).

`python -m uwm_jax.train` ends with `PhaseClock.line()`, so a user on any machine sees where
the time went: `wall time 9.1 min: data generation 58 s, setup 14 s, compilation 25 s,
training 7.1 min (4000 steps, 9.4 steps/s), evaluation 49 s`.
"""

import contextlib
import time
from typing import Dict, Iterator, Optional


def format_seconds(seconds: float) -> str:
  """42 -> '42 s', 431 -> '7.2 min', 7300 -> '2.0 h'."""
  if seconds < 100:
    return f"{seconds:.0f} s"
  if seconds < 6000:
    return f"{seconds / 60:.1f} min"
  return f"{seconds / 3600:.1f} h"


class PhaseClock:
  """Named wall-time phases in the order they first ran; a phase run twice adds up."""

  def __init__(self):
    self.seconds: Dict[str, float] = {}
    self.notes: Dict[str, str] = {}

  def add(self, name: str, seconds: float, note: Optional[str] = None) -> None:
    self.seconds[name] = self.seconds.get(name, 0.0) + float(seconds)
    if note:
      self.notes[name] = note

  def update(self, seconds: Dict[str, float], notes: Optional[Dict[str, str]] = None) -> None:
    for name, s in seconds.items():
      self.add(name, s, (notes or {}).get(name))

  @contextlib.contextmanager
  def phase(self, name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self.add(name, time.perf_counter() - t0)

  def line(self) -> str:
    """'wall time T: phase t (note), ...' over every phase recorded."""
    parts = [f"{name} {format_seconds(s)}" + (f" ({self.notes[name]})" if name in self.notes
                                                else "")
             for name, s in self.seconds.items()]
    total = sum(self.seconds.values())
    return f"wall time {format_seconds(total)}: " + ", ".join(parts)
