"""How fast a train step could be on this machine: its analytic FLOPs at the machine's matmul rate.

`benchmarks.train_step --torch` uses these to print, beside the measured step times, the rate at which
each framework runs the step's matrix products (analytic FLOPs / step time) and the rate one large
product reaches on this CPU in each framework, measured in the same run. The step cannot run its
products faster than that product, so

    step_seconds >= step_flops / ceiling_flops_per_s + fixed_seconds

where `fixed_seconds` is work that is not products (the optimizer update, bound by memory
bandwidth). `speedup_bound` turns that into the best possible speed-up over a reference's time.
"""

from typing import Callable, Dict

import numpy as np

from benchmarks import step_components
from benchmarks import timing
from uwm_jax.training import flops as flops_lib

CEILING_MATMUL_SIZE = 2048  # an n x n x n product: large enough for any CPU's best kernel


def matmul_flops(n: int) -> int:
  """FLOPs of one n x n x n matrix product (2 per multiply-add)."""
  return 2 * n ** 3


def jax_matmul(n: int, compute_dtype: str) -> Callable[[], None]:
  """A callable running one jitted n x n @ n x n product in `compute_dtype` through
  `model.layers.matmul` (the models' own dot: on CPU bf16 operands give an fp32 result)."""
  import jax  # pylint: disable=import-outside-toplevel
  from uwm_jax.model import layers  # pylint: disable=import-outside-toplevel
  dtype = layers.dtype_of(compute_dtype)
  rng = np.random.default_rng(0)
  a = jax.numpy.asarray(rng.standard_normal((n, n)), dtype)
  b = jax.numpy.asarray(rng.standard_normal((n, n)), dtype)
  product = jax.jit(layers.matmul)
  return lambda: jax.block_until_ready(product(a, b))


def flops_per_s(flops: float, seconds: float) -> float:
  if seconds <= 0:
    raise ValueError(f"seconds must be > 0, not {seconds}")
  return flops / seconds


def step_seconds_bound(step_flops: float, ceiling_flops_per_s: float,
                       fixed_seconds: float = 0.0) -> float:
  """The least time a step of `step_flops` product FLOPs takes at the ceiling rate, plus work
  that is not products (`fixed_seconds`)."""
  return step_flops / ceiling_flops_per_s + fixed_seconds


def speedup_bound(step_flops: float, ceiling_flops_per_s: float, reference_seconds: float,
                  fixed_seconds: float = 0.0) -> float:
  """The largest speed-up over a reference step of `reference_seconds` that a step running its
  products at the ceiling rate (and nothing else but `fixed_seconds`) can reach."""
  return reference_seconds / step_seconds_bound(step_flops, ceiling_flops_per_s, fixed_seconds)


def format_ceiling(step_flops: float, ours_s: float, torch_s: float, xla_ceiling: float,
                   torch_ceiling: float, fixed_seconds: float = 0.0, fixed_name: str = "") -> str:
  """The lines `benchmarks.train_step --torch` prints under its table (rates in GFLOP/s)."""
  g = 1e9
  fixed = (f" + {fixed_name} {fixed_seconds:.3f} s as measured" if fixed_seconds else
           ", nothing else")
  bound_s = step_seconds_bound(step_flops, xla_ceiling, fixed_seconds)
  return "\n".join([
      f"matrix products per step (analytic)  {step_flops / 1e12:.4g} TFLOP: ours runs them at "
      f"{flops_per_s(step_flops, ours_s) / g:.0f} GFLOP/s, torch at "
      f"{flops_per_s(step_flops, torch_s) / g:.0f} GFLOP/s",
      f"one {CEILING_MATMUL_SIZE}^3 product on this machine  XLA {xla_ceiling / g:.0f} GFLOP/s, "
      f"torch {torch_ceiling / g:.0f} GFLOP/s",
      f"ours at XLA's rate{fixed}: >= {bound_s:.3f} s per step, at most "
      f"{speedup_bound(step_flops, xla_ceiling, torch_s, fixed_seconds):.2f}x torch's step",
  ])


def measure_and_print(config, ours: Dict[str, float], theirs: Dict[str, float],
                      rounds: int) -> dict:
  """Times one CEILING_MATMUL_SIZE^3 product in each framework (alternating, >= 5 rounds) and
  prints `format_ceiling` for the step times `ours` / `theirs` (name -> seconds, with
  "train step" and, if measured, the optimizer part). Returns the numbers it printed."""
  from benchmarks import torch_reference  # pylint: disable=import-outside-toplevel
  n, dtype = CEILING_MATMUL_SIZE, config.model.compute_dtype
  t = timing.alternate({"xla": jax_matmul(n, dtype),
                        "torch": torch_reference.matmul(n, dtype)}, max(rounds, 5))
  rates = {k: flops_per_s(matmul_flops(n), s) for k, s in t.items()}
  step_flops = (flops_lib.train_step_flops(config.model, latent_cache=True).per_sample
                * config.batch_size)
  optimizer = [s[step_components.OPTIMIZER] for s in (ours, theirs)
               if step_components.OPTIMIZER in s]
  fixed = min(optimizer) if optimizer else 0.0
  print(format_ceiling(step_flops, ours["train step"], theirs["train step"],
                       rates["xla"], rates["torch"], fixed, "AdamW (the faster of the two)"))
  return {"step_tflop": step_flops / 1e12, "matmul_gflops": {k: v / 1e9 for k, v in rates.items()},
          "speedup_bound": speedup_bound(step_flops, rates["xla"], theirs["train step"], fixed)}
