"""The wall-time report that ends `python -m uwm_jax.train`, the training loop's clock and the
ETA it logs."""

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


def test_train_clock_times_phases_log_windows_and_the_eta_once():
  """The training loop's one clock on a fake time source: 0.5 s per step after 25 s of setup and
  compilation, a 10 s evaluation left out of the log window's rate, one ETA line."""
  now = [1000.0]
  clock = progress.TrainClock(now=lambda: now[0])
  now[0] += 5
  clock.lap("setup")
  now[0] += 20
  clock.start_training(start_step=10, num_steps=1010)  # the compiled step runs next
  etas, rates = [], {}
  for step in range(11, 111):
    now[0] += 0.5
    etas.append(clock.step_dispatched(step, None))
    if step in (40, 100):
      rates[step] = clock.window_rate(step)
    if step == 100:  # an evaluation: 10 s that are not training throughput
      now[0] += 10
      clock.restart_window(step)
  assert clock.window_rate(110) == 2.0 and clock.window_rate(110) is None  # nothing since
  assert rates == {40: 2.0, 100: 2.0}
  # Timed after 10 warm-up steps, steps 20..70 (0.5 s each), and logged once, at step 70.
  assert [i + 11 for i, e in enumerate(etas) if e] == [70]
  assert etas[70 - 11].startswith("Measured 2 steps/s after compilation: the remaining 940 "
                                  "steps take ~7.8 min")
  seconds, rate = clock.finish()
  assert seconds == {"setup": 5, "compilation": 20, "training": 60}
  assert rate == 1000 / 60  # every step of the run, over the training phase
