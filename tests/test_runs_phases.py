"""The wall-time report that ends `python -m uwm_jax.train` and the ETA it logs."""

import time

from uwm_jax.runs import phases
from uwm_jax.training import progress


def test_format_seconds():
  assert phases.format_seconds(42.4) == "42 s"
  assert phases.format_seconds(431) == "7.2 min"
  assert phases.format_seconds(7300) == "2.0 h"


def test_phases_add_up_in_order_with_notes():
  clock = phases.PhaseClock()
  clock.add("data generation", 58)
  clock.update({"setup": 14, "compilation": 25, "training": 426},
               {"training": "4000 steps, 9.4 steps/s"})
  with clock.phase("evaluation"):
    time.sleep(0.01)
  clock.add("setup", 1)  # a phase run again adds up, keeps its place
  assert list(clock.seconds) == ["data generation", "setup", "compilation", "training",
                                 "evaluation"]
  assert clock.seconds["setup"] == 15 and clock.seconds["evaluation"] >= 0.01
  assert clock.line() == ("wall time 8.7 min: data generation 58 s, setup 15 s, compilation "
                          "25 s, training 7.1 min (4000 steps, 9.4 steps/s), evaluation 0 s")


def test_eta_line_from_the_measured_rate():
  now = time.mktime((2026, 12, 1, 12, 0, 0, 0, 0, -1))
  line = progress.eta_line(rate=4.0, remaining=3600, now=now)
  assert line == ("Measured 4 steps/s after compilation: the remaining 3600 steps take ~15.0 min "
                  "(until ~12:15).")
