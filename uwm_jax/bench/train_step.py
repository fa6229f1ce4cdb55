"""Benchmark the sharded train step: `python -m uwm_jax.bench.train_step --config=configs/tiny.py`.

Builds the state and the jitted, donated train step exactly as training does (mesh and
partition rules from `config.train`), feeds one random batch of the configured shape (so the
input pipeline is not measured), and prints samples/s, step time, TFLOP/s (analytic count),
MFU (when the device's peak is known or `--config.train.peak_tflops_per_device` is set) and
the peak device memory from the compiled executable's memory analysis, plus one JSON line.

  python -m uwm_jax.bench.train_step --config=configs/droid.py --config.batch_size=36 \\
      --config.model.compute_dtype=bfloat16 --steps=20
"""

import json
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.mark_flags_as_required(["config"])


def random_batch(config, rng):
  """A host batch of the config's shapes: random uint8 frames, actions in [-1, 1]."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from uwm_jax import batch as B_  # pylint: disable=import-outside-toplevel
  shapes = B_.expected_shapes(config.model, config.batch_size)
  out = {}
  for key, shape in shapes.items():
    if key in (B_.OBS, B_.NEXT_OBS):
      out[key] = rng.integers(0, 256, shape, dtype=np.uint8)
    elif key == B_.ACTION_MASK:
      out[key] = np.ones(shape, bool)
    else:
      out[key] = rng.uniform(-1, 1, shape).astype(np.float32)
  return out


def memory_summary(compiled) -> dict:
  """Bytes per device from XLA's memory analysis of the executable (None where unavailable)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    m = None
  if m is None:
    return {}
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "alias_size_in_bytes", "generated_code_size_in_bytes")
  out = {f: int(getattr(m, f, 0) or 0) for f in fields}
  out["peak_bytes_estimate"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"] +
                                out["temp_size_in_bytes"] - out["alias_size_in_bytes"])
  return out


def run(config, steps: int, warmup: int) -> dict:
  """Compile and time the train step of `config`; returns the measurements."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from uwm_jax.data import global_batch  # pylint: disable=import-outside-toplevel
  from uwm_jax.diffusion import make_schedule  # pylint: disable=import-outside-toplevel
  from uwm_jax.model.uwm import UnifiedWorldModel  # pylint: disable=import-outside-toplevel
  from uwm_jax.training import flops as flops_lib  # pylint: disable=import-outside-toplevel
  from uwm_jax.training import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from uwm_jax.training import optimizer as optim_lib  # pylint: disable=import-outside-toplevel
  from uwm_jax.training import sharded_state  # pylint: disable=import-outside-toplevel
  from uwm_jax.training.train_step import make_train_step  # pylint: disable=import-outside-toplevel

  tc = config.train
  mesh = mesh_lib.make_mesh(tc.mesh_shape)
  model = UnifiedWorldModel(config.model)
  tx = optim_lib.make_optimizer(config.optim, config.num_steps)
  lr = optim_lib.make_lr_schedule(config.optim, config.num_steps)
  ema = tc.ema_decay > 0
  abstract = sharded_state.abstract_train_state(model, tx, ema)
  shardings = sharded_state.train_state_shardings(abstract, mesh, tc.partition_rules,
                                                  tc.fsdp_min_size, log_decisions=False)
  t0 = time.perf_counter()
  state = sharded_state.init_train_state(model, tx, jax.random.key(config.seed), shardings, ema,
                                         tc.compiler_options)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  step_fn = sharded_state.jit_train_step(
      make_train_step(model, make_schedule(config.diffusion), tx, lr, ema_decay=tc.ema_decay,
                      nan_guard=tc.nan_guard), shardings, mesh, tc.compiler_options)
  batch = global_batch.host_batch_to_global(random_batch(config, np.random.default_rng(0)),
                                            mesh, mesh_lib.batch_spec())
  rng = sharded_state.replicate(jax.random.key(1), mesh)
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batch, rng).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - t0) / steps

  flops = flops_lib.train_step_flops(config.model)
  step_flops = flops.per_sample * config.batch_size
  device = jax.devices()[0]
  peak = flops_lib.peak_flops_per_device(device.device_kind, tc.peak_tflops_per_device)
  result = {
      "device": f"{jax.device_count()} x {device.device_kind}",
      "mesh": dict(mesh.shape),
      "batch_size": config.batch_size,
      "compute_dtype": config.model.compute_dtype,
      "init_s": init_s,
      "compile_s": compile_s,
      "step_time_ms": step_s * 1e3,
      "samples_per_s": config.batch_size / step_s,
      "tflop_per_step": step_flops / 1e12,
      "tflops_per_s_per_device": step_flops / step_s / jax.device_count() / 1e12,
      "mfu": flops_lib.mfu(step_flops, 1 / step_s, jax.device_count(), peak) if peak else None,
      "loss": float(metrics["loss"]),
  }
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    result["xla_tflop_per_step"] = float(cost.get("flops", 0.0)) / 1e12 * jax.device_count()
  except Exception:  # pylint: disable=broad-except
    pass
  result["memory"] = memory_summary(compiled)
  stats = getattr(device, "memory_stats", lambda: None)()
  if stats and "peak_bytes_in_use" in stats:
    result["memory"]["device_peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])
  return result


def format_result(r: dict) -> str:
  gib = lambda b: f"{b / 2**30:.3f} GiB"
  mem = r.get("memory", {})
  lines = [
      f"device               {r['device']}  mesh {r['mesh']}",
      f"batch                {r['batch_size']} ({r['compute_dtype']})",
      f"init / compile       {r['init_s']:.1f} s / {r['compile_s']:.1f} s",
      f"step time            {r['step_time_ms']:.2f} ms",
      f"samples/s            {r['samples_per_s']:.1f}",
      f"TFLOP per step       {r['tflop_per_step']:.4g} (analytic)"
      + (f", {r['xla_tflop_per_step']:.4g} (XLA cost analysis)" if "xla_tflop_per_step" in r
         else ""),
      f"TFLOP/s per device   {r['tflops_per_s_per_device']:.4g}",
      f"MFU                  " + (f"{r['mfu']:.1%}" if r["mfu"] is not None else
                                  "n/a (unknown peak; set --config.train.peak_tflops_per_device)"),
  ]
  if mem:
    lines.append(f"peak memory/device   {gib(mem['peak_bytes_estimate'])} (compiled: args "
                 f"{gib(mem['argument_size_in_bytes'])}, temp {gib(mem['temp_size_in_bytes'])})"
                 + (f"; runtime peak {gib(mem['device_peak_bytes_in_use'])}"
                    if "device_peak_bytes_in_use" in mem else ""))
  return "\n".join(lines)


def main(argv):
  del argv
  result = run(_CONFIG.value, _STEPS.value, _WARMUP.value)
  print(format_result(result))
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
