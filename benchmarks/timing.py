"""Wall-clock timing of callables for the benchmarks, alternating so load from other processes
does not favour one of them (these machines are shared and noisy)."""

import time
from typing import Callable, Dict, Hashable

import numpy as np


def timed(fn: Callable[[], object]) -> float:
  """Seconds one call of `fn` takes."""
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def alternate(named: Dict[Hashable, Callable[[], object]], rounds: int) -> Dict[Hashable, float]:
  """name -> callable, each run once untimed, then `rounds` times in turn (a, b, c, a, b, c ...)
  -> name -> median seconds."""
  for fn in named.values():
    fn()
  times = {k: [] for k in named}
  for _ in range(rounds):
    for k, fn in named.items():
      times[k].append(timed(fn))
  return {k: float(np.median(v)) for k, v in times.items()}
