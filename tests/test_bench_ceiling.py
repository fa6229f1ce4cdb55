"""benchmarks.ceiling and the ceiling lines of `benchmarks.train_step --torch`: a step's analytic FLOPs at
the machine's measured matmul rate bound its time, hence its speed-up over the reference."""

import math

import pytest

from tests.helpers import tiny_config
from benchmarks import ceiling
from benchmarks import step_components
from benchmarks import timing
from uwm_jax.training import flops as flops_lib


def test_the_bound_adds_the_products_at_the_ceiling_rate_to_the_fixed_work():
  # 0.6 TFLOP at 200 GFLOP/s is 3 s; with 1 s of optimizer, 4 s; a 5 s reference: 1.25x at best.
  assert ceiling.step_seconds_bound(0.6e12, 200e9) == pytest.approx(3.0)
  assert ceiling.step_seconds_bound(0.6e12, 200e9, fixed_seconds=1.0) == pytest.approx(4.0)
  assert ceiling.speedup_bound(0.6e12, 200e9, 5.0, fixed_seconds=1.0) == pytest.approx(1.25)
  assert ceiling.matmul_flops(2048) == 2 * 2048 ** 3
  with pytest.raises(ValueError, match="seconds must be > 0"):
    ceiling.flops_per_s(1.0, 0.0)


def test_the_jax_product_is_the_models_matmul_and_has_a_finite_rate():
  run = ceiling.jax_matmul(64, "float32")
  run()
  rate = ceiling.flops_per_s(ceiling.matmul_flops(64), timing.timed(run))
  assert math.isfinite(rate) and rate > 0


def test_the_bench_prints_the_bound_from_the_rate_it_measured(capsys):
  """measure_and_print times one product in each framework and bounds the step with the faster
  optimizer time added; the printed bound is the one it returns."""
  pytest.importorskip("torch")
  config = tiny_config()
  ours = {"train step": 2.0, step_components.OPTIMIZER: 0.5}
  theirs = {"train step": 3.0, step_components.OPTIMIZER: 0.25}
  record = ceiling.measure_and_print(config, ours, theirs, rounds=1)
  step_flops = (flops_lib.train_step_flops(config.model, latent_cache=True).per_sample
                * config.batch_size)
  assert record["step_tflop"] == pytest.approx(step_flops / 1e12)
  xla = record["matmul_gflops"]["xla"] * 1e9
  assert xla > 0 and record["matmul_gflops"]["torch"] > 0
  expected = 3.0 / (step_flops / xla + 0.25)  # torch's faster AdamW is the fixed work
  assert record["speedup_bound"] == pytest.approx(expected)
  out = capsys.readouterr().out
  assert f"at most {expected:.2f}x torch's step" in out
  assert "AdamW (the faster of the two) 0.250 s" in out
